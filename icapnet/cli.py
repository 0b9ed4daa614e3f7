"""What the ``python -m icapnet.<sub>`` commands share: common flags and start-up.

A CLI module parses its flags (with the helpers here, so ``--model``, ``--beam`` and
``--max-length`` read the same everywhere and hyperparameter flags come from the Config
fields) and calls library functions; it holds no logic of its own. Nothing here imports
TensorFlow: flags are checked before the slow import.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any

from icapnet.config import CHOICES
from icapnet.model.store import DEFAULT_MODELS_DIR

_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def start(log_info: bool = False) -> None:
    """Before TensorFlow loads: quiet its C++ logging; optionally show icapnet's INFO lines."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if log_info:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        # tf.distribute logs every collective it builds at INFO: not for users.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)


def add_model_flag(parser: argparse.ArgumentParser, required: bool = False) -> None:
    what = "trained model directory, packaged .zip or http(s) URL of one"
    if required:
        parser.add_argument("--model", required=True, help=what)
    else:
        parser.add_argument("--model", default=None,
                            help=f"{what} (default: the newest folder under "
                            f"{DEFAULT_MODELS_DIR}/ with a config.json)")


def add_decoding_flags(parser: argparse.ArgumentParser, beam_help: str = "beam size (1 = greedy)",
                       length_penalty: bool = False, feature_weights: bool = False) -> None:
    """``--beam K``, ``--max-length N`` and, where the command offers them,
    ``--length-penalty ALPHA`` and ``--feature-weights W``."""
    parser.add_argument("--beam", type=int, default=1, metavar="K", help=beam_help)
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="longest caption in tokens (default: the model's max_length)")
    if length_penalty:
        parser.add_argument("--length-penalty", type=float, default=0.0, metavar="ALPHA",
                            help="GNMT length penalty for beam search (0 = plain log-prob sum)")
    if feature_weights:
        parser.add_argument("--feature-weights", default=None,
                            help="backbone weights instead of the ones recorded in the model's "
                            "config (imagenet | none | a local .h5 file)")


def flag(name: str) -> str:
    """The CLI flag of a config field: ``fine_tune_from`` -> ``--fine-tune-from``."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, section: type, title: str,
                     skip: set[str] | frozenset[str] = frozenset(),
                     unset_default: bool = False) -> None:
    """One flag per field of a Config section (so a default lives only in config.py).

    ``unset_default`` makes every default None, for a command that fills in its own defaults
    and must know which flags the user gave (the demo).
    """
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(section):
        if field.name in skip:
            continue
        default = None if unset_default else field.default
        shown = f"(default: {field.default})"
        if field.type == "bool":
            group.add_argument(flag(field.name), action=argparse.BooleanOptionalAction,
                               default=default, help=shown)
            continue
        kind = _TYPES.get(str(field.type))
        if kind is None:
            raise TypeError(f"{section.__name__}.{field.name}: no CLI type for {field.type}")
        group.add_argument(flag(field.name), type=kind, default=default,
                           choices=CHOICES.get(field.name), metavar=field.name.upper(),
                           help=shown)


def config_section(section: type, args: argparse.Namespace, base: Any = None,
                   skip: set[str] | frozenset[str] = frozenset()) -> Any:
    """A Config section from parsed flags; fields not given (None) keep ``base``'s values."""
    base = base if base is not None else section()
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(section)
              if f.name not in skip and getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **values)
