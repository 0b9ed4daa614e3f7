"""One source of truth for every hyperparameter, saved as ``config.json`` next to each model.

The sections mirror the architecture: how features are extracted, how the model is built,
and how it is trained. CLI flags are derived from these fields, so a default changes in
exactly one place.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from icapnet import fs
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_text
from icapnet.layout import CONFIG_FILE

# Recipe of the random ("none") backbone: seeded He-normal, first kernel scaled to unit-RMS
# output. Configs saved before the recipe was recorded used plain He-normal (LEGACY_...).
RANDOM_BACKBONE = "he-normal+unit-rms"
LEGACY_RANDOM_BACKBONE = "he-normal"

# The values a choice field may take: the layers, the training loop and the CLI flags all
# read them from here.
DECODERS = ("gru", "lstm")
ATTENTIONS = ("bahdanau", "none")
INIT_STATES = ("zeros", "mean")
STRATEGIES = ("default", "mirrored", "multiworker", "tpu")
CHOICES = {"decoder": DECODERS, "attention": ATTENTIONS, "init_state": INIT_STATES,
           "strategy": STRATEGIES}


@dataclass
class FeatureConfig:
    """Which backbone layer turns an image into region features."""

    backbone: str = "vgg16"
    layer: str = "block5_conv3"
    # "imagenet" (Keras' download), a local .h5/.weights.h5 path, or "none" (random, for tests).
    weights: str = "imagenet"
    # How "none" weights are made. Features from another recipe have another scale, so a cache
    # or model built with one must not be used with the other (checked by the extractor).
    random_init: str = RANDOM_BACKBONE
    image_size: int = 224
    num_regions: int = 196  # 14 x 14
    feature_dim: int = 512


@dataclass
class ModelConfig:
    """Shape of the captioner. Defaults follow the ICapNet / Show-Attend-Tell recipes."""

    vocab_size: int = 0  # filled from the vocabulary when the model is built
    embedding_dim: int = 256
    units: int = 512
    attention_units: int = 512
    # Dropout on the encoded regions and before the word projection. 0.5 (the usual recipe)
    # makes any one region's encoding so noisy that attention spreads out to average many of
    # them: on benchmarks/quality_synthetic.py attention-in-box at shape words went from 0.37
    # (0.5) to 0.64 (0.2) with better BLEU-4 (0.80 -> 0.82).
    dropout: float = 0.2
    decoder: str = "gru"  # DECODERS
    attention: str = "bahdanau"  # ATTENTIONS ("none": the mean-pooled baseline)
    deep_output: bool = False  # attention context also feeds the word projection (SAT's L_z)
    # Dropout on the state carried between steps (training only). A decoder that can memorise
    # an object from one glance stops looking at it; with 0.3 attention at shape words moved
    # from ~0.2 to ~0.5 of the mass on objects (benchmarks/quality_synthetic.py).
    state_dropout: float = 0.3
    context_gate: bool = False  # sigmoid gate on the context (Show-Attend-Tell's beta)
    init_state: str = "mean"  # INIT_STATES: "zeros" (image only via attention) | "mean" (SAT)
    num_regions: int = 196
    feature_dim: int = 512
    max_length: int = 40  # longest caption the decoder will write, <end> included


@dataclass
class TrainConfig:
    """Optimisation settings for ``python -m icapnet.train``."""

    batch_size: int = 64
    learning_rate: float = 4e-4
    epochs: int = 20
    clip_norm: float = 5.0
    # lambda of Show-Attend-Tell's doubly-stochastic term (averaged over regions, so 1.0 is
    # comparable to the token loss). Off by default: it rewards spreading attention over every
    # region during a caption, and on benchmarks/quality_synthetic.py lambda=1 kept attention at
    # chance level (0.11 in-box vs 0.37 without it) for the same BLEU.
    attention_penalty: float = 0.0
    seed: int = 42
    mixed_precision: bool = False
    jit_compile: bool = False
    # Pad every batch to one caption length (the longest in train/val) and drop the last
    # partial batch: every step has the same shapes, as TPUs and XLA want (--strategy tpu
    # turns it on). Costs padding work on CPU/GPU.
    static_shapes: bool = False
    strategy: str = "default"  # STRATEGIES
    early_stopping_patience: int = 5
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.5
    shuffle_buffer: int = 4096
    fine_tune_from: str | None = None  # e.g. "block5_conv1": train the backbone from this layer on
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5


@dataclass
class DataConfig:
    """Where the training data came from, so a model can say what it was trained on."""

    dataset: str = ""
    data_dir: str = ""
    cache_dir: str = ""
    min_count: int = 5
    max_vocab_size: int = 10000


@dataclass
class Config:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Reject values the model or the training loop cannot use, in one line naming the
        flag (config fields and ``train`` flags share their names)."""
        m, t = self.model, self.train
        for section in (m, t):
            for name, allowed in CHOICES.items():
                value = getattr(section, name, None)
                if value is not None and value not in allowed:
                    raise IcapnetError(f"{_flag(name)}: {value!r} is not one of "
                                       f"{', '.join(allowed)}")
        for name in ("embedding_dim", "units", "attention_units", "max_length"):
            _at_least(name, getattr(m, name), 1)
        for name in ("batch_size", "shuffle_buffer"):
            _at_least(name, getattr(t, name), 1)
        _at_least("epochs", t.epochs, 0)
        _at_least("fine_tune_epochs", t.fine_tune_epochs, 0)
        for name in ("dropout", "state_dropout"):
            if not 0.0 <= getattr(m, name) < 1.0:
                raise IcapnetError(f"{_flag(name)}: must be in [0, 1), got {getattr(m, name)}")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            if not getattr(t, name) > 0:
                raise IcapnetError(f"{_flag(name)}: must be > 0, got {getattr(t, name)}")
        if t.fine_tune_epochs and not t.fine_tune_from:
            raise IcapnetError("--fine-tune-epochs: needs --fine-tune-from LAYER "
                               "(e.g. block5_conv1)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        kwargs = {}
        for name, section_cls in _SECTION_TYPES.items():
            values = raw.get(name, {})
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"config section '{name}' has unknown keys: {sorted(unknown)}")
            if name == "features" and values and "random_init" not in values:
                values = {**values, "random_init": LEGACY_RANDOM_BACKBONE}
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    def save(self, directory: str | Path) -> Path:
        path = fs.path(directory) / CONFIG_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> Config:
        path = fs.path(directory_or_file)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(raw)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise IcapnetError(f"{_flag(name)}: must be >= {low}, got {value}")


_SECTION_TYPES = {
    "features": FeatureConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "data": DataConfig,
}
