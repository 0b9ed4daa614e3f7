"""What the page says about the served model, read from the files next to its weights.

``config.json`` (architecture, backbone, what it was trained on), ``vocab.json`` (its size),
``history.csv`` (epochs and last losses) and, once evaluated, ``metrics.json`` (test scores).
Reading them here (not from the live model) keeps the info honest about what was trained.

The JSON goes to anyone who can reach the server, so it names files and folders, never
their absolute paths (a path says who runs the server and where).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path, PureWindowsPath
from typing import Any

from icapnet.config import Config
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.layout import VOCAB_FILE, read_history, read_metrics

NOT_EVALUATED = "not evaluated yet"
# The scores people compare captioners by, in the order papers print them: key in
# metrics.json (first one present wins) -> label.
SUMMARY_METRICS = (
    (("BLEU-1", "coco_Bleu_1"), "BLEU-1"),
    (("BLEU-2", "coco_Bleu_2"), "BLEU-2"),
    (("BLEU-3", "coco_Bleu_3"), "BLEU-3"),
    (("BLEU-4", "coco_Bleu_4"), "BLEU-4"),
    (("METEOR",), "METEOR"),
    (("ROUGE_L",), "ROUGE-L"),
    (("CIDEr",), "CIDEr"),
)
# DataConfig fields that are not about the training data itself (vocabulary settings are
# shown with the vocabulary; folders are shown by name).
_NOT_PROVENANCE = {"data_dir", "cache_dir", "min_count", "max_vocab_size"}
_BEAM_KEY = re.compile(r"beam(\d+)")
# DataConfig fields holding a sentence that may contain a path, not a path.
_SENTENCES = {"split"}
_PATH_IN_TEXT = re.compile(r"(?<![\w.])(?:~|[A-Za-z]:[\\/]|/)[^\s;,()]*")


def model_info(model_dir: str | Path) -> dict[str, Any]:
    """Summarise a model directory for people: architecture, data, vocabulary, metrics."""
    model_dir = Path(model_dir)
    config = Config.load(model_dir)
    metrics = read_metrics(model_dir)
    vocab_size = _vocab_size(model_dir, config)
    return {
        "name": model_dir.resolve().name,
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
            "weights": path_name(config.features.weights),
            "image_size": config.features.image_size,
            "num_regions": config.features.num_regions,
            "grid": _grid_side(config.features.num_regions),
        },
        "training_data": training_data(config),
        "vocabulary": {
            "size": vocab_size,
            "min_count": config.data.min_count,
            "max_size": config.data.max_vocab_size,
        },
        "vocab_size": vocab_size,
        "training": _training_summary(model_dir),
        "metrics": without_paths(metrics) if metrics else None,
        "metrics_summary": metrics_summary(metrics) if metrics else None,
        "metrics_status": "evaluated" if metrics else NOT_EVALUATED,
    }


def training_data(config: Config) -> dict[str, Any]:
    """What the model was trained on: the dataset, and every provenance field the config's
    data section records (split, image counts, a synthetic flag... as they get added), plus
    the backbone weights the features came from. Folders appear by name only."""
    data = dataclasses.asdict(config.data)
    out: dict[str, Any] = {"dataset": data.get("dataset") or "unknown"}
    for key, value in data.items():
        if key not in _NOT_PROVENANCE and key != "dataset" and value not in (None, "", [], {}):
            # A sentence such as the split's source ("random 80/10/10 by image", "split files
            # beside the data ...: /home/me/f8k") keeps its words; only the paths in it shrink.
            out[key] = paths_in_text_to_names(value) if key in _SENTENCES else \
                without_paths(value)
    if data.get("data_dir"):
        out["folder"] = path_name(data["data_dir"])
    out.setdefault("backbone_weights", path_name(config.features.weights))
    return out


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The compact table: BLEU-1..4, METEOR, ROUGE-L, CIDEr by decoding (greedy, beam k).

    ``metrics.json`` is ``{split: {"beam{k}": {metric: value, "num_images": n, ...}}}``; the
    test split is preferred, then validation, then whatever split was evaluated.
    """
    splits = {
        name: {key: value for key, value in entry.items()
               if _BEAM_KEY.fullmatch(str(key)) and isinstance(value, dict)}
        for name, entry in metrics.items() if isinstance(entry, dict)
    }
    splits = {name: beams for name, beams in splits.items() if beams}
    if not splits:
        return None
    split = next((s for s in ("test", "val") if s in splits), sorted(splits)[0])
    beams = sorted(splits[split], key=lambda key: int(key[4:]))
    columns = [{"key": key, "label": "greedy" if key == "beam1" else f"beam {key[4:]}"}
               for key in beams]
    rows = []
    for keys, label in SUMMARY_METRICS:
        values = [_first_number(splits[split][beam], keys) for beam in beams]
        if any(value is not None for value in values):
            rows.append({"metric": label, "values": values})
    if not rows:
        return None
    counts = {splits[split][b].get("num_images") for b in beams} - {None}
    return {
        "split": split,
        "columns": columns,
        "rows": rows,
        "num_images": counts.pop() if len(counts) == 1 else None,
    }


def _first_number(entry: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
            value
        ):
            return float(value)
    return None


def path_name(value: str) -> str:
    """A file or folder's name instead of its path; other strings ("imagenet") unchanged."""
    text = str(value)
    if _looks_like_path(text):
        return PureWindowsPath(text).name if "\\" in text else Path(text).name
    return text


def paths_in_text_to_names(text: str) -> str:
    """``text`` with every absolute path in it replaced by its last part."""
    return _PATH_IN_TEXT.sub(lambda m: path_name(m.group(0)), str(text))


def without_paths(value: Any) -> Any:
    """``value`` with every string that looks like a path replaced by its last part."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    if isinstance(value, str):
        return path_name(value)
    return value


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or "\\" in text
        or text.startswith("~")
        or bool(re.match(r"^[A-Za-z]:", text))
    ) and "://" not in text


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
