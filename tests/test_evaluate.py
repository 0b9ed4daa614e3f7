"""``python -m icapnet.evaluate`` on a tiny feature cache of the scenes the tiny model learned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from icapnet import evaluate
from icapnet.config import Config
from icapnet.errors import run_cli
from icapnet.inference import metrics


@pytest.fixture(scope="module")
def tiny_cache(
    synthetic_scenes_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Feature cache built with the (deterministic, weights "none") backbone the model used."""
    from icapnet.data.cache_build import build_cache
    from icapnet.data.datasets import load_dataset

    dataset = load_dataset("synthetic", synthetic_scenes_dir)
    cache = tmp_path_factory.mktemp("cache") / "cache"
    features = Config.load(tiny_model_dir).features
    assert features.weights == "none"
    return build_cache(dataset, cache, features, progress=False)


@pytest.fixture()
def model_dir(tiny_model_dir: Path, tiny_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model whose config records the cache it 'trained on'."""
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = Config.load(copy)
    config.data.cache_dir = str(tiny_cache)
    config.save(copy)
    return copy


def test_evaluate_writes_coco_results_and_metrics(
    model_dir: Path, tiny_cache: Path, synthetic_scenes_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from icapnet.data.cache import open_cache
    from icapnet.inference.captioning import load_predictor

    cache = open_cache(tiny_cache)
    assert evaluate.main(["--model", str(model_dir), "--split", "train", "--beam", "1"]) == 0
    out = capsys.readouterr().out
    assert "BLEU-4" in out and "train beam1" in out
    # It says what the model was trained on; this one: synthetic scenes, not photos.
    assert out.startswith("trained on: synthetic, ") and "not photos" in out.splitlines()[0]

    results = json.loads((model_dir / "results_train_beam1.json").read_text())
    assert [r["image_id"] for r in results] == cache.image_ids("train")
    assert all(set(r) == {"image_id", "caption"} for r in results)
    # Free-running: the same captions the Predictor writes for the photos themselves.
    photos = [synthetic_scenes_dir / "Images" / r["image_id"] for r in results[:3]]
    direct = load_predictor(model_dir).caption_paths(photos)
    assert [r["caption"] for r in results[:3]] == [d.caption for d in direct]

    scores = json.loads((model_dir / "metrics.json").read_text())["train"]["beam1"]
    assert scores["num_images"] == len(results)
    assert scores["max_length"] == Config.load(model_dir).model.max_length
    hyps = {r["image_id"]: r["caption"] for r in results}
    assert scores["BLEU-4"] == pytest.approx(
        metrics.nltk_bleu(cache.captions["train"], hyps)["BLEU-4"]
    )
    assert scores["BLEU-1"] > 0.5  # the tiny model learned these scenes' captions
    if metrics.java_available():
        assert {"METEOR", "ROUGE_L", "CIDEr", "coco_Bleu_4"} <= set(scores)


def test_second_run_merges_metrics(
    model_dir: Path, tiny_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (model_dir / "metrics.json").write_text(json.dumps({"train": {"beam1": {"BLEU-1": 0.5}},
                                                        "best_val_loss": 1.0}))  # fmt: skip
    argv = ["--model", str(model_dir), "--split", "val", "--beam", "2", "--cache",
            str(tiny_cache), "--no-coco", "--max-length", "8", "--batch-size", "1"]  # fmt: skip
    assert evaluate.main(argv) == 0
    data = json.loads((model_dir / "metrics.json").read_text())
    assert data["train"] == {"beam1": {"BLEU-1": 0.5}} and data["best_val_loss"] == 1.0
    entry = data["val"]["beam2"]
    assert set(metrics.NLTK_KEYS) <= set(entry) and "METEOR" not in entry
    assert entry["beam"] == 2 and entry["max_length"] == 8
    results = json.loads((model_dir / "results_val_beam2.json").read_text())
    assert len(results) == entry["num_images"] >= 1
    assert all(len(r["caption"].split()) <= 8 for r in results)


def test_bad_inputs_are_one_line_errors(
    model_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(evaluate.main, ["--model", str(model_dir), "--split", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no 'nosuch' images" in err
    # the shared tiny model records no cache: the user must say where the features are
    assert run_cli(evaluate.main, ["--model", str(tiny_model_dir)]) == 2
    assert "records no cache_dir; pass --cache" in capsys.readouterr().err
    assert run_cli(evaluate.main, ["--model", str(model_dir), "--cache", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'x'}: feature cache not found")
    assert run_cli(evaluate.main, ["--model", str(tmp_path / "none")]) == 2
    assert "model directory not found" in capsys.readouterr().err
