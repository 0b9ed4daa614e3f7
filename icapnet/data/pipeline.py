"""tf.data input pipelines over the feature cache, for training and for evaluation.

Everything stays in the graph: shards are streamed with TFRecordDataset (memory bounded by
the shuffle buffer, not the dataset) and captions are joined through a static hash table
image_id -> rows of a ragged tensor. Each batch is padded to its own longest caption, or to
one fixed length when shapes must be static (XLA, TPUs). For training (``Batching``), the
captions of an image can travel together as one batch row (the model then encodes the image
once for all of them) and rows of similar length can be bucketed; both are off by default
(benchmarks/README.md has what they cost in learning). Features stay float16 until the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from icapnet.config import TrainConfig
from icapnet.data.cache import FeatureCache, open_cache, parse_record
from icapnet.errors import IcapnetError
from icapnet.layout import CACHE_CAPTIONS_FILE

AUTOTUNE = tf.data.AUTOTUNE

def _split_shards(cache: FeatureCache, split: str) -> list[str]:
    paths = cache.shard_paths(split)
    if not paths or cache.num_images(split) == 0:
        raise IcapnetError(f"{cache.root}: no '{split}' images in the feature cache "
                           f"(splits: {', '.join(cache.splits) or 'none'})")
    for path in paths:
        if not path.is_file():
            raise IcapnetError(f"{path}: feature shard missing; re-run prepare")
    return [str(p) for p in paths]


def _records(paths: list[str], shuffle: bool, seed: int, reshuffle: bool) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle and len(paths) > 1:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=reshuffle)
    return files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(paths)),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


@dataclass(frozen=True)
class Batching:
    """How captions are put into training batches (``TrainConfig`` decides; see config.py).

    ``group_by_image``: each batch row is one image with K of its captions (K = the usual
    number of captions per image), so the encoder and ``W1·features`` run once per image.
    ``length_buckets``: captions (or caption groups) of similar length are batched together,
    so a batch pads to near its own length; 0 pads each batch to its own longest caption.
    Static shapes (XLA, TPUs) pad every batch to one ``caption_length`` instead, which makes
    buckets pointless: they are not used then.
    """

    group_by_image: bool = False
    length_buckets: int = 0

    @classmethod
    def from_config(cls, tcfg: TrainConfig) -> Batching:
        return cls(group_by_image=bool(tcfg.group_by_image),
                   length_buckets=int(tcfg.length_buckets))


@dataclass
class _Plan:
    """Caption groups of one split: K captions of one image each, shortest captions first."""

    image_ids: list[str]
    first: np.ndarray  # [images] index of the image's first group
    count: np.ndarray  # [images] number of groups of the image
    tokens: list[np.ndarray]  # per group [K, L] int32, empty rows (all 0) fill the last one
    lengths: np.ndarray  # [groups] L
    per_group: int  # K
    boundaries: list[int]  # exclusive upper lengths of the buckets (last > every length)

    def rows_per_batch(self, batch_size: int) -> int:
        return max(1, batch_size // self.per_group)

    def num_batches(self, batch_size: int, drop_remainder: bool, bucketed: bool) -> int:
        """Batches of one epoch: each bucket is batched on its own (one bucket unless
        ``bucketed``)."""
        rows = self.rows_per_batch(batch_size)
        if bucketed:
            sizes = np.bincount(np.searchsorted(self.boundaries, self.lengths, side="right"),
                                minlength=len(self.boundaries))
        else:
            sizes = [len(self.lengths)]
        split = np.floor_divide if drop_remainder else lambda n, d: -(-n // d)
        return int(sum(split(int(n), rows) for n in sizes))


def _bucketed(batching: Batching, caption_length: int | None) -> bool:
    """Length buckets apply unless a fixed ``caption_length`` pads every batch anyway."""
    return bool(batching.length_buckets) and caption_length is None


def _plan(cache: FeatureCache, split: str, batching: Batching) -> _Plan:
    vocab = cache.vocab
    captions = cache.captions.get(split, {})
    ids = sorted(captions)
    if not ids:
        raise IcapnetError(f"{cache.root / CACHE_CAPTIONS_FILE}: no '{split}' captions")
    encoded = {i: sorted((e for e in (vocab.encode(c) for c in captions[i]) if len(e) > 2),
                         key=len) for i in ids}  # <start> <end> alone teaches nothing
    counts = [len(e) for e in encoded.values() if e]
    per_group = 1
    if batching.group_by_image and counts:
        per_group = int(np.bincount(counts).argmax())  # the usual captions per image
    first, count, tokens = [], [], []
    for image_id in ids:
        caps = encoded[image_id]
        first.append(len(tokens))
        count.append(-(-len(caps) // per_group))
        for start in range(0, len(caps), per_group):
            chunk = caps[start:start + per_group]
            group = np.zeros((per_group, max(map(len, chunk))), np.int32)
            for row, ids_ in enumerate(chunk):
                group[row, : len(ids_)] = ids_
            tokens.append(group)
    if not tokens:
        raise IcapnetError(f"{cache.root / CACHE_CAPTIONS_FILE}: no '{split}' captions")
    lengths = np.array([g.shape[1] for g in tokens], np.int64)
    buckets = batching.length_buckets
    boundaries = best_boundaries(lengths, buckets) if buckets else [int(lengths.max()) + 1]
    return _Plan(ids, np.array(first, np.int64), np.array(count, np.int64), tokens, lengths,
                 per_group, boundaries)


def best_boundaries(lengths: np.ndarray, buckets: int) -> list[int]:
    """Bucket upper bounds (exclusive) that minimise the padded length summed over ``lengths``.

    Every item is padded to the longest length of its bucket; dynamic programming over the
    distinct lengths finds the ``buckets`` ranges with the fewest decoder steps in total.
    """
    values, counts = np.unique(np.asarray(lengths), return_counts=True)
    n, k = len(values), max(1, min(int(buckets), len(values)))
    prefix = np.concatenate([[0], np.cumsum(counts)])
    # cost[j][i]: best total for the first i distinct lengths in j buckets
    cost = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), np.int64)
    cost[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            for m in range(j - 1, i):  # bucket j holds distinct lengths m .. i-1
                total = cost[j - 1][m] + (prefix[i] - prefix[m]) * values[i - 1]
                if total < cost[j][i]:
                    cost[j][i], cut[j][i] = total, m
    ends, i = [], n
    for j in range(k, 0, -1):
        ends.append(int(values[i - 1]) + 1)
        i = int(cut[j][i])
    return sorted(ends)


class _Pairs:
    """The (features, caption group) stream of one split, built once and shared by every
    epoch. A group is K captions of one image (K = 1 unless ``batching.group_by_image``)."""

    def __init__(self, cache_dir: str | Path, split: str, shuffle_buffer: int | None,
                 batching: Batching | None = None) -> None:
        cache = open_cache(cache_dir)
        self.batching = batching or Batching()
        self.paths = _split_shards(cache, split)
        self.shape = cache.feature_shape
        self.plan = plan = _plan(cache, split, self.batching)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(plan.image_ids, tf.string),
                tf.range(len(plan.image_ids), dtype=tf.int64)),
            default_value=-1,
        )
        self.first, self.count = tf.constant(plan.first), tf.constant(plan.count)
        self.flat = tf.RaggedTensor.from_row_lengths(
            tf.constant(np.concatenate([g.reshape(-1) for g in plan.tokens]), tf.int32),
            tf.constant([g.size for g in plan.tokens], tf.int64))
        # The buffer counts captions; it holds groups.
        self.buffer = max(1, int(shuffle_buffer or TrainConfig().shuffle_buffer)
                          // plan.per_group)

    def _groups(self, serialized: tf.Tensor) -> tf.data.Dataset:
        image_id, feats = parse_record(serialized, self.shape)
        row = self.table.lookup(image_id)  # -1: image without captions
        start = tf.gather(self.first, tf.maximum(row, 0))
        n = tf.where(row >= 0, tf.gather(self.count, tf.maximum(row, 0)),
                     tf.constant(0, tf.int64))
        per_group = self.plan.per_group
        return tf.data.Dataset.range(start, start + n).map(
            lambda g: (feats, tf.reshape(self.flat[g], [per_group, -1])))  # [K, L_g]

    def stream(self, shuffle: bool, seed: int, reshuffle: bool = True) -> tf.data.Dataset:
        """``reshuffle``: a new order each time the dataset is iterated (drawn from the seed),
        else always the seed's one order, however many iterators were made before."""
        ds = _records(self.paths, shuffle, seed, reshuffle).flat_map(self._groups)
        if shuffle:
            ds = ds.shuffle(self.buffer, seed=seed, reshuffle_each_iteration=reshuffle)
        return ds

    def batch(self, ds: tf.data.Dataset, batch_size: int, drop_remainder: bool,
              caption_length: int | None = None) -> tf.data.Dataset:
        """``caption_length``: pad every batch to it (static shapes) instead of its longest."""
        plan, rows = self.plan, self.plan.rows_per_batch(batch_size)
        padding = (tf.constant(0, tf.float16), tf.constant(0, tf.int32))
        shapes = (list(self.shape), [plan.per_group, caption_length])
        if _bucketed(self.batching, caption_length):
            ds = ds.bucket_by_sequence_length(
                lambda f, c: tf.shape(c)[1], plan.boundaries,
                [rows] * (len(plan.boundaries) + 1), padded_shapes=shapes,
                padding_values=padding, drop_remainder=drop_remainder)
        else:
            ds = ds.padded_batch(rows, padded_shapes=shapes, padding_values=padding,
                                 drop_remainder=drop_remainder)
        if not self.batching.group_by_image:
            ds = ds.map(lambda f, c: (f, c[:, 0]), num_parallel_calls=AUTOTUNE)  # [B, T]
        return ds


