"""The files of a feature cache and of a model directory, named in one place.

Every module that reads or writes one of these folders takes the name from here, so a file
has one name (the cache's ``captions.json`` and a Kaggle dataset's ``captions.txt`` are
different things and have different constants). The two small text files several tools read
(``history.csv``, ``metrics.json``) also have their one reader here. No TensorFlow, no pandas
at import: the CLIs check paths with this module before TensorFlow loads.

Feature cache (``prepare`` writes it, ``data/cache.py`` reads it)::

    CACHE/manifest.json            settings, images, shards, skipped, complete
    CACHE/vocab.json               vocabulary of the train split
    CACHE/captions.json            {split: {image_id: [captions]}}
    CACHE/boxes.json               synthetic only: object boxes, copied from the dataset
    CACHE/features/{split}-{k:05d}.tfrecord

Model directory (``train`` writes it, ``model/store.py`` reads it)::

    MODEL/config.json  vocab.json  model.weights.h5      the model itself
    MODEL/backbone.weights.h5      only after fine-tuning: the tuned backbone
    MODEL/history.csv  loss.png  logs/                   training record
    MODEL/checkpoints/epoch-{e:04d}.npz  best.npz  config.json   resume state
    MODEL/metrics.json  results_{split}_beam{k}.json     evaluation
    MODEL/icapnet-package.json  icapnet-source.json      a model unpacked from a package
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icapnet import fs
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

# --------------------------------------------------------------------------- feature cache
MANIFEST_FILE = "manifest.json"
CACHE_CAPTIONS_FILE = "captions.json"
CACHE_BOXES_FILE = "boxes.json"
FEATURES_DIR = "features"

# --------------------------------------------------------------------------- model directory
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"  # in both folders: the model keeps the cache's vocabulary
WEIGHTS_FILE = "model.weights.h5"
BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"
HISTORY_FILE = "history.csv"
LOSS_PLOT_FILE = "loss.png"
LOG_DIR = "logs"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
BEST_WEIGHTS_FILE = "best.npz"
# A model shared as one .zip (model/package.py); both files stay in the unpacked folder.
PACKAGE_MANIFEST_FILE = "icapnet-package.json"
PACKAGE_SOURCE_FILE = "icapnet-source.json"  # where a downloaded/unpacked package came from
LEGACY_BACKBONE_FILE = "backbone.h5"  # a packaged whole-model .h5 backbone, loaded by name
_CHECKPOINT = re.compile(r"^epoch-(\d{4,})\.npz$")


def shard_name(split: str, index: int) -> str:
    """File name of the ``index``-th feature shard of ``split`` (inside ``FEATURES_DIR``)."""
    return f"{split}-{index:05d}.tfrecord"


def checkpoint_name(next_epoch: int) -> str:
    """File name of the checkpoint written when epoch ``next_epoch - 1`` finished."""
    return f"epoch-{next_epoch:04d}.npz"


def checkpoint_epoch(name: str) -> int | None:
    """Inverse of :func:`checkpoint_name` (None for any other file)."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


def results_file(split: str, beam: int) -> str:
    """COCO-format captions of one evaluation run."""
    return f"results_{split}_beam{beam}.json"


# --------------------------------------------------------------------------- shared readers


def read_history(path: str | Path, required: bool = False) -> pd.DataFrame:
    """``history.csv`` (a model directory or the file itself) as a DataFrame.

    A missing file is an empty frame (a run that has not finished an epoch yet), unless
    ``required``; a broken one is an IcapnetError naming it.
    """
    import pandas as pd

    path = fs.path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    if not path.is_file():
        if required:
            raise IcapnetError(f"{path}: training history not found")
        return pd.DataFrame()
    try:
        return pd.read_csv(io.StringIO(path.read_text(encoding="utf-8")))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise IcapnetError(f"{path}: unreadable training history ({err})") from None


def write_history(model_dir: str | Path, history: pd.DataFrame) -> Path:
    path = fs.path(model_dir) / HISTORY_FILE
    atomic_write_text(path, history.to_csv(index=False))
    return path


def read_metrics(model_dir: str | Path) -> dict[str, Any] | None:
    """``metrics.json`` of a model directory, or None if it was never (validly) written."""
    path = fs.path(model_dir) / METRICS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and raw else None


def read_json(path: Path) -> Any:
    """A JSON file of a cache or model folder; missing or broken -> IcapnetError naming it."""
    try:
        return json.loads(fs.path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IcapnetError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IcapnetError(f"{path}: not valid JSON ({err})") from None
