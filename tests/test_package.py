"""Packaged models: one .zip (manifest + sha256 sidecar) that --model accepts; bad zips refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from icapnet import caption, evaluate, export, serve
from icapnet.__main__ import main as icapnet_main
from icapnet.errors import IcapnetError, run_cli
from icapnet.model import hub
from icapnet.model.package import MANIFEST_FILE, pack_model
from icapnet.model.store import resolve_model

CORE = {"config.json", "vocab.json", "model.weights.h5"}


@pytest.fixture(scope="module")
def evaluated_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model plus a metrics.json, as after evaluate."""
    model = tmp_path_factory.mktemp("pk") / "tiny"
    shutil.copytree(tiny_model_dir, model)
    (model / "metrics.json").write_text('{"test": {"beam1": {"BLEU-4": 0.5}}}\n')
    return model


@pytest.fixture(scope="module")
def packed(evaluated_model, tmp_path_factory) -> Path:
    return pack_model(evaluated_model, tmp_path_factory.mktemp("zips") / "tiny.zip").path


def _models(cache: Path) -> list[Path]:
    """Folders in the model cache that look like a model."""
    return sorted(p.parent for p in cache.glob("*/config.json")) if cache.is_dir() else []


def test_package_holds_what_captioning_needs_with_checksums(packed, evaluated_model, tmp_path):
    with zipfile.ZipFile(packed) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST_FILE))
        assert names == CORE | {"metrics.json", MANIFEST_FILE}  # not model.keras
        for name, entry in manifest["files"].items():
            data = zf.read(name)
            assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        assert zf.read("model.weights.h5") == (evaluated_model / "model.weights.h5").read_bytes()
    assert manifest["format"] == "icapnet-model" and manifest["backbone"] is None
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()
    assert (packed.parent / "tiny.zip.sha256").read_text() == f"{digest}  tiny.zip\n"
    # The same model packs to the same bytes (so its sha256 is stable).
    assert pack_model(evaluated_model, tmp_path / "again.zip").sha256 == digest


def test_package_cli_prints_sha256(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "share" / "m.zip"
    assert icapnet_main(["package", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"model package: {out}" in text and f"sha256    {digest}" in text
    assert "no metrics.json" in text
    assert run_cli(icapnet_main, ["package", "--model", str(tmp_path / "nope")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_local_zip_is_unpacked_once_and_checked_against_its_sidecar(packed, model_cache,
                                                                    tmp_path):
    first = resolve_model(str(packed))
    assert first.parent == model_cache and (first / "metrics.json").is_file()
    stamp = (first / "config.json").stat().st_mtime_ns
    assert resolve_model(str(packed)) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # not unpacked again
    moved = tmp_path / "copy.zip"
    shutil.copy(packed, moved)
    (tmp_path / "copy.zip.sha256").write_text("0" * 64 + "  copy.zip\n")
    with pytest.raises(IcapnetError, match=r"copy\.zip: SHA-256 mismatch"):
        resolve_model(str(moved))


def test_backbone_weights_file_travels_with_the_model(tiny_model_dir, model_cache, tmp_path):
    """A fine-tuned model names its backbone file by absolute path: packed and re-pointed."""
    model = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, model)
    backbone = model / "backbone.weights.h5"
    backbone.write_bytes(b"stand-in for the tuned backbone's weights" * 100)
    config = json.loads((model / "config.json").read_text())
    config["features"]["weights"] = str(backbone.resolve())
    (model / "config.json").write_text(json.dumps(config))
    zip_path = pack_model(model, tmp_path / "tuned.zip").path
    with zipfile.ZipFile(zip_path) as zf:
        assert json.loads(zf.read("config.json"))["features"]["weights"] == "backbone.weights.h5"
    unpacked = hub.fetch_model(str(zip_path))
    weights = json.loads((unpacked / "config.json").read_text())["features"]["weights"]
    assert weights == str((unpacked / "backbone.weights.h5").resolve())
    assert Path(weights).read_bytes() == backbone.read_bytes()
    config["features"]["weights"] = str(tmp_path / "gone.weights.h5")
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(IcapnetError, match=r"gone\.weights\.h5, which is not a file"):
        pack_model(model, tmp_path / "broken.zip")


def _rewrite(packed: Path, out: Path, edit) -> Path:
    """Copy ``packed`` member by member, letting ``edit(zf_out, name, data)`` change things."""
    with zipfile.ZipFile(packed) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            edit(dst, info.filename, src.read(info.filename))
    return out


def _with_entry(entry: zipfile.ZipInfo | str, data: bytes = b"x"):
    def edit(dst, name, payload):
        dst.writestr(name, payload)
        if name == MANIFEST_FILE:
            dst.writestr(entry, data)
    return edit


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link.h5")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _tamper(dst, name, data):
    dst.writestr(name, data.replace(b"<pad>", b"<bad>") if name == "vocab.json" else data)


def _no_manifest(dst, name, data):
    if name != MANIFEST_FILE:
        dst.writestr(name, data)


def _bad_package(kind: str, packed: Path, out: Path) -> Path:
    if kind == "truncated":
        out.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
        return out
    if kind == "not-a-zip":
        out.write_bytes(b"PK\x03\x04 not really a zip")
        return out
    edits = {"dotdot": _with_entry("../evil.txt"), "absolute": _with_entry("/etc/evil"),
             "nested": _with_entry("sub/../../x"), "symlink": _with_entry(_symlink_entry()),
             "extra": _with_entry("extra.txt"), "tampered": _tamper,
             "no-manifest": _no_manifest}
    return _rewrite(packed, out, edits[kind])


@pytest.mark.parametrize("kind,message", [
    ("dotdot", "unsafe or unexpected entry '../evil.txt'"),
    ("absolute", "unsafe or unexpected entry '/etc/evil'"),
    ("nested", "unsafe or unexpected entry 'sub/../../x'"),
    ("symlink", "unsafe or unexpected entry 'link.h5'"),
    ("extra", "entries and icapnet-package.json disagree (extra.txt)"),
    ("tampered", "vocab.json does not match the package manifest"),
    ("no-manifest", "not an icapnet model package"),
    ("truncated", "not a readable zip"),
    ("not-a-zip", "not a readable zip"),
])
def test_bad_packages_are_refused_in_one_line_and_leave_nothing(
        packed, model_cache, tmp_path, capsys, sample_images, kind, message):
    bad = _bad_package(kind, packed, tmp_path / "bad.zip")
    code = run_cli(caption.main, [str(sample_images[0]), "--model", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {bad}: ") and message in err
    assert _models(model_cache) == []
    assert not model_cache.exists() or not any(model_cache.iterdir())  # no temp left either


def test_every_model_flag_takes_a_package(tmp_path, model_cache, capsys):
    """caption / evaluate / serve / export all resolve --model through the same code."""
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"garbage")
    for main, extra in ((evaluate.main, []), (serve.main, ["--no-warmup"]),
                        (export.main, ["--out", str(tmp_path / "e")]), (caption.main, ["a.jpg"])):
        assert run_cli(main, [*extra, "--model", str(bad)]) == 2
        assert capsys.readouterr().err == (
            f"error: {bad}: not a readable zip (File is not a zip file); the file is "
            "truncated or corrupted\n")
    missing = tmp_path / "absent.zip"
    assert run_cli(caption.main, ["a.jpg", "--model", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: model package not found\n"
