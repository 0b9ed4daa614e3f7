"""``python -m icapnet.download``: put Flickr8k into a data folder.

    python -m icapnet.download --data-dir data/flickr8k
    python -m icapnet.download --data-dir data/flickr8k --source ~/Downloads/archive.zip
    python -m icapnet.download --data-dir data/flickr8k --source /mnt/datasets/Flickr8k

Downloads resume after an interruption and are SHA-256 checked (see icapnet.data.download).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from icapnet.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.download",
        description="Download Flickr8k (or unpack a local archive/folder) into --data-dir.",
    )
    parser.add_argument("--data-dir", required=True, help="folder to hold the dataset")
    parser.add_argument(
        "--source",
        help="URL of an archive or of a folder holding Flickr8k_Dataset.zip and "
        "Flickr8k_text.zip, a local .zip/.tar.gz, or an unpacked folder "
        "(default: the jbrownlee/Datasets GitHub release)",
    )
    parser.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="[NAME=]HEX",
        help="expected SHA-256 of an archive (repeat NAME=HEX for several)",
    )
    parser.add_argument("--force", action="store_true", help="redo even if data is present")
    parser.add_argument(
        "--remove-archives", action="store_true", help="delete downloaded archives after unpacking"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # no TensorFlow here
    from icapnet.data import download
    from icapnet.data.datasets import load_dataset

    names = download.archive_names(args.source)
    checksums = download.parse_checksums(args.sha256, names)
    data_dir = download.fetch_flickr8k(
        args.data_dir,
        args.source,
        checksums,
        force=args.force,
        keep_archives=not args.remove_archives,
        progress=not args.quiet,
    )
    print(load_dataset("flickr8k", data_dir).summary())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
