"""One source of truth for every hyperparameter, saved as ``config.json`` next to each model.

The sections mirror the architecture: how features are extracted, how the model is built,
and how it is trained, plus what the model was trained on. CLI flags are derived from the
model and training fields (their ``help`` metadata is the flag's sentence in ``--help``), so a
default changes in exactly one place. Named recipes that change several defaults at once
(``--preset sat|synthetic``) live in :mod:`icapnet.presets`.

(Over 400 lines on purpose: one source of truth for every hyperparameter, with its help
sentence, its checks and the config.json validation beside it.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from icapnet import fs
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_text
from icapnet.layout import CONFIG_FILE, read_json

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
OPTIMIZERS = ("adam", "rmsprop")
# What early stopping (and the plateau learning-rate cut) watch: the validation loss, or the
# BLEU-4 of greedy captions of the validation split (Show-Attend-Tell's criterion).
STOP_METRICS = ("val_loss", "val_bleu4")
# How the learning rate of the first phase moves: cut when the watched metric stalls, or a
# cosine from the initial rate down to zero over all the phase's steps.
LR_SCHEDULES = ("plateau", "cosine")
# Compute dtypes: of training (mixed, weights stay float32) and of the backbone.
MIXED_PRECISIONS = ("off", "float16", "bfloat16", "auto")
BACKBONE_PRECISIONS = ("float32", "bfloat16", "auto")
# The training step by compiled CPU kernels (icapnet.model.fused_step).
FUSED_STEP = ("auto", "on", "off")
CHOICES = {"decoder": DECODERS, "attention": ATTENTIONS, "init_state": INIT_STATES,
           "strategy": STRATEGIES, "optimizer": OPTIMIZERS, "early_stopping_metric": STOP_METRICS,
           "lr_schedule": LR_SCHEDULES, "mixed_precision": MIXED_PRECISIONS,
           "precision": BACKBONE_PRECISIONS, "fused_step": FUSED_STEP}
# The beam width used when none is given: caption / evaluate / export CLIs, the Python
# Predictor, the web API and the page's slider.
DEFAULT_BEAM = 3


def _help(text: str, bare: str | None = None) -> dict[str, str]:
    """Field metadata: the sentence ``--help`` shows for the field's flag, and the value the
    flag means when given without one (``--mixed-precision`` alone: ``auto``)."""
    return {"help": text} if bare is None else {"help": text, "bare": bare}

# Bounds of decoding everywhere (CLIs, Predictor, web API, the exported graph): the decoder's
# buffers grow with both, and a caption of 100 tokens is already far past any real one.
MAX_CAPTION_LENGTH = 100
MAX_BEAM_SIZE = 50
MAX_IMAGE_SIZE = 2048  # backbone input side; the Predictor resizes every photo to it


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
    # Compute dtype of the backbone: "float32", "bfloat16" or "auto" (bfloat16 on a CPU with
    # native bfloat16 arithmetic, AVX512_BF16 / AMX, and no GPU). VGG16 ran 2.0x faster in
    # bfloat16 on this project's CPU; features differ from float32 by ~0.8 % (mean relative).
    precision: str = "auto"
    num_regions: int = 196  # 14 x 14
    feature_dim: int = 512


@dataclass
class ModelConfig:
    """Shape of the captioner. Defaults follow the ICapNet / Show-Attend-Tell recipes."""

    vocab_size: int = 0  # filled from the vocabulary when the model is built
    embedding_dim: int = field(default=256, metadata=_help("size of the word embeddings and "
                                                           "of the encoded regions"))
    units: int = field(default=512, metadata=_help("units of the recurrent decoder"))
    # Width of the additive attention. Its per-step tanh over [batch, regions, width] is most
    # of a training step on CPU: 256 trains 1.4x (CPU) to 1.7x (wall) more captions/s than
    # 512, and on benchmarks/quality_synthetic.py scored higher at 14 epochs (BLEU-4 0.89 vs
    # 0.85, attention-in-box 0.65 vs 0.61). Show-Attend-Tell's Flickr8k recipe (seed 001) uses
    # 256 too.
    attention_units: int = field(default=256, metadata=_help("hidden size of the additive "
                                                             "attention"))
    # Dropout on the encoded regions and before the word projection. 0.5 (the usual recipe)
    # makes any one region's encoding so noisy that attention spreads out to average many of
    # them: on benchmarks/quality_synthetic.py attention-in-box at shape words went from 0.37
    # (0.5) to 0.64 (0.2) with better BLEU-4 (0.80 -> 0.82).
    dropout: float = field(default=0.2, metadata=_help(
        "dropout rate on the encoded regions and before the word projection"))
    decoder: str = field(default="gru", metadata=_help("recurrent cell of the decoder"))
    attention: str = field(default="bahdanau", metadata=_help(
        "bahdanau (additive attention) or none (mean of the regions: the no-attention baseline)"))
    deep_output: bool = field(default=False, metadata=_help(
        "feed the attention context to the word projection too (SAT's deep output L_z)"))
    # Dropout on the state carried between steps (training only). A decoder that can memorise
    # an object from one glance stops looking at it; with 0.3 attention at shape words moved
    # from ~0.2 to ~0.5 of the mass on objects (benchmarks/quality_synthetic.py).
    state_dropout: float = field(default=0.3, metadata=_help(
        "dropout rate on the recurrent state carried between steps (training only)"))
    context_gate: bool = field(default=False, metadata=_help(
        "gate the attention context with a sigmoid of the state (SAT's beta)"))
    # Batch normalisation of each backbone channel before the encoder's Dense layer. Random
    # VGG16 channels differ ~20x in spread. On benchmarks/quality_synthetic.py (three seeds)
    # attention-in-box at the shape word went 0.71/0.32/0.31 -> 0.71/0.62/0.69, shape-word
    # precision 0.80/0.70/0.79 -> 0.85/0.88/0.87, BLEU-4 0.88/0.84/0.87 -> 0.86/0.92/0.91.
    # Model folders saved before this field existed load with it off (no such layer).
    feature_norm: bool = field(default=True, metadata=_help(
        "standardise each backbone channel (batch normalisation) before the encoder"))
    # The word just read, projected, added to the attention query (W2·h + W3·word). Off: on
    # benchmarks/quality_synthetic.py (800 scenes, three seeds) it raised shape-word precision
    # on every seed (0.80/0.70/0.79 -> 0.84/0.81/0.81), but at the demo's size (400 scenes, two
    # seeds) attention-in-box at the shape word fell from 0.58/0.49 to 0.37/0.22. With
    # feature_norm it lowered precision (0.84/0.88 -> 0.81/0.85, seeds 0/1).
    word_query: bool = field(default=False, metadata=_help(
        "add the word just read to the attention query (attention then knows the adjective "
        "before the noun)"))
    init_state: str = field(default="mean", metadata=_help(
        "initial decoder state: from the mean region (SAT) or zeros (image only via attention)"))
    num_regions: int = 196
    feature_dim: int = 512
    max_length: int = field(default=40, metadata=_help(
        "longest caption the decoder writes, in tokens (<end> included)"))


@dataclass
class TrainConfig:
    """Optimisation settings for ``python -m icapnet.train``."""

    batch_size: int = field(default=64, metadata=_help("captions per training step"))
    learning_rate: float = field(default=4e-4, metadata=_help("initial learning rate"))
    optimizer: str = field(default="adam", metadata=_help(
        "adam, or rmsprop (centred, momentum 0.9, rho 0.95, epsilon 1e-4: the RMSProp of "
        "Show-Attend-Tell's code)"))
    epochs: int = field(default=20, metadata=_help(
        "epochs of the first phase (a finished run given more epochs trains the extra ones)"))
    clip_norm: float = field(default=5.0, metadata=_help(
        "clip the global gradient norm to this value (0 = no clipping)"))
    # lambda of Show-Attend-Tell's doubly-stochastic term (averaged over regions, so 1.0 is
    # comparable to the token loss). Off by default: it rewards spreading attention over every
    # region during a caption, and on benchmarks/quality_synthetic.py lambda=1 kept attention at
    # chance level (0.11 in-box vs 0.37 without it) for the same BLEU.
    attention_penalty: float = field(default=0.0, metadata=_help(
        "lambda of the doubly-stochastic attention penalty, averaged over regions "
        "(0 = off; see DEVELOPERS.md for its relation to the paper's summed form)"))
    # Polyak averaging: an exponential moving average of the weights (Keras' use_ema), which
    # validation, the best-epoch choice and the saved model use; training steps on the raw
    # weights. Off: on benchmarks/quality_synthetic.py (three seeds) 0.99 moved shape-word
    # precision 0.848/0.877/0.872 -> 0.879/0.851/0.892 (pooled 0.865 -> 0.874, within noise)
    # and attention-in-box on seed 1 to 0.599, under the benchmark's 0.6.
    ema_momentum: float = field(default=0.0, metadata=_help(
        "keep a moving average of the weights with this momentum per step, and validate, "
        "pick the best epoch and save with it (0 = off)"))
    # Label smoothing of the training loss (the targets Keras' label_smoothing makes: 1 - eps
    # on the word, eps spread evenly over the vocabulary), against a captioner that names its
    # training scenes' shapes at 0.99 and new ones at 0.86. Off: on the quality benchmark 0.1
    # gave seed 0 precision 0.848 -> 0.883 (one run's noise is +-0.05) but attention-in-box
    # 0.706 -> 0.665, and with the weight average seeds 1 and 2 fell to 0.47 in-box.
    label_smoothing: float = field(default=0.0, metadata=_help(
        "share of each target word's probability spread over the vocabulary in the training "
        "loss (0 = off); loss and val_loss are reported without it"))
    seed: int = field(default=42, metadata=_help("seed of initialisation, dropout and the "
                                                 "order of every epoch"))
    # icapnet.model.precision picks "auto" by device.
    mixed_precision: str = field(default="off", metadata=_help(
        "compute in float16 or bfloat16 with float32 weights; auto: float16 on a GPU, "
        "bfloat16 on a TPU, off on a CPU (neither was faster there)", bare="auto"))
    jit_compile: bool = field(default=False, metadata=_help("compile the training step with "
                                                            "XLA"))
    # C++ kernels for the attention scores and the GRU's gates of the training step (compiled
    # on first use with g++ for this CPU) and the loop's weight gradients once per caption:
    # ~1.7x the captions/s of TensorFlow's ops at the tutorial's sizes (benchmarks/README.md).
    # Same values to float32 rounding; decoding and saved models never use them.
    fused_step: str = field(default="auto", metadata=_help(
        "train with fused CPU kernels (compiled once with g++): auto where they apply "
        "(float32 on a CPU, no XLA) and build, on makes that an error, off never"))
    # Rows of a batch sorted by length and decoded in this many sub-batches, each only up to
    # its own longest caption: the same batch, loss and gradients with less padding work
    # (2: 1.12x captions/s on CPU; 4 and 8 no better, nor batch-wide length phases). See
    # benchmarks/README.md.
    sub_batches: int = field(default=2, metadata=_help(
        "decode each batch in this many length-sorted sub-batches (same loss, less padding)"))
    # Batches of whole images (the K captions of an image share one encoder pass and one
    # W1·features): 1.1-1.3x captions/s, but 5x fewer images per step. On the quality
    # benchmark it learned slower per epoch before feature_norm (in-box 0.61 -> 0.44 at 14
    # epochs); with it BLEU-4 and in-box hold, but shape-word precision (three seeds pooled)
    # went 0.865 -> 0.837. Off.
    group_by_image: bool = field(default=False, metadata=_help(
        "batches of whole images: the captions of an image share one encoder pass"))
    # Batch captions of similar length together (0: random batches, padded to their own
    # longest). 6 buckets: 1.7x captions/s, but length-homogeneous batches learned much
    # slower on the quality benchmark (even 2 buckets did; in-box 0.61 -> 0.23). With
    # feature_norm attention is fine (in-box 0.84), but there a batch of one length is a
    # batch of one object count, and the captions miscount (BLEU-4 0.86 -> 0.80). Off.
    length_buckets: int = field(default=0, metadata=_help(
        "batch captions of similar length together in this many buckets (0 = off)"))
    # Pad every batch to one caption length (the longest in train/val) and drop the last
    # partial batch: every step has the same shapes, as TPUs and XLA want (--strategy tpu
    # turns it on). Costs padding work on CPU/GPU.
    static_shapes: bool = field(default=False, metadata=_help(
        "pad every batch to the longest train/val caption and drop the last partial batch "
        "(static shapes for TPUs and XLA)"))
    strategy: str = field(default="default", metadata=_help(
        "default (one device), mirrored (all GPUs, else all CPU cores), multiworker "
        "(several machines, from TF_CONFIG) or tpu"))
    early_stopping_metric: str = field(default="val_loss", metadata=_help(
        "what early stopping and the learning-rate cut watch: the validation loss, or the "
        "BLEU-4 of greedy captions of the validation split (decoded after every epoch)"))
    early_stopping_patience: int = field(default=5, metadata=_help(
        "stop after this many epochs without improvement (keeping the best epoch's weights)"))
    # The cosine decay anneals to 0 by the last epoch (Keras' CosineDecay over every step of
    # the first phase). Not the default: on benchmarks/quality_synthetic.py it lowered
    # shape-word precision on both seeds tried, 800 x 14 0.848/0.877 -> 0.837/0.816 and
    # 1,600 x 7 0.879/0.887 -> 0.829/0.820 (seed 1 in-box 0.618 -> 0.585 at 800 x 14).
    lr_schedule: str = field(default="plateau", metadata=_help(
        "plateau: cut the learning rate when the watched metric stalls (--reduce-lr-patience); "
        "cosine: decay it from --learning-rate to 0 over the first phase's epochs"))
    reduce_lr_patience: int = field(default=2, metadata=_help(
        "lower the learning rate after this many epochs without improvement (0 = never; "
        "--lr-schedule plateau only)"))
    reduce_lr_factor: float = field(default=0.5, metadata=_help(
        "factor the learning rate is multiplied by when it is lowered"))
    shuffle_buffer: int = field(default=4096, metadata=_help(
        "captions held in the shuffle buffer"))
    fine_tune_from: str | None = field(default=None, metadata=_help(
        "after the first phase, also train the backbone from this layer on "
        "(e.g. block5_conv1)"))
    fine_tune_epochs: int = field(default=0, metadata=_help("epochs of the fine-tuning phase"))
    fine_tune_learning_rate: float = field(default=1e-5, metadata=_help(
        "learning rate of the fine-tuning phase"))
    # The named recipe the defaults came from (icapnet.presets); flags given on top of it are
    # in the other fields.
    preset: str = ""


@dataclass
class DataConfig:
    """Where the training data came from, so a model can say what it was trained on.

    ``dataset`` .. ``cache_dir`` and the vocabulary settings are given to ``prepare``; the
    provenance fields after them are filled from the feature cache when training starts
    (None: a model trained before they were recorded).
    """

    dataset: str = ""
    data_dir: str = ""
    cache_dir: str = ""
    min_count: int = 5
    max_vocab_size: int = 10000
    split: str | None = None  # where train/val/test came from, e.g. "official (package data)"
    train_images: int | None = None
    val_images: int | None = None
    test_images: int | None = None
    train_captions: int | None = None
    val_captions: int | None = None
    test_captions: int | None = None


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
        for section in (m, t, self.features):
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
        _at_least("sub_batches", t.sub_batches, 1)
        _at_least("length_buckets", t.length_buckets, 0)
        for section, name in ((m, "dropout"), (m, "state_dropout"), (t, "ema_momentum"),
                              (t, "label_smoothing")):
            if not 0.0 <= getattr(section, name) < 1.0:
                raise IcapnetError(f"{_flag(name)}: must be in [0, 1), got "
                                   f"{getattr(section, name)}")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            if not getattr(t, name) > 0:
                raise IcapnetError(f"{_flag(name)}: must be > 0, got {getattr(t, name)}")
        for name in ("early_stopping_patience", "reduce_lr_patience"):
            _at_least(name, getattr(t, name), 0)
        if not 0.0 < t.reduce_lr_factor < 1.0:
            raise IcapnetError(f"--reduce-lr-factor: must be in (0, 1), got {t.reduce_lr_factor}")
        if t.clip_norm < 0:
            raise IcapnetError(f"--clip-norm: must be >= 0, got {t.clip_norm}")
        if t.fine_tune_epochs and not t.fine_tune_from:
            raise IcapnetError("--fine-tune-epochs: needs --fine-tune-from LAYER "
                               "(e.g. block5_conv1)")
        _check_limits(self)

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
            if name == "model" and values and "feature_norm" not in values:
                values = {**values, "feature_norm": False}  # saved before it existed
            if name == "train":
                values = _migrate_train(values)
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    def save(self, directory: str | Path, fingerprints: dict[str, Any] | None = None) -> Path:
        """Write config.json; ``fingerprints`` (:func:`model_fingerprints`) go in with it."""
        path = fs.path(directory) / CONFIG_FILE
        data = self.to_dict()
        if fingerprints is not None:
            data[FINGERPRINTS] = fingerprints
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> Config:
        """A saved config, checked field by field (an IcapnetError names the file and field)."""
        return load_config_file(directory_or_file)[0]


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


# --------------------------------------------------------------------------- config files

FINGERPRINTS = "fingerprints"  # the config.json key (not a section: derived, never set)
_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
               "None": (type(None),)}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string",
               "bool": "true or false", "None": "null"}


def load_config_file(directory_or_file: str | Path) -> tuple[Config, dict[str, Any]]:
    """(Config, recorded fingerprints or {}) of a config.json, validated on the way in.

    Every problem is one IcapnetError naming the file and the field: not a JSON object,
    unknown sections or keys, a value of the wrong type (``"units": "abc"``), a value out of
    range, sections that disagree (``model.num_regions`` vs ``features.num_regions``).
    """
    path = fs.path(directory_or_file)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise IcapnetError(f"{path}: config file not found")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise IcapnetError(f"{path}: expected a JSON object with the sections "
                           f"{', '.join(_SECTION_TYPES)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_SECTION_TYPES) - {FINGERPRINTS})
    if unknown:
        raise IcapnetError(f"{path}: unknown section {unknown[0]!r} (expected "
                           f"{', '.join(_SECTION_TYPES)})")
    if "train" in raw:  # old files, converted before their types are checked
        raw = {**raw, "train": _migrate_train(raw["train"])}
    for name, section_cls in _SECTION_TYPES.items():
        _check_section(path, name, raw.get(name, {}), section_cls)
    fingerprints = raw.get(FINGERPRINTS) or {}
    if not isinstance(fingerprints, dict):
        raise IcapnetError(f"{path}: {FINGERPRINTS}: expected an object")
    config = Config.from_dict({k: v for k, v in raw.items() if k != FINGERPRINTS})
    try:
        config.validate()
    except IcapnetError as err:  # its messages name flags; a file's name its fields
        raise IcapnetError(f"{path}: {_field_of_flag(str(err))}") from None
    f, m = config.features, config.model
    for name in ("num_regions", "feature_dim"):
        if getattr(f, name) != getattr(m, name):
            raise IcapnetError(f"{path}: model.{name} {getattr(m, name)} differs from "
                               f"features.{name} {getattr(f, name)}")
    return config, fingerprints


def _migrate_train(values: Any) -> Any:
    """``mixed_precision`` was a bool before bfloat16 was offered: true meant float16."""
    if isinstance(values, dict) and isinstance(values.get("mixed_precision"), bool):
        return {**values, "mixed_precision": "float16" if values["mixed_precision"] else "off"}
    return values


def _check_section(path: Path, name: str, values: Any, section_cls: type) -> None:
    if not isinstance(values, dict):
        raise IcapnetError(f"{path}: {name}: expected an object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    for key, value in values.items():
        if key not in fields:
            raise IcapnetError(f"{path}: {name}.{key}: unknown setting")
        kinds = [k.strip() for k in str(fields[key].type).split("|")]
        if any(k not in _JSON_TYPES for k in kinds):
            continue  # a type JSON cannot check here
        allowed = tuple(t for k in kinds for t in _JSON_TYPES[k])
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            want = " or ".join(_TYPE_WORDS[k] for k in kinds)
            raise IcapnetError(f"{path}: {name}.{key}: expected {want}, got {value!r:.40}")


def _field_of_flag(message: str) -> str:
    """``--units: must be >= 1`` -> ``model.units: must be >= 1`` (the field of the flag)."""
    match = re.match(r"--([a-z0-9-]+)(.*)", message, re.S)
    if not match:
        return message
    name = match[1].replace("-", "_")
    for section, section_cls in _SECTION_TYPES.items():
        if name in {f.name for f in dataclasses.fields(section_cls)}:
            return f"{section}.{name}{match[2]}"
    return message


def _check_limits(config: Config) -> None:
    """Bounds that keep decoding and feature extraction from exhausting memory."""
    m, f = config.model, config.features
    if m.max_length > MAX_CAPTION_LENGTH:
        raise IcapnetError(f"--max-length: must be <= {MAX_CAPTION_LENGTH}, got {m.max_length}")
    if not 1 <= f.image_size <= MAX_IMAGE_SIZE:
        raise IcapnetError(f"--image-size: must be in [1, {MAX_IMAGE_SIZE}], got {f.image_size}")
    for name in ("num_regions", "feature_dim"):
        _at_least(name, getattr(f, name), 1)
        _at_least(name, getattr(m, name), 1)
    _at_least("vocab_size", m.vocab_size, 0)


# --------------------------------------------------------------------------- fingerprints


def field_fingerprints(values: dict[str, Any]) -> dict[str, str]:
    """A short sha256 per value: which one changed can be named, not only that one did."""
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode("utf-8")).hexdigest()[:16]
            for k, v in values.items()}


def changed_fields(current: dict[str, str], recorded: dict[str, Any]) -> list[str]:
    """Recorded names whose value changed or vanished. Names recorded by nobody (a setting
    newer than the file) are not compared."""
    return [k for k in recorded if current.get(k) != recorded[k]]


def vocab_fingerprint(words: list[str]) -> str:
    """sha256 of the word list in order: another order is another vocabulary."""
    return hashlib.sha256(json.dumps(list(words)).encode("utf-8")).hexdigest()


def feature_settings(features: FeatureConfig) -> dict[str, Any]:
    """What a model's input features depend on. ``weights`` by kind only: unpacking a
    package rewrites a local weights path, and the file is checked when loaded."""
    text = str(features.weights or "").strip().lower()
    kind = text if text in {"imagenet", "none"} else ("none" if not text else "file")
    settings = dataclasses.asdict(features)
    settings["weights"] = kind
    if kind != "none":
        settings.pop("random_init", None)
    return settings


def model_fingerprints(config: Config, vocab_words: list[str]) -> dict[str, Any]:
    """What ``config.json`` records at save time so a swapped vocab or edited feature settings
    are refused on load (``model.store.load_model_dir``)."""
    return {"vocab": vocab_fingerprint(vocab_words),
            "features": field_fingerprints(feature_settings(config.features))}
