"""``python -m icapnet.prepare``: builds vocabulary + feature cache; bad input is one line."""

from __future__ import annotations

import json

import pytest

from icapnet.__main__ import main as icapnet_main
from icapnet.data.cache import open_cache
from icapnet.errors import run_cli
from icapnet.prepare import main


def _args(data_dir, out, *extra):
    return ["--dataset", "synthetic", "--data-dir", str(data_dir), "--out", str(out),
            "--weights", "none", "--image-size", "32", "--min-count", "1", "--quiet", *extra]


def test_prepare_builds_cache_and_prints_summary(synthetic_scenes_dir, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(_args(synthetic_scenes_dir, out, "--limit", "3", "--batch-size", "2")) == 0
    text = capsys.readouterr().out
    assert f"feature cache: {out}" in text
    assert "vgg16/block5_conv3 (weights none)" in text and "4 regions x 512" in text
    cache = open_cache(out)
    assert cache.num_images("train") == 3 and "train     3 images" in text
    assert 1 <= cache.num_images("val") <= 3
    assert f"vocabulary {len(cache.vocab)} words" in text
    assert cache.boxes is not None and set(cache.boxes) == set(cache.manifest["images"])
    assert json.loads((out / "manifest.json").read_text())["complete"] is True

    # Same flags again: nothing to redo, still exit 0; other settings: a one-line error.
    assert main(_args(synthetic_scenes_dir, out, "--limit", "3")) == 0
    capsys.readouterr()
    code = run_cli(main, _args(synthetic_scenes_dir, out, "--limit", "3", "--image-size", "64"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {out / 'manifest.json'}: ") and "image_size" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("extra,message", [
    (["--limit", "0"], "--limit: must be >= 1"),
    (["--backbone", "alexnet"], "alexnet: unknown backbone"),
    (["--weights", "/nope/w.h5"], "/nope/w.h5: backbone weights file not found"),
])
def test_prepare_bad_flags(synthetic_scenes_dir, tmp_path, capsys, extra, message):
    assert run_cli(main, _args(synthetic_scenes_dir, tmp_path / "c", *extra)) == 2
    assert message in capsys.readouterr().err


def test_prepare_missing_data_dir_and_dispatch(tmp_path, capsys):
    assert run_cli(main, _args(tmp_path / "absent", tmp_path / "c")) == 2
    assert f"{tmp_path / 'absent'}: data folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        icapnet_main(["prepare", "--help"])
    assert info.value.code == 0
    assert "--max-vocab" in capsys.readouterr().out
