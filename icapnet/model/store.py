"""Save and load a model directory: config.json, vocab.json, model.weights.h5, model.keras.

Files are first written into a temporary folder beside their destination and then renamed
into place (config.json last), so a crash never leaves a half-written file behind. Other
files in the directory (history.csv, loss.png, checkpoints/, metrics.json) are left alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from icapnet.config import CONFIG_FILE, Config
from icapnet.data.text import VOCAB_FILE, Vocabulary
from icapnet.errors import IcapnetError

WEIGHTS_FILE = "model.weights.h5"
KERAS_FILE = "model.keras"
_ORDER = (VOCAB_FILE, WEIGHTS_FILE, KERAS_FILE, CONFIG_FILE)


def save_model_dir(model_dir: str | Path, model, vocab: Vocabulary, config: Config) -> Path:
    """Write ``model`` (a Captioner), its vocabulary and config to ``model_dir`` atomically."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".save-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        vocab.save(tmp / VOCAB_FILE)
        model.save_weights(str(tmp / WEIGHTS_FILE))
        model.save(str(tmp / KERAS_FILE))
        config.save(tmp)
        for name in _ORDER:
            os.replace(tmp / name, model_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def build_captioner(config: Config):
    """A fresh (randomly initialised, fully built) Captioner for ``config``."""
    from icapnet.model.captioner import Captioner

    return Captioner(config.model, attention_penalty=config.train.attention_penalty,
                     clip_norm=config.train.clip_norm, sub_batches=config.train.sub_batches)


def load_model_dir(model_dir: str | Path):
    """-> (Captioner, Vocabulary, Config); any missing or broken file is an IcapnetError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise IcapnetError(f"{model_dir}: model directory not found")
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise IcapnetError(f"{model_dir}: not a model directory (no {CONFIG_FILE})")
    try:
        config = Config.load(config_path)
    except (ValueError, TypeError) as err:
        raise IcapnetError(f"{config_path}: invalid model config ({err})") from err
    vocab_path = model_dir / VOCAB_FILE
    if not vocab_path.is_file():
        raise IcapnetError(f"{vocab_path}: vocabulary file not found")
    vocab = Vocabulary.load(vocab_path)
    if config.model.vocab_size != len(vocab):
        raise IcapnetError(f"{vocab_path}: has {len(vocab)} words but the model expects "
                           f"{config.model.vocab_size}")
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise IcapnetError(f"{weights}: model weights not found")
    try:
        model = build_captioner(config)
        model.load_weights(str(weights))
    except IcapnetError:
        raise
    except Exception as err:  # h5py / shape mismatch: report the file, not a traceback
        raise IcapnetError(f"{weights}: cannot load weights ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return model, vocab, config
