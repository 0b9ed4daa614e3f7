"""The captioner model, its backbone, training loop and model directories.

Names are imported lazily (as in ``icapnet.inference``) so that light modules such as
``icapnet.model.store`` can be imported by a CLI to check its flags before TensorFlow loads.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BahdanauAttention": "icapnet.model.layers",
    "CNNEncoder": "icapnet.model.layers",
    "Decoder": "icapnet.model.layers",
    "MeanAttention": "icapnet.model.layers",
    "Captioner": "icapnet.model.captioner",
    "masked_token_loss": "icapnet.model.captioner",
    "load_model_dir": "icapnet.model.store",
    "save_model_dir": "icapnet.model.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'icapnet.model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
