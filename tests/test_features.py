"""Backbone (registry, deterministic random weights, extractor) and the resumable feature cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import keras
import numpy as np
import pytest

from icapnet.config import RANDOM_BACKBONE, DataConfig, FeatureConfig
from icapnet.data import cache_build as CB
from icapnet.data.cache import open_cache
from icapnet.data.datasets import load_dataset
from icapnet.data.images import load_image
from icapnet.errors import IcapnetError
from icapnet.model import backbone as B

SIZE = 32  # VGG16 at 32 px: block5_conv3 is a 2x2 grid, fast on CPU
CFG = FeatureConfig(weights="none", image_size=SIZE)
DATA = DataConfig(min_count=1)


@pytest.fixture(scope="module")
def extractor():
    return B.build_feature_extractor(CFG)


@pytest.fixture(scope="module")
def dataset(synthetic_scenes_dir, tmp_path_factory):
    """The 12 synthetic scenes + one corrupt train image + a word only the val split uses."""
    ds = load_dataset("synthetic", synthetic_scenes_dir)
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    val_id = ds.splits["val"][0]
    captions = {**ds.captions, "broken.jpg": ["a broken image"],
                val_id: ["a zebra", *ds.captions[val_id][1:]]}
    return dataclasses.replace(
        ds,
        images={**ds.images, "broken.jpg": broken},
        captions=captions,
        splits={**ds.splits, "train": sorted([*ds.splits["train"], "broken.jpg"])},
    )


@pytest.fixture(scope="module")
def cache_dir(dataset, extractor, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "full"
    CB.build_cache(dataset, out, CFG, DATA, batch_size=2, shard_size=3, extractor=extractor,
                  progress=False)
    return out


def test_registry_defaults_and_errors():
    assert {"vgg16", "resnet50", "mobilenet_v2", "inception_v3"} <= set(B.BACKBONES)
    assert B.feature_config_for("vgg16", "none").layer == "block5_conv3"
    assert B.feature_config_for("inception_v3", "none").image_size == 299
    assert B.feature_config_for("resnet50", "none").layer == "conv5_block3_out"
    with pytest.raises(IcapnetError, match="unknown backbone"):
        B.get_backbone("alexnet")


def _tiny_cnn(include_top=False, weights=None, input_shape=(16, 16, 3)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(10, 3, strides=2, padding="same", name="conv_b")(x)
    return keras.Model(inputs, x)


def test_another_backbone_plugs_in_with_derived_grid(monkeypatch):
    monkeypatch.setitem(B.BACKBONES, "tiny", B.Backbone("tiny", _tiny_cnn, "conv_b",
                                                        lambda x: x / 127.5 - 1.0, 16))
    cfg = B.feature_config_for("tiny", "none")
    model = B.build_feature_extractor(cfg)
    out = model(np.zeros((3, 40, 50, 3), np.uint8))
    assert tuple(out.shape) == (3, 16, 10)  # 4x4 grid of 10 channels, derived, not 196x512
    again = B.build_feature_extractor(cfg)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IcapnetError, match="no such layer"):
        B.build_feature_extractor(dataclasses.replace(cfg, layer="conv_z"))


def test_extractor_any_size_uint8_or_float(extractor):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    out = extractor(images).numpy()
    assert out.shape == (2, 4, 512) and out.dtype == np.float32
    np.testing.assert_allclose(extractor(images.astype(np.float32)).numpy(), out, rtol=1e-5)
    assert B.extractor_feature_shape(extractor) == (4, 512)
    assert B.extractor_image_size(extractor) == SIZE


def test_none_weights_identical_across_builds_and_informative(extractor):
    keras.utils.set_random_seed(12345)  # global RNG state must not matter
    again = B.build_feature_extractor(CFG)
    for a, b in zip(extractor.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    kernels = [w for w in extractor.get_weights() if w.ndim == 4]
    fan_in = np.prod(kernels[-1].shape[:-1])
    assert abs(kernels[-1].std() - np.sqrt(2 / fan_in)) < 0.05 * np.sqrt(2 / fan_in)
    red = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    red[..., 0] = 220
    blue = red[..., ::-1].copy()
    f_red, f_blue = extractor(red).numpy(), extractor(blue).numpy()
    assert np.isfinite(f_red).all()
    assert 0.1 < f_red.std() < 1e4  # neither vanished nor exploded through 13 ReLU layers
    assert np.abs(f_red - f_blue).mean() > 0.05 * f_red.std()  # colour is visible


def test_weights_from_local_file(tmp_path, extractor):
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    B._deterministic_init(base, seed=7)
    path = tmp_path / "backbone.weights.h5"
    base.save_weights(path)
    model = B.build_feature_extractor(dataclasses.replace(CFG, weights=str(path)))
    kernel = model.get_layer("vgg16_block5_conv3").get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(kernel, base.get_layer("block1_conv1").get_weights()[0])
    assert not np.array_equal(kernel, extractor.get_weights()[0])
    with pytest.raises(IcapnetError, match="weights file not found"):
        B.build_feature_extractor(dataclasses.replace(CFG, weights=str(tmp_path / "x.h5")))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(IcapnetError, match=r"\.h5"):
        B.resolve_weights(str(tmp_path / "w.txt"))


def test_cache_layout_and_manifest(cache_dir, dataset):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["dtype"] == "float16" and manifest["feature_shape"] == [4, 512]
    assert (manifest["backbone"], manifest["layer"], manifest["weights"]) == (
        "vgg16", "block5_conv3", "none")
    assert manifest["image_size"] == SIZE and manifest["dataset"] == "synthetic"
    good = set(dataset.images) - {"broken.jpg"}
    assert set(manifest["images"]) == good
    some = sorted(good)[0]
    entry = manifest["images"][some]
    assert entry["sha1"] == CB._sha1_file(dataset.images[some])
    assert (cache_dir / "features" / entry["shard"]).is_file()
    shards = sorted(p.name for p in (cache_dir / "features").iterdir())
    assert shards == sorted(manifest["shards"]) and shards[0].startswith("test-0000")
    size = 4 * 512 * 2
    assert sum(p.stat().st_size for p in (cache_dir / "features").iterdir()) < 1.1 * size * 12
    captions = json.loads((cache_dir / "captions.json").read_text())
    assert set(captions) == {"train", "val", "test"}
    assert "broken.jpg" not in captions["train"]
    boxes = json.loads((cache_dir / "boxes.json").read_text())
    assert set(boxes) == good


def test_unreadable_image_is_skipped_and_reported(dataset, extractor, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        CB.build_cache(dataset, tmp_path / "c", CFG, DATA, batch_size=4, shard_size=50,
                      extractor=extractor, progress=False)
    cache = open_cache(tmp_path / "c")
    assert "broken.jpg" in cache.manifest["skipped"]
    assert str(dataset.images["broken.jpg"]) in caplog.text
    assert cache.num_images("train") == len(dataset.splits["train"]) - 1


def test_vocab_from_train_split_only(cache_dir):
    cache = open_cache(cache_dir)
    assert "zebra" not in cache.vocab  # only a val caption uses it
    assert "circle" in cache.vocab or "square" in cache.vocab


def test_cached_features_match_the_extractor(cache_dir, dataset, extractor):
    cache = open_cache(cache_dir)
    items = dict(cache.read_features("val"))
    assert sorted(items) == sorted(dataset.splits["val"])
    ids = sorted(items)
    direct = B.extract_features(extractor, [load_image(dataset.images[i]) for i in ids])
    for k, image_id in enumerate(ids):
        assert items[image_id].dtype == np.float16 and items[image_id].shape == (4, 512)
        np.testing.assert_allclose(items[image_id].astype(np.float32), direct[k],
                                   rtol=2e-3, atol=1e-2)
    picked = cache.get_features(ids[::-1])
    np.testing.assert_array_equal(picked[0], items[ids[-1]])
    with pytest.raises(IcapnetError, match="not in the feature cache"):
        cache.get_features(["nope.jpg"])


def test_interrupted_build_resumes_and_matches(cache_dir, dataset, extractor, tmp_path,
                                               monkeypatch):
    out = tmp_path / "resume"

    def stop(name):
        raise KeyboardInterrupt(name)

    with pytest.raises(KeyboardInterrupt):
        CB.build_cache(dataset, out, CFG, DATA, batch_size=2, shard_size=3, extractor=extractor,
                      on_shard=stop, progress=False)
    partial = json.loads((out / "manifest.json").read_text())
    assert partial["complete"] is False and len(partial["shards"]) == 1
    with pytest.raises(IcapnetError, match="incomplete"):
        open_cache(out)
    done_first = set(next(iter(partial["shards"].values()))["images"])

    loaded = []
    original = CB._Extractor.load
    monkeypatch.setattr(CB._Extractor, "load",
                        lambda self, i, p: loaded.append(i) or original(self, i, p))
    CB.build_cache(dataset, out, CFG, DATA, batch_size=2, shard_size=3, extractor=extractor,
                  progress=False)
    assert sorted(loaded) == sorted(set(dataset.images) - done_first)

    resumed, full = (json.loads((d / "manifest.json").read_text()) for d in (out, cache_dir))
    for key in ("images", "shards", "skipped", "feature_shape", "complete"):
        assert resumed[key] == full[key]
    for name in full["shards"]:
        shard = f"features/{name}"
        assert (out / shard).read_bytes() == (cache_dir / shard).read_bytes()
    assert (out / "captions.json").read_text() == (cache_dir / "captions.json").read_text()

    loaded.clear()  # a complete cache is reused without touching the CNN
    CB.build_cache(dataset, out, CFG, DATA, batch_size=2, shard_size=3, extractor=extractor,
                  progress=False)
    assert loaded == []


def test_changed_image_file_is_re_extracted(dataset, extractor, tmp_path, monkeypatch):
    from PIL import Image

    ds = dataclasses.replace(dataset, images=dict(dataset.images))
    victim = ds.splits["test"][0]
    copy = tmp_path / victim
    Image.open(ds.images[victim]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy)
    out = tmp_path / "c"
    CB.build_cache(ds, out, CFG, DATA, shard_size=3, extractor=extractor, progress=False)
    before = open_cache(out).get_features([victim])
    Image.open(ds.images[victim]).save(copy, quality=50)
    ds.images[victim] = copy
    loaded = []
    original = CB._Extractor.load
    monkeypatch.setattr(CB._Extractor, "load",
                        lambda self, i, p: loaded.append(i) or original(self, i, p))
    CB.build_cache(ds, out, CFG, DATA, shard_size=3, extractor=extractor, progress=False)
    assert victim in loaded and len(loaded) <= 3  # only its shard
    assert not np.array_equal(open_cache(out).get_features([victim]), before)


def test_settings_mismatch_is_an_error(cache_dir, dataset):
    other = dataclasses.replace(CFG, image_size=64)
    with pytest.raises(IcapnetError, match=r"manifest\.json: .*image_size=32 \(requested 64\)"):
        CB.build_cache(dataset, cache_dir, other, DATA, progress=False)
    with pytest.raises(IcapnetError, match="other settings"):
        CB.build_cache(dataclasses.replace(dataset, name="flickr8k"), cache_dir, CFG, DATA)


def test_refuses_a_folder_that_is_not_a_cache(dataset, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(IcapnetError, match="not a feature cache"):
        CB.build_cache(dataset, tmp_path, CFG, DATA, progress=False)
    with pytest.raises(IcapnetError, match=r"no manifest\.json"):
        open_cache(tmp_path)


def test_cache_from_an_older_random_backbone_is_refused(cache_dir, dataset, tmp_path):
    from icapnet.config import LEGACY_RANDOM_BACKBONE, Config
    from icapnet.model.training import config_from_cache

    assert open_cache(cache_dir).manifest["random_init"] == RANDOM_BACKBONE
    old = tmp_path / "old"
    shutil.copytree(cache_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    # Caches written before the recipe was recorded (and before settings had fingerprints).
    del manifest["random_init"], manifest["fingerprints"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IcapnetError, match=r"random_init=None \(requested 'he-normal\+unit-rms'"):
        CB.build_cache(dataset, old, CFG, DATA, progress=False)
    with pytest.raises(IcapnetError, match=r"manifest\.json: .*old random backbone"):
        config_from_cache(old, Config())
    legacy = Config.from_dict({"features": {"weights": "none"}}).features
    assert legacy.random_init == LEGACY_RANDOM_BACKBONE
    with pytest.raises(IcapnetError, match="re-run prepare"):
        B.build_feature_extractor(legacy)
