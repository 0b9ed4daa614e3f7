"""Atomic file writes: an artifact is either complete or absent, never half-written.

Local paths: a temporary file beside the target and ``os.replace``. URLs (``gs://`` ...,
see :mod:`icapnet.fs`): a temporary object and ``tf.io.gfile.rename``, atomic where the file
system's rename is (not on GCS, where it is a copy and a delete).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from icapnet import fs
from icapnet.fs import GPath


def atomic_write_bytes(path: str | Path | GPath, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = fs.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(path, GPath):  # tf.io.gfile: write a temporary object, rename it over
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path | GPath, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | Path | GPath, suffix: str = "") -> Iterator[Path | GPath]:
    """Yield a temporary path (file or directory) that replaces ``path`` only on success.

    The caller writes whatever it likes at the yielded path; on normal exit it is renamed
    over ``path`` (an existing directory is swapped out), on error it is removed. ``suffix``
    ends the temporary name, for writers that insist on one (Keras: ``.weights.h5``). For a
    URL the yielded path is a :class:`~icapnet.fs.GPath` (TensorFlow writers take its str).
    """
    path = fs.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}{suffix}"
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            _remove(old)
            _replace(path, old)
            _replace(tmp, path)
            _remove(old)
        else:
            _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _replace(src: Path | GPath, dst: Path | GPath) -> None:
    if isinstance(src, GPath):
        src.replace(dst)
    else:
        os.replace(src, dst)


def _remove(path: Path | GPath) -> None:
    if isinstance(path, GPath):
        if path.is_dir():
            path.rmtree()
        else:
            path.unlink(missing_ok=True)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
