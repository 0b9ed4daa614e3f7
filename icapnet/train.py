"""``python -m icapnet.train --cache CACHE --out saved_models/NAME``: train or resume a captioner.

Every hyperparameter flag is generated from the ModelConfig / TrainConfig fields, so a
default lives in exactly one place (icapnet/config.py). ``--preset`` (icapnet/presets.py)
replaces some defaults with a named recipe, picked by the cache's dataset when not given;
flags given explicitly override it. Re-running the same command after an interruption
continues from the last completed epoch; re-running a finished run with a larger
``--epochs`` trains the extra epochs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from icapnet import cli, fs
from icapnet.config import Config, DataConfig, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError, run_cli
from icapnet.fs import GPath
from icapnet.layout import HISTORY_FILE, MANIFEST_FILE, read_json
from icapnet.presets import PRESETS, apply_preset, preset_for, preset_help

# Decided by the feature cache, not by the user.
FROM_CACHE = frozenset({"vocab_size", "num_regions", "feature_dim"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.train",
        description="Train an attention captioner on a feature cache (resumes automatically).",
        epilog="The progress bar and history.csv show loss (cross-entropy per word, plus "
        "lambda x attention_penalty when the penalty is on: the number val_loss repeats on "
        "the validation split), accuracy (share of next words predicted right), and with the "
        "penalty on also token_loss (the cross-entropy alone) and attention_penalty (before "
        "lambda).",
    )
    parser.add_argument("--cache", type=fs.path, required=True,
                        help="feature cache from 'python -m icapnet.prepare' (folder or gs:// URL)")
    parser.add_argument("--out", type=fs.path, required=True,
                        help="model directory to write, resume or extend (folder or gs:// URL)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None, help=preset_help())
    parser.add_argument("--dataset", default="", help="dataset name (fine-tuning reads images; "
                        "default: the one recorded in the cache)")
    parser.add_argument("--data-dir", default="", help="dataset folder (fine-tuning only; "
                        "default: the one recorded in the cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_config_flags(parser, ModelConfig, "model (defaults before --preset)",
                         skip=FROM_CACHE, unset_default=True)
    cli.add_config_flags(parser, TrainConfig, "training (defaults before --preset)",
                         skip={"preset"}, unset_default=True)
    return parser


def config_from_args(args: argparse.Namespace, dataset: str = "") -> Config:
    """The Config: defaults, then the preset (named, or the dataset's), then the flags given
    (cache-decided fields are filled in later)."""
    preset = args.preset or preset_for(args.dataset or dataset)
    base = apply_preset(Config(), preset)
    return Config(model=cli.config_section(ModelConfig, args, base=base.model, skip=FROM_CACHE),
                  train=cli.config_section(TrainConfig, args, base=base.train),
                  data=DataConfig(dataset=args.dataset, data_dir=args.data_dir))


def cache_dataset(cache: Path | GPath) -> str:
    """The dataset a cache was built from (its manifest; a local one is read without
    TensorFlow)."""
    if not cache.is_dir():
        raise IcapnetError(f"{cache}: feature cache not found; run prepare first")
    if not (cache / MANIFEST_FILE).is_file():
        raise IcapnetError(f"{cache}: not a feature cache (no {MANIFEST_FILE}); run prepare")
    manifest = read_json(cache / MANIFEST_FILE)
    return str(manifest.get("dataset", "")) if isinstance(manifest, dict) else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_from_args(args).validate()  # the flags first: a preset only brings valid values
    config = config_from_args(args, cache_dataset(args.cache))
    config.validate()
    cli.start(log_info=True)
    from icapnet.model.training import describe_history, train

    print(f"preset: {config.train.preset} (flags given override it)", flush=True)
    history = train(config, args.cache, args.out, verbose=0 if args.quiet else 1)
    print(describe_history(history))
    print(f"model directory: {args.out} (history: {args.out / HISTORY_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
