"""Files written through icapnet.io get the permissions the umask allows (issue 11 #8)."""

from __future__ import annotations

import os
import stat

import pytest

from icapnet.config import Config
from icapnet.io import atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    umask(0o022)  # the usual one: readable by everyone, like Keras' own weight files
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    Config().save(tmp_path)  # config.json of a model directory
    assert _mode(tmp_path / "a.bin") == 0o644
    assert _mode(tmp_path / "config.json") == 0o644
    umask(0o077)  # a private umask stays private
    atomic_write_text(tmp_path / "b.txt", "y")
    assert _mode(tmp_path / "b.txt") == 0o600
    umask(0o002)  # group-writable set-ups keep that too
    atomic_write_text(tmp_path / "a.bin", "z")  # replacing a file gives the new mode
    assert _mode(tmp_path / "a.bin") == 0o664
    assert (tmp_path / "a.bin").read_text() == "z"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "config.json"]


def test_model_dir_files_are_readable_by_others(tiny_model_dir, tmp_path, umask):
    """A model saved under umask 022 can be served by another user (all files 0644)."""
    from icapnet.model.store import load_model_dir, save_model_dir

    umask(0o022)
    model, vocab, config = load_model_dir(tiny_model_dir)
    out = save_model_dir(tmp_path / "shared", model, vocab, config)
    modes = {p.name: _mode(p) for p in out.iterdir()}
    assert modes == {"config.json": 0o644, "vocab.json": 0o644, "model.weights.h5": 0o644}
