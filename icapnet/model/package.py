"""A trained model as one shareable file: pack a model directory into a .zip, check, unpack.

In the zip (flat, no folders): ``config.json``, ``vocab.json``, ``model.weights.h5`` (what
``Predictor`` needs), ``metrics.json``, ``history.csv``, ``loss.png`` when present (what the
web page's info shows), the backbone weights when ``config.features.weights`` names a local
file (a fine-tuned or user-supplied backbone; it travels as ``backbone.weights.h5``, and the
packed config.json names it relatively), and ``icapnet-package.json``: format version and the
sha256 + size of every other member. ``model.keras``, ``checkpoints/``, ``logs/`` and
evaluation results stay behind: nothing needs them to caption.

The zip's own sha256 is written beside it (``<file>.zip.sha256``, ``sha256sum`` format) for
whoever publishes it. Members are written in a fixed order with fixed timestamps, so one model
always packs to the same bytes (and the same sha256).

Unpacking refuses, in one line, a file that is not a readable zip (truncated, corrupted),
entries that are not plain file names (absolute, ``..``, folders, links) or are not in the
manifest, and members whose bytes differ from the manifest (sha256, size, zip CRC). It writes
into a temporary folder beside the target and renames it into place only when all of that
passed, so a folder that looks like a model is never half-unpacked.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icapnet import __version__
from icapnet.errors import IcapnetError
from icapnet.io import atomic_path, atomic_write_text
from icapnet.layout import BACKBONE_WEIGHTS_FILE as BACKBONE_FILE  # what fine-tuning writes
from icapnet.layout import (
    CONFIG_FILE,
    HISTORY_FILE,
    LEGACY_BACKBONE_FILE,
    LOSS_PLOT_FILE,
    METRICS_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
)
from icapnet.layout import PACKAGE_MANIFEST_FILE as MANIFEST_FILE

PACKAGE_FORMAT = "icapnet-model"
PACKAGE_VERSION = 1
REQUIRED = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE)
OPTIONAL = (METRICS_FILE, HISTORY_FILE, LOSS_PLOT_FILE)
_BUILTIN_WEIGHTS = {"", "none", "imagenet"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


@dataclass
class PackedModel:
    path: Path
    sha256: str
    bytes: int
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "bytes"}
    backbone: str | None  # member name of the backbone weights, if packed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(path: Path, digest: str) -> Path:
    """``<path>.sha256`` in ``sha256sum`` format (``sha256sum -c`` checks it)."""
    sidecar = path.with_name(path.name + ".sha256")
    atomic_write_text(sidecar, f"{digest}  {path.name}\n")
    return sidecar


# ------------------------------------------------------------------------------ packing


def _backbone_source(model_dir: Path, config: dict[str, Any]) -> Path | None:
    weights = str(config.get("features", {}).get("weights", "") or "").strip()
    if weights.lower() in _BUILTIN_WEIGHTS:
        return None
    path = Path(weights).expanduser()
    for candidate in (path, model_dir / path):
        if candidate.is_file():
            return candidate
    raise IcapnetError(
        f"{model_dir / CONFIG_FILE}: features.weights names {weights}, which is not a file; "
        "the package needs the backbone weights the model was trained with"
    )


def _members(model_dir: Path) -> tuple[list[tuple[str, Path | bytes]], str | None]:
    """(name, source file or bytes) in packing order, and the backbone's member name."""
    for name in REQUIRED:
        if not (model_dir / name).is_file():
            raise IcapnetError(f"{model_dir}: not a complete model directory (no {name})")
    config_path = model_dir / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IcapnetError(f"{config_path}: not a readable config ({err})") from err
    if not isinstance(config, dict):
        raise IcapnetError(f"{config_path}: not a model config (expected a JSON object)")
    members: list[tuple[str, Path | bytes]] = []
    backbone = _backbone_source(model_dir, config)
    backbone_name = None
    if backbone is not None:
        backbone_name = (BACKBONE_FILE if backbone.name.endswith(".weights.h5")
                         else LEGACY_BACKBONE_FILE)
        config["features"]["weights"] = backbone_name  # relative: made absolute on unpack
    config_bytes = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    members.append((CONFIG_FILE, config_bytes))
    members += [(name, model_dir / name) for name in REQUIRED[1:]]
    members += [(name, model_dir / name) for name in OPTIONAL if (model_dir / name).is_file()]
    if backbone is not None and backbone_name is not None:
        members.append((backbone_name, backbone))
    return members, backbone_name


