"""Inference: decoding loops, the Predictor and evaluation metrics.

Names are imported lazily so that ``icapnet.inference.metrics`` (no TensorFlow) stays cheap
to import; ``from icapnet.inference import Predictor`` loads TensorFlow on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DecodeResult": "icapnet.inference.decoding",
    "beam_search": "icapnet.inference.decoding",
    "decode": "icapnet.inference.decoding",
    "greedy_decode": "icapnet.inference.decoding",
    "CaptionResult": "icapnet.inference.predictor",
    "Predictor": "icapnet.inference.predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'icapnet.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
