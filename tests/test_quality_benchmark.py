"""The quality benchmark's report helpers (the benchmark itself trains for minutes: not here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_synthetic.py"
_SPEC = importlib.util.spec_from_file_location("quality_synthetic", _PATH)
quality = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quality)


def test_shape_word_precision_and_its_wilson_interval():
    """Published Wilson 95 % intervals: 50 of 100 -> 0.404-0.596; 0 of 10 -> 0-0.278."""
    half = {"shape_words": 50, "unmatched_shape_words": 50}
    assert quality.shape_precision(half) == 0.5
    assert quality.precision_interval(half) == pytest.approx([0.4038, 0.5962], abs=1e-4)
    none_right = {"shape_words": 0, "unmatched_shape_words": 10}
    assert quality.precision_interval(none_right) == pytest.approx([0.0, 0.2775], abs=1e-4)
    # a typical run: ~130 shape words give an interval ~0.11 wide
    low, high = quality.precision_interval({"shape_words": 114, "unmatched_shape_words": 18})
    assert low < 114 / 132 < high and 0.09 < high - low < 0.13
    assert quality.precision_interval({"shape_words": None, "unmatched_shape_words": 0}) is None
