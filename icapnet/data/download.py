"""Get Flickr8k onto disk: resumable, checksummed downloads or a local archive/folder.

The default source is the widely used re-release of the original archives,
``Flickr8k_Dataset.zip`` and ``Flickr8k_text.zip`` from
https://github.com/jbrownlee/Datasets/releases/tag/Flickr8k.

Checksums: SHA-256 is computed while downloading. ``KNOWN_SHA256`` is deliberately empty
because we have not verified the published archives' digests ourselves and will not invent
them. Pass ``sha256=`` (``--sha256``) to enforce a value you trust; otherwise the computed
digest is recorded beside the archive in ``<archive>.sha256`` (``sha256sum`` format) and
printed, so a later run (or another machine) can be checked against it.

Interrupted downloads resume: bytes land in ``<archive>.part`` and the next run asks the
server for the rest with an HTTP ``Range`` request. Archives are unpacked into a temporary
folder inside ``data_dir`` and each top-level entry is renamed into place, so a crash never
leaves a half-extracted image folder under its final name.

(A little over 400 lines, on purpose: fetching, resuming, checking and unpacking share one
piece of bookkeeping, the archive and its ``.part``/``.sha256`` files; split apart, each half
would need the other's internals.)
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_text

log = logging.getLogger(__name__)

FLICKR8K_BASE_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
FLICKR8K_ARCHIVES = ("Flickr8k_Dataset.zip", "Flickr8k_text.zip")
# archive name -> SHA-256 hex. Empty on purpose: only add values verified against the files.
KNOWN_SHA256: dict[str, str] = {}
DOWNLOADS_DIR = "downloads"
_ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_CHUNK = 1 << 20
RETRY_DELAY_S = 2.0  # first back-off between retries; doubles each time
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def is_archive(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with (
        open(path, "rb") as handle,
        _bar(path.stat().st_size, f"hash {path.name}", progress) as bar,
    ):
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _bar(total: int | None, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    return tqdm(
        total=total, initial=initial, desc=desc, unit="B", unit_scale=True, disable=not enabled
    )


def _write_sidecar(path: Path, digest: str) -> None:
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")


def _check_digest(path: Path, digest: str, expected: str | None) -> None:
    if expected is not None and digest.lower() != expected.lower():
        raise IcapnetError(f"{path}: SHA-256 mismatch (expected {expected.lower()}, got {digest})")


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``dest`` (resuming a ``.part`` file) and return its SHA-256.

    A complete ``dest`` is reused when it matches ``sha256`` (or when none is given). On a
    checksum mismatch the partial data is deleted and ``IcapnetError`` is raised, so a bad
    file is never left under the final name.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        digest = sha256_file(dest, progress)
        if sha256 is None or digest.lower() == sha256.lower():
            log.info("%s: already downloaded (sha256 %s)", dest, digest)
            _write_sidecar(dest, digest)
            return digest
        log.warning("%s: checksum differs from the expected value; downloading again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            digest = _fetch_into(url, part, timeout, progress)
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            transient = (408, 429, 500, 502, 503, 504)
            if isinstance(err, urllib.error.HTTPError) and err.code not in transient:
                raise IcapnetError(f"{url}: HTTP {err.code} {err.reason}") from err
            if attempt == retries:
                raise IcapnetError(f"{url}: download failed after {retries} tries ({err})") from err
            log.warning("%s: %s; retrying (%d/%d)", url, err, attempt, retries)
            time.sleep(min(RETRY_DELAY_S * 2.0 ** (attempt - 1), 10.0))
    try:
        _check_digest(dest, digest, sha256)
    except IcapnetError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    _write_sidecar(dest, digest)
    return digest


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> str:
    """One attempt: append the missing bytes to ``part``; returns the digest of the whole."""
    digest = hashlib.sha256()
    offset = 0
    if part.is_file():
        with open(part, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                offset += len(chunk)
    request = urllib.request.Request(url, headers={"User-Agent": "icapnet-downloader"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Range not satisfiable: the .part already holds the whole file (or is bogus).
            total = _total_from_content_range(err.headers.get("Content-Range"))
            if total == offset:
                return digest.hexdigest()
            part.unlink()
            raise urllib.error.URLError("stale partial download discarded") from err
        raise
    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        if offset and status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise urllib.error.URLError(f"server resumed at byte {start}, not {offset}")
            mode = "ab"
            log.info("%s: resuming at byte %d", url, offset)
        else:
            if offset:
                log.info("%s: server ignored the Range request; starting over", url)
            digest, offset, mode = hashlib.sha256(), 0, "wb"
        expected_total = offset + int(length) if length and length.isdigit() else None
        with (
            open(part, mode) as handle,
            _bar(expected_total, part.name.removesuffix(".part"), progress, offset) as bar,
        ):
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                offset += len(chunk)
                bar.update(len(chunk))
    if expected_total is not None and offset != expected_total:
        raise http.client.IncompleteRead(b"", expected_total - offset)
    return digest.hexdigest()


def _start_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes [\d*-]+/(\d+)", value or "")
    return int(match.group(1)) if match else None


# -------------------------------------------------------------------------------- unpacking


def _member_ok(name: str, archive: Path) -> bool:
    """False for macOS junk; raises for paths escaping the target (zip-slip)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if (
        not parts
        or parts[0] == "__MACOSX"
        or parts[-1].startswith("._")
        or parts[-1] == ".DS_Store"
    ):
        return False
    if name.startswith("/") or ".." in parts or ":" in parts[0]:
        raise IcapnetError(f"{archive}: unsafe path in archive: {name!r}")
    return True


