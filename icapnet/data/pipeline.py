"""tf.data input pipelines over the feature cache, for training and for evaluation.

Everything stays in the graph: shards are streamed with TFRecordDataset (memory bounded by
the shuffle buffer, not the dataset), captions are joined through a static hash table
image_id -> row of a ragged tensor, and each batch is padded only to its own longest caption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

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


def _caption_table(
    cache: FeatureCache, split: str
) -> tuple[tf.lookup.StaticHashTable, tf.RaggedTensor]:
    """image_id -> row index, and rows of encoded captions [images, captions, tokens]."""
    vocab = cache.vocab
    captions = cache.captions.get(split, {})
    ids = sorted(captions)
    per_image, lengths, flat = [], [], []
    for image_id in ids:
        encoded = [vocab.encode(c) for c in captions[image_id]]
        encoded = [e for e in encoded if len(e) > 2]  # <start> <end> alone teaches nothing
        per_image.append(len(encoded))
        for tokens in encoded:
            lengths.append(len(tokens))
            flat.extend(tokens)
    rows = tf.RaggedTensor.from_nested_row_lengths(
        tf.constant(flat, tf.int32),
        [tf.constant(per_image, tf.int64), tf.constant(lengths, tf.int64)],
    )
    if not ids:
        raise IcapnetError(f"{cache.root / CACHE_CAPTIONS_FILE}: no '{split}' captions")
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids, tf.string), tf.range(len(ids), dtype=tf.int64)
        ),
        default_value=-1,
    )
    return table, rows


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


class _Pairs:
    """The (features, caption) stream of one split, built once and shared by every epoch."""

    def __init__(self, cache_dir: str | Path, split: str, shuffle_buffer: int | None) -> None:
        cache = open_cache(cache_dir)
        self.paths = _split_shards(cache, split)
        self.shape = cache.feature_shape
        self.table, self.rows = _caption_table(cache, split)
        self.buffer = int(shuffle_buffer or TrainConfig().shuffle_buffer)

    def _pairs(self, serialized: tf.Tensor) -> tf.data.Dataset:
        image_id, feats = parse_record(serialized, self.shape)
        row = self.table.lookup(image_id)  # -1: image without captions
        caps = self.rows[tf.maximum(row, 0)]
        count = tf.where(row >= 0, caps.nrows(), tf.constant(0, tf.int64))
        return tf.data.Dataset.zip((
            tf.data.Dataset.from_tensors(feats).repeat(count),
            tf.data.Dataset.range(count).map(lambda k: caps[k]),  # dense [T_k] int32
        ))

    def stream(self, shuffle: bool, seed: int, reshuffle: bool = True) -> tf.data.Dataset:
        """``reshuffle``: a new order each time the dataset is iterated (drawn from the seed),
        else always the seed's one order, however many iterators were made before."""
        ds = _records(self.paths, shuffle, seed, reshuffle).flat_map(self._pairs)
        if shuffle:
            ds = ds.shuffle(self.buffer, seed=seed, reshuffle_each_iteration=reshuffle)
        return ds

    def batch(self, ds: tf.data.Dataset, batch_size: int, drop_remainder: bool,
              caption_length: int | None = None) -> tf.data.Dataset:
        """``caption_length``: pad every batch to it (static shapes) instead of its longest."""
        return ds.padded_batch(
            batch_size,
            padded_shapes=(list(self.shape), [caption_length]),
            padding_values=(tf.constant(0, tf.float16), tf.constant(0, tf.int32)),
            drop_remainder=drop_remainder,
        )


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    ds = ds.map(lambda f, c: (tf.cast(f, tf.float32), c), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


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
) -> tf.data.Dataset:
    """(features [B,R,C] float32, captions [B,T] int32), one element per (image, caption).

    Captions are <start> w1 .. wn <end>, zero-padded to the longest caption in the batch (or
    to ``caption_length``: static shapes, see :func:`longest_caption`). Shuffling is
    deterministic for a given ``seed`` and differs from epoch to epoch.
    """
    source = _Pairs(cache_dir, split, shuffle_buffer)
    ds = source.stream(shuffle, seed)
    if repeat:
        ds = ds.repeat()
    return _finish(source.batch(ds, batch_size, drop_remainder, caption_length))


def make_epochs_dataset(
    cache_dir: str | Path,
    split: str,
    batch_size: int,
    seeds: Sequence[int],
    drop_remainder: bool = False,
    shuffle_buffer: int | None = None,
    caption_length: int | None = None,
) -> tf.data.Dataset:
    """Like :func:`make_dataset`, for several epochs in a row: one shuffled epoch per seed.

    Each epoch is shuffled by its own seed (and only by it: not reshuffled per iterator, as
    Keras and tf.distribute may create iterators of their own) and batched on its own (no
    batch straddles two epochs), so epoch ``e`` holds the same batches whether a run starts
    at epoch 0 or resumes at ``e``, on one device or several: what one ``fit()`` over many
    epochs needs for exact resume. The
    cardinality is set, so a mismatch with ``steps_per_epoch`` fails loudly.
    """
    source = _Pairs(cache_dir, split, shuffle_buffer)
    if not seeds:
        raise ValueError("make_epochs_dataset needs at least one epoch seed")
    # Python-int seeds, one pipeline per epoch: a tensor seed would trip tf.data's seed
    # handling when the global seed is 0 (it compares the pair with (0, 0) in Python).
    ds = concatenate([source.batch(source.stream(True, int(seed), reshuffle=False), batch_size,
                                   drop_remainder, caption_length) for seed in seeds])
    steps = steps_per_epoch(cache_dir, split, batch_size, drop_remainder)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps * len(seeds)))
    return _finish(ds)


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
    cache_dir: str | Path, split: str, batch_size: int, drop_remainder: bool = False
) -> int:
    """Batches in one pass over ``split`` as :func:`make_dataset` yields them."""
    pairs = count_pairs(cache_dir, split)
    return pairs // batch_size if drop_remainder else math.ceil(pairs / batch_size)
