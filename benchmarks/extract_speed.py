"""Feature-extraction throughput vs a bare backbone forward pass (not a timed test).

Measures images/s through the full cache path of ``icapnet.data.cache_build.build_cache``
(read JPEG + SHA-1 + decode in a thread pool, resize + preprocess inside the model, forward
pass, float16 records streamed into TFRecord shards, manifest/vocab/captions writes) and
divides it by the images/s of the bare backbone cut at the same layer (the Keras trunk
called through ``tf.function``) on the same images, already decoded, in the same process and
with the same batch size. Target: ratio >= 0.9. Both sides are warmed up first (tracing),
then run alternately ``--repeats`` times; the best run of each side is compared, which
filters out noise from other processes on shared machines.

    python benchmarks/extract_speed.py [--num-images 64] [--batch-size 32] [--weights none]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from icapnet.errors import run_cli  # noqa: E402

TARGET = 0.9


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Feature-extraction throughput as a ratio to a "
                                "bare backbone forward pass on the same batch.")
    p.add_argument("--num-images", type=int, default=64, help="synthetic JPEGs (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default="none", help="none (default), imagenet or a .h5 path")
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--image-size", type=int, default=None,
                   help="backbone input size (default: the backbone's own, 224 for vgg16)")
    p.add_argument("--scene-size", type=int, default=224,
                   help="pixel size of the generated JPEGs (default 224)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    p.add_argument("--workers", type=int, default=None, help="decode threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import tensorflow as tf

    from icapnet.config import DataConfig
    from icapnet.data.cache_build import build_cache
    from icapnet.data.datasets import load_dataset
    from icapnet.data.images import load_image
    from icapnet.data.synthetic import generate_scenes
    from icapnet.model.backbone import (
        build_feature_extractor,
        extractor_image_size,
        feature_config_for,
        get_backbone,
        prepare_image,
    )

    work = Path(tempfile.mkdtemp(prefix="icapnet-extract-speed-"))
    try:
        generate_scenes(work / "scenes", args.num_images, seed=0, image_size=args.scene_size,
                        progress=False)
        dataset = load_dataset("synthetic", work / "scenes")
        cfg = feature_config_for(args.backbone, args.weights, image_size=args.image_size)
        extractor = build_feature_extractor(cfg)
        size = extractor_image_size(extractor)
        trunk = extractor.get_layer(f"{cfg.backbone}_{cfg.layer}")
        preprocess = get_backbone(cfg.backbone).preprocess

        # Bare side: images decoded, resized and preprocessed beforehand; only the forward pass.
        ids = sorted(dataset.images)
        pixels = np.stack([prepare_image(load_image(dataset.images[i]), size) for i in ids])
        ready = [tf.constant(preprocess(pixels[k:k + args.batch_size].copy()))
                 for k in range(0, len(ids), args.batch_size)]
        bare_forward = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True)

        def bare() -> float:
            start = time.perf_counter()
            for batch in ready:
                bare_forward(batch).numpy()
            return len(ids) / (time.perf_counter() - start)

        def full(run: int) -> float:
            out = work / f"cache-{run}"
            start = time.perf_counter()
            build_cache(dataset, out, cfg, DataConfig(min_count=1), batch_size=args.batch_size,
                        extractor=extractor, workers=args.workers, progress=False)
            rate = len(ids) / (time.perf_counter() - start)
            shutil.rmtree(out)
            return rate

        bare()  # warm-up: tracing, memory pools
        full(-1)
        bare_rates, full_rates = [], []
        for run in range(args.repeats):
            bare_rates.append(bare())
            full_rates.append(full(run))
        ratio = max(full_rates) / max(bare_rates)
        print(f"device: {platform.node()} ({os.cpu_count()} CPUs), tf {tf.__version__}, "
              f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
        print(f"backbone {cfg.backbone}/{cfg.layer} weights={cfg.weights} {size}px, "
              f"{len(ids)} JPEGs of {args.scene_size}px, batch {args.batch_size}")
        print("bare forward  img/s: " + ", ".join(f"{r:.2f}" for r in bare_rates))
        print("full pipeline img/s: " + ", ".join(f"{r:.2f}" for r in full_rates))
        verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
        print(f"ratio full/bare (best of {args.repeats}): {ratio:.3f}  "
              f"(target >= {TARGET}) {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
