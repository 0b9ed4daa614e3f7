"""Generate ``notebooks/train_on_colab.ipynb`` from the cells below (run after editing).

The notebook is built from this script so that review happens on plain Python, not JSON:

    python notebooks/build_notebook.py

Cells are executed top to bottom by ``tests/test_notebook.py`` in smoke mode
(``ICAPNET_SMOKE_TEST=1``: synthetic scenes, a tiny model, a couple of minutes on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("train_on_colab.ipynb")

CELLS: list[tuple[str, str]] = [
    ("md", """\
# Train icapnet on Flickr8k with a Colab GPU

icapnet describes a photo in one sentence and shows where it looked for each word: VGG16
`block5_conv3` region features (14×14 = 196 regions) → a Dense encoder → a GRU decoder with
Bahdanau attention, trained with teacher forcing in a custom `train_step`.

This notebook runs the whole recipe: install → get Flickr8k → build the VGG16 feature cache →
train on the GPU (mixed precision) → loss curves → test-set metrics → attention heatmaps →
export a SavedModel → caption your own photo.

**Before you start:** *Runtime → Change runtime type → GPU*. A full run takes about an hour on
a T4 (feature extraction ~10 min, training ~3 min per epoch)."""),
    ("md", """\
## Parameters

Change these to taste. `SMOKE_TEST=True` runs everything on a few synthetic scenes with a tiny
model in a couple of minutes (this is what the project's CI does); the environment variables
let CI override the values without editing the notebook."""),
    ("code", """\
import os

DATASET = os.environ.get("ICAPNET_DATASET", "flickr8k")        # "flickr8k" or "synthetic"
SMOKE_TEST = os.environ.get("ICAPNET_SMOKE_TEST", "0") == "1"  # tiny end-to-end run
REPO = os.environ.get("ICAPNET_REPO", "git+https://github.com/icapnet/icapnet.git")
WORK_DIR = os.environ.get("ICAPNET_WORK_DIR", "/content/icapnet_run")
# A Drive folder that already holds Flickr8k (Images/ + captions.txt, or the original
# Flicker8k_Dataset/ + Flickr8k.token.txt); leave empty to download it.
DRIVE_DATA_DIR = ""
WEIGHTS = "imagenet"     # VGG16 weights: "imagenet", "none" (random) or a .h5 file
EPOCHS = 20
BATCH_SIZE = 64
BEAM = 3
SHOW = 4                 # test images shown with attention heatmaps

if SMOKE_TEST:  # CI: synthetic scenes, random VGG16, a tiny model, 8 short epochs
    DATASET, WEIGHTS, EPOCHS, BATCH_SIZE, SHOW = "synthetic", "none", 8, 16, 2
MODEL_FLAGS = ["--units", "16", "--embedding-dim", "16", "--attention-units", "16",
               "--learning-rate", "1e-2"] \\
    if SMOKE_TEST else []
print(f"dataset={DATASET} smoke_test={SMOKE_TEST} epochs={EPOCHS} work_dir={WORK_DIR}")"""),
    ("md", """\
## 1. Install icapnet

`pip` installs icapnet and whatever it is missing; Colab's own TensorFlow 2.x (Keras 3) already
satisfies the requirement, so it is kept rather than reinstalled. When the package is already
importable (running from a checkout), nothing is installed."""),
    ("code", """\
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("icapnet") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", REPO], check=True)

import tensorflow as tf

import icapnet

print("icapnet", icapnet.__version__, "| TensorFlow", tf.__version__)
GPUS = tf.config.list_physical_devices("GPU")
print("GPU:", GPUS or "none (training will be slow on the CPU)")"""),
    ("md", """\
## 2. Get the data

With `DRIVE_DATA_DIR` set, the dataset is read from your Google Drive. Otherwise
`python -m icapnet.download` fetches Flickr8k (~1 GB, checksummed and resumable) into
`WORK_DIR/data`. In smoke mode a few hundred synthetic captioned scenes are generated instead."""),
    ("code", """\
from pathlib import Path

from icapnet import download, evaluate, export, prepare, train

WORK = Path(WORK_DIR)
WORK.mkdir(parents=True, exist_ok=True)


def run(main, *argv):
    \"\"\"Run an icapnet command in this kernel; a failure stops the notebook here.\"\"\"
    code = main([str(a) for a in argv])
    if code:
        raise RuntimeError(f"{main.__module__} exited with code {code}")


if DATASET == "synthetic":
    from icapnet.data.synthetic import ensure_scenes

    DATA_DIR = WORK / "data"
    ensure_scenes(DATA_DIR, 40 if SMOKE_TEST else 2000, seed=0)
elif DRIVE_DATA_DIR:
    from google.colab import drive

    drive.mount("/content/drive")
    DATA_DIR = Path(DRIVE_DATA_DIR)
else:
    DATA_DIR = WORK / "data"
    run(download.main, "--data-dir", DATA_DIR)
print("data:", DATA_DIR)"""),
    ("md", """\
## 3. Build the feature cache

Every image goes through the frozen VGG16 once; the 196×512 region features are stored as
float16 TFRecord shards (~1.5 GB for Flickr8k), together with the vocabulary of the training
captions. Training then reads only the cache. Re-running this cell resumes an interrupted
build."""),
    ("code", """\
CACHE = WORK / "cache"
run(prepare.main, "--dataset", DATASET, "--data-dir", DATA_DIR, "--out", CACHE,
    "--weights", WEIGHTS)"""),
    ("md", """\
## 4. Train

The custom `train_step` runs teacher forcing over each batch (padded to its own longest
caption) with the cross-entropy masked to real tokens (the doubly-stochastic attention penalty
of Show-Attend-Tell is available as `--attention-penalty`, off by default). On a GPU
we switch on mixed precision (`mixed_float16`; the loss stays float32). Checkpoints are written
every epoch, so re-running the cell after a disconnect continues where it stopped."""),
    ("code", """\
MODEL_DIR = WORK / "model"
precision = ["--mixed-precision"] if GPUS else []
run(train.main, "--cache", CACHE, "--out", MODEL_DIR, "--epochs", EPOCHS,
    "--batch-size", BATCH_SIZE, *precision, *MODEL_FLAGS)"""),
    ("md", "Training and validation loss per epoch (also saved as `loss.png` with the model):"),
    ("code", """\
import matplotlib.pyplot as plt
import pandas as pd

history = pd.read_csv(MODEL_DIR / "history.csv")
ax = history.plot(x="epoch", y=[c for c in ("loss", "val_loss") if c in history], marker="o",
                  figsize=(6, 3.5), title="loss")
ax.set_xlabel("epoch")
plt.show()
history.tail()"""),
    ("md", """\
## 5. Evaluate on the test split

Captions are generated free-running (greedy and beam search) and scored with BLEU-1..4, plus
METEOR, ROUGE-L and CIDEr when Java is available (it is on Colab)."""),
    ("code", """\
import json

for beam in sorted({1, BEAM}):
    run(evaluate.main, "--model", MODEL_DIR, "--split", "test", "--beam", beam)

metrics = json.loads((MODEL_DIR / "metrics.json").read_text())["test"]
table = pd.DataFrame({k: {m: v for m, v in row.items() if isinstance(v, float)}
                      for k, row in metrics.items()})
print(table.round(4).to_string())"""),
    ("md", """\
## 6. Where does the model look?

For a few test images: the photo, then for each word (and `<end>`) the attention map over
the 14×14 regions laid onto the photo. Opacity follows the attention, so the photo's colours
show where the model did not look; all panels share one colour scale."""),
    ("code", """\
from IPython.display import display

from icapnet.data.cache import open_cache
from icapnet.data.images import load_image
from icapnet.data.datasets import load_dataset
from icapnet.inference.predictor import Predictor
from icapnet.visualize import attention_figure

predictor = Predictor.from_dir(MODEL_DIR)
dataset = load_dataset(DATASET, DATA_DIR)
test_ids = open_cache(CACHE).image_ids("test")[:SHOW]
images = [load_image(dataset.images[i]) for i in test_ids]
HEATMAPS = WORK / "attention"
HEATMAPS.mkdir(exist_ok=True)
for image_id, image, result in zip(test_ids, images,
                                   predictor.caption_images(images, beam_size=BEAM)):
    print(f"{image_id}: {result.caption}\\n  reference: {dataset.captions[image_id][0]}")
    if result.words:
        fig = attention_figure(image, result.words, result.attention, result.caption,
                               result.end_attention)
        fig.savefig(HEATMAPS / f"{Path(image_id).stem}.png", dpi=80)
        display(fig)"""),
    ("md", """\
## 7. Export a SavedModel

The export holds everything needed to caption JPEG/PNG bytes — image decoding, VGG16, the
vocabulary and the whole decode loop — so it can be served with TensorFlow alone (no icapnet).
We reload it here exactly as a server would."""),
    ("code", """\
EXPORT_DIR = WORK / "export"
run(export.main, "--model", MODEL_DIR, "--out", EXPORT_DIR)

exported = tf.saved_model.load(str(EXPORT_DIR))
print("signatures:", list(exported.signatures))
print("outputs:", sorted(exported.signatures["serving_default"].structured_outputs))"""),
    ("md", """\
## 8. Caption your own photo

Upload a JPEG or PNG (outside Colab, a test image is used instead) and caption it with the
exported SavedModel alone — its outputs include the words and their attention maps."""),
    ("code", """\
try:
    from google.colab import files

    uploaded = files.upload()
    name, photo = next(iter(uploaded.items()))
except (ImportError, StopIteration):
    name = str(dataset.images[test_ids[0]])
    photo = Path(name).read_bytes()

out = exported.caption(tf.constant([photo]), beam_size=tf.constant(BEAM))
caption = out["captions"].numpy()[0].decode()
words = [w.decode() for w in out["words"].numpy()[0][: out["lengths"].numpy()[0]]]
print(f"SavedModel caption for {Path(name).name}: {caption}")
if words:
    image = tf.io.decode_image(photo, channels=3, expand_animations=False).numpy()
    display(attention_figure(image, words, out["attention"].numpy()[0][: len(words)], caption))"""),
    ("md", """\
## Keep the results

The model folder (`config.json`, `vocab.json`, weights, `metrics.json`, `loss.png`) and the
SavedModel are in `WORK_DIR`. Copy them to Drive to keep them after the session ends, e.g.
`!cp -r /content/icapnet_run/model /content/icapnet_run/export /content/drive/MyDrive/`, and
caption photos locally with `python -m icapnet.caption photo.jpg --model model`."""),
    ("md", """\
## 9. Share the trained model

One `.zip` holds everything needed to caption (config, vocabulary, weights, metrics, and the
backbone file if it was fine-tuned), with a manifest of sha256 sums inside; its own sha256 is
printed and written next to it. Anyone can then caption with `--model icapnet-model.zip`, or
with `--model https://your-host/icapnet-model.zip#sha256=…` once it is online (downloaded
once into `~/.cache/icapnet/models`, checked, unpacked). In Colab the browser downloads it."""),
    ("code", """\
from icapnet import package

PACKAGE = WORK / "icapnet-model.zip"
run(package.main, "--model", MODEL_DIR, "--out", PACKAGE)
SHA256 = PACKAGE.with_name(PACKAGE.name + ".sha256").read_text().split()[0]
print(f"caption with: python -m icapnet.caption photo.jpg --model {PACKAGE.name}")
print(f"or, once online: --model https://YOUR-HOST/{PACKAGE.name}#sha256={SHA256}")
try:
    from google.colab import files

    files.download(str(PACKAGE))
except ImportError:  # not in Colab: the package stays in WORK_DIR
    pass"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["accelerator"] = "GPU"
    nb.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
    for kind, source in CELLS:
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        if kind == "code" and "SMOKE_TEST = " in source:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"cell-{i:02d}"
    return nb


def main() -> None:
    nb = build()
    nbformat.validate(nb)
    NOTEBOOK.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    print(f"wrote {NOTEBOOK} ({len(nb.cells)} cells)")


if __name__ == "__main__":
    main()
