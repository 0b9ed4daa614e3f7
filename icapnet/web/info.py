"""What the page's info section says about the served model, read from files beside it.

A model directory records its own config (``config.json``), vocabulary (``vocab.json``),
training history (``history.csv``) and, once evaluated, its test scores (``metrics.json``).
Reading them here (not from the live model) keeps the info honest about what was trained.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from icapnet.config import Config
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.layout import VOCAB_FILE, read_history, read_metrics

NOT_EVALUATED = "not evaluated yet"


def model_info(model_dir: str | Path) -> dict[str, Any]:
    """Summarise a model directory for people: architecture, data, vocabulary, metrics."""
    model_dir = Path(model_dir)
    config = Config.load(model_dir)
    metrics = read_metrics(model_dir)
    return {
        "name": model_dir.resolve().name,
        "path": str(model_dir),
        "model": {
            "decoder": config.model.decoder,
            "attention": config.model.attention,
            "embedding_dim": config.model.embedding_dim,
            "units": config.model.units,
            "attention_units": config.model.attention_units,
            "max_length": config.model.max_length,
        },
        "backbone": {
            "name": config.features.backbone,
            "layer": config.features.layer,
            "weights": config.features.weights,
            "image_size": config.features.image_size,
            "num_regions": config.features.num_regions,
            "grid": _grid_side(config.features.num_regions),
        },
        "data": {
            "dataset": config.data.dataset or "unknown",
            "data_dir": config.data.data_dir,
            "cache_dir": config.data.cache_dir,
            "min_count": config.data.min_count,
            "max_vocab_size": config.data.max_vocab_size,
        },
        "vocab_size": _vocab_size(model_dir, config),
        "training": _training_summary(model_dir),
        "metrics": metrics,
        "metrics_table": flatten_metrics(metrics) if metrics else [],
        "metrics_status": "evaluated" if metrics else NOT_EVALUATED,
    }


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """Numeric leaves as ``[dotted.name, value]`` rows, in file order, for a simple table."""
    rows: list[list[Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten_metrics(value, f"{name}."))
        elif isinstance(value, bool):
            continue
        elif _is_displayable(value):
            rows.append([name, value])
    return rows


def _is_displayable(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= 80


def _vocab_size(model_dir: Path, config: Config) -> int:
    """Prefer the saved vocabulary (the truth); fall back to the size recorded in the config."""
    try:
        return len(Vocabulary.load(model_dir / VOCAB_FILE))
    except (IcapnetError, OSError, ValueError):
        return int(config.model.vocab_size)


def _training_summary(model_dir: Path) -> dict[str, Any] | None:
    """Epochs run and the last losses from history.csv, if training left one."""
    try:
        history = read_history(model_dir)
    except IcapnetError:
        return None
    if history.empty:
        return None
    last = history.iloc[-1]
    summary: dict[str, Any] = {"epochs": len(history)}
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        try:
            value = float(last.get(key, ""))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            summary[key] = value
    return summary


def _grid_side(num_regions: int) -> int:
    side = math.isqrt(max(int(num_regions), 0))
    return side if side * side == num_regions else 0
