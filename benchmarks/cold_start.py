"""Cold start of one caption: ``python -m icapnet.caption photo.jpg`` vs ``import tensorflow``.

Users run the CLI one photo at a time, so every call pays Python start-up, imports, building
VGG16 and the decoder, loading weights and tracing the decode graph before the one forward
pass that matters. The floor is ``python -c "import tensorflow"``: no caption can start
sooner. Both run as fresh subprocesses, alternately (so load from other processes hits them
alike), ``--runs`` times each; reported: median wall and CPU seconds of each, and the ratio
of the medians (target <= 1.3). A third command, ``import tensorflow`` with the CLI's
garbage-collector treatment (paused while loading, no collection at exit; see
``icapnet.cli.gc_paused``), is not the floor: it shows how much of the caption's time is
icapnet's own work and how much of the gain is the collector's.

The model is a DEFAULT-size captioner (embedding 256, GRU 512, attention 256, vocabulary
2,538 = Flickr8k's) with random weights, and its VGG16 weights are a local .h5 file, loaded
the way ImageNet weights are (the download is not possible here; file size and loading path
are the same). ``--phases`` also runs the CLI once with its steps timed and prints, by
thread, when each started and ended (the decode graph is traced and warmed in a thread).

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
GC_FLOOR = "import tf, gc as CLI"

PHASES = r"""
import sys, threading, time
t0 = time.perf_counter()
def mark(what):
    print(f"{time.perf_counter() - t0:6.2f} s  {threading.current_thread().name:13s} {what}",
          file=sys.stderr, flush=True)
def timed(module, name, what=None):
    inner = getattr(module, name)
    def wrapper(*args, **kwargs):
        mark(f"{what or name} ...")
        out = inner(*args, **kwargs)
        mark(f"{what or name} done")
        return out
    setattr(module, name, wrapper)
import icapnet.caption as caption
mark("imported icapnet.caption (TensorFlow not yet)")
with caption.cli.gc_paused():
    import tensorflow, keras
mark("imported tensorflow (garbage collection paused, as the CLI does)")
from icapnet.model import backbone, store
from icapnet.inference import decoding, predictor
timed(store, "build_captioner", "build the captioner (variables from shapes)")
timed(decoding, "trace", "trace + warm the decode graph")
timed(backbone, "build_feature_extractor", "build VGG16 + load its weights")
timed(backbone, "extract_features", "photo -> VGG16 features")
timed(predictor, "decode", "decode (beam 3)")
load_weights = keras.Model.load_weights
def timed_load(self, *args, **kwargs):
    mark(f"load {self.name} weights ...")
    out = load_weights(self, *args, **kwargs)
    mark(f"load {self.name} weights done")
    return out
keras.Model.load_weights = timed_load
code = caption.main(sys.argv[1:])
mark("caption printed")
sys.exit(code)
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
        # Not the floor: the same import with the CLI's garbage-collector treatment (paused
        # while loading, no collection at exit), to show what is left of icapnet's own work.
        GC_FLOOR: [sys.executable, "-c",
                   "import gc; gc.disable(); import tensorflow; gc.freeze()"],
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
    same_gc = medians[GC_FLOOR]
    print(f"{GC_FLOOR:19s} median {same_gc[0]:.2f} s wall, {same_gc[1]:.2f} s CPU: against it "
          f"{cold[0] / same_gc[0]:.2f}x wall (the garbage-collector part of the gain is "
          f"{floor[0] - same_gc[0]:.2f} s)")
    if args.phases:
        print("\nwhere the time goes (one process: the CLI's steps, by thread, from start-up):")
        proc = subprocess.run([sys.executable, "-c", PHASES, str(image), "--model",
                               str(model_dir)], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                   "PYTHONPATH": str(ROOT)})
        print("\n".join(line for line in proc.stderr.splitlines() if " s  " in line))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "cold_start", "runs": {n: v for n, v in times.items()},
            "median_wall_s": {n: m[0] for n, m in medians.items()},
            "median_cpu_s": {n: m[1] for n, m in medians.items()},
            "ratio_wall": ratio, "ratio_wall_vs_same_gc": cold[0] / same_gc[0],
            "target": TARGET, "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
