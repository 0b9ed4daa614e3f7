"""What the ``python -m icapnet.<sub>`` commands share: common flags and start-up.

A CLI module parses its flags (with the helpers here, so ``--model``, ``--beam`` and
``--max-length`` read the same everywhere and hyperparameter flags come from the Config
fields) and calls library functions; it holds no logic of its own. Nothing here imports
TensorFlow: flags are checked before the slow import.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from icapnet.config import CHOICES, DEFAULT_BEAM, MAX_BEAM_SIZE, MAX_CAPTION_LENGTH, Config
from icapnet.errors import IcapnetError
from icapnet.model.store import DEFAULT_MODELS_DIR

_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def start(log_info: bool = False) -> None:
    """Before TensorFlow loads: quiet its C++ logging (and, when this process is an icapnet
    command, its native start-up lines); optionally show icapnet's INFO lines."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from icapnet import native_logs

    if native_logs.started_as_cli():
        native_logs.filter_native_stderr()
    if log_info:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        # tf.distribute logs every collective it builds at INFO: not for users.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection while TensorFlow imports and the models load.

    Importing TensorFlow and building two models create about a million long-lived objects
    and no garbage worth collecting, yet each allocation burst triggers a collection that walks
    them all: pausing cut a cold ``python -c "import tensorflow"`` by ~0.5 s on 2 cores. The
    previous state comes back afterwards (tests call the CLIs in one process).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def skip_final_collection() -> None:
    """Spare a finished icapnet command the interpreter's last garbage collection.

    At exit Python collects once more over every object: TensorFlow's million walked for
    ~0.6-0.9 s of a one-photo caption, collecting nothing anyone waits for. ``gc.freeze``
    moves them out of its reach. Only in a process that IS an icapnet command (``python -m
    icapnet.caption``, ``python -m icapnet caption``, the ``icapnet`` script): a test or
    notebook calling ``main()`` keeps its collector for the work that follows.
    """
    from icapnet import native_logs

    if native_logs.started_as_cli():
        gc.freeze()


def trained_on(config: Config) -> str:
    """One line about a model's training data, from its config.json (evaluate prints it)."""
    data = config.data
    parts = [data.dataset or "unknown dataset"]
    if data.split:
        parts.append(f"split {data.split}")
    if data.train_images is not None:
        parts.append(f"{data.train_images} train images / {data.train_captions} captions")
    weights = config.features.weights
    weights = Path(weights).name if "/" in weights else weights  # a file: its name
    parts.append(f"{config.features.backbone} features ({weights} weights)")
    if config.train.preset:
        parts.append(f"preset {config.train.preset}")
    text = "trained on: " + ", ".join(parts)
    if data.dataset == "synthetic":
        text += " -- synthetic scenes of coloured shapes, not photos"
    return text


def synthetic_note(model_dir: str | Path, config: Config) -> str | None:
    """The one line that says a model only knows synthetic scenes (None for real data)."""
    if config.data.dataset != "synthetic":
        return None
    return (f"note: {Path(model_dir).name} was trained on synthetic scenes (coloured shapes); "
            "it describes any photo as shapes")


def add_model_flag(parser: argparse.ArgumentParser, required: bool = False) -> None:
    what = "trained model directory, packaged .zip or http(s) URL of one"
    if required:
        parser.add_argument("--model", required=True, help=what)
    else:
        parser.add_argument("--model", default=None,
                            help=f"{what} (default: the newest folder under "
                            f"{DEFAULT_MODELS_DIR}/ with a config.json)")


def add_decoding_flags(parser: argparse.ArgumentParser,
                       beam_help: str = "beam width (1 = greedy)",
                       length_penalty: bool = False, feature_weights: bool = False) -> None:
    """``--beam K``, ``--max-length N`` and, where the command offers them,
    ``--length-penalty ALPHA`` and ``--feature-weights W``."""
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM, metavar="K",
                        help=f"{beam_help} (default: {DEFAULT_BEAM}; at most {MAX_BEAM_SIZE})")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="longest caption in tokens (default: the model's max_length; "
                        f"at most {MAX_CAPTION_LENGTH})")
    if length_penalty:
        parser.add_argument("--length-penalty", type=float, default=0.0, metavar="ALPHA",
                            help="GNMT length penalty for beam search (0 = plain log-prob sum)")
    if feature_weights:
        parser.add_argument("--feature-weights", default=None,
                            help="backbone weights instead of the ones recorded in the model's "
                            "config (imagenet | none | a local .h5 file)")


def check_decoding_flags(args: argparse.Namespace) -> None:
    """``--beam`` and ``--max-length`` within their bounds, before TensorFlow loads (the
    model's vocabulary is checked once it is loaded: ``inference.decoding.check_decoding``)."""
    if not 1 <= args.beam <= MAX_BEAM_SIZE:
        raise IcapnetError(f"--beam {args.beam}: must be from 1 to {MAX_BEAM_SIZE}")
    if args.max_length is not None and not 1 <= args.max_length <= MAX_CAPTION_LENGTH:
        raise IcapnetError(f"--max-length {args.max_length}: must be from 1 to "
                           f"{MAX_CAPTION_LENGTH}")


def flag(name: str) -> str:
    """The CLI flag of a config field: ``fine_tune_from`` -> ``--fine-tune-from``."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, section: type, title: str,
                     skip: set[str] | frozenset[str] = frozenset(),
                     unset_default: bool = False) -> None:
    """One flag per field of a Config section (so a default lives only in config.py); the
    field's ``help`` metadata is the flag's sentence, its CHOICES entry the allowed values.

    ``unset_default`` makes every default None, for a command that fills in its own defaults
    (a preset, the demo's sizes) and must know which flags the user gave.
    """
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(section):
        if field.name in skip:
            continue
        default = None if unset_default else field.default
        text = field.metadata.get("help", field.name.replace("_", " "))
        shown = f"{text} (default: {field.default})"
        if field.type == "bool":
            group.add_argument(flag(field.name), action=argparse.BooleanOptionalAction,
                               default=default, help=shown)
            continue
        kind = _TYPES.get(str(field.type))
        if kind is None:
            raise TypeError(f"{section.__name__}.{field.name}: no CLI type for {field.type}")
        choices = CHOICES.get(field.name)
        # A flag that may be given bare (field metadata "bare": the value it then means).
        bare = {"nargs": "?", "const": field.metadata["bare"]} if "bare" in field.metadata else {}
        group.add_argument(flag(field.name), type=kind, default=default, choices=choices,
                           metavar=None if choices else field.name.upper(), help=shown, **bare)


def config_section(section: type, args: argparse.Namespace, base: Any = None,
                   skip: set[str] | frozenset[str] = frozenset()) -> Any:
    """A Config section from parsed flags; fields not given (None) keep ``base``'s values."""
    base = base if base is not None else section()
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(section)
              if f.name not in skip and getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **values)
