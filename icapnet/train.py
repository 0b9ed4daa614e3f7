"""``python -m icapnet.train --cache CACHE --out saved_models/NAME``: train or resume a captioner.

Every hyperparameter flag is generated from the ModelConfig / TrainConfig fields, so a
default lives in exactly one place (icapnet/config.py). Re-running the same command after
an interruption continues from the last completed epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from icapnet.config import Config, DataConfig, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError, run_cli

# Decided by the feature cache, not by the user.
_FROM_CACHE = {"vocab_size", "num_regions", "feature_dim"}
_CHOICES = {
    "decoder": ("gru", "lstm"),
    "attention": ("bahdanau", "none"),
    "strategy": ("default", "mirrored", "tpu"),
    "mixed_precision": ("off", "float16", "bfloat16", "auto"),
}
# Flags that may be given bare: "--mixed-precision" alone means "auto" (pick by device).
_BARE = {"mixed_precision": "auto"}
_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_section(parser: argparse.ArgumentParser, section: type, title: str) -> None:
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(section):
        if field.name in _FROM_CACHE:
            continue
        default = field.default
        if field.type == "bool":
            group.add_argument(_flag(field.name), action=argparse.BooleanOptionalAction,
                               default=default, help=f"(default: {default})")
            continue
        kind = _TYPES.get(str(field.type))
        if kind is None:
            raise TypeError(f"{section.__name__}.{field.name}: no CLI type for {field.type}")
        bare = {"nargs": "?", "const": _BARE[field.name]} if field.name in _BARE else {}
        group.add_argument(_flag(field.name), type=kind, default=default,
                           choices=_CHOICES.get(field.name), metavar=field.name.upper(),
                           help=f"(default: {default})", **bare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.train",
        description="Train an attention captioner on a feature cache (resumes automatically).",
    )
    parser.add_argument("--cache", type=Path, required=True, help="feature cache from prepare")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--dataset", default="", help="dataset name (fine-tuning reads images; "
                        "default: the one recorded in the cache)")
    parser.add_argument("--data-dir", default="", help="dataset folder (fine-tuning only; "
                        "default: the one recorded in the cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_section(parser, ModelConfig, "model")
    _add_section(parser, TrainConfig, "training")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config from parsed flags (cache-decided fields are filled in later)."""
    def section(cls: type) -> object:
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                  if f.name not in _FROM_CACHE}
        return cls(**values)

    return Config(model=section(ModelConfig), train=section(TrainConfig),
                  data=DataConfig(dataset=args.dataset, data_dir=args.data_dir))


def _validate(config: Config) -> None:
    m, t = config.model, config.train
    for name in ("embedding_dim", "units", "attention_units", "max_length"):
        if getattr(m, name) < 1:
            raise IcapnetError(f"{_flag(name)}: must be >= 1, got {getattr(m, name)}")
    for name in ("batch_size", "shuffle_buffer", "sub_batches"):
        if getattr(t, name) < 1:
            raise IcapnetError(f"{_flag(name)}: must be >= 1, got {getattr(t, name)}")
    if t.length_buckets < 0:
        raise IcapnetError(f"--length-buckets: must be >= 0, got {t.length_buckets}")
    if t.epochs < 0 or t.fine_tune_epochs < 0:
        raise IcapnetError("--epochs / --fine-tune-epochs: must be >= 0")
    if not 0.0 <= m.dropout < 1.0:
        raise IcapnetError(f"--dropout: must be in [0, 1), got {m.dropout}")
    if t.learning_rate <= 0 or t.fine_tune_learning_rate <= 0:
        raise IcapnetError("--learning-rate / --fine-tune-learning-rate: must be > 0")
    if t.fine_tune_epochs and not t.fine_tune_from:
        raise IcapnetError("--fine-tune-epochs: needs --fine-tune-from LAYER (e.g. block5_conv1)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    _validate(config)
    if not args.cache.is_dir():
        raise IcapnetError(f"{args.cache}: feature cache not found; run prepare first")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from icapnet.model.training import HISTORY_FILE, train

    history = train(config, args.cache, args.out, verbose=0 if args.quiet else 1)
    if not history.empty:
        last = history.iloc[-1]
        best_col = "val_loss" if "val_loss" in history else "loss"
        print(f"trained {len(history)} epochs; best {best_col} "
              f"{history[best_col].min():.4f}, last loss {last['loss']:.4f}")
    print(f"model directory: {args.out} (history: {args.out / HISTORY_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