def make_dataset(
    cache_dir: str | Path,
    split: str,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    shuffle_buffer: int | None = None,
    caption_length: int | None = None,
    batching: Batching | None = None,
) -> tf.data.Dataset:
    """Training batches ``(features float16, captions int32)`` from the cache.

    Default: one row per (image, caption): features [B, R, C], captions [B, T] zero-padded
    to the batch's longest caption (or to ``caption_length``: static shapes, see
    :func:`longest_caption`). With ``batching.group_by_image``: one row per image, features
    [G, R, C] and captions [G, K, T] (G = batch_size // K), rows of zeros where an image has
    fewer than K captions. Captions are <start> w1 .. wn <end>. Features stay float16 (half
    the memory traffic); the model casts them where they enter it. Shuffling is
    deterministic for a given ``seed`` and differs from epoch to epoch; ``shuffle_buffer``
    counts captions.
    """
    source = _Pairs(cache_dir, split, shuffle_buffer, batching)
    ds = source.stream(shuffle, seed)
    if repeat:
        ds = ds.repeat()
    return source.batch(ds, batch_size, drop_remainder, caption_length).prefetch(AUTOTUNE)


def make_epochs_dataset(
    cache_dir: str | Path,
    split: str,
    batch_size: int,
    seeds: Sequence[int],
    drop_remainder: bool = False,
    shuffle_buffer: int | None = None,
    caption_length: int | None = None,
    batching: Batching | None = None,
) -> tf.data.Dataset:
    """Like :func:`make_dataset`, for several epochs in a row: one shuffled epoch per seed.

    Each epoch is shuffled by its own seed (and only by it: not reshuffled per iterator, as
    Keras and tf.distribute may create iterators of their own) and batched on its own (no
    batch straddles two epochs), so epoch ``e`` holds the same batches whether a run starts
    at epoch 0 or resumes at ``e``, on one device or several: what one ``fit()`` over many
    epochs needs for exact resume. The cardinality is set, so a mismatch with
    ``steps_per_epoch`` fails loudly.
    """
    source = _Pairs(cache_dir, split, shuffle_buffer, batching)
    if not seeds:
        raise ValueError("make_epochs_dataset needs at least one epoch seed")
    # Python-int seeds, one pipeline per epoch: a tensor seed would trip tf.data's seed
    # handling when the global seed is 0 (it compares the pair with (0, 0) in Python).
    ds = concatenate([source.batch(source.stream(True, int(seed), reshuffle=False), batch_size,
                                   drop_remainder, caption_length) for seed in seeds])
    steps = source.plan.num_batches(batch_size, drop_remainder,
                                    _bucketed(source.batching, caption_length))
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps * len(seeds)))
    return ds.prefetch(AUTOTUNE)


