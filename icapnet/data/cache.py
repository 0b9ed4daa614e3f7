"""The feature cache on disk: record format, manifest and the read side.

A cache is what ``prepare`` leaves (``data/cache_build.py``): float16 region features in
TFRecord shards plus a manifest, the vocabulary and the captions (file names in
:mod:`icapnet.layout`). Training and evaluation only ever read it through
:func:`open_cache`, so the checks on a cache happen in one place: the manifest's schema and
fingerprints, record counts and each shard's size on disk (``data/cache_check.py``; a shard
that fails to read names itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from icapnet import fs
from icapnet.config import DataConfig
from icapnet.data.cache_check import (
    CACHE_DTYPE,
    check_shard_files,
    tf_reason,
    validate_manifest,
)
from icapnet.data.splits import SPLITS
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.layout import (
    CACHE_BOXES_FILE,
    CACHE_CAPTIONS_FILE,
    FEATURES_DIR,
    MANIFEST_FILE,
    VOCAB_FILE,
    read_json,
)


def serialize_record(image_id: str, features: np.ndarray) -> bytes:
    """One TFRecord: image_id bytes + float16 little-endian feature bytes."""
    raw = np.ascontiguousarray(features, dtype="<f2").tobytes()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
        "features": tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw])),
    }))
    # Map order is per process otherwise: shards written by parallel workers would differ
    # byte for byte (and in their recorded sha256) from a one-process build.
    return example.SerializeToString(deterministic=True)


_RECORD_SPEC = {
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "features": tf.io.FixedLenFeature([], tf.string),
}


def parse_record(
    serialized: tf.Tensor, feature_shape: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Graph-side inverse of :func:`serialize_record` -> (image_id, float16 [R, C])."""
    parsed = tf.io.parse_single_example(serialized, _RECORD_SPEC)
    feats = tf.io.decode_raw(parsed["features"], tf.float16, little_endian=True)
    return parsed["image_id"], tf.reshape(feats, list(feature_shape))


# --------------------------------------------------------------------------- cache reading


