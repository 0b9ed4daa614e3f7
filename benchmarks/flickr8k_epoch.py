"""One Flickr8k-sized training epoch, timed on whatever device TensorFlow sees.

Flickr8k's training split is 6,000 images x 5 captions. This writes a feature cache of that
size with the real shape (196 x 512 float16 per image, random values: speed does not depend
on them) and the REAL captions: the 30,000 training captions of
``../shared/data/flickr8k/Flickr8k.token.txt`` (length distribution and vocabulary, built
with the default min_count 5); without that file a stand-in from the recorded length
histogram is used and the report says so. Then it trains one epoch exactly as
``python -m icapnet.train`` does (default configuration unless flags say otherwise) and
prints the epoch time, the steady time per step, the one-off cost (tracing / XLA compiling),
and what 20 epochs would cost; seed 002 reports 1,300 s per epoch for its Flickr8k run.

    python benchmarks/flickr8k_epoch.py                          # default config
    python benchmarks/flickr8k_epoch.py --jit-compile --mixed-precision auto
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

SEED_002_EPOCH_S = 1300.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixed-precision", nargs="?", const="auto", default=None,
                   help="off|float16|bfloat16|auto (bare: auto; default: TrainConfig)")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="XLA (default: TrainConfig)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override other config fields, e.g. train.length_buckets=0")
    p.add_argument("--images", type=int, default=6000, help="training images (default 6000)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the cache goes (default runs/bench_cache/flickr8k-epoch)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench_data import flickr8k_captions, write_random_cache
    from train_speed import _set_field

    from icapnet.config import Config
    from icapnet.model.timing import time_epoch

    captions, source = flickr8k_captions()
    captions = dict(sorted(captions.items())[: args.images])
    cache = args.cache_dir or HERE.parent / "runs" / "bench_cache" / f"flickr8k-{len(captions)}"
    started = time.perf_counter()
    write_random_cache(cache, {"train": captions})
    cache_s = time.perf_counter() - started
    config = Config()
    if args.mixed_precision is not None:
        config.train.mixed_precision = args.mixed_precision
    if args.jit_compile is not None:
        config.train.jit_compile = args.jit_compile
    if args.batch_size:
        config.train.batch_size = args.batch_size
    for assignment in args.set:
        _set_field(config, assignment)
    print(f"captions: {source}\ncache: {cache} ({len(captions)} images, written/checked in "
          f"{cache_s:.0f} s)", flush=True)
    timing = time_epoch(config, cache, verbose=1)
    report = {"benchmark": "flickr8k_epoch", "captions": source, **timing.to_dict(),
              "seed_002_epoch_s": SEED_002_EPOCH_S,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average": os.getloadavg()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_report(r: dict) -> None:
    s = r["settings"]
    print(f"\nFlickr8k-sized epoch on {r['device']}: {r['steps']} steps, {r['captions']} "
          f"captions (batch {s['batch_size']}, precision {s['mixed_precision']}, jit "
          f"{s['jit_compile']}, group by image {s['group_by_image']}, length buckets "
          f"{s['length_buckets']})")
    print(f"  epoch              {r['epoch_s']:8.1f} s  ({r['captions_per_s']:.1f} captions/s)")
    print(f"  steady step        {r['steady_step_s']:8.3f} s")
    print(f"  one-off (tracing / compiling) {r['one_off_s']:6.1f} s")
    print(f"  20 epochs          {r['projected_20_epochs_s'] / 60:8.1f} min "
          f"({r['projected_20_epochs_s'] / 3600:.2f} h)")
    print(f"  seed 002 reports {r['seed_002_epoch_s']:.0f} s per epoch")


if __name__ == "__main__":
    sys.exit(main())