def concatenate(datasets: Sequence[tf.data.Dataset]) -> tf.data.Dataset:
    """The datasets one after the other."""
    ds = datasets[0]
    for more in datasets[1:]:
        ds = ds.concatenate(more)
    return ds


def make_image_dataset(cache_dir: str | Path, split: str, batch_size: int) -> tf.data.Dataset:
    """(image_id [B] string, features [B,R,C] float32), one element per image, cache order."""
    cache = open_cache(cache_dir)
    paths = _split_shards(cache, split)
    shape = cache.feature_shape
    ds = tf.data.TFRecordDataset(paths)
    ds = ds.map(lambda s: parse_record(s, shape), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda i, f: (i, tf.cast(f, tf.float32)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def count_pairs(cache_dir: str | Path, split: str) -> int:
    """(image, caption) training pairs in one epoch of ``split`` (empty captions excluded)."""
    cache = open_cache(cache_dir)
    vocab = cache.vocab
    features = set(cache.image_ids(split))
    return sum(
        1
        for image_id, caps in cache.captions.get(split, {}).items()
        if image_id in features
        for c in caps
        if len(vocab.encode(c)) > 2
    )


def longest_caption(cache_dir: str | Path, splits: Sequence[str]) -> int:
    """Tokens (<start> and <end> included) of the longest caption the pipeline yields for
    ``splits``: the one length every batch is padded to when shapes must be static (XLA,
    TPUs), so no caption is ever cut."""
    cache = open_cache(cache_dir)
    vocab = cache.vocab
    lengths = [len(vocab.encode(c)) for split in splits
               for caps in cache.captions.get(split, {}).values() for c in caps]
    return max((n for n in lengths if n > 2), default=3)


def steps_per_epoch(
    cache_dir: str | Path, split: str, batch_size: int, drop_remainder: bool = False,
    batching: Batching | None = None, caption_length: int | None = None,
) -> int:
    """Batches in one pass over ``split`` as :func:`make_dataset` yields them."""
    batching = batching or Batching()
    if not (batching.group_by_image or batching.length_buckets):
        pairs = count_pairs(cache_dir, split)
        return pairs // batch_size if drop_remainder else math.ceil(pairs / batch_size)
    # The plan alone (no lookup tables): the same counting make_epochs_dataset asserts.
    plan = _plan(open_cache(cache_dir), split, batching)
    return plan.num_batches(batch_size, drop_remainder, _bucketed(batching, caption_length))
