"""The shape-word post-mortem's bookkeeping (decoding a run takes a trained model: not here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "shape_errors.py"
_SPEC = importlib.util.spec_from_file_location("shape_errors", _PATH)
shape_errors = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(shape_errors)

# 224 x 224 scene, 16-pixel cells: the circle covers cell (0, 0), the square cell (13, 13).
OBJECTS = [
    {"shape": "circle", "color": "red", "size": "small", "box": [0, 0, 16, 16]},
    {"shape": "square", "color": "blue", "size": "large", "box": [208, 208, 224, 224]},
]


def _maps(*cells_weights):
    att = np.zeros((len(cells_weights), 14, 14), np.float32)
    for t, weights in enumerate(cells_weights):
        for (row, col), w in weights.items():
            att[t, row, col] = w
    return att


def test_a_swap_is_told_from_a_phrase_that_describes_nothing():
    words = ["a", "small", "red", "square", "and", "a", "large", "blue", "square", "and", "a",
             "small", "green", "circle"]
    on_circle, on_square, nowhere = {(0, 0): 0.75, (5, 5): 0.25}, {(13, 13): 1.0}, {(7, 7): 1.0}
    att = _maps(*[{}] * 3, on_circle, *[{}] * 4, on_square, *[{}] * 4, nowhere)
    rows = shape_errors.shape_word_rows(words, att, OBJECTS, (224, 224))
    assert [r["word"] for r in rows] == ["square", "square", "circle"]
    swap, right, invented = rows
    # "small red square": the small red object is a circle, looked at with 3/4 of the map
    assert not swap["right"] and swap["described"] == ["circle"]
    assert swap["share_described"] == pytest.approx(0.75)
    assert right["right"] and right["share_described"] == pytest.approx(1.0)
    # no small green object at all: wrong, and not a swap
    assert not invented["right"] and invented["described"] == []
    assert invented["share_described"] is None
    assert [r["position"] for r in rows] == [0, 1, 2]

    summary = shape_errors.summarise(rows)
    assert summary["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert (summary["wrong"], summary["swaps"], summary["describe_no_object"]) == (2, 1, 1)
    assert summary["swaps_looking_at_described_object"] == 1
    assert summary["swapped"] == [("circle -> square", 1)]
    assert summary["error_rate_by_position"] == {1: 1.0, 2: 0.0, 3: 1.0}


def test_the_model_is_found_for_the_benchmark_and_the_demo_and_a_stray_folder_is_named(
        tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    (bench / "model").mkdir(parents=True)
    assert shape_errors.model_dir(bench) == bench / "model"
    # the demo writes its model to saved_models/demo, named in runs/demo/summary.json
    monkeypatch.chdir(tmp_path)
    (tmp_path / "saved_models" / "demo").mkdir(parents=True)
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    (demo / "summary.json").write_text('{"outputs": {"model": "saved_models/demo"}}')
    assert shape_errors.model_dir(demo) == Path("saved_models/demo")
    with pytest.raises(shape_errors.IcapnetError, match="stray: no model/"):
        shape_errors.model_dir(tmp_path / "stray")
