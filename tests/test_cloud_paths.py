"""Caches, model directories and exports on URLs, through tf.io.gfile: TensorFlow's in-memory
file system (ram://) stands in for gs:// (same code path: icapnet.fs.GPath + gfile)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_training import Crash, CrashAt, Epochs, _config

from icapnet import fs
from icapnet.config import DataConfig
from icapnet.data.cache import open_cache
from icapnet.data.cache_build import build_cache
from icapnet.data.datasets import load_dataset
from icapnet.fs import GPath
from icapnet.io import atomic_path, atomic_write_text
from icapnet.model.backbone import feature_config_for
from icapnet.model.checkpoints import latest_checkpoint
from icapnet.model.store import load_model_dir, resolve_model
from icapnet.model.training import train


@pytest.fixture
def ram() -> GPath:
    root = fs.path(f"ram://icapnet-{uuid.uuid4().hex[:8]}")
    yield root
    root.rmtree()


def test_paths_keep_their_scheme_and_local_paths_stay_pathlib(ram):
    assert fs.path("gs://bucket/cache") / "features" / "x.tfrecord" == \
        GPath("gs://bucket/cache/features/x.tfrecord")
    assert str(fs.path("gs://bucket/a/../b/")) == "gs://bucket/b"
    assert type(fs.path("/tmp/x")) is type(Path("/tmp/x"))
    shard = ram / "features" / "train-00000.tfrecord"
    assert (shard.name, shard.stem, shard.suffix) == ("train-00000.tfrecord", "train-00000",
                                                      ".tfrecord")
    assert shard.parent == ram / "features"
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_bytes(b"abc")
    (shard.parent / "b.txt").write_text("héllo")
    assert shard.is_file() and shard.parent.is_dir() and not (ram / "nope").exists()
    assert shard.stat().st_size == 3 and (shard.parent / "b.txt").read_text() == "héllo"
    assert [p.name for p in shard.parent.glob("*.tfrecord")] == ["train-00000.tfrecord"]
    assert [p.name for p in ram.iterdir()] == ["features"]
    with pytest.raises(FileNotFoundError):
        (ram / "missing.json").read_text()
    (ram / "missing.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (ram / "missing.json").unlink()


def test_atomic_writes_on_a_url(ram):
    target = ram / "dir" / "manifest.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")  # replaces the object
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]  # no temp left
    with pytest.raises(RuntimeError), atomic_path(ram / "export") as tmp:
        tmp.mkdir(parents=True)
        (tmp / "half").write_text("x")
        raise RuntimeError("crash while writing")
    assert not (ram / "export").exists() and not list(ram.glob(".export*"))
    for content in ("v1", "v2"):  # a folder swapped in whole, twice
        with atomic_path(ram / "export") as tmp:
            tmp.mkdir(parents=True)
            (tmp / "saved_model.pb").write_text(content)
    assert (ram / "export" / "saved_model.pb").read_text() == "v2"
    assert sorted(p.name for p in ram.iterdir()) == ["dir", "export"]


@pytest.mark.slow  # two short trainings and an export: ~40 s on 2 busy cores
def test_cache_training_resume_and_export_on_ram(synthetic_scenes_dir, tiny_backbone, ram,
                                                 tmp_path):
    dataset = load_dataset("synthetic", synthetic_scenes_dir)
    feature_cfg = feature_config_for(tiny_backbone, "none")
    build_cache(dataset, ram / "cache", feature_cfg, DataConfig(min_count=1), shard_size=4,
                progress=False)
    build_cache(dataset, tmp_path / "cache", feature_cfg, DataConfig(min_count=1),
                shard_size=4, progress=False)
    remote, local = open_cache(str(ram / "cache")), open_cache(tmp_path / "cache")
    assert remote.complete and isinstance(remote.root, GPath)
    for split in local.splits:  # the same records through gfile as on the local disk
        assert [(i, f.tobytes()) for i, f in remote.read_features(split)] == \
            [(i, f.tobytes()) for i, f in local.read_features(split)]
    strip = {"finished_at"}
    assert {k: v for k, v in remote.manifest.items() if k not in strip} == \
        {k: v for k, v in local.manifest.items() if k not in strip}

    out = ram / "model"
    with pytest.raises(Crash):  # dies in epoch 2, after the epoch-1 checkpoint
        train(_config(epochs=2, batch_size=4), str(ram / "cache"), str(out), verbose=0,
              extra_callbacks=[CrashAt(1, 0)])
    assert latest_checkpoint(out).name == "epoch-0001.npz"
    seen = Epochs()
    history = train(_config(epochs=2, batch_size=4), str(ram / "cache"), str(out), verbose=0,
                    extra_callbacks=[seen])
    assert seen.seen == [1] and list(history["epoch"]) == [0, 1]  # resumed from ram://
    assert {"config.json", "vocab.json", "model.weights.h5", "history.csv", "loss.png",
            "checkpoints", "logs"} <= {p.name for p in out.iterdir()}
    model, vocab, config = load_model_dir(resolve_model(str(out)))
    assert config.data.cache_dir == str(ram / "cache")
    assert len(vocab) == model.model_config.vocab_size

    from icapnet.export import export_saved_model

    export_saved_model(str(out), str(ram / "export"), max_length=5)
    info = json.loads((ram / "export" / "assets.extra" / "icapnet_export.json").read_text())
    assert info["model_dir"] == str(out)
    loaded = tf.saved_model.load(str(ram / "export"))
    image = tf.io.encode_jpeg(np.zeros((16, 16, 3), np.uint8))
    result = loaded.serve(tf.reshape(image, [1]))
    assert result["captions"].shape == (1,)
