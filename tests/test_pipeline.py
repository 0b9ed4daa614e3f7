"""tf.data pipelines over the feature cache: pairs, per-batch padding, shuffling, eval order."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from icapnet.config import DataConfig, FeatureConfig
from icapnet.data.cache import open_cache
from icapnet.data.cache_build import build_cache
from icapnet.data.datasets import load_dataset
from icapnet.data.pipeline import (
    Batching,
    _plan,
    best_boundaries,
    count_pairs,
    make_dataset,
    make_image_dataset,
    steps_per_epoch,
)
from icapnet.errors import IcapnetError

WORDS = ["red", "green", "blue", "circle", "square", "triangle", "left", "right", "of", "the", "a"]


@pytest.fixture(scope="module")
def cache_dir(synthetic_scenes_dir, tmp_path_factory):
    """12 scenes whose captions have lengths 1..12 words (3 captions per image)."""
    ds = load_dataset("synthetic", synthetic_scenes_dir)
    rng = np.random.default_rng(0)
    captions = {
        image_id: [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 13)))) for _ in range(3)]
        for image_id in ds.images
    }
    ds = dataclasses.replace(ds, captions=captions)
    out = tmp_path_factory.mktemp("pipe") / "cache"
    build_cache(ds, out, FeatureConfig(weights="none", image_size=32), DataConfig(min_count=1),
                batch_size=6, shard_size=4, progress=False)
    return out


def _expected_pairs(cache, split):
    feats = dict(cache.read_features(split))
    key = {image_id: f.tobytes() for image_id, f in feats.items()}
    pairs = collections.Counter()
    for image_id, caps in cache.captions[split].items():
        for c in caps:
            pairs[(key[image_id], tuple(cache.vocab.encode(c)))] += 1
    return pairs


def _epoch(ds):
    pairs = collections.Counter()
    order = []
    for feats, caps in ds:
        for f, c in zip(feats.numpy(), caps.numpy(), strict=True):
            tokens = tuple(int(t) for t in c if t != 0)
            pairs[(f.astype(np.float16).tobytes(), tokens)] += 1
            order.append(tokens)
    return pairs, order


def test_batches_shapes_dtypes_and_own_padding(cache_dir):
    cache = open_cache(cache_dir)
    ds = make_dataset(cache_dir, "train", batch_size=5, seed=1)
    spec_f, spec_c = ds.element_spec
    assert spec_f.dtype == tf.float16 and spec_c.dtype == tf.int32  # cast inside the model
    widths = set()
    for feats, caps in ds:
        caps = caps.numpy()
        assert feats.shape[1:] == (4, 512) and feats.shape[0] == caps.shape[0]
        lengths = (caps != 0).sum(axis=1)
        assert caps.shape[1] == lengths.max()  # padded to this batch's own longest caption
        assert (caps[:, 0] == cache.vocab.start_id).all()
        assert all(caps[i, n - 1] == cache.vocab.end_id for i, n in enumerate(lengths))
        widths.add(caps.shape[1])
    assert len(widths) > 1  # not one global length


def test_one_epoch_holds_every_image_caption_pair_once(cache_dir):
    cache = open_cache(cache_dir)
    pairs, _ = _epoch(make_dataset(cache_dir, "train", batch_size=7, seed=3))
    assert pairs == _expected_pairs(cache, "train")
    assert sum(pairs.values()) == count_pairs(cache_dir, "train") == cache.num_captions("train")


def test_shuffle_is_seeded_and_changes_every_epoch(cache_dir):
    a = make_dataset(cache_dir, "train", batch_size=4, seed=5, shuffle_buffer=64)
    b = make_dataset(cache_dir, "train", batch_size=4, seed=5, shuffle_buffer=64)
    first, second = _epoch(a)[1], _epoch(a)[1]
    assert _epoch(b)[1] == first  # same seed, same order
    assert second != first  # re-shuffled for the next epoch
    other = _epoch(make_dataset(cache_dir, "train", batch_size=4, seed=6))[1]
    assert other != first
    unshuffled = make_dataset(cache_dir, "train", batch_size=4, shuffle=False)
    assert _epoch(unshuffled)[1] == _epoch(unshuffled)[1]


def test_repeat_drop_remainder_and_steps(cache_dir):
    n = count_pairs(cache_dir, "train")
    ds = make_dataset(cache_dir, "train", batch_size=8, repeat=True, drop_remainder=True)
    assert ds.element_spec[0].shape[0] == 8
    assert sum(1 for _ in ds.take(n)) == n  # endless: more batches than one epoch holds
    assert steps_per_epoch(cache_dir, "train", 8) == -(-n // 8)
    assert steps_per_epoch(cache_dir, "train", 8, drop_remainder=True) == n // 8
    once = make_dataset(cache_dir, "train", batch_size=8, drop_remainder=True)
    assert sum(1 for _ in once) == n // 8


def test_image_dataset_one_element_per_image(cache_dir):
    cache = open_cache(cache_dir)
    ids, rows = [], []
    for image_id, feats in make_image_dataset(cache_dir, "test", batch_size=1):
        assert image_id.dtype == tf.string and feats.dtype == tf.float32
        ids += [i.decode() for i in image_id.numpy()]
        rows += list(feats.numpy())
    expected = dict(cache.read_features("test"))
    assert ids == cache.image_ids("test") and sorted(ids) == sorted(expected)
    for image_id, row in zip(ids, rows, strict=True):
        np.testing.assert_array_equal(row, expected[image_id].astype(np.float32))


def test_missing_split_and_incomplete_cache_are_errors(cache_dir, tmp_path):
    with pytest.raises(IcapnetError, match="no 'restval' images"):
        make_dataset(cache_dir, "restval", batch_size=2)
    broken = tmp_path / "c"
    broken.mkdir()
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(IcapnetError, match="incomplete"):
        make_dataset(broken, "train", batch_size=2)


# --------------------------------------------------------------------------- speed batching


def _rows(ds):
    """(feature bytes, caption tokens) of every real caption row, in order, and the batches."""
    rows, batches = [], []
    for feats, caps in ds:
        feats, caps = feats.numpy(), caps.numpy()
        batches.append((feats.shape, caps.shape))
        per_image = caps if caps.ndim == 3 else caps[:, None, :]
        for f, group in zip(feats, per_image, strict=True):
            for c in group:
                tokens = tuple(int(t) for t in c if t != 0)
                if tokens:
                    rows.append((f.astype(np.float16).tobytes(), tokens))
    return rows, batches


@pytest.mark.parametrize(("batching", "length"), [
    (Batching(group_by_image=True, length_buckets=3), None),
    (Batching(group_by_image=False, length_buckets=3), None),
    (Batching(group_by_image=True, length_buckets=2), 30),  # a fixed length overrides buckets
    (Batching(group_by_image=False, length_buckets=0), 30),
])
def test_bucketed_epoch_holds_every_caption_once_in_a_seeded_order(cache_dir, batching, length):
    cache = open_cache(cache_dir)
    make = lambda seed: make_dataset(cache_dir, "train", batch_size=7, seed=seed,  # noqa: E731
                                     shuffle_buffer=16, batching=batching, caption_length=length)
    rows, batches = _rows(make(3))
    assert collections.Counter(rows) == _expected_pairs(cache, "train")
    assert len(batches) == steps_per_epoch(cache_dir, "train", 7, batching=batching,
                                           caption_length=length)
    assert _rows(make(3))[0] == rows  # a function of the seed (i.e. of (seed, epoch)) ...
    assert _rows(make(4))[0] != rows  # ... and a different seed gives another order
    per_group = 3 if batching.group_by_image else 1  # every image here has 3 captions
    boundaries = _plan(cache, "train", batching).boundaries
    for feats_shape, caps_shape in batches:
        assert caps_shape[0] == feats_shape[0] <= max(1, 7 // per_group)
        if batching.group_by_image:
            assert len(caps_shape) == 3 and caps_shape[1] == per_group
        if length is not None:  # every batch padded to the one fixed length
            assert caps_shape[-1] == length
        else:
            assert caps_shape[-1] < max(boundaries)


def test_buckets_pad_less_than_one_width_per_batch(cache_dir):
    def padding(batching):
        real = total = 0
        for _, caps in make_dataset(cache_dir, "train", batch_size=8, seed=0,
                                    batching=batching):
            rows = caps.numpy().reshape(-1, caps.shape[-1])
            rows = rows[(rows != 0).any(axis=1)]
            real, total = real + (rows != 0).sum(), total + rows.size
        return 1 - real / total

    assert padding(Batching(length_buckets=4)) < 0.5 * padding(Batching())


def test_grouped_rows_pad_images_with_fewer_captions(cache_dir, tmp_path):
    """Images with fewer (or more) captions than the usual K: empty rows, or a second row."""
    root = tmp_path / "cache"
    shutil.copytree(cache_dir, root)
    captions = json.loads((root / "captions.json").read_text())
    ids = sorted(captions["train"])
    captions["train"][ids[0]] = captions["train"][ids[0]][:1]
    captions["train"][ids[1]] = captions["train"][ids[1]] * 2  # 6 captions: two rows of 3
    (root / "captions.json").write_text(json.dumps(captions))
    cache = open_cache(root)
    batching = Batching(group_by_image=True, length_buckets=2)
    rows, _ = _rows(make_dataset(root, "train", batch_size=6, seed=0, batching=batching))
    assert collections.Counter(rows) == _expected_pairs(cache, "train")
    shapes = [c.shape for _, c in make_dataset(root, "train", 6, seed=0, batching=batching)]
    assert all(s[1] == 3 for s in shapes)


def test_best_boundaries_minimise_the_padded_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 15, size=60)

    def cost(bounds):
        index = np.searchsorted(bounds, lengths, side="right")
        return sum(lengths[index == b].max(initial=0) * (index == b).sum()
                   for b in range(len(bounds)))

    for buckets in (1, 2, 3):
        best = best_boundaries(lengths, buckets)
        assert len(best) == buckets and best[-1] == lengths.max() + 1
        candidates = itertools.combinations(range(4, int(lengths.max()) + 1), buckets - 1)
        brute = min(cost([*c, int(lengths.max()) + 1]) for c in candidates)
        assert cost(best) == brute
