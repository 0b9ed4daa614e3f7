"""Paths that may be URLs: caches, model directories and exports on ``gs://`` (or any scheme
TensorFlow's file systems know: ``s3://`` and ``hdfs://`` with their plugins, ``ram://``).

:func:`path` turns a local path into a ``pathlib.Path`` (plain ``os`` calls, no TensorFlow)
and a URL (``scheme://...``) into a :class:`GPath`, the small part of the ``pathlib`` API that
icapnet uses, done with ``tf.io.gfile``. Code that builds paths with ``/``, reads with
``read_text`` or lists with ``glob`` therefore works on both. ``pathlib.Path`` itself cannot
hold a URL (it folds ``gs://b`` into ``gs:/b``), so every path that may be a URL goes
through :func:`path`; TensorFlow's own readers and writers (TFRecord, SavedModel, Keras
weights, TensorBoard) take ``str(path)`` and handle the scheme themselves.

Why not ``etils.epath`` (the same idea): it knows gs://, s3://, az:// and hf:// only, not
TensorFlow's other schemes such as ``ram://``, on which the tests run.

Atomic writes (``icapnet.io``) write a temporary object beside the target and rename it.
On a local disk, and on ``ram://``, the rename is atomic. On GCS an object only ever
appears whole (uploads are committed on close), but a rename is a copy and a delete:
readers never see half a file, yet a folder renamed into place (an export) is moved file by
file, not in one atomic step, and a crash can leave temporary objects behind.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def is_url(value: Any) -> bool:
    return isinstance(value, GPath) or "://" in str(value)


def path(value: str | os.PathLike | GPath) -> Path | GPath:
    """``value`` as a path object: :class:`GPath` for a URL, ``pathlib.Path`` otherwise."""
    if isinstance(value, (GPath, Path)):
        return value
    text = os.fspath(value)
    return GPath(text) if "://" in text else Path(text)


def _gfile():
    import tensorflow as tf  # only when a URL is used: local paths never load TensorFlow

    return tf.io.gfile


@dataclass(frozen=True)
class Stat:
    st_size: int
    st_mtime: float


class GPath:
    """A URL with the pathlib methods icapnet uses, over ``tf.io.gfile``."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = str(url).partition("://")
        rest = posixpath.normpath(rest) if rest else ""
        self._url = f"{scheme}://{'' if rest == '.' else rest}"

    # -- names ---------------------------------------------------------------------------
    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"GPath({self._url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __lt__(self, other: GPath) -> bool:
        return self._url < other._url

    def __truediv__(self, part: str | os.PathLike) -> GPath:
        return GPath(f"{self._url.rstrip('/')}/{os.fspath(part)}")

    def joinpath(self, *parts: str) -> GPath:
        out = self
        for part in parts:
            out = out / part
        return out

    @property
    def name(self) -> str:
        return posixpath.basename(self._url.split("://", 1)[1])

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> GPath:
        scheme, rest = self._url.split("://", 1)
        return GPath(f"{scheme}://{posixpath.dirname(rest)}")

    def resolve(self) -> GPath:
        return self

    def match(self, pattern: str) -> bool:
        return fnmatch.fnmatch(self.name, pattern)

    # -- queries ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return _gfile().exists(self._url)

    def is_dir(self) -> bool:
        # exists() first: ram:// calls any missing path a directory
        return _gfile().exists(self._url) and _gfile().isdir(self._url)

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> Stat:
        import tensorflow as tf

        try:
            info = _gfile().stat(self._url)
        except tf.errors.NotFoundError:
            raise FileNotFoundError(self._url) from None
        return Stat(int(info.length), float(info.mtime_nsec) / 1e9)

    def iterdir(self) -> Iterator[GPath]:
        for name in sorted(_gfile().listdir(self._url)):
            child = self / name.rstrip("/")
            # ram:// lists by name prefix: "a" also "lists" a/.extra for a folder a.extra/
            if _gfile().exists(str(child)):
                yield child

    def files(self) -> Iterator[GPath]:
        """Every file under this folder, at any depth."""
        for child in self.iterdir():
            if child.is_dir():
                yield from child.files()
            else:
                yield child

    def glob(self, pattern: str) -> Iterator[GPath]:
        # gfile.glob's patterns differ between file systems; filter a listing instead.
        if not self.is_dir():
            return
        for child in self.iterdir():
            if fnmatch.fnmatch(child.name, pattern):
                yield child

    # -- reading and writing ---------------------------------------------------------------
    def open(self, mode: str = "r", encoding: str | None = None):
        return _gfile().GFile(self._url, mode)

    def read_bytes(self) -> bytes:
        import tensorflow as tf

        try:
            with _gfile().GFile(self._url, "rb") as handle:
                return handle.read()
        except tf.errors.NotFoundError:
            raise FileNotFoundError(self._url) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        with _gfile().GFile(self._url, "wb") as handle:
            handle.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.is_dir():
            if not exist_ok:
                raise FileExistsError(self._url)
            return
        if parents:
            _gfile().makedirs(self._url)
        else:
            _gfile().mkdir(self._url)

    def unlink(self, missing_ok: bool = False) -> None:
        import tensorflow as tf

        try:
            _gfile().remove(self._url)
        except tf.errors.NotFoundError:
            if not missing_ok:
                raise FileNotFoundError(self._url) from None

    def rmtree(self) -> None:
        import tensorflow as tf

        with contextlib.suppress(tf.errors.NotFoundError):
            _gfile().rmtree(self._url)

    def replace(self, target: GPath) -> GPath:
        """Rename over ``target`` (a copy and a delete on GCS: see the module docstring).

        A folder is moved file by file: gfile renames a whole folder on some file systems
        only (ram:// moves the folder's name and leaves its files behind)."""
        gfile = _gfile()
        if not self.is_dir():
            gfile.rename(self._url, str(target), overwrite=True)
            return target
        gfile.makedirs(str(target))
        for file in self.files():
            destination = GPath(str(target) + str(file)[len(self._url):])
            gfile.makedirs(str(destination.parent))
            gfile.rename(str(file), str(destination), overwrite=True)
        self.rmtree()
        return target


__all__ = ["GPath", "is_url", "path"]