class FeatureCache:
    """Read side of a cache directory: manifest, vocabulary, captions, boxes and features."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @property
    def feature_shape(self) -> tuple[int, int]:
        regions, channels = self.manifest["feature_shape"]
        return int(regions), int(channels)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @cached_property
    def vocab(self) -> Vocabulary:
        return Vocabulary.load(self.root / VOCAB_FILE)

    @cached_property
    def captions(self) -> dict[str, dict[str, list[str]]]:
        return read_json(self.root / CACHE_CAPTIONS_FILE)

    @cached_property
    def boxes(self) -> dict[str, list[dict]] | None:
        path = self.root / CACHE_BOXES_FILE
        return read_json(path) if path.is_file() else None

    @property
    def splits(self) -> list[str]:
        found = {info["split"] for info in self.manifest["shards"].values()}
        return [s for s in SPLITS if s in found] + sorted(found - set(SPLITS))

    def shard_names(self, split: str) -> list[str]:
        return sorted(n for n, info in self.manifest["shards"].items() if info["split"] == split)

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / FEATURES_DIR / name for name in self.shard_names(split)]

    def image_ids(self, split: str) -> list[str]:
        """Ids with features in ``split``, in shard order."""
        return [i for n in self.shard_names(split) for i in self.manifest["shards"][n]["written"]]

    def num_images(self, split: str) -> int:
        return sum(self.manifest["shards"][n]["count"] for n in self.shard_names(split))

    def num_captions(self, split: str) -> int:
        """(features, caption) pairs in one epoch of ``split``."""
        return sum(len(caps) for caps in self.captions.get(split, {}).values())

    def read_features(self, split: str) -> Iterator[tuple[str, np.ndarray]]:
        """Stream (image_id, float16 [R, C]) for every image of ``split``, shard by shard."""
        for path in self.shard_paths(split):
            yield from self._read_shard(path)

    def get_features(self, image_ids: Iterable[str]) -> np.ndarray:
        """Float16 [N, R, C] features of ``image_ids`` in the order given (reads their shards)."""
        ids = list(image_ids)
        images = self.manifest["images"]
        missing = [i for i in ids if i not in images]
        if missing:
            raise IcapnetError(f"{self.root}: not in the feature cache: {', '.join(missing[:5])}")
        wanted = set(ids)
        found: dict[str, np.ndarray] = {}
        for shard in sorted({images[i]["shard"] for i in ids}):
            for image_id, feats in self._read_shard(self.root / FEATURES_DIR / shard):
                if image_id in wanted:
                    found[image_id] = feats
        out = np.zeros((len(ids), *self.feature_shape), np.float16)
        for k, image_id in enumerate(ids):
            out[k] = found[image_id]
        return out

    def _read_shard(self, path: Path) -> Iterator[tuple[str, np.ndarray]]:
        if not path.is_file():
            raise IcapnetError(f"{path}: feature shard missing; re-run prepare to rebuild it")
        shape = self.feature_shape
        expected = self.manifest["shards"][path.name]["count"]
        count = 0
        try:
            for raw in tf.data.TFRecordDataset(str(path)):
                example = tf.train.Example.FromString(raw.numpy())
                fields = example.features.feature
                image_id = fields["image_id"].bytes_list.value[0].decode()
                data = fields["features"].bytes_list.value[0]
                count += 1
                yield image_id, np.frombuffer(data, dtype="<f2").reshape(shape)
        except tf.errors.DataLossError as err:
            raise IcapnetError(f"{path}: corrupt feature shard ({tf_reason(err)}); re-run "
                               "prepare to rebuild it") from None
        if count != expected:
            raise IcapnetError(f"{path}: {count} records, the manifest records {expected}; "
                               "re-run prepare to rebuild it")


def open_cache(cache_dir: str | Path, require_complete: bool = True,
               check_files: bool = True) -> FeatureCache:
    """Open a cache ``prepare`` built; an incomplete one is an error unless asked for.

    The manifest is validated and (``check_files``) every shard must have its recorded size.
    """
    root = fs.path(cache_dir)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise IcapnetError(f"{root}: not a feature cache (no {MANIFEST_FILE}); run prepare")
    manifest = validate_manifest(read_json(path), path)
    if require_complete and not manifest.get("complete"):
        raise IcapnetError(f"{root}: feature cache is incomplete; re-run prepare to finish it")
    if check_files:
        check_shard_files(root, manifest)
    return FeatureCache(root, manifest)


def cache_summary(cache: FeatureCache) -> dict[str, Any]:
    """Numbers for the prepare CLI: images/captions per split, skipped, size on disk."""
    size = sum(p.stat().st_size for s in cache.splits for p in cache.shard_paths(s)
               if p.is_file())
    return {
        "splits": {s: {"images": cache.num_images(s), "captions": cache.num_captions(s)}
                   for s in cache.splits},
        "skipped": len(cache.manifest.get("skipped", {})),
        "vocab_size": len(cache.vocab),
        "feature_shape": list(cache.feature_shape),
        "bytes": size,
        **{k: cache.manifest[k] for k in ("backbone", "layer", "weights", "image_size")},
    }


def describe_cache(cache: FeatureCache, data_cfg: DataConfig, seconds: float | None = None,
                   max_skipped: int = 10) -> str:
    """What ``prepare`` prints about a finished cache (data_cfg: the vocabulary settings)."""
    info = cache_summary(cache)
    regions, channels = info["feature_shape"]
    lines = [
        f"feature cache: {cache.root}",
        f"  backbone  {info['backbone']}/{info['layer']} (weights {info['weights']}), "
        f"{info['image_size']} px -> {regions} regions x {channels} float16",
        *_split_line(cache.manifest.get("split")),
        *(f"  {split:<5}     {n['images']} images, {n['captions']} captions"
          for split, n in info["splits"].items()),
        f"  vocabulary {info['vocab_size']} words (min count {data_cfg.min_count}, "
        f"max {data_cfg.max_vocab_size}; train split only)",
    ]
    if info["skipped"]:
        lines.append(f"  skipped   {info['skipped']} unreadable image(s):")
        lines += [f"    {reason}" for reason in
                  list(cache.manifest["skipped"].values())[:max_skipped]]
    took = f"; took {seconds:.1f} s" if seconds is not None else ""
    lines.append(f"  on disk   {info['bytes'] / 1e6:.1f} MB{took}")
    return "\n".join(lines)


def _split_line(split_info: dict[str, Any] | None) -> list[str]:
    """Where the train/val/test lists came from, and what they lost (datasets.split_info)."""
    if not split_info:
        return []
    lost = sum(split_info.get("missing", {}).values())
    return [f"  split     {split_info['source']}"
            + (f"; {lost} listed image(s) missing" if lost else "")
            + (f"; {split_info['unlisted']} in no list, left out"
               if split_info.get("unlisted") else "")
            + (f"; first {split_info['limit']} per split" if split_info.get("limit") else "")]


__all__ = ["CACHE_DTYPE", "FeatureCache", "cache_summary", "describe_cache", "open_cache",
           "parse_record", "serialize_record"]
