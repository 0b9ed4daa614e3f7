"""Model directories: find one, save one, load one (config.json, vocab.json, weights).

The directory is the artifact: ``config.json`` (the one source of truth for every
hyperparameter), ``vocab.json`` and ``model.weights.h5``. Each file is written atomically
through :mod:`icapnet.io`, config.json last, so a folder with a config.json is complete.

No Keras ``model.keras`` is written: it would hold a second copy of the weights and of the
model config next to config.json, and nothing loads it (loading needs icapnet's layers
registered anyway, so it offers no icapnet-free path; the SavedModel export is that path).

Finding a model (``resolve_model``) only touches the file system, so a CLI can reject a bad
``--model`` before TensorFlow loads; building and loading import the model lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icapnet import fs
from icapnet.config import (
    Config,
    changed_fields,
    feature_settings,
    field_fingerprints,
    load_config_file,
    model_fingerprints,
    vocab_fingerprint,
)
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.io import atomic_path
from icapnet.layout import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    from icapnet.model.captioner import Captioner

DEFAULT_MODELS_DIR = Path("saved_models")


def find_default_model(models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """The most recently saved model directory (one holding config.json) under ``models_dir``."""
    models_dir = Path(models_dir)
    candidates = []
    if models_dir.is_dir():
        candidates = [d for d in models_dir.iterdir() if (d / CONFIG_FILE).is_file()]
        if (models_dir / CONFIG_FILE).is_file():
            candidates.append(models_dir)
    if not candidates:
        raise IcapnetError(
            f"{models_dir}: no trained model found (no folder with {CONFIG_FILE}); "
            "train one with 'python -m icapnet train' or pass --model DIR"
        )

    def saved_at(model_dir: Path) -> float:
        files = [model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE]
        return max(f.stat().st_mtime for f in files if f.exists())

    return max(candidates, key=lambda d: (saved_at(d), d.name))


def resolve_model(model: str | None) -> Path:
    """``--model`` checked up front (before TensorFlow loads), or the newest saved model.

    A packaged ``.zip`` or an http(s) URL of one becomes its unpacked folder in the model
    cache (``icapnet.model.hub``).
    """
    if model is None:
        return find_default_model()
    if model.lower().startswith(("http://", "https://")) or model.lower().endswith(".zip"):
        from icapnet.model.hub import fetch_model

        return fetch_model(model)
    path = fs.path(model)
    if not path.exists():
        raise IcapnetError(f"{path}: model directory not found")
    if not (path / CONFIG_FILE).is_file():
        raise IcapnetError(f"{path}: not a model directory (no {CONFIG_FILE})")
    return path


def save_model_dir(model_dir: str | Path, model: Any, vocab: Vocabulary, config: Config) -> Path:
    """Write ``model`` (a Captioner), its vocabulary and config to ``model_dir`` atomically."""
    model_dir = fs.path(model_dir)
    vocab.save(model_dir / VOCAB_FILE)
    with atomic_path(model_dir / WEIGHTS_FILE, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    config.save(model_dir, fingerprints=model_fingerprints(config, vocab.words))
    return model_dir


def build_captioner(config: Config) -> Captioner:
    """A fresh (randomly initialised, fully built) Captioner for ``config``."""
    from icapnet.model.captioner import Captioner

    return Captioner(config.model, attention_penalty=config.train.attention_penalty,
                     clip_norm=config.train.clip_norm, sub_batches=config.train.sub_batches,
                     label_smoothing=config.train.label_smoothing)


def load_config(model_dir: str | Path) -> Config:
    """config.json of a model directory; a broken one is an IcapnetError naming it."""
    return _load_config(model_dir)[0]


def _load_config(model_dir: str | Path) -> tuple[Config, dict[str, Any]]:
    """(config, fingerprints), with the feature settings checked against their fingerprints:
    features from another backbone, layer or image size give confident nonsense."""
    model_dir = fs.path(model_dir)
    if not model_dir.is_dir():
        raise IcapnetError(f"{model_dir}: model directory not found")
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise IcapnetError(f"{model_dir}: not a model directory (no {CONFIG_FILE})")
    try:
        config, fingerprints = load_config_file(config_path)
    except (ValueError, TypeError) as err:
        raise IcapnetError(f"{config_path}: invalid model config ({err})") from err
    recorded = fingerprints.get("features")
    if isinstance(recorded, dict):
        settings = feature_settings(config.features)
        changed = changed_fields(field_fingerprints(settings), recorded)
        if changed:
            raise IcapnetError(
                f"{config_path}: features.{changed[0]} {settings.get(changed[0])!r} is not the "
                "value the model was trained with (its fingerprint differs); restore it")
    return config, fingerprints


def load_model_dir(
    model_dir: str | Path, on_built: Callable[[Captioner], Any] | None = None
) -> tuple[Captioner, Vocabulary, Config]:
    """-> (Captioner, Vocabulary, Config); any missing or broken file is an IcapnetError.

    ``on_built(model)`` runs once the variables exist, before their values load: a cold
    caption starts tracing the decode graph there (tracing needs the variables, not values).
    """
    model_dir = fs.path(model_dir)
    config, fingerprints = _load_config(model_dir)
    vocab_path = model_dir / VOCAB_FILE
    if not vocab_path.is_file():
        raise IcapnetError(f"{vocab_path}: vocabulary file not found")
    vocab = Vocabulary.load(vocab_path)
    if config.model.vocab_size != len(vocab):
        raise IcapnetError(f"{vocab_path}: has {len(vocab)} words but the model expects "
                           f"{config.model.vocab_size}")
    if fingerprints.get("vocab") not in (None, vocab_fingerprint(vocab.words)):
        raise IcapnetError(f"{vocab_path}: not the vocabulary the model was trained with "
                           "(same size, other words or order: its fingerprint in "
                           f"{CONFIG_FILE} differs)")
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise IcapnetError(f"{weights}: model weights not found")
    try:
        model = build_captioner(config)
        if on_built is not None:
            on_built(model)
        model.load_weights(str(weights))
    except IcapnetError:
        raise
    except Exception as err:  # h5py / shape mismatch: report the file, not a traceback
        raise IcapnetError(f"{weights}: cannot load weights ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return model, vocab, config
