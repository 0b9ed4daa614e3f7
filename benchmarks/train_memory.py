"""Peak training memory does not grow with the data: caches of 1x and 10x the images.

The training pipeline streams the TFRecord shards (``icapnet.data.pipeline``); what it holds
at once is bounded by the shuffle buffer (``--shuffle-buffer`` elements), not by the cache.
This builds two feature caches with the real ``prepare`` path (synthetic scenes; the 10x
dataset is the 1x scenes hard-linked ten times under new names, so extraction and disk cost
stay small), through a small registered backbone with a 4x4x512 float16 grid (16 KiB per
image: large enough that holding the 10x cache in memory would add ~140 MiB), trains one
epoch on each in a fresh process and compares the peak resident set size (``VmHWM``).

    python benchmarks/train_memory.py [--images 1000] [--factor 10] [--out runs/train_memory]

Prints a table and writes OUT/train_memory.json. Target: 10x peak <= 1.10 x 1x peak.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID, CHANNELS, SIZE = 4, 512, 32  # the "bench" backbone: 32 px in, 4x4x512 out


def _bench_cnn(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)):
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(CHANNELS, 3, strides=2, padding="same", name="grid")(x)
    return keras.Model(inputs, x)


def register_bench_backbone() -> str:
    from icapnet.model.backbone import Backbone, register_backbone

    register_backbone(Backbone("bench", _bench_cnn, "grid", lambda x: x / 127.5 - 1.0, SIZE))
    return "bench"


def replicate(scenes: Path, out: Path, factor: int) -> Path:
    """``factor`` copies of every scene (hard links, new names): a dataset ``factor`` x larger."""
    if (out / "captions.txt").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    (tmp / "Images").mkdir(parents=True, exist_ok=True)
    with open(scenes / "captions.txt", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    boxes = json.loads((scenes / "boxes.json").read_text())
    new_rows, new_boxes = [], {}
    for k in range(factor):
        for image in sorted(boxes):
            name = f"x{k}_{image}"
            target = tmp / "Images" / name
            if not target.exists():
                os.link(scenes / "Images" / image, target)
            new_boxes[name] = boxes[image]
        new_rows += [{"image": f"x{k}_{r['image']}", "caption": r["caption"]} for r in rows]
    with open(tmp / "captions.txt", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(new_rows)
    (tmp / "boxes.json").write_text(json.dumps(new_boxes))
    tmp.rename(out)
    return out


def child(cache: str, model_dir: str, shuffle_buffer: int) -> None:
    """Train one epoch on ``cache``; print this process's peak RSS (VmHWM) as JSON."""
    from icapnet.config import Config, ModelConfig, TrainConfig
    from icapnet.data.pipeline import count_pairs
    from icapnet.model.training import train

    config = Config(model=ModelConfig(embedding_dim=16, units=32, attention_units=16),
                    train=TrainConfig(epochs=1, batch_size=64, shuffle_buffer=shuffle_buffer))
    started = time.time()
    train(config, cache, model_dir, verbose=0)
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmHWM:")))
    print(json.dumps({"peak_rss_mib": peak_kib / 1024, "pairs": count_pairs(cache, "train"),
                      "seconds": time.time() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="scenes in the 1x dataset")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--shuffle-buffer", type=int, default=None,
                        help="default: TrainConfig's (4096)")
    parser.add_argument("--out", type=Path, default=Path("runs/train_memory"))
    parser.add_argument("--child", nargs=2, metavar=("CACHE", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from icapnet.config import TrainConfig

    buffer = args.shuffle_buffer or TrainConfig().shuffle_buffer
    if args.child:
        child(*args.child, buffer)
        return

    from icapnet.config import DataConfig
    from icapnet.data.cache_build import build_cache
    from icapnet.data.datasets import load_dataset
    from icapnet.data.synthetic import generate_scenes
    from icapnet.model.backbone import feature_config_for

    backbone = register_bench_backbone()
    scenes = generate_scenes(args.out / "scenes", args.images, seed=0, image_size=96,
                             progress=False)
    datasets = {1: scenes, args.factor: replicate(scenes, args.out / f"scenes_x{args.factor}",
                                                  args.factor)}
    results = {}
    for factor, folder in datasets.items():
        cache = args.out / f"cache_x{factor}"
        build_cache(load_dataset("synthetic", folder), cache, feature_config_for(backbone, "none"),
                    DataConfig(min_count=1), progress=False)
        model_dir = args.out / f"model_x{factor}"
        subprocess.run(["rm", "-rf", str(model_dir)], check=True)
        proc = subprocess.run([sys.executable, __file__, "--child", str(cache), str(model_dir),
                               "--shuffle-buffer", str(buffer)],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        results[factor] = json.loads(proc.stdout.strip().splitlines()[-1])
        shards = sum(p.stat().st_size for p in (cache / "features").iterdir())
        results[factor].update(images=len(load_dataset("synthetic", folder).images),
                               cache_mib=shards / 2**20)
    element_kib = GRID * GRID * CHANNELS * 2 / 1024
    small, large = results[1], results[args.factor]
    report = {
        "results": {f"x{k}": v for k, v in results.items()},
        "ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        "target": 1.10,
        "shuffle_buffer": {"elements": buffer, "feature_kib_per_element": element_kib,
                           "bound_mib": buffer * element_kib / 1024},
    }
    print(f"{'data':<6}{'images':>8}{'pairs':>9}{'cache MiB':>11}{'peak RSS MiB':>14}{'s':>7}")
    for factor, r in results.items():
        print(f"x{factor:<5}{r['images']:>8}{r['pairs']:>9}{r['cache_mib']:>11.1f}"
              f"{r['peak_rss_mib']:>14.1f}{r['seconds']:>7.1f}")
    print(f"peak RSS x{args.factor} / x1 = {report['ratio']:.3f} (target <= 1.10); shuffle "
          f"buffer {buffer} elements x {element_kib:.0f} KiB <= "
          f"{report['shuffle_buffer']['bound_mib']:.0f} MiB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_memory.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
