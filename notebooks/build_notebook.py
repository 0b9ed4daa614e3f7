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
time one epoch → train on the GPU (mixed precision) → loss curves → test-set metrics →
attention heatmaps → export a SavedModel → caption your own photo → share the model →
(optionally) the web page.

**Before you start:** *Runtime → Change runtime type → GPU*, and set `REPO` in the next cell
(where to install icapnet from). On a T4 a full run takes about 1 h 20 min: download ~3 min,
feature extraction ~10 min, training 20 epochs × ~3 min = ~60 min (each epoch includes the
validation BLEU that early stopping watches), evaluation and export ~5 min. With Google Drive
mounted (the default in Colab) the feature cache and the checkpoints live on Drive, so after a
disconnect *Run all* again continues where it stopped."""),
    ("md", """\
## Parameters

Change these to taste. **`REPO` must be filled in** unless icapnet is already installed: a
pip source for the project, e.g. `git+https://github.com/<you>/icapnet.git`, a `.zip` of the
project, or the project folder on Drive (`/content/drive/MyDrive/icapnet`). `SMOKE_TEST=True`
runs everything on a few synthetic scenes with a tiny model in a couple of minutes (this is
what the project's CI does); the environment variables let CI override the values without
editing the notebook."""),
    ("code", """\
import os

DATASET = os.environ.get("ICAPNET_DATASET", "flickr8k")        # "flickr8k" or "synthetic"
SMOKE_TEST = os.environ.get("ICAPNET_SMOKE_TEST", "0") == "1"  # tiny end-to-end run
# Where to install icapnet from (pip source): a git URL, a .zip of the project or its folder.
REPO = os.environ.get("ICAPNET_REPO", "")  # e.g. "git+https://github.com/<you>/icapnet.git"
USE_DRIVE = True         # in Colab: keep cache + checkpoints on Google Drive (resumable)
WORK_DIR = os.environ.get("ICAPNET_WORK_DIR", "")  # default: on Drive, else /content/icapnet_run
# A Drive folder that already holds Flickr8k (Images/ + captions.txt, or the original
# Flicker8k_Dataset/ + Flickr8k.token.txt); leave empty to download it.
DRIVE_DATA_DIR = ""
WEIGHTS = "imagenet"     # VGG16 weights: "imagenet", "none" (random) or a .h5 file
EPOCHS = 20
BATCH_SIZE = 64
BEAM = 3
SHOW = 4                 # test images shown with attention heatmaps

if SMOKE_TEST:  # CI: synthetic scenes, random VGG16, a tiny model, 8 short epochs
    DATASET, WEIGHTS, EPOCHS, BATCH_SIZE, SHOW, USE_DRIVE = "synthetic", "none", 8, 16, 2, False
MODEL_FLAGS = ["--units", "16", "--embedding-dim", "16", "--attention-units", "16",
               "--learning-rate", "1e-2"] \\
    if SMOKE_TEST else []
print(f"dataset={DATASET} smoke_test={SMOKE_TEST} epochs={EPOCHS} work_dir={WORK_DIR}")"""),
    ("md", """\
## 1. Google Drive and icapnet

In Colab (with `USE_DRIVE`) Drive is mounted first and the work folder — feature cache,
checkpoints, model — goes to `MyDrive/icapnet_run`, so re-running after a disconnect resumes
instead of starting over. Then `pip` installs icapnet from `REPO` and whatever it is missing;
Colab's own TensorFlow 2.x (Keras 3) already satisfies the requirement, so it is kept rather
than reinstalled. When the package is already importable (running from a checkout), nothing is
installed; when it is not and `REPO` is empty, the notebook stops here and says so."""),
    ("code", """\
import importlib.util
import subprocess
import sys
from pathlib import Path

try:
    from google.colab import drive

    IN_COLAB = True
except ImportError:
    IN_COLAB = False
ON_DRIVE = IN_COLAB and USE_DRIVE
if ON_DRIVE or (IN_COLAB and DRIVE_DATA_DIR):
    drive.mount("/content/drive")
WORK = Path(WORK_DIR or ("/content/drive/MyDrive/icapnet_run" if ON_DRIVE
                         else "/content/icapnet_run"))


class StopHere(Exception):
    \"\"\"Ends *Run all* with one line instead of a traceback.\"\"\"

    def _render_traceback_(self):
        return [f"stopped: {self}"]


if importlib.util.find_spec("icapnet") is None:
    if not REPO:
        raise StopHere("set REPO in the parameters cell to where icapnet comes from (a git "
                       "URL, a .zip of the project or its folder on Drive), then run again")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", REPO], check=True)

import tensorflow as tf

import icapnet

print("icapnet", icapnet.__version__, "| TensorFlow", tf.__version__)
GPUS = tf.config.list_physical_devices("GPU")
print("GPU:", GPUS or "none (training will be slow on the CPU)")
print("work folder (cache, checkpoints, model):", WORK)"""),
    ("md", """\
## 2. Get the data

With `DRIVE_DATA_DIR` set, the dataset is read from your Google Drive. Otherwise
`python -m icapnet.download` fetches Flickr8k (~1 GB, checksummed and resumable) onto the
Colab machine's own disk (faster to read than Drive; a re-run after a disconnect downloads it
again, while the feature cache on Drive is kept). In smoke mode a few synthetic captioned
scenes are generated instead. Flickr8k always gets its official 6000/1000/1000 split."""),
    ("code", """\