def _extract(archive: Path, target: Path) -> None:
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.infolist() if _member_ok(m.filename, archive)]
                for member in tqdm(members, desc=f"unpack {archive.name}", unit="file"):
                    zf.extract(member, target)
        else:
            with tarfile.open(archive) as tf:
                members = [
                    m
                    for m in tf.getmembers()
                    if _member_ok(m.name, archive) and (m.isfile() or m.isdir())
                ]
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(target, members=members, filter="data")
                else:  # Python without extraction filters; members were checked above
                    tf.extractall(target, members=members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise IcapnetError(f"{archive}: not a readable archive ({err})") from err


def _move_entries(source_dir: Path, data_dir: Path) -> list[Path]:
    """Rename each top-level entry of ``source_dir`` into ``data_dir`` (replacing old ones)."""
    moved = []
    for entry in sorted(source_dir.iterdir()):
        target = data_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            old = data_dir / f".{entry.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(entry, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if target.is_symlink() or target.is_file():
                target.unlink()
            os.replace(entry, target)
        moved.append(target)
    return moved


def unpack_archive(archive: str | Path, data_dir: str | Path) -> list[Path]:
    """Unpack a .zip/.tar(.gz) into ``data_dir``; returns the top-level paths it created."""
    archive, data_dir = Path(archive), Path(data_dir)
    if not archive.is_file():
        raise IcapnetError(f"{archive}: archive not found")
    if not is_archive(archive.name):
        raise IcapnetError(f"{archive}: not a supported archive ({', '.join(_ARCHIVE_SUFFIXES)})")
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".unpack-{archive.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _extract(archive, tmp)
        return _move_entries(tmp, data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_folder(source: str | Path, data_dir: str | Path) -> list[Path]:
    """Copy an already unpacked dataset folder into ``data_dir`` (entry by entry, atomically)."""
    source, data_dir = Path(source), Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".copy-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("__MACOSX", ".DS_Store"))
        return _move_entries(tmp, data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------- flickr8k


def parse_checksums(values: Iterable[str], names: Iterable[str]) -> dict[str, str]:
    """``["HEX"]`` (only with a single archive) or ``["NAME=HEX", ...]`` -> {name: hex}."""
    names = list(names)
    out: dict[str, str] = {}
    for value in values:
        name, sep, hex_ = value.rpartition("=")
        if not sep:
            if len(names) != 1:
                raise IcapnetError(
                    f"--sha256 {value}: several archives ({', '.join(names)}); use NAME=HEX"
                )
            name, hex_ = names[0], value
        if not _HEX64.match(hex_):
            raise IcapnetError(f"--sha256 {value}: not a 64-digit hex SHA-256")
        out[name] = hex_.lower()
    return out


def _looks_like_flickr8k(folder: Path) -> bool:
    kaggle = (folder / "captions.txt").is_file() and (folder / "Images").is_dir()
    images = (folder / "Flicker8k_Dataset").is_dir() or (folder / "Flickr8k_Dataset").is_dir()
    tokens = (folder / "Flickr8k.token.txt").is_file() or (
        folder / "Flickr8k_text" / "Flickr8k.token.txt"
    ).is_file()
    return kaggle or (images and tokens)


def _sources(source: str | None) -> tuple[list[tuple[str, str]], list[Path], Path | None]:
    """(urls to download as (name, url), local archives, local dataset folder)."""
    if source is None:
        return [(n, FLICKR8K_BASE_URL + n) for n in FLICKR8K_ARCHIVES], [], None
    if is_url(source):
        name = source.rstrip("/").rsplit("/", 1)[-1]
        if is_archive(name):
            return [(name, source)], [], None
        base = source if source.endswith("/") else source + "/"
        return [(n, base + n) for n in FLICKR8K_ARCHIVES], [], None
    path = Path(source).expanduser()
    if path.is_file():
        return [], [path], None
    if path.is_dir():
        archives = [path / n for n in FLICKR8K_ARCHIVES if (path / n).is_file()]
        if archives:
            return [], archives, None
        if _looks_like_flickr8k(path):
            return [], [], path
        raise IcapnetError(
            f"{path}: neither holds {' / '.join(FLICKR8K_ARCHIVES)} nor a Flickr8k layout"
        )
    raise IcapnetError(f"{source}: no such file, folder or URL")


def archive_names(source: str | None) -> list[str]:
    """Names of the archives ``source`` resolves to (for matching ``--sha256 NAME=HEX``)."""
    urls, archives, _ = _sources(source)
    return [name for name, _ in urls] + [a.name for a in archives]


def fetch_flickr8k(
    data_dir: str | Path,
    source: str | None = None,
    sha256: Mapping[str, str] | None = None,
    *,
    force: bool = False,
    keep_archives: bool = True,
    progress: bool = True,
) -> Path:
    """Make ``data_dir`` hold Flickr8k (original or Kaggle layout) and return it.

    ``source``: None (download the standard archives), a URL of one archive or of a folder
    holding both, a local archive, or a local folder (holding the archives or an unpacked
    dataset). ``sha256`` maps archive names to expected digests. A folder that already
    holds Flickr8k is left alone unless ``force``.
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise IcapnetError(f"{data_dir}: exists and is not a folder")
    if not force and _looks_like_flickr8k(data_dir):
        log.info("%s: Flickr8k already present (use force to redo)", data_dir)
        return data_dir
    urls, archives, folder = _sources(source)
    expected = {**KNOWN_SHA256, **(sha256 or {})}
    downloaded = []
    for name, url in urls:
        dest = data_dir / DOWNLOADS_DIR / name
        digest = download_file(url, dest, expected.get(name), progress=progress)
        note = "verified" if name in expected else "not verified: no trusted checksum known"
        log.warning("%s: sha256 %s (%s)", dest, digest, note)
        archives.append(dest)
        downloaded.append(dest)
    for archive in archives:
        if archive not in downloaded:
            digest = sha256_file(archive, progress)
            _check_digest(archive, digest, expected.get(archive.name))
            log.info("%s: sha256 %s", archive, digest)
        unpack_archive(archive, data_dir)
    if folder is not None and folder.resolve() != data_dir.resolve():
        copy_folder(folder, data_dir)
    if not _looks_like_flickr8k(data_dir):
        raise IcapnetError(
            f"{data_dir}: unpacked, but no Flickr8k layout found (expected Images/ + "
            f"captions.txt, or Flicker8k_Dataset/ + Flickr8k.token.txt)"
        )
    if not keep_archives:
        for path in downloaded:
            path.unlink(missing_ok=True)
    return data_dir


__all__ = [
    "FLICKR8K_ARCHIVES",
    "FLICKR8K_BASE_URL",
    "KNOWN_SHA256",
    "archive_names",
    "copy_folder",
    "download_file",
    "fetch_flickr8k",
    "parse_checksums",
    "sha256_file",
    "unpack_archive",
]