def _write_member(zf: zipfile.ZipFile, name: str, source: Path | bytes) -> dict[str, Any]:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    digest, size = hashlib.sha256(), 0
    with zf.open(info, "w", force_zip64=True) as out:
        chunks = [source] if isinstance(source, bytes) else _read_chunks(source)
        for chunk in chunks:
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def pack_model(model_dir: str | Path, out: str | Path) -> PackedModel:
    """Write ``model_dir`` as the package ``out`` (.zip, atomically) and its sha256 sidecar."""
    model_dir, out = Path(model_dir), Path(out)
    if not model_dir.is_dir():
        raise IcapnetError(f"{model_dir}: model directory not found")
    if out.suffix.lower() != ".zip":
        raise IcapnetError(f"{out}: a model package must end in .zip")
    members, backbone = _members(model_dir)
    files: dict[str, dict[str, Any]] = {}
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, source in members:
            files[name] = _write_member(zf, name, source)
        manifest = {"format": PACKAGE_FORMAT, "version": PACKAGE_VERSION,
                    "icapnet": __version__, "name": model_dir.resolve().name,
                    "backbone": backbone, "files": files}
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        _write_member(zf, MANIFEST_FILE, text.encode("utf-8"))
    digest = sha256_of(out)
    write_sidecar(out, digest)
    return PackedModel(out, digest, out.stat().st_size, files, backbone)


# ---------------------------------------------------------------------------- unpacking


def _open_zip(archive: Path) -> zipfile.ZipFile:
    if not archive.is_file():
        raise IcapnetError(f"{archive}: model package not found")
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise IcapnetError(
            f"{archive}: not a readable zip ({err}); the file is truncated or corrupted"
        ) from err


def _check_entries(zf: zipfile.ZipFile, archive: Path) -> None:
    seen = set()
    for info in zf.infolist():
        name = info.filename
        mode = info.external_attr >> 16
        if (not _SAFE_NAME.match(name) or info.is_dir() or stat.S_ISLNK(mode)
                or name in seen):
            raise IcapnetError(f"{archive}: unsafe or unexpected entry {name!r} (a model "
                               "package holds plain files only, no folders, links or '..')")
        seen.add(name)


def read_manifest(zf: zipfile.ZipFile, archive: Path) -> dict[str, Any]:
    """The package manifest, checked against the zip's entries."""
    _check_entries(zf, archive)
    try:
        manifest = json.loads(zf.read(MANIFEST_FILE).decode("utf-8"))
    except KeyError:
        raise IcapnetError(f"{archive}: not an icapnet model package (no {MANIFEST_FILE})"
                           ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError,
            json.JSONDecodeError) as err:
        raise IcapnetError(f"{archive}: corrupted package manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise IcapnetError(f"{archive}: not an icapnet model package ({MANIFEST_FILE})")
    if manifest.get("version") != PACKAGE_VERSION:
        raise IcapnetError(f"{archive}: package version {manifest.get('version')!r}; this "
                           f"icapnet reads version {PACKAGE_VERSION} (upgrade icapnet)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str)
        and isinstance(v.get("bytes"), int) for v in files.values()
    ):
        raise IcapnetError(f"{archive}: malformed {MANIFEST_FILE} (files)")
    entries = set(zf.namelist()) - {MANIFEST_FILE}
    if set(files) != entries:
        diff = sorted(set(files) ^ entries)
        raise IcapnetError(f"{archive}: entries and {MANIFEST_FILE} disagree ({', '.join(diff)})")
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise IcapnetError(f"{archive}: package lacks {', '.join(missing)}")
    backbone = manifest.get("backbone")
    if backbone is not None and backbone not in files:
        raise IcapnetError(f"{archive}: manifest names backbone {backbone!r}, not in the zip")
    return manifest


def _extract_member(zf: zipfile.ZipFile, name: str, expected: dict[str, Any], dest: Path,
                    archive: Path) -> None:
    digest, size = hashlib.sha256(), 0
    try:
        with zf.open(name) as src, open(dest, "wb") as out:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > expected["bytes"]:
                    break
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise IcapnetError(f"{archive}: {name} is corrupted ({err})") from err
    if size != expected["bytes"] or digest.hexdigest() != expected["sha256"].lower():
        raise IcapnetError(f"{archive}: {name} does not match the package manifest "
                           "(corrupted or altered)")


def unpack_model(archive: str | Path, target: str | Path,
                 extra: dict[str, Any] | None = None) -> Path:
    """Check ``archive`` and unpack it as the model directory ``target`` (all or nothing).

    ``extra`` is written as ``icapnet-source.json`` inside (where the package came from).
    An existing ``target`` is replaced only once the new one is complete.
    """
    archive, target = Path(archive), Path(target)
    with _open_zip(archive) as zf:
        manifest = read_manifest(zf, archive)
        with atomic_path(target) as tmp:
            tmp.mkdir(parents=True)
            for name, expected in manifest["files"].items():
                _extract_member(zf, name, expected, tmp / name, archive)
            if manifest.get("backbone"):
                _point_config_at_backbone(tmp / CONFIG_FILE,
                                          (target / manifest["backbone"]).resolve())
            atomic_write_text(tmp / MANIFEST_FILE,
                              json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if extra:
                atomic_write_text(tmp / "icapnet-source.json",
                                  json.dumps(extra, indent=2, sort_keys=True) + "\n")
    return target


def _point_config_at_backbone(config_path: Path, backbone: Path) -> None:
    """The unpacked copy names its backbone file by absolute path, as a trained dir does."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["features"]["weights"] = str(backbone)
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = [
    "MANIFEST_FILE", "PackedModel", "pack_model", "read_manifest", "sha256_of",
    "unpack_model", "write_sidecar",
]