from icapnet import download, evaluate, export, prepare, train

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
    DATA_DIR = Path(DRIVE_DATA_DIR)
else:
    DATA_DIR = Path("/content/icapnet_data") if ON_DRIVE else WORK / "data"
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
## 4. How long is one epoch here?

Before committing to 20 epochs, time one: the cell below trains a single epoch on the cache
you just built (for Flickr8k that is 6,000 images × 5 captions, the same measurement as
`benchmarks/flickr8k_epoch.py`, which reports 2 CPU cores in `benchmarks/README.md`) and prints
the epoch time and what 20 epochs cost. On a GPU it times mixed precision with and without XLA
(`--jit-compile`) and trains with the faster; on a CPU, XLA was measured slower, so it stays
off."""),
    ("code", """\
from icapnet.model.timing import time_epoch

precision = ["--mixed-precision", "auto"] if GPUS else []  # auto: float16 on a GPU
TRAIN_FLAGS = ["--batch-size", BATCH_SIZE, *precision, *MODEL_FLAGS]


def epoch_timing(*flags):
    argv = ["--cache", CACHE, "--out", WORK / "epoch_timing", *TRAIN_FLAGS, *flags]
    config = train.config_from_args(train.build_parser().parse_args([str(a) for a in argv]))
    timing = time_epoch(config, CACHE)
    print(f"{' '.join(map(str, TRAIN_FLAGS[2:] + list(flags))) or 'defaults'} on "
          f"{timing.device}: one epoch {timing.epoch_s:.0f} s ({timing.steps} steps, "
          f"{timing.captions_per_s:.0f} captions/s; tracing/compiling {timing.one_off_s:.0f} s)"
          f" -> {EPOCHS} epochs ~ {timing.projected_s(EPOCHS) / 60:.0f} min")
    return timing


timings = {(): epoch_timing()}
if GPUS:
    timings[("--jit-compile",)] = epoch_timing("--jit-compile")
JIT_FLAGS = list(min(timings, key=lambda k: timings[k].projected_s(EPOCHS)))
print("training with", " ".join(TRAIN_FLAGS[2:] + JIT_FLAGS) or "the defaults")"""),
    ("md", """\
## 5. Train

