"""``python -m icapnet.package``: a trained model as one .zip to hand to someone else.

The zip holds what captioning needs (config, vocabulary, weights, a local backbone file if
the model uses one) plus metrics and training history, and a manifest with every member's
sha256 (``icapnet.model.package``). Its own sha256 is printed and written beside it as
``<file>.zip.sha256``; publish both, or give people ``URL#sha256=HEX``. Any ``--model`` of
caption / evaluate / serve / export then accepts the zip or its URL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from icapnet.errors import run_cli
from icapnet.model.store import DEFAULT_MODELS_DIR, resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.package",
        description="Pack a trained model directory into one shareable .zip (with sha256).",
        epilog="Use it with: python -m icapnet.caption photo.jpg --model FILE.zip "
        "(or --model https://host/FILE.zip#sha256=HEX).",
    )
    parser.add_argument("--model", help=f"model directory (default: newest in "
                        f"{DEFAULT_MODELS_DIR}/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="package to write (default: ./<model folder name>.zip)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from icapnet.model.package import pack_model

    model_dir = resolve_model(args.model)
    out = args.out or Path(f"{model_dir.resolve().name}.zip")
    packed = pack_model(model_dir, out)
    print(f"model package: {packed.path} ({packed.bytes / 1e6:.1f} MB)")
    print(f"  sha256    {packed.sha256}  (also in {packed.path.name}.sha256)")
    print(f"  files     {', '.join(packed.files)}")
    if "metrics.json" not in packed.files:
        print("  note      no metrics.json: the model was not evaluated yet")
    print(f"  use it    python -m icapnet.caption photo.jpg --model {packed.path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
