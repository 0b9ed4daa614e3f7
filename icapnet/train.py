"""``python -m icapnet.train --cache CACHE --out saved_models/NAME``: train or resume a captioner.

Every hyperparameter flag is generated from the ModelConfig / TrainConfig fields, so a
default lives in exactly one place (icapnet/config.py). Re-running the same command after
an interruption continues from the last completed epoch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from icapnet import cli, fs
from icapnet.config import Config, DataConfig, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError, run_cli
from icapnet.layout import HISTORY_FILE

# Decided by the feature cache, not by the user.
FROM_CACHE = frozenset({"vocab_size", "num_regions", "feature_dim"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.train",
        description="Train an attention captioner on a feature cache (resumes automatically).",
    )
    parser.add_argument("--cache", type=fs.path, required=True,
                        help="feature cache from prepare (a folder or a gs:// ... URL)")
    parser.add_argument("--out", type=fs.path, required=True,
                        help="model directory to write (a folder or a gs:// ... URL)")
    parser.add_argument("--dataset", default="", help="dataset name (fine-tuning reads images; "
                        "default: the one recorded in the cache)")
    parser.add_argument("--data-dir", default="", help="dataset folder (fine-tuning only; "
                        "default: the one recorded in the cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_config_flags(parser, ModelConfig, "model", skip=FROM_CACHE)
    cli.add_config_flags(parser, TrainConfig, "training")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config from parsed flags (cache-decided fields are filled in later)."""
    return Config(model=cli.config_section(ModelConfig, args, skip=FROM_CACHE),
                  train=cli.config_section(TrainConfig, args),
                  data=DataConfig(dataset=args.dataset, data_dir=args.data_dir))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    config.validate()
    cli.start(log_info=True)
    if not args.cache.is_dir():
        raise IcapnetError(f"{args.cache}: feature cache not found; run prepare first")
    from icapnet.model.training import describe_history, train

    history = train(config, args.cache, args.out, verbose=0 if args.quiet else 1)
    print(describe_history(history))
    print(f"model directory: {args.out} (history: {args.out / HISTORY_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
