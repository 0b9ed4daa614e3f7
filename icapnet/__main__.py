"""``python -m icapnet <subcommand>``: each subcommand is also ``python -m icapnet.<name>``."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "demo": "generate synthetic scenes, train, evaluate and caption end to end",
    "download": "download Flickr8k (or unpack a local archive) into a data folder",
    "prepare": "build the vocabulary and the VGG16 feature cache for a dataset",
    "train": "train a captioner on a feature cache",
    "evaluate": "caption a split and score it (BLEU, METEOR, ROUGE-L, CIDEr)",
    "export": "export a trained model as a TensorFlow SavedModel",
    "package": "pack a trained model into one shareable .zip (with its sha256)",
    "caption": "caption images and optionally save attention heatmaps",
    "serve": "web page and JSON API for captioning uploaded photos",
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: python -m icapnet <subcommand> [options]   (or: icapnet <subcommand>)",
             "", "subcommands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "Run 'python -m icapnet <subcommand> --help' for its options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from icapnet.errors import quiet_broken_pipe

    try:
        return _dispatch(argv)
    except BrokenPipeError:
        return quiet_broken_pipe()


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from icapnet import __version__

        print(f"icapnet {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"icapnet.{name}")
    from icapnet.errors import run_cli

    return run_cli(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
