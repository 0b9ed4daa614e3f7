"""Atomic file writes: an artifact is either complete or absent, never half-written.

Temporary files are named ``.{target}.tmp-{pid}-{host}...`` (``.old-`` for a directory being
swapped out), so :func:`remove_stale_temps` can tell a temp file left by a killed run from one
that a live process is still writing. A full disk while writing is one :class:`IcapnetError`
naming the path (the temp file is removed, the target keeps its previous content).

Files come out with the permissions ``open()`` would give them (0666 minus the umask, e.g.
0644, like Keras' own files), not ``mkstemp``'s private 0600: a model directory is meant to
be read by other users, a web server or a container.

Local paths: a temporary file beside the target and ``os.replace``. URLs (``gs://`` ...,
see :mod:`icapnet.fs`): a temporary object and ``tf.io.gfile.rename``, atomic where the file
system's rename is (not on GCS, where it is a copy and a delete).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from icapnet import fs
from icapnet.errors import IcapnetError
from icapnet.fs import GPath

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path | GPath, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = fs.path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(path, GPath):  # tf.io.gfile: write a temporary object, rename it over
        tmp = path.parent / temp_prefix(path)
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            raise_if_disk_full(err, path)
            raise
        return
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise_if_disk_full(err, path)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty ``{temp_prefix}-XXXXXXXX`` beside ``path``, created with mode 0666 so the
    kernel applies the umask (``mkstemp`` would make it 0600)."""
    while True:
        tmp = str(path.parent / f"{temp_prefix(path)}-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


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
    tmp = path.parent / f"{temp_prefix(path)}{suffix}"
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.parent / temp_prefix(path, "old")
            _remove(old)
            _replace(path, old)
            _replace(tmp, path)
            _remove(old)
        else:
            _replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        raise_if_disk_full(err, path)
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


# --------------------------------------------------------------------------- full disk

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT from Python, or TensorFlow's and h5py's wording of it."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    return any(text in str(err) for text in _DISK_FULL_TEXT)


def raise_if_disk_full(err: BaseException, path: str | Path) -> None:
    """Turn a full-disk error while writing ``path`` into one line naming it."""
    if is_disk_full(err):
        raise IcapnetError(f"{path}: disk full (no space left on device); nothing was "
                           "written there, free some space and re-run") from None


# --------------------------------------------------------------------------- stale temp files

# A temp file of a host we cannot check (another machine on a shared disk), or from before
# temp names carried their owner, is removed only once it is older than any write takes.
STALE_AFTER_S = 24 * 3600
_OWNED = re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})(?:$|[-.])")
# Names written before owners were recorded: mkstemp's ``.{name}.{8 random}.tmp`` and
# ``.{name}.tmp-{pid}`` / ``.{name}.old-{pid}`` (+ suffix).
_UNOWNED = re.compile(r"^\..+\.(?:[a-z0-9_]{8}\.tmp|(?:tmp|old)-\d+(?:\..+)?)$")


def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def temp_prefix(path: str | Path | GPath, kind: str = "tmp") -> str:
    """``.{name}.{kind}-{pid}-{host}``: the start of every temp name for ``path``."""
    return f".{fs.path(path).name}.{kind}-{os.getpid()}-{_host_id()}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temp file of ours that no running process will finish.

    Ours on this host: stale when its process is gone. Another host's, or a name without an
    owner: stale when older than ``STALE_AFTER_S``. Anything else is not a temp file of ours.
    """
    name = path.name
    owned = _OWNED.match(name)
    if owned is None and not _UNOWNED.match(name):
        return False
    if owned is not None and owned["host"] == _host_id():
        return not _pid_alive(int(owned["pid"]))
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_S


def remove_stale_temps(directory: str | Path, targets: Iterable[str] | None = None) -> list[Path]:
    """Delete the temp files (and temp folders) killed runs left in ``directory``.

    Only names of our pattern are touched, and only those no live process is writing
    (:func:`is_stale_temp`); ``targets`` limits it to the temps of those file names (a folder
    shared with other things, such as the parent of an export). Returns what was removed.
    """
    if fs.is_url(directory):  # object stores: no pids to check, temps there are left alone
        return []
    directory = Path(directory)
    if not directory.is_dir():
        return []
    wanted = None if targets is None else {f".{t}." for t in targets}
    removed = []
    for entry in sorted(directory.iterdir()):
        if wanted is not None and not any(entry.name.startswith(w) for w in wanted):
            continue
        if is_stale_temp(entry):
            _remove(entry)
            removed.append(entry)
            log.info("removed %s (temp file of an interrupted write)", entry)
    return removed
