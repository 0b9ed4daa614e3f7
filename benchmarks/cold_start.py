"""Cold start of one caption: ``python -m icapnet.caption photo.jpg`` vs ``import tensorflow``.

Users run the CLI one photo at a time, so every call pays Python start-up, imports, building
VGG16 and the decoder, loading weights and tracing the decode graph before the one forward
pass that matters. The floor is ``python -c "import tensorflow"``: no caption can start
sooner. Both run as fresh subprocesses, alternately (so load from other processes hits them
alike), ``--runs`` times each; reported: median wall and CPU seconds of each, and the ratio
of the medians (target <= 1.3).

The model is a DEFAULT-size captioner (embedding 256, GRU 512, attention 256, vocabulary
2,538 = Flickr8k's) with random weights, and its VGG16 weights are a local .h5 file, loaded
the way ImageNet weights are (the download is not possible here; file size and loading path
are the same). ``--phases`` also runs the CLI's steps one by one in one process and prints
where the time goes.

    python benchmarks/cold_start.py [--runs 5] [--phases]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 1.3

PHASES = r"""
import time, sys
t0, c0 = time.perf_counter(), time.process_time()
marks = []
def mark(name):
    marks.append((name, time.perf_counter(), time.process_time()))
import icapnet.caption as caption
mark("import icapnet.caption (no TensorFlow yet)")
import tensorflow as tf
mark("import tensorflow")
import keras
mark("import keras")
from icapnet.model.store import load_model_dir
from icapnet.model.backbone import build_feature_extractor
from icapnet.inference import decoding
mark("import icapnet model/features/decoding")
model, vocab, config = load_model_dir(sys.argv[1])
mark("build captioner + load its weights")
extractor = build_feature_extractor(config.features)
mark("build VGG16 + load its weights")
from icapnet.data.images import load_image
from icapnet.model.backbone import prepare_image
import numpy as np
image = prepare_image(load_image(sys.argv[2]), int(config.features.image_size))
feats = extractor(image[None], training=False)
mark("load photo + first VGG16 forward")
res = decoding.decode(model, feats, 1, int(config.model.max_length))
mark("trace + run greedy decoding")
feats = extractor(image[None], training=False)
res = decoding.decode(model, feats, 1, int(config.model.max_length))
mark("second caption (all warm)")
prev, cprev = t0, c0
print("   wall      CPU")
for name, t, c in marks:
    print(f"{t - prev:7.2f} s {c - cprev:7.2f} s  {name}")
    prev, cprev = t, c
print(f"{marks[-2][1] - t0:7.2f} s {marks[-2][2] - c0:7.2f} s  to the first caption, in-process "
      "(Python start-up not included)")
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    p.add_argument("--phases", action="store_true", help="also print the per-phase breakdown")
    p.add_argument("--model-dir", type=Path, default=ROOT / "runs" / "cold_start" / "model")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def make_model(model_dir: Path) -> Path:
    """A default-size model dir (random weights) whose VGG16 weights are a local .h5 file."""
    if (model_dir / "config.json").is_file():
        return model_dir
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    import keras
    from bench_data import flickr8k_captions

    from icapnet.config import Config
    from icapnet.data.text import Vocabulary, normalize_caption
    from icapnet.model.backbone import get_backbone
    from icapnet.model.store import build_captioner, save_model_dir

    captions, _ = flickr8k_captions()
    vocab = Vocabulary.build(normalize_caption(c) for caps in captions.values() for c in caps)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir.parent / "vgg16_notop.weights.h5"
    keras.utils.set_random_seed(0)
    base = get_backbone("vgg16").constructor(include_top=False, weights=None,
                                             input_shape=(224, 224, 3))
    base.save_weights(str(weights))
    config = Config()
    config.features.weights = str(weights)
    config.model.vocab_size = len(vocab)
    save_model_dir(model_dir, build_captioner(config), vocab, config)
    return model_dir


def photo() -> Path:
    shared = ROOT.parent / "shared" / "data" / "flickr8k" / "Images"
    found = sorted(shared.glob("*.jpg")) if shared.is_dir() else []
    if found:
        return found[0]
    return sorted((ROOT / "tests" / "data" / "flickr8k" / "Images").glob("*.jpg"))[0]


def timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout) of one fresh subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                               "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = make_model(args.model_dir)
    image = photo()
    commands = {
        "import tensorflow": [sys.executable, "-c", "import tensorflow"],
        "caption one photo": [sys.executable, "-m", "icapnet.caption", str(image),
                              "--model", str(model_dir)],
    }
    timed(commands["caption one photo"])  # warm the page cache (weights, .pyc) first
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for run in range(args.runs):
        for name, command in commands.items():
            wall, cpu, out = timed(command)
            times[name].append((wall, cpu))
            print(f"  run {run + 1} {name:18s} {wall:6.2f} s wall {cpu:6.2f} s CPU"
                  + (f"  -> {out.strip()[:60]!r}" if "caption" in name else ""), flush=True)
    medians = {n: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
               for n, v in times.items()}
    floor, cold = medians["import tensorflow"], medians["caption one photo"]
    ratio = cold[0] / floor[0]
    print(f"\nimport tensorflow   median {floor[0]:.2f} s wall, {floor[1]:.2f} s CPU")
    print(f"caption one photo   median {cold[0]:.2f} s wall, {cold[1]:.2f} s CPU")
    print(f"ratio {ratio:.2f}x wall, {cold[1] / floor[1]:.2f}x CPU (target <= {TARGET})")
    if args.phases:
        print("\nwhere the time goes (one process, steps of the CLI in order):")
        print(timed([sys.executable, "-c", PHASES, str(model_dir), str(image)])[2])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "cold_start", "runs": {n: v for n, v in times.items()},
            "median_wall_s": {n: m[0] for n, m in medians.items()},
            "median_cpu_s": {n: m[1] for n, m in medians.items()},
            "ratio_wall": ratio, "target": TARGET, "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
