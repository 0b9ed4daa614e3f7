"""A damaged feature cache (issue 12, cases 1-3 and 5): flipped bytes, truncated shards, edited
manifests, stale temp files. Every CLI ends in one ``error: <file>: <problem>`` line and a
non-zero exit; ``prepare`` rebuilds exactly the damaged shards; ``prepare --verify`` names them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from fault_tools import (
    dead_pid,
    edit_json,
    error_line,
    flip_byte,
    keep_records,
    prepare_args,
    temp_of,
    with_value,
)

from icapnet import evaluate, prepare, train
from icapnet.errors import IcapnetError, run_cli


def _prepare_args(data: Path, out: Path) -> list[str]:
    # The tiny model's features (conftest): VGG16, random weights, 112 px -> 7x7 regions.
    return prepare_args(data, out, image_size=112, shard_size=4)


@pytest.fixture(scope="module")
def built_cache(synthetic_scenes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "cache"
    assert prepare.main(_prepare_args(synthetic_scenes_dir, out)) == 0
    return out


@pytest.fixture()
def cache(built_cache: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(built_cache, tmp_path / "cache"))


@pytest.fixture()
def model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model (evaluate writes its results next to it)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _evaluate(model: Path, cache: Path, split: str = "train") -> int:
    return run_cli(evaluate.main, ["--model", str(model), "--cache", str(cache), "--split",
                                   split, "--no-coco"])


def _train(cache: Path, out: Path) -> int:
    return run_cli(train.main, ["--cache", str(cache), "--out", str(out), "--epochs", "1",
                                "--batch-size", "8", "--units", "8", "--embedding-dim", "8",
                                "--attention-units", "8", "--quiet"])


def _verify(cache: Path) -> int:
    return run_cli(prepare.main, ["--verify", "--out", str(cache)])


def _inodes(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (cache / "features").glob("*.tfrecord")}


def _assert_rebuilt_exactly(cache: Path, data: Path, damaged: set[str],
                            original: dict[str, bytes], capsys) -> None:
    """prepare with the same flags: only ``damaged`` shards are written again, and come back
    byte-identical; the cache then verifies and reads."""
    before = _inodes(cache)
    assert run_cli(prepare.main, _prepare_args(data, cache)) == 0
    after = _inodes(cache)
    assert {n for n in before if after[n] != before[n]} == damaged
    for name, content in original.items():
        assert (cache / "features" / name).read_bytes() == content, name
    capsys.readouterr()
    assert _verify(cache) == 0
    assert ": OK (" in capsys.readouterr().out


def test_flipped_bytes_name_the_shard_and_prepare_rebuilds_only_it(
        cache: Path, model: Path, synthetic_scenes_dir: Path, tmp_path: Path, capsys) -> None:
    features = cache / "features"
    original = {p.name: p.read_bytes() for p in features.glob("*.tfrecord")}
    train_shard, test_shard = features / "train-00001.tfrecord", features / "test-00000.tfrecord"
    flip_byte(train_shard)
    flip_byte(test_shard)

    assert _evaluate(model, cache, "test") == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"error: {test_shard}: corrupt record after 0 good ones (corrupted record at ")
    assert _train(cache, tmp_path / "m") == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {train_shard}: corrupt record after ") and \
        line.endswith("re-run prepare to rebuild it")

    assert _verify(cache) == 1  # checks, changes nothing
    err = capsys.readouterr().err
    assert f"error: {train_shard}: corrupt record" in err
    assert f"error: {test_shard}: corrupt record" in err
    assert "2 problem(s)" in err and "Traceback" not in err
    assert train_shard.read_bytes() != original[train_shard.name]

    _assert_rebuilt_exactly(cache, synthetic_scenes_dir, {train_shard.name, test_shard.name},
                            original, capsys)
    # evaluate works again, and removes what a killed evaluation left half-written
    stale = [model / f"{temp_of('metrics.json', dead_pid())}-a1b2c3d4",
             model / f"{temp_of('results_test_beam1.json', dead_pid())}-e5f6g7h8"]
    for path in stale:
        path.write_text("[{")
    assert _evaluate(model, cache, "test") == 0
    assert not any(p.exists() for p in stale)


def test_a_rewritten_shard_with_valid_crcs_fails_its_sha256(cache: Path, capsys) -> None:
    """Same size, every record readable, other content: only the recorded hash can tell."""
    import tensorflow as tf

    shard = cache / "features" / "train-00000.tfrecord"
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    records[1] = records[1].replace(records[1][-300:-200], bytes(100))  # features, not the id
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records:
            writer.write(record)
    assert _verify(cache) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: {shard}: content changed since it was written (sha256 differs from the "
        "manifest)")


@pytest.mark.parametrize("cut", ["mid-record", "whole records"])
def test_truncated_shard_is_an_error_for_every_reader(
        cut: str, cache: Path, model: Path, synthetic_scenes_dir: Path, tmp_path: Path,
        capsys) -> None:
    features = cache / "features"
    original = {p.name: p.read_bytes() for p in features.glob("*.tfrecord")}
    shard = features / "train-00000.tfrecord"
    if cut == "mid-record":
        os.truncate(shard, shard.stat().st_size // 2)
    else:  # a shorter, perfectly valid TFRecord file: reads silently short without the check
        keep_records(shard, 2)
    message = f"error: {shard}: feature shard truncated ({shard.stat().st_size} bytes, the " \
              f"manifest records {len(original[shard.name])}); re-run prepare to rebuild it"

    assert _evaluate(model, cache) == 2
    assert error_line(capsys.readouterr().err) == message
    assert _train(cache, tmp_path / "m") == 2
    assert error_line(capsys.readouterr().err) == message
    assert _verify(cache) == 1
    assert f"error: {shard}: feature shard truncated" in capsys.readouterr().err
    _assert_rebuilt_exactly(cache, synthetic_scenes_dir, {shard.name}, original, capsys)


def test_readers_count_records_themselves(cache: Path, model: Path, tmp_path: Path,
                                          monkeypatch, capsys) -> None:
    """A shard that shrinks after the cache was opened (the open-time size check bypassed):
    the training pipeline's cardinality, evaluate's image count and the Python reader's
    record count each still refuse it, naming the shard."""
    from icapnet.data import cache as cache_module
    from icapnet.data.cache import open_cache

    opened = open_cache(cache)
    shard = cache / "features" / "train-00000.tfrecord"
    keep_records(shard, 2)
    short = f"^{re.escape(str(shard))}: 2 records, the manifest records 4"
    with pytest.raises(IcapnetError, match=short):
        list(opened.read_features("train"))

    monkeypatch.setattr(cache_module, "check_shard_files", lambda *args, **kwargs: None)
    for run in (lambda: _evaluate(model, cache), lambda: _train(cache, tmp_path / "m")):
        assert run() == 2
        assert error_line(capsys.readouterr().err).startswith(
            f"error: {shard}: feature shard truncated")


T0 = "shards/train-00000.tfrecord"
MANIFEST_EDITS = [
    ("no feature_shape", lambda m: {k: v for k, v in m.items() if k != "feature_shape"},
     "feature_shape: missing"),
    ("shards is a number", lambda m: {**m, "shards": 5}, "shards: expected an object, got int 5"),
    ("another feature_shape", lambda m: {**m, "feature_shape": [49, 256]},
     "feature_shape: [49, 256] does not match the size of "),
    ("image_size edited", lambda m: {**m, "image_size": 224},
     "image_size: 224 differs from the value the cache was built with"),
    ("layer edited", lambda m: {**m, "layer": "block4_conv3"},
     "layer: 'block4_conv3' differs from the value the cache was built with"),
    ("count edited", lambda m: with_value(m, f"{T0}/count", 3),
     "shards.train-00000.tfrecord.count: 3, but 'written' lists 4 images"),
    ("bytes edited", lambda m: with_value(m, f"{T0}/bytes", "many"),
     "shards.train-00000.tfrecord.bytes: expected an integer, got str 'many'"),
    ("a list", lambda m: [1, 2], "not an icapnet feature-cache manifest"),
    ("other dtype", lambda m: {**m, "dtype": "float32"}, "dtype: 'float32' (this icapnet"),
    ("shard path", lambda m: {**m, "shards": {**m["shards"], "../../x.tfrecord": {}}},
     "shards.../../x.tfrecord: not a shard file name"),
]


@pytest.mark.parametrize("edit,message", [(e, m) for _, e, m in MANIFEST_EDITS],
                         ids=[name for name, _, _ in MANIFEST_EDITS])
def test_edited_manifest_is_one_line_naming_the_field(
        edit, message: str, cache: Path, model: Path, synthetic_scenes_dir: Path,
        tmp_path: Path, capsys) -> None:
    manifest = cache / "manifest.json"
    edit_json(manifest, edit)
    runs = {
        "evaluate": lambda: _evaluate(model, cache),
        "train": lambda: _train(cache, tmp_path / "m"),
        "prepare": lambda: run_cli(prepare.main, _prepare_args(synthetic_scenes_dir, cache)),
        "prepare --verify": lambda: _verify(cache),
    }
    for name, run in runs.items():
        assert run() == 2, name
        line = error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {manifest}: "), (name, line)
        assert message in line, (name, line)
    assert not (tmp_path / "m" / "model.weights.h5").exists()


def test_prepare_removes_only_stale_temp_files_of_its_cache(
        cache: Path, synthetic_scenes_dir: Path) -> None:
    features = cache / "features"
    dead, alive = dead_pid(), os.getppid()
    stale = [features / temp_of("train-00000.tfrecord", dead),
             cache / f"{temp_of('manifest.json', dead)}-k2j4h5g1",
             cache / ".captions.json.x1y2z3w4.tmp"]  # a name from before owners were recorded
    kept = [features / temp_of("train-00001.tfrecord", alive),  # a live writer's
            cache / ".vocab.json.a1b2c3d4.tmp",  # old name, but recent: maybe still written
            cache / ".notes.txt.tmp-1-zz",  # not our pattern
            cache / "notes.txt"]
    for path in stale + kept:
        path.write_bytes(b"partial")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale[2], (old, old))

    assert prepare.main(_prepare_args(synthetic_scenes_dir, cache)) == 0
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
