"""``python -m icapnet.caption`` end to end on the tiny trained model."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icapnet import caption
from icapnet.config import Config
from icapnet.errors import run_cli
from icapnet.inference.captioning import expand_inputs
from icapnet.model.store import find_default_model, resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, sample_images: list[Path]) -> dict:
    folder = tmp_path_factory.mktemp("bad")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(sample_images[0].read_bytes()[:400])
    text = folder / "notes.png"
    text.write_text("not an image at all\n")
    return {"truncated": truncated, "text": text, "missing": folder / "missing.jpg"}


def test_batch_with_bad_files_attention_and_exit_code(
    tiny_model_dir: Path, sample_images: list[Path], bad_files: dict, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    att = tmp_path / "att"
    regions = Config.load(tiny_model_dir).model.num_regions
    grid = math.isqrt(regions)  # 14 for VGG16 at 224 px; the tiny model may use smaller images
    paths = [sample_images[0], bad_files["truncated"], sample_images[1], bad_files["text"],
             bad_files["missing"], sample_images[2]]  # fmt: skip
    code = caption.main([*map(str, paths), "--model", str(tiny_model_dir),
                         "--attention-dir", str(att), "--batch-size", "2"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 4
    # The tiny model was trained on synthetic scenes: one line says so, first.
    assert err_lines.pop(0) == (f"note: {tiny_model_dir.name} was trained on synthetic scenes "
                                "(coloured shapes); it describes any photo as shapes")
    for line, bad in zip(err_lines, ("truncated", "text", "missing"), strict=True):
        assert line.startswith(f"error: {bad_files[bad]}: ")
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in sample_images]
    for line, path in zip(lines, sample_images, strict=True):
        text = line.split("\t")[1]
        assert len(text.split()) >= 3, line  # the tiny model writes real sentences
        words = text.split()
        data = np.load(att / f"{path.stem}_attention.npz")
        assert data["words"].tolist() == words
        assert str(data["caption"]) == text and str(data["image_path"]) == str(path)
        maps = data["attention"]
        assert maps.shape == (len(words), grid, grid)
        np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-3)  # softmax over regions
        np.testing.assert_allclose(data["end_attention"].sum(), 1.0, atol=1e-3)
        with Image.open(att / f"{path.stem}_attention.png") as png:
            assert png.info["Panels"] == str(len(words) + 2)  # photo, each word, <end>
            assert png.info["Words"] == text and png.info["Caption"] == text
    assert not (att / "truncated_attention.png").exists()


def test_attention_gif_steps_through_the_words(
    tiny_model_dir: Path, sample_images: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    att = tmp_path / "gif"
    code = caption.main([str(sample_images[0]), "--model", str(tiny_model_dir), "--json",
                         "--attention-dir", str(att), "--attention-format", "gif"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    gif = Path(record["attention_gif"])
    assert gif == att / f"{sample_images[0].stem}_attention.gif" and "attention_png" not in record
    with Image.open(gif) as frames:
        assert frames.format == "GIF" and frames.is_animated
        assert frames.n_frames == len(record["words"]) + 2  # photo, each word, <end>
        assert frames.info["loop"] == 0


def test_json_lines_folder_glob_and_beam(
    tiny_model_dir: Path, sample_images: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_images[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "readme.txt").write_text("skipped: not an image extension")
    (tmp_path / "globbed").mkdir()
    shutil.copy(sample_images[2], tmp_path / "globbed" / "third.jpg")
    pattern = str(tmp_path / "glob*" / "*.jpg")
    code = caption.main([str(folder), pattern, "--model", str(tiny_model_dir), "--json",
                         "--beam", "2", "--max-length", "6"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert [Path(r["path"]).name for r in records[:2]] == [p.name for p in sample_images[:2]]
    assert len(records) == 3 and records[2]["path"] == str(tmp_path / "globbed" / "third.jpg")
    for record in records:
        assert set(record) == {"path", "caption", "score", "words"}
        assert record["caption"] == " ".join(record["words"])
        assert len(record["words"]) <= 6  # --max-length caps the caption
        assert record["score"] < 0  # a log-probability


def test_single_image_prints_only_the_caption(
    tiny_model_dir: Path, sample_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert caption.main([str(sample_images[0]), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\t" not in out and len(out.split()) >= 3


def test_default_model_is_newest_under_saved_models(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "saved_models"
    for name, age in (("old", 100), ("new", 10)):
        shutil.copytree(tiny_model_dir, models / name)
        stamp = time.time() - age
        for f in (models / name).iterdir():
            os.utime(f, (stamp, stamp))
    (models / "not_a_model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert find_default_model() == Path("saved_models") / "new"
    assert resolve_model(None) == Path("saved_models") / "new"


def test_model_errors_are_one_line_exit_2(
    tmp_path: Path, sample_images: list[Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no saved_models/ here
    assert run_cli(caption.main, [str(sample_images[0])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: saved_models: no trained model found")
    assert run_cli(caption.main, [str(sample_images[0]), "--model", "nowhere"]) == 2
    assert capsys.readouterr().err == "error: nowhere: model directory not found\n"
    (tmp_path / "empty").mkdir()
    assert run_cli(caption.main, [str(sample_images[0]), "--model", "empty"]) == 2
    assert "empty: not a model directory (no config.json)" in capsys.readouterr().err


def test_expand_inputs_reports_empty_folder_and_pattern(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    paths, errors = expand_inputs(
        [str(tmp_path), str(tmp_path / "empty"), str(tmp_path / "*.png"), "given.txt"]
    )
    assert paths == [tmp_path / "a.jpg", Path("given.txt")]  # named files are always tried
    assert errors == [f"{tmp_path / 'empty'}: folder has no image files",
                      f"{tmp_path / '*.png'}: no image files match this pattern"]  # fmt: skip


def test_module_entry_point_subprocess(
    tiny_model_dir: Path, sample_images: list[Path], bad_files: dict
) -> None:
    """The one real ``python -m icapnet.caption`` run: exit code and stderr via run_cli, and
    nothing of TensorFlow's native start-up chatter (issue 11 #8)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "icapnet.caption", str(bad_files["truncated"]),
         str(sample_images[0]), "--model", str(tiny_model_dir)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    note, error = done.stderr.splitlines()  # nothing else: no native start-up lines
    assert note == (f"note: {tiny_model_dir.name} was trained on synthetic scenes (coloured "
                    "shapes); it describes any photo as shapes")
    assert error.startswith(f"error: {bad_files['truncated']}: corrupt or truncated image")
    line = done.stdout.strip()
    assert line.startswith(f"{sample_images[0]}\t") and len(line.split("\t")[1].split()) >= 3


def test_the_default_beam_is_one_constant(tiny_model_dir: Path) -> None:
    """CLI, Python API, web API and page all start from DEFAULT_BEAM (issue 11 #8)."""
    import inspect
    import re

    from icapnet.config import DEFAULT_BEAM
    from icapnet.inference.predictor import Predictor
    from icapnet.web.app import STATIC_DIR

    assert caption.build_parser().parse_args(["x.jpg"]).beam == DEFAULT_BEAM
    for method in (Predictor.caption_images, Predictor.caption_paths, Predictor.caption_bytes):
        assert inspect.signature(method).parameters["beam_size"].default == DEFAULT_BEAM
    slider = re.search(r'id="beam-size"[^>]*value="(\d+)"', (STATIC_DIR / "index.html").read_text())
    shown = re.search(r'id="beam-value"[^>]*>(\d+)<', (STATIC_DIR / "index.html").read_text())
    assert int(slider.group(1)) == int(shown.group(1)) == DEFAULT_BEAM