The custom `train_step` runs teacher forcing over each batch (padded to its own longest
caption) with the cross-entropy masked to real tokens. The recipe is picked by the dataset:
Flickr8k gets `--preset sat`, Show, Attend and Tell's settings (RMSProp, dropout 0.5, the
doubly-stochastic attention penalty, early stopping on validation BLEU-4); synthetic scenes get
`--preset synthetic`. Flags given here (epochs, batch size) override the preset. On a GPU
mixed precision is on (`--mixed-precision auto`: `mixed_float16`; the loss stays float32).
Checkpoints are written every epoch (on Drive), so re-running the cell after a disconnect
continues where it stopped, and re-running it with a larger `EPOCHS` trains the extra epochs."""),
    ("code", """\
MODEL_DIR = WORK / "model"
run(train.main, "--cache", CACHE, "--out", MODEL_DIR, "--epochs", EPOCHS, *TRAIN_FLAGS,
    *JIT_FLAGS)"""),
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
## 6. Evaluate on the test split

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
## 7. Where does the model look?

For a few test images: the photo, then for each word (and `<end>`) the attention map over
the 14×14 regions laid onto the photo. Opacity follows the attention, so the photo's colours
show where the model did not look; all panels share one colour scale."""),
    ("code", """\
from IPython.display import display

from icapnet.data.cache import open_cache
from icapnet.data.images import load_image
from icapnet.data.datasets import load_dataset
from icapnet.inference.predictor import Predictor
from icapnet.plots import attention_figure

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
## 8. Export a SavedModel

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
## 9. Caption your own photo

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
## 10. Share the trained model

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
    ("md", """\
## Keep the results

The model folder (`config.json`, `vocab.json`, weights, `metrics.json`, `loss.png`), the
SavedModel and the package are in the work folder. With Drive in use they are already on Drive;
otherwise this cell mounts Drive and copies them to `MyDrive/icapnet_results`. Caption photos
on any machine with `python -m icapnet.caption photo.jpg --model icapnet-model.zip`."""),
    ("code", """\
import shutil

KEEP = [MODEL_DIR, EXPORT_DIR, PACKAGE, PACKAGE.with_name(PACKAGE.name + ".sha256")]
if ON_DRIVE:
    print(f"already on Drive: {WORK}")
else:
    try:
        from google.colab import drive

        drive.mount("/content/drive")
        target = Path("/content/drive/MyDrive/icapnet_results")
        for item in KEEP:
            copy = shutil.copytree if item.is_dir() else shutil.copy2
            copy(item, target / item.name, **({"dirs_exist_ok": True} if item.is_dir() else {}))
        print(f"copied {', '.join(p.name for p in KEEP)} to {target}")
    except ImportError:
        print(f"not in Colab: the results stay in {WORK}")"""),
    ("md", """\
## 11. The web page, inside Colab (optional)

The same page as `python -m icapnet.serve`: upload a photo, see the caption and where the model
looked for each word. It runs in this kernel on a free port; Colab's port proxy shows it below
(`google.colab.output.serve_kernel_port_as_iframe`), and the printed link opens it in a tab of
its own (`google.colab.kernel.proxyPort`). It stops when the runtime does."""),
    ("code", """\
import json
import urllib.request

from icapnet.web.app import COLAB_FRAME_ANCESTORS, create_app
from icapnet.web.server import serve_in_background

page = create_app(predictor, MODEL_DIR, frame_ancestors=COLAB_FRAME_ANCESTORS)
SERVER = serve_in_background(page, port=0)  # kept open: the page lives as long as the kernel
URL = SERVER.__enter__()
PORT = int(URL.rsplit(":", 1)[1])
health = json.load(urllib.request.urlopen(f"{URL}/api/health"))
print(f"web page: model {health['model']} is {health['status']} on port {PORT}")
try:
    from google.colab import output

    print("open it in a tab:", output.eval_js(f"google.colab.kernel.proxyPort({PORT})"))
    output.serve_kernel_port_as_iframe(PORT, height=900)
except ImportError:
    print(f"not in Colab: the page is at {URL}/ while this kernel runs")"""),
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
