"""The demo end to end on a tiny setting, its resume behaviour, and the localisation metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icapnet import demo
from icapnet.errors import IcapnetError
from icapnet.inference.localisation import attention_in_box, box_coverage

# 12 train scenes, 4 short epochs at a high learning rate without dropout: enough for the
# tiny model to write scene-like sentences (BLEU-4 0.20 on the 2 test scenes; seeds 1-3 give
# 0.21-0.28) while the whole demo stays ~20 s. The last flags are train's, passed through.
TINY = ["--num-images", "16", "--epochs", "4", "--units", "32", "--embedding-dim", "16",
        "--attention-units", "16", "--batch-size", "2", "--beam", "2", "--show", "2",
        "--no-coco", "--quiet", "--learning-rate", "0.01", "--dropout", "0",
        "--state-dropout", "0"]
BLEU4_FLOOR = 0.1  # an untrained (or 1-epoch) tiny model scores 0.0


def test_box_coverage_is_area_fraction_per_cell():
    # 224 px image, 16 px cells: a box covering cells (1,1) fully and half of (1,2).
    cover = box_coverage([16, 16, 40, 32], 224, 224)
    assert cover.shape == (14, 14)
    assert cover[1, 1] == pytest.approx(1.0)
    assert cover[1, 2] == pytest.approx(0.5)
    assert cover.sum() == pytest.approx(24 * 16 / 256)
    # Non-square images map by relative position.
    assert box_coverage([0, 0, 50, 100], 100, 200)[:7, :7].min() == pytest.approx(1.0)


def test_attention_in_box_picks_the_named_object():
    objects = [
        {"shape": "circle", "color": "red", "size": "small", "box": [0, 0, 112, 112]},
        {"shape": "circle", "color": "blue", "size": "large", "box": [112, 112, 224, 224]},
        {"shape": "square", "color": "red", "size": "small", "box": [112, 0, 224, 112]},
    ]
    words = ["a", "small", "red", "circle", "and", "a", "large", "blue", "circle", "and",
             "a", "triangle"]
    att = np.zeros((len(words), 14, 14), np.float32)
    att[3, :7, :7] = 1.0 / 49  # "circle" (red, small): all mass in the top-left quadrant
    att[8, :7, :7] = 0.5 / 49  # "circle" (blue, large): half in the wrong quadrant ...
    att[8, 7:, 7:] = 0.5 / 49  # ... half in its own box
    shares, unmatched = attention_in_box(words, att, objects, (224, 224))
    assert shares == pytest.approx([1.0, 0.5])
    assert unmatched == 1  # "triangle" names nothing in this scene
    # phrase mode also averages the adjective steps: "small", "red" looked elsewhere (0),
    # "large" looked fully at the blue circle, "blue" half
    att[6, 7:, 7:] = 1.0 / 49
    att[7, 7:, 7:] = 0.5 / 49
    shares, _ = attention_in_box(words, att, objects, (224, 224), phrase=True)
    assert shares == pytest.approx([1.0 / 3, (0.5 + 1.0 + 0.5) / 3])


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    """Issue 11: demo, then caption a photo and serve with no --model, from the same folder."""
    import shlex

    from fastapi.testclient import TestClient

    from icapnet import caption
    from icapnet.inference import evaluation
    from icapnet.model.store import resolve_model
    from icapnet.web.app import create_app

    decoded = []  # (split, beam) of every pass over a split
    original = evaluation.decode_split

    def counting(model, vocab, cache_dir, split, beam, *args, **kwargs):
        decoded.append((split, beam))
        return original(model, vocab, cache_dir, split, beam, *args, **kwargs)

    monkeypatch.setattr(evaluation, "decode_split", counting)
    monkeypatch.chdir(tmp_path)
    out, model_dir = Path("run"), Path("saved_models") / "run"
    assert demo.main(["--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "BLEU-4" in printed and str(out / "attention") in printed
    # One decoding of the test split per beam serves both the metrics and the localisation.
    assert decoded == [("test", 1), ("test", 2)]
    # The metrics are printed once, as one table naming the implementation of each number.
    assert printed.count("computed by") == 1 and printed.count("BLEU-4 ") == 1
    assert "coco_Bleu_1 " not in printed

    metrics = json.loads((model_dir / "metrics.json").read_text())
    for beam in ("beam1", "beam2"):
        assert metrics["test"][beam]["BLEU-4"] >= BLEU4_FLOOR
        assert metrics["test"][beam]["num_images"] >= 1
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["dropout"] == 0 and config["train"]["learning_rate"] == 0.01
    assert config["train"]["preset"] == "synthetic"
    assert config["data"]["dataset"] == "synthetic"
    assert config["data"]["split"].startswith("random 80/10/10 by image")
    assert config["data"]["train_images"] + config["data"]["val_images"] + \
        config["data"]["test_images"] == 16
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["reference"] for r in records)
    for record in records:
        assert record["caption"].strip()
        png = record["attention_png"]
        raw = np.load(record["attention_npz"])
        ended = not np.isnan(raw["end_attention"]).all()
        with Image.open(png) as img:  # the photo, one panel per word, <end> if it ended
            assert int(img.info["Panels"]) == 1 + len(record["words"]) + ended
        assert raw["attention"].shape[1:] == (14, 14)
    summary = json.loads((out / demo.SUMMARY_FILE).read_text())
    assert summary["metrics"] == metrics["test"]
    assert set(summary["attention_localisation"]) == {"beam1", "beam2"}
    loc = summary["attention_localisation"]["beam1"]
    line = next(t for t in printed.splitlines() if t.startswith("shape words that name"))
    if loc["shape_words"] + loc["unmatched_shape_words"]:  # precision printed as a percentage
        share = loc["shape_words"] / (loc["shape_words"] + loc["unmatched_shape_words"])
        assert f"greedy: {share:.1%}" in line
    for report in summary["attention_localisation"].values():
        assert report["num_images"] == metrics["test"]["beam1"]["num_images"]
        assert report["shape_words"] + report["unmatched_shape_words"] >= 1  # words examined
    assert summary["outputs"]["model"] == str(model_dir)
    assert (model_dir / "loss.png").is_file()
    examples = sorted((model_dir / "examples").iterdir())
    assert 1 <= len(examples) <= 6 and all(p.suffix == ".jpg" for p in examples)

    # The summary ends with the next commands, and they work as printed: no --model needed.
    assert printed.rstrip().endswith(summary["next"][-1]["command"])
    caption_cmd, serve_cmd = (shlex.split(step["command"]) for step in summary["next"])
    assert caption_cmd[1:3] == ["-m", "icapnet.caption"] and "--model" not in caption_cmd
    assert serve_cmd[1:] == ["-m", "icapnet.serve"]
    assert caption.main(caption_cmd[3:]) == 0
    done = capsys.readouterr()
    assert done.out.strip() and "trained on synthetic scenes" in done.err
    assert len(list(Path(caption_cmd[caption_cmd.index("--attention-dir") + 1]).glob("*.png")))
    assert resolve_model(None) == model_dir  # what serve loads without --model
    from icapnet.inference.captioning import load_predictor

    with TestClient(create_app(load_predictor(model_dir), resolve_model(None))) as client:
        assert client.get("/").status_code == 200
        info = client.get("/api/info").json()
        assert info["name"] == "run" and info["training_data"]["dataset"] == "synthetic"
        assert info["training_data"]["train_images"] == config["data"]["train_images"]
        assert info["metrics_summary"]["rows"][0]["metric"] == "BLEU-1"
        listed = [e["name"] for e in client.get("/api/examples").json()["examples"]]
        assert listed == [p.name for p in examples]

    # Re-running reuses scenes, cache and the finished model: no new epoch, same weights.
    weights = _h5_arrays(model_dir / "model.weights.h5")
    history = (model_dir / "history.csv").read_text()
    assert demo.main(["--out", str(out), *TINY, "--beam", "1", "--show", "0"]) == 0
    assert (model_dir / "history.csv").read_text() == history
    again = _h5_arrays(model_dir / "model.weights.h5")
    assert again.keys() == weights.keys()
    assert all(np.array_equal(again[k], weights[k]) for k in weights)

    # Other data settings on the same folder: a one-line error, nothing overwritten.
    with pytest.raises(IcapnetError, match="other settings"):
        demo.main(["--out", str(out), *TINY, "--seed", "5"])
    # ... also when only the model directory holds the other run.
    with pytest.raises(IcapnetError, match="--model-dir"):
        demo.main(["--out", "other", "--model-dir", str(model_dir), *TINY, "--seed", "5"])
    assert not Path("other").exists()  # checked before anything is written


def _h5_arrays(path) -> dict[str, np.ndarray]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def test_demo_rejects_bad_flags(tmp_path):
    with pytest.raises(IcapnetError, match="--data-dir"):
        demo.main(["--out", str(tmp_path / "x"), "--dataset", "flickr8k"])
    with pytest.raises(IcapnetError, match="--epochs"):
        demo.main(["--out", str(tmp_path / "x"), "--epochs", "0"])
    with pytest.raises(IcapnetError, match="--not-a-flag"):
        demo.main(["--out", str(tmp_path / "x"), "--not-a-flag", "3"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("mine")
    with pytest.raises(IcapnetError, match="not a demo run folder"):
        demo.main(["--out", str(tmp_path / "busy"), *TINY])


def test_demo_layer_flag_reaches_the_cache_and_its_stamp(tmp_path):
    """--layer picks the backbone layer of the feature cache (as prepare's flag does): a layer
    VGG16 lacks is refused by name, and the run folder's stamp records the layer, so a folder
    made with another layer is not silently reused."""
    out, model = tmp_path / "run", ["--model-dir", str(tmp_path / "model")]
    with pytest.raises(IcapnetError, match="block9_conv9: no such layer in vgg16"):
        demo.main(["--out", str(out), "--num-images", "12", "--layer", "block9_conv9",
                   "--quiet", "--no-coco", *model])
    assert json.loads((out / demo.STAMP_FILE).read_text())["layer"] == "block9_conv9"
    with pytest.raises(IcapnetError, match="other settings"):
        demo.main(["--out", str(out), "--num-images", "12", "--quiet", "--no-coco", *model])
