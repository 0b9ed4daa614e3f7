"""--model https://.../model.zip: downloaded once (resumable), checksum-verified, unpacked.

Served by the LocalHTTPServer of conftest.py on 127.0.0.1 (Range support, fault injection).
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from icapnet import caption
from icapnet.errors import IcapnetError, run_cli
from icapnet.model import hub
from icapnet.model.package import pack_model
from icapnet.model.store import resolve_model


@pytest.fixture(scope="module")
def zip_bytes(tiny_model_dir, tmp_path_factory) -> bytes:
    return pack_model(tiny_model_dir, tmp_path_factory.mktemp("url") / "tiny.zip").path.read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _caption(model: str, image: Path, capsys) -> str:
    assert caption.main([str(image), "--model", model]) == 0
    return capsys.readouterr().out.strip()


def _leftovers(cache: Path) -> list[str]:
    """Everything in the model cache except an interrupted download's .part file."""
    if not cache.is_dir():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and not p.name.endswith(".part"))


def test_caption_from_dir_zip_and_url_agree(tiny_model_dir, sample_images, http_server,
                                            model_cache, tmp_path, zip_bytes, capsys):
    image = sample_images[0]
    from_dir = _caption(str(tiny_model_dir), image, capsys)
    assert from_dir  # the tiny model writes words
    local_zip = tmp_path / "tiny.zip"
    local_zip.write_bytes(zip_bytes)
    assert _caption(str(local_zip), image, capsys) == from_dir

    http_server.files["models/tiny.zip"] = zip_bytes
    http_server.files["models/tiny.zip.sha256"] = f"{_sha(zip_bytes)}  tiny.zip\n".encode()
    url = http_server.url + "models/tiny.zip"
    assert _caption(url, image, capsys) == from_dir
    assert http_server.paths == ["/models/tiny.zip.sha256", "/models/tiny.zip"]
    unpacked = resolve_model(url)
    assert unpacked.parent == model_cache and (unpacked / "model.weights.h5").is_file()
    assert not list((model_cache / "downloads").iterdir())  # the zip is not kept
    # Downloaded once: the next run does not touch the network.
    assert _caption(url, image, capsys) == from_dir
    assert len(http_server.paths) == 2


def test_resumes_a_partial_download(http_server, model_cache, zip_bytes):
    http_server.files["tiny.zip"] = zip_bytes
    url = f"{http_server.url}tiny.zip#sha256={_sha(zip_bytes)}"
    # A previous run stopped after 1000 bytes; this one asks only for the rest...
    part = model_cache / "downloads" / "tiny-{}.zip.part".format(
        hashlib.sha256(url.split("#")[0].encode()).hexdigest()[:12])
    part.parent.mkdir(parents=True)
    part.write_bytes(zip_bytes[:1000])
    # ...and its connection drops half-way too: resumed again, from where it broke off.
    http_server.cut_first_response_at = 5000
    model = hub.fetch_model(url)
    assert http_server.ranges == ["bytes=1000-", "bytes=6000-"]
    assert (model / "config.json").is_file() and not part.exists()
    assert hub.fetch_model(url) == model and len(http_server.ranges) == 2  # cached


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]


@pytest.mark.parametrize("case", ["no-checksum", "sidecar", "pinned", "truncated"])
def test_corrupted_download_is_refused(http_server, model_cache, zip_bytes, capsys, case):
    bad = zip_bytes[: len(zip_bytes) // 2] if case == "truncated" else _corrupt(zip_bytes)
    http_server.files["m.zip"] = bad
    url = http_server.url + "m.zip"
    if case == "sidecar":
        http_server.files["m.zip.sha256"] = f"{_sha(zip_bytes)}  m.zip\n".encode()
    if case == "pinned":
        url += f"#sha256={_sha(zip_bytes)}"
    code = run_cli(caption.main, ["x.jpg", "--model", url])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    if case in ("sidecar", "pinned"):
        assert f"{url.split('#')[0]}: SHA-256 mismatch (expected {_sha(zip_bytes)}" in err
    elif case == "truncated":
        assert "not a readable zip" in err
    else:
        assert "does not match the package manifest" in err or "is corrupted" in err
    assert _leftovers(model_cache) == []  # nothing unpacked, the bad download deleted
    # Fixed on the server: the next run fetches it again and works.
    http_server.files["m.zip"] = zip_bytes
    assert (hub.fetch_model(url) / "config.json").is_file()


def test_unreachable_server_and_http_errors_are_one_line(http_server, model_cache, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m.zip"
    assert run_cli(caption.main, ["x.jpg", "--model", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url}: cannot reach the server") and err.count("\n") == 1
    assert run_cli(caption.main, ["x.jpg", "--model", http_server.url + "nope.zip"]) == 2
    assert capsys.readouterr().err == f"error: {http_server.url}nope.zip: HTTP 404 Not Found\n"
    with pytest.raises(IcapnetError, match="fragment must be '#sha256=<64 hex digits>'"):
        hub.fetch_model(http_server.url + "m.zip#sha256=abc")
    assert _leftovers(model_cache) == []


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(hub.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.models_cache() == tmp_path / "xdg" / "icapnet" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.models_cache() == tmp_path / "home" / ".cache" / "icapnet" / "models"
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "c"))
    assert hub.models_cache() == tmp_path / "c" / "models"
