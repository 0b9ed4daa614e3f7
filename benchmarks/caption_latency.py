"""How much does captioning cost on top of the CNN? Latency as a ratio to bare VGG16.

Measures, on CPU and in one process, with a default-size model (embedding 256, GRU 512,
attention 512, vocabulary 3000, VGG16 block5_conv3; weights "none" unless --weights):

* ``vgg16``      the bare feature-extractor forward pass (``extractor(batch)``) — the baseline;
* ``decoded``    ``Predictor.caption_images``: the same images, *already decoded* (HxWx3
                 uint8 at 224x224), through resize check + VGG16 + greedy decoding + words;
* ``bytes``      ``Predictor.caption_bytes`` on the same image JPEG-encoded (single image
                 only): adds decoding the upload.

for a single image and a batch of 32: ``--runs`` rounds after ``--warmup`` untimed ones, each
round timing every variant back to back (so all see the same load); the ratio is the median
of the per-round ratios. An untrained decoder never emits ``<end>``, so it always writes
``max_length`` tokens: ``--lengths`` times a typical caption (13 tokens, ``<end>``
included) and the worst case (40 = ``ModelConfig.max_length``). Target: single image, typical
length, <= 1.2x the bare VGG16 time.

    python benchmarks/caption_latency.py [--runs 7] [--lengths 13 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # a CPU benchmark
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from icapnet.config import Config, DataConfig, FeatureConfig, ModelConfig
from icapnet.data.text import Vocabulary


def interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict:
    """Time each fn once per round, round after round, so all see the same machine load.

    Returns per name the median seconds, and per non-baseline name the median of the
    per-round ratios to the first fn (the baseline): robust when other processes share
    the CPU and the load drifts during the benchmark.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = next(iter(fns))
    out = {name: {"median_s": statistics.median(t)} for name, t in times.items()}
    for name in fns:
        ratios = [a / b for a, b in zip(times[name], times[base], strict=True)]
        out[name]["ratio"] = statistics.median(ratios)
    return out


def build_predictor(model_dir: Path, weights: str, vocab_size: int):
    """Save a randomly initialised default-size model and load it the way users do."""
    from icapnet.inference.predictor import Predictor
    from icapnet.model.store import build_captioner, save_model_dir

    vocab = Vocabulary([*Vocabulary.SPECIALS, *(f"w{i:04d}" for i in range(vocab_size - 4))])
    config = Config(
        features=FeatureConfig(weights=weights),
        model=ModelConfig(vocab_size=len(vocab), embedding_dim=256, units=512,
                          attention_units=512),
        data=DataConfig(dataset="benchmark"),
    )
    save_model_dir(model_dir, build_captioner(config), vocab, config)
    return Predictor.from_dir(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="none", help="VGG16 weights (default: none)")
    parser.add_argument("--vocab-size", type=int, default=3000)
    parser.add_argument("--lengths", type=int, nargs="+", default=[13, 40])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(args.batch)]
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()

    with tempfile.TemporaryDirectory() as tmp:
        predictor = build_predictor(Path(tmp) / "model", args.weights, args.vocab_size)
    extractor = predictor.extractor
    rows = []
    for n in (1, args.batch):
        batch = np.stack(images[:n])
        fns: dict[str, Callable[[], object]] = {
            "vgg16": lambda b=batch: extractor(b, training=False).numpy()
        }
        for length in args.lengths:
            fns[f"decoded/{length}"] = (
                lambda n=n, L=length: predictor.caption_images(images[:n], max_length=L))
            if n == 1:
                fns[f"bytes/{length}"] = (
                    lambda L=length: predictor.caption_bytes(jpeg, max_length=L))
        timed = interleaved(fns, args.runs, args.warmup)
        vgg = timed.pop("vgg16")["median_s"]
        for name, t in timed.items():
            mode, length = name.split("/")
            rows.append({"images": n, "max_length": int(length), "mode": mode,
                         "vgg16_ms": vgg * 1e3, "caption_ms": t["median_s"] * 1e3,
                         "ratio": t["ratio"]})

    print(f"CPU threads: intra {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}"
          f", cores visible {os.cpu_count()}; weights={args.weights}, vocab={args.vocab_size}, "
          f"median of {args.runs} after {args.warmup} warm-up")
    print(f"{'images':>6} {'input':>8} {'max_len':>7} {'vgg16 ms':>9} {'caption ms':>10} "
          f"{'ratio':>6}")
    for r in rows:
        print(f"{r['images']:>6} {r['mode']:>8} {r['max_length']:>7} {r['vgg16_ms']:>9.1f} "
              f"{r['caption_ms']:>10.1f} {r['ratio']:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
