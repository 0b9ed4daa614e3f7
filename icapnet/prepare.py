"""``python -m icapnet.prepare``: build the vocabulary and the CNN feature cache for a dataset.

Runs every image once through the frozen backbone so training only reads float16 features.
Re-running with the same flags resumes an interrupted build and rebuilds any shard that no
longer reads back as written; other settings on an existing cache are an error (use a new
``--out``). ``--verify --out CACHE`` only checks a cache (see :func:`verify`), exit 1 when
something is damaged.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from icapnet import cli
from icapnet.config import DataConfig, FeatureConfig
from icapnet.data.datasets import DATASETS
from icapnet.data.splits import SPLIT_CHOICES
from icapnet.errors import IcapnetError, require_positive, run_cli


def _parser() -> argparse.ArgumentParser:
    feat, data = FeatureConfig(), DataConfig()
    p = argparse.ArgumentParser(
        prog="python -m icapnet.prepare",
        description="Build the vocabulary and the float16 feature cache for a caption dataset.",
    )
    p.add_argument("--dataset", choices=DATASETS, help="required unless --verify")
    p.add_argument("--data-dir", help="folder holding the dataset (required unless --verify)")
    p.add_argument("--out", required=True, help="feature cache folder to create or resume")
    p.add_argument("--verify", action="store_true",
                   help="only check the cache at --out: manifest, every record of every shard "
                   "(CRCs, counts, image ids, sha256) and, with --dataset/--data-dir, that the "
                   "source images are unchanged; exit 1 if anything is damaged")
    p.add_argument("--weights", default=feat.weights,
                   help="backbone weights: imagenet, none (random, tests) or a local .h5 file")
    p.add_argument("--backbone", default=feat.backbone,
                   help="vgg16 (default), resnet50, mobilenet_v2 or inception_v3")
    p.add_argument("--layer", default=None, help="layer to read features from "
                   "(default: the backbone's own, block5_conv3 for vgg16)")
    p.add_argument("--image-size", type=int, default=None,
                   help="square input size (default: the backbone's, 224 for vgg16)")
    p.add_argument("--min-count", type=int, default=data.min_count,
                   help="keep words seen at least this often in the train captions")
    p.add_argument("--max-vocab", type=int, default=data.max_vocab_size,
                   help="largest vocabulary, special tokens included")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N images of each split (quick experiments)")
    p.add_argument("--shard-size", type=int, default=256, help="images per TFRecord shard")
    p.add_argument("--workers", type=int, default=None, help="image decoding threads")
    p.add_argument("--split", choices=SPLIT_CHOICES, default=None,
                   help="flickr8k: 'official' (default; the published 6000/1000/1000 lists, "
                   "from split files beside the data or else shipped with icapnet) or "
                   "'random' (a seeded 80/10/10 split by image; scores then do not compare "
                   "with published ones)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of --split random (and of COCO's val/test halves)")
    p.add_argument("--images-dir", default=None, help="karpathy/coco: folder of the images")
    p.add_argument("--json-file", default=None, help="karpathy: which split JSON to read")
    p.add_argument("--num-workers", type=int, default=1,
                   help="split the extraction over N processes or machines writing to one "
                   "(shared) --out folder; each runs with its own --worker-index")
    p.add_argument("--worker-index", type=int, default=None,
                   help="which of the --num-workers this process is (0..N-1); the last to "
                   "finish merges the parts into the cache")
    p.add_argument("--merge", action="store_true",
                   help="with --num-workers: only merge the finished parts into the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verify:
        return verify(args)
    for name in ("dataset", "data_dir"):
        if getattr(args, name) is None:
            parser.error(f"the following arguments are required: --{name.replace('_', '-')}")
    require_positive(args, "num_workers", optional=("min_count", "max_vocab", "batch_size",
                                                    "shard_size", "limit", "image_size"))
    if args.num_workers > 1 and (args.worker_index is None) != args.merge:
        raise IcapnetError("--num-workers: give --worker-index I (0..N-1) to extract a part, "
                           "or --merge to merge the finished parts")
    if args.num_workers == 1 and (args.worker_index or args.merge):
        raise IcapnetError("--worker-index/--merge: need --num-workers N (N > 1)")
    cli.start(log_info=True)
    from icapnet.data.cache import describe_cache
    from icapnet.data.cache_build import prepare_cache
    from icapnet.model.backbone import feature_config_for

    started = time.time()
    feature_cfg = feature_config_for(args.backbone, args.weights, args.layer, args.image_size)
    data_cfg = DataConfig(dataset=args.dataset, data_dir=str(args.data_dir), cache_dir=args.out,
                          min_count=args.min_count, max_vocab_size=args.max_vocab)
    cache = prepare_cache(data_cfg, feature_cfg, limit=args.limit, split=args.split,
                          seed=args.seed,
                          images_dir=args.images_dir, json_file=args.json_file,
                          batch_size=args.batch_size, shard_size=args.shard_size,
                          workers=args.workers, progress=not args.quiet,
                          num_workers=args.num_workers,
                          worker_index=None if args.merge else (args.worker_index or 0))
    if cache is None:
        print(f"part {args.worker_index} of {args.num_workers} done in {args.out}; the cache is "
              "complete when every worker has finished (the last one merges)")
        return 0
    print(describe_cache(cache, data_cfg, seconds=time.time() - started))
    return 0


def verify(args: argparse.Namespace) -> int:
    """``--verify``: report every damaged file as ``error: PATH: problem``; change nothing."""
    if not Path(args.out).is_dir():
        raise IcapnetError(f"{args.out}: feature cache not found")
    if bool(args.dataset) != bool(args.data_dir):
        raise IcapnetError("--verify: give both --dataset and --data-dir (to check the source "
                           "images too) or neither")
    cli.start()
    from icapnet.data.cache_check import verify_cache

    sources = None
    if args.dataset:
        from icapnet.data.datasets import load_dataset

        sources = load_dataset(args.dataset, args.data_dir, seed=args.seed, split=args.split,
                               images_dir=args.images_dir, json_file=args.json_file).images
    manifest, problems = verify_cache(args.out, sources)
    for where, problem in problems:
        print(f"error: {where}: {problem}", file=sys.stderr)
    shards, images = len(manifest["shards"]), len(manifest["images"])
    if problems:
        print(f"{args.out}: {len(problems)} problem(s) in {shards} shards; re-run prepare "
              "with the same flags (without --verify) to rebuild what is damaged",
              file=sys.stderr)
        return 1
    hashed = sum(1 for info in manifest["shards"].values() if info.get("sha256"))
    checked = ("manifest, vocabulary, captions, every record (CRC, image id, size), counts, "
               + ("sha256" if hashed == shards else f"sha256 of {hashed} (older shards have "
                  "none recorded)"))
    print(f"feature cache: {args.out}: OK ({shards} shards, {images} images; {checked}"
          f"{', source images' if sources is not None else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
