"""``python -m icapnet.prepare``: build the vocabulary and the CNN feature cache for a dataset.

Runs every image once through the frozen backbone so training only reads float16 features.
Re-running with the same flags resumes an interrupted build; other settings on an existing
cache are an error (use a new ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence

from icapnet.config import DataConfig, FeatureConfig
from icapnet.data.datasets import DATASETS, CaptionDataset, load_dataset
from icapnet.data.splits import SPLIT_CHOICES
from icapnet.errors import require_positive, run_cli


def _parser() -> argparse.ArgumentParser:
    feat, data = FeatureConfig(), DataConfig()
    p = argparse.ArgumentParser(
        prog="python -m icapnet.prepare",
        description="Build the vocabulary and the float16 feature cache for a caption dataset.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", required=True, help="folder holding the dataset")
    p.add_argument("--out", required=True, help="feature cache folder to create or resume")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def limit_dataset(dataset: CaptionDataset, limit: int) -> CaptionDataset:
    """Keep the first ``limit`` image ids (sorted) of every split."""
    splits = {s: sorted(ids)[:limit] for s, ids in dataset.splits.items()}
    keep = {i for ids in splits.values() for i in ids}
    return dataclasses.replace(
        dataset,
        images={i: p for i, p in dataset.images.items() if i in keep},
        captions={i: c for i, c in dataset.captions.items() if i in keep},
        splits=splits,
        split_info=None if dataset.split_info is None else {**dataset.split_info,
                                                            "limit": limit},
        boxes=None if dataset.boxes is None else {
            i: b for i, b in dataset.boxes.items() if i in keep},
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    require_positive(args, optional=("min_count", "max_vocab", "batch_size", "shard_size",
                                     "limit", "image_size"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from icapnet.data.features import build_cache, cache_summary, feature_config_for, open_cache

    started = time.time()
    dataset = load_dataset(args.dataset, args.data_dir, seed=args.seed, split=args.split,
                           images_dir=args.images_dir, json_file=args.json_file)
    if args.limit:
        dataset = limit_dataset(dataset, args.limit)
    feature_cfg = feature_config_for(args.backbone, args.weights, args.layer, args.image_size)
    data_cfg = DataConfig(dataset=args.dataset, data_dir=str(args.data_dir), cache_dir=args.out,
                          min_count=args.min_count, max_vocab_size=args.max_vocab)
    build_cache(dataset, args.out, feature_cfg, data_cfg, batch_size=args.batch_size,
                shard_size=args.shard_size, workers=args.workers, progress=not args.quiet)
    cache = open_cache(args.out)
    info = cache_summary(cache)
    regions, channels = info["feature_shape"]
    print(f"feature cache: {args.out}")
    print(f"  backbone  {info['backbone']}/{info['layer']} (weights {info['weights']}), "
          f"{info['image_size']} px -> {regions} regions x {channels} float16")
    split_info = cache.manifest.get("split") or {}
    if split_info:
        lost = sum(split_info.get("missing", {}).values())
        print(f"  split     {split_info['source']}"
              + (f"; {lost} listed image(s) missing" if lost else "")
              + (f"; {split_info['unlisted']} in no list, left out"
                 if split_info.get("unlisted") else "")
              + (f"; first {split_info['limit']} per split" if split_info.get("limit") else ""))
    for split, counts in info["splits"].items():
        print(f"  {split:<5}     {counts['images']} images, {counts['captions']} captions")
    print(f"  vocabulary {info['vocab_size']} words (min count {args.min_count}, "
          f"max {args.max_vocab}; train split only)")
    if info["skipped"]:
        print(f"  skipped   {info['skipped']} unreadable image(s):")
        for reason in list(cache.manifest["skipped"].values())[:10]:
            print(f"    {reason}")
    print(f"  on disk   {info['bytes'] / 1e6:.1f} MB; took {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
