"""How well can the backbone's region features tell the synthetic shapes apart? (not a test)

The quality benchmark's shape-word precision (``quality_synthetic.py``: does the shape word a
caption writes name an object of the scene?) needs the decoder to read an object's shape from
its 14x14 region features. This asks the same of a LINEAR classifier given the answer to the
harder half, where the object is: each object's feature is the mean of its cells' features,
weighted by the fraction of each cell its box covers (the benchmark's attention-in-box
weighting, ``icapnet.inference.localisation.box_coverage``), and a softmax regression predicts
circle / square / triangle. Trained on the objects of the first 80 % of the scenes (and of
the first 40 %, for a learning curve), scored on the rest. Reported: held-out accuracy, best of
three L2 strengths, for that readout and for two narrower ones: the one cell the box covers
most (what a map fixed on one cell of the object reads) and the 3x3 cells around it.

A decoder that looks at an object as well as its box can still do better than a linear read
of the pooled features, but far above this ceiling would be surprising: it says how much of a
precision shortfall belongs to the features (here: a random VGG16, since ImageNet weights
cannot be downloaded) rather than to the captioner.

    python benchmarks/shape_probe.py --data runs/quality_synthetic/data [--layer block5_conv3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from icapnet.errors import IcapnetError, run_cli  # noqa: E402

SHAPES = ("circle", "square", "triangle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "quality_synthetic" / "data",
                   help="a synthetic-scenes folder (Images/ + boxes.json), e.g. the quality "
                   "benchmark's OUT/data")
    p.add_argument("--layer", default="block5_conv3", help="VGG16 layer (default block5_conv3)")
    p.add_argument("--weights", default="none", help="backbone weights (default none)")
    p.add_argument("--num-images", type=int, default=800, help="scenes to use (default 800)")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="backbone compute dtype (default auto, as the feature cache)")
    return p


READOUTS = {
    "box": "box-pooled (cells weighted by the box's coverage)",
    "cell": "one cell (the one the box covers most), what a map fixed on one cell reads",
    "cell3x3": "the 3x3 cells around that one, averaged",
}


def _probe_accuracy(keras, x, y, chosen, test, l2: float) -> float:
    keras.utils.set_random_seed(0)
    probe = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(
        len(SHAPES), kernel_regularizer=keras.regularizers.l2(l2))])
    probe.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    probe.fit(x[chosen], y[chosen], epochs=200, batch_size=len(x), verbose=0)
    return float(probe.evaluate(x[test], y[test], verbose=0)[1])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    boxes_path = args.data / "boxes.json"
    if not boxes_path.is_file():
        raise IcapnetError(f"{boxes_path}: no boxes.json (run quality_synthetic.py first)")
    import keras
    import numpy as np
    from tqdm.auto import tqdm

    from icapnet.data.images import load_image
    from icapnet.inference.localisation import box_coverage
    from icapnet.model.backbone import build_feature_extractor, extract_features, feature_config_for

    boxes = json.loads(boxes_path.read_text())
    names = sorted(boxes)[: args.num_images]
    config = dataclasses.replace(feature_config_for("vgg16", args.weights, args.layer),
                                 precision=args.precision)
    extractor = build_feature_extractor(config)
    readouts = {"box": [], "cell": [], "cell3x3": []}
    labels, scene = [], []
    for start in tqdm(range(0, len(names), 32), desc="features", unit="batch"):
        batch = names[start:start + 32]
        images = [load_image(args.data / "Images" / n) for n in batch]
        feats = extract_features(extractor, images)
        grid = math.isqrt(feats.shape[1])
        for i, (name, image) in enumerate(zip(batch, images, strict=True)):
            height, width = image.shape[:2]
            cells = feats[i].reshape(grid, grid, -1)
            for obj in boxes[name]:
                cover = box_coverage(obj["box"], width, height, grid)
                readouts["box"].append(feats[i].T @ cover.reshape(-1) / cover.sum())
                row, col = np.unravel_index(int(np.argmax(cover)), cover.shape)
                readouts["cell"].append(cells[row, col])
                readouts["cell3x3"].append(cells[max(row - 1, 0):row + 2,
                                                 max(col - 1, 0):col + 2].mean((0, 1)))
                labels.append(SHAPES.index(obj["shape"]))
                scene.append(start + i)
    y, scene = np.asarray(labels), np.asarray(scene)
    split = int(0.8 * len(names))
    train, test = scene < split, scene >= split
    print(f"\n{args.layer} ({args.weights} weights, {args.precision}), {len(names)} scenes, "
          f"{int(test.sum())} held-out objects: linear shape probe")
    for readout, rows in readouts.items():
        x = np.asarray(rows, np.float32)
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
        print(f"  {READOUTS[readout]}")
        for share in (0.5, 1.0):
            chosen = train & (scene < share * split)
            best = max(_probe_accuracy(keras, x, y, chosen, test, l2) for l2 in (1e-3, 1e-2, 1e-1))
            print(f"    trained on {int(chosen.sum()):5d} objects ({share:.0%} of the training "
                  f"scenes): held-out accuracy {best:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
