"""``--model`` as a packaged ``.zip`` or an ``http(s)://`` URL of one -> a local model folder.

Models from packages live in a cache: ``$ICAPNET_CACHE/models`` (default
``~/.cache/icapnet/models``, or ``$XDG_CACHE_HOME/icapnet/models``).

- A local ``.zip`` is unpacked once into ``models/<stem>-<sha256[:12]>/`` (content-addressed:
  the same bytes are never unpacked twice, changed bytes get a new folder). A sidecar
  ``<file>.zip.sha256`` beside it, when present, must match.
- A URL is downloaded once, with ``icapnet.data.download.download_file`` (``.part`` file
  resumed with an HTTP Range request; SHA-256 computed on the way), into
  ``models/downloads/``, checked, unpacked into ``models/<stem>-<sha256(url)[:12]>/`` and
  the zip deleted. Later runs use that folder without touching the network.

Which checksum a URL must match, strongest first: ``URL#sha256=HEX`` (pinned by whoever
gave the link; a cached copy with another digest is fetched again); else the sidecar
``URL.sha256`` when the server has one (``python -m icapnet.package`` writes it); else only the
manifest inside the zip, which catches truncation and corruption but not a deliberate swap (a
warning says so). Any failure is one line; a refused download is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from icapnet.errors import IcapnetError
from icapnet.layout import CONFIG_FILE
from icapnet.layout import PACKAGE_SOURCE_FILE as SOURCE_FILE
from icapnet.model.package import sha256_of, unpack_model

log = logging.getLogger(__name__)

CACHE_ENV = "ICAPNET_CACHE"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_TIMEOUT_S = 30.0


def is_model_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def models_cache() -> Path:
    """Where unpacked packages live (created on first use)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "icapnet"
    return base / "models"


def fetch_model(spec: str) -> Path:
    """The local model folder of a ``.zip`` path or an http(s) URL (unpacked once, cached)."""
    if is_model_url(spec):
        return _from_url(spec)
    return _from_zip(Path(spec).expanduser())


def _stem(name: str) -> str:
    stem = name[:-4] if name.lower().endswith(".zip") else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "model"


def _from_zip(archive: Path) -> Path:
    if not archive.is_file():
        raise IcapnetError(f"{archive}: model package not found")
    digest = sha256_of(archive)
    sidecar = archive.with_name(archive.name + ".sha256")
    if sidecar.is_file():
        _check(archive, digest, _read_sidecar(sidecar.read_text(errors="replace"), sidecar))
    target = models_cache() / f"{_stem(archive.name)}-{digest[:12]}"
    if (target / CONFIG_FILE).is_file():
        return target
    log.info("unpacking %s into %s", archive, target)
    return unpack_model(archive, target,
                        {"source": str(archive.resolve()), "sha256": digest})


def _read_sidecar(text: str, where: object) -> str:
    token = text.split()[0] if text.split() else ""
    if not _HEX64.match(token):
        raise IcapnetError(f"{where}: not a sha256 checksum file (pin one with "
                           "'URL#sha256=HEX' instead)")
    return token.lower()


def _check(what: object, digest: str, expected: str) -> None:
    if digest.lower() != expected.lower():
        raise IcapnetError(f"{what}: SHA-256 mismatch (expected {expected}, got {digest}); "
                           "refused")


def _split_url(spec: str) -> tuple[str, str | None]:
    """(URL without fragment, sha256 pinned in '#sha256=HEX' or None)."""
    url, _, fragment = spec.partition("#")
    if not fragment:
        return url, None
    params = urllib.parse.parse_qs(fragment)
    pinned = params.get("sha256", [""])[0]
    if not _HEX64.match(pinned):
        raise IcapnetError(f"{spec}: the URL fragment must be '#sha256=<64 hex digits>'")
    return url, pinned.lower()


def _recorded_sha256(target: Path) -> str | None:
    try:
        return json.loads((target / SOURCE_FILE).read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _from_url(spec: str) -> Path:
    from icapnet.data.download import download_file  # urllib/tqdm: only when a URL is used

    url, pinned = _split_url(spec)
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    key = f"{_stem(name)}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
    target = models_cache() / key
    if (target / CONFIG_FILE).is_file() and pinned in (None, _recorded_sha256(target)):
        return target  # downloaded before: no network
    expected = pinned or _sidecar_digest(url)
    if expected is None:
        log.warning("%s: no checksum published (no #sha256= and no .sha256 beside it); "
                    "checking only the package's own manifest", url)
    dest = models_cache() / "downloads" / f"{key}.zip"
    try:
        digest = download_file(url, dest, None, timeout=_TIMEOUT_S,
                               progress=sys.stderr.isatty())
        if expected is not None:
            _check(url, digest, expected)
        return unpack_model(dest, target, {"source": url, "sha256": digest})
    finally:  # unpacked or refused: the zip is not kept (the .part of a broken-off one is)
        dest.unlink(missing_ok=True)
        dest.with_name(dest.name + ".sha256").unlink(missing_ok=True)


def _sidecar_digest(url: str) -> str | None:
    """The digest in ``URL.sha256`` if the server has that file; None when it has not."""
    request = urllib.request.Request(url + ".sha256", headers={"User-Agent": "icapnet"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            text = response.read(4096).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        if err.code in (403, 404, 410):
            return None
        raise IcapnetError(f"{url}.sha256: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise IcapnetError(f"{url}: cannot reach the server ({reason}); offline?") from err
    return _read_sidecar(text, f"{url}.sha256")


__all__ = ["CACHE_ENV", "fetch_model", "is_model_url", "models_cache"]
