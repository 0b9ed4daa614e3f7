"""``python -m icapnet.caption IMG [IMG... | DIR | GLOB]``: describe photos in one sentence.

Output on stdout, one line per image that could be read:

* one image in total: just the caption;
* several images: ``path<TAB>caption`` (paths as given / as expanded from DIR or GLOB);
* ``--json``: one JSON object per line, always: ``{"path", "caption", "score", "words"}``
  plus ``"attention_png"`` / ``"attention_npz"`` with ``--attention-dir``.

A model trained on synthetic scenes describes any photo as coloured shapes; stderr then
starts with one ``note:`` line saying so.

A folder contributes its image files (by extension, not recursive, sorted); a glob pattern
(``'photos/**/*.jpg'``, quoted so the shell leaves it alone) contributes its matching image
files. A file named explicitly is always tried. An image that cannot be read (missing,
corrupt, truncated, not an image, unsupported) gives one ``error: PATH: problem`` line on
stderr; the other images are still captioned and the exit code is 1. A bad ``--model``
(or no model under ``saved_models/``) is a one-line error with exit code 2.

``--attention-dir D`` writes, per image, ``D/<stem>_attention.png`` (the photo, then one panel
per word and ``<end>``: the 14x14 map over the photo, opacity following the attention, one
shared colour scale; see :mod:`icapnet.plots.attention`) -- or ``.gif`` stepping through the
words with ``--attention-format gif`` -- and ``D/<stem>_attention.npz`` (``words``, raw
``attention`` [T,14,14], ``end_attention``, ``caption``, ``image_path``, ``image_size``,
``score``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from icapnet import cli
from icapnet.errors import require_positive, run_cli
from icapnet.inference.captioning import (
    ATTENTION_FORMATS,
    caption_files,
    check_output_dir,
    expand_inputs,
    load_predictor,
)
from icapnet.model.store import load_config, resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.caption",
        description="Caption images with a trained icapnet model.",
        epilog="One image: prints the caption. Several: 'path<TAB>caption' per line. "
        "Unreadable images are reported on stderr and the exit code is 1.",
    )
    parser.add_argument("images", nargs="+", metavar="IMG", help="image file, folder or glob")
    cli.add_model_flag(parser)
    cli.add_decoding_flags(parser, feature_weights=True)
    parser.add_argument("--attention-dir", type=Path, metavar="D",
                        help="write an attention figure and the raw maps (.npz) per image")
    parser.add_argument("--attention-format", choices=ATTENTION_FORMATS, default="png",
                        help="attention figure: png (all words side by side, default) or gif "
                        "(animated, one word per frame)")
    parser.add_argument("--json", action="store_true", help="JSON lines with path, caption, score")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_positive(args, "batch_size")
    cli.check_decoding_flags(args)
    if args.attention_dir is not None:
        check_output_dir(args.attention_dir, "--attention-dir")
    model_dir = resolve_model(args.model)
    note = cli.synthetic_note(model_dir, load_config(model_dir))
    if note:
        print(note, file=sys.stderr)
    paths, errors = expand_inputs(args.images)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if not paths:
        return 1

    cli.start()
    with cli.gc_paused():
        from tqdm.auto import tqdm

        from icapnet.inference.decoding import check_decoding

        # The decode graph is traced in a thread while the weights and VGG16 load.
        predictor = load_predictor(model_dir, args.feature_weights, trace_beam=args.beam)
    check_decoding(args.beam, args.max_length or predictor.max_length, len(predictor.vocab),
                   "--beam", "--max-length")
    single = len(paths) == 1 and not errors
    failed = bool(errors)
    records = caption_files(predictor, paths, beam_size=args.beam, max_length=args.max_length,
                            batch_size=args.batch_size, attention_dir=args.attention_dir,
                            attention_format=args.attention_format)
    with tqdm(total=len(paths), desc="captioning", unit="img", disable=None, leave=False) as bar:
        for record in records:
            bar.update(1)
            if not isinstance(record, dict):
                print(f"error: {record}", file=sys.stderr)
                failed = True
            elif args.json:
                print(json.dumps(record, ensure_ascii=False), flush=True)
            elif single:
                print(record["caption"], flush=True)
            else:
                print(f"{record['path']}\t{record['caption']}", flush=True)
    cli.skip_final_collection()  # everything is printed and written
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
