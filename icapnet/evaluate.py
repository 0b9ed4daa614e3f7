"""``python -m icapnet.evaluate --model M --split test [--beam 3]``: caption a split and score it.

Every image of the split is captioned *free-running* from its cached features (the decoder
only ever sees its own previous words, never the references), with greedy decoding for
``--beam 1`` and beam search otherwise. The captions are scored against all references of
each image (see :mod:`icapnet.inference.metrics` for nltk vs COCO metrics).

Written next to the model, atomically:

* ``results_{split}_beam{k}.json`` — COCO results format: ``[{"image_id", "caption"}, ...]``
  (``image_id`` is icapnet's id, the image file name);
* ``metrics.json`` — ``{split: {"beam{k}": {metric: value, ..., "num_images", ...}}}``,
  merged into whatever the file already holds (other splits / beams / training stats).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from icapnet import cli
from icapnet.errors import require_positive, run_cli
from icapnet.inference.evaluation import evaluate_split, resolve_cache
from icapnet.model.store import load_config, resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.evaluate",
        description="Caption every image of a split (free-running) and score the captions.",
    )
    cli.add_model_flag(parser)
    parser.add_argument("--split", default="test", help="train | val | test (default: test)")
    cli.add_decoding_flags(parser, length_penalty=True)
    parser.add_argument("--cache", help="feature cache (default: the one the model trained on)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per decoding batch")
    parser.add_argument("--no-coco", action="store_true",
                        help="nltk BLEU only (skip pycocoevalcap's METEOR/ROUGE-L/CIDEr)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_positive(args, "batch_size")
    cli.check_decoding_flags(args)
    model_dir = resolve_model(args.model)
    cache_dir = resolve_cache(model_dir, load_config(model_dir), args.cache)

    cli.start()
    from icapnet.inference.decoding import check_decoding
    from icapnet.inference.metrics import format_table
    from icapnet.model.store import load_model_dir

    model, vocab, config = load_model_dir(model_dir)
    check_decoding(args.beam, args.max_length or config.model.max_length, len(vocab), "--beam",
                   "--max-length")
    print(cli.trained_on(config), flush=True)
    done = evaluate_split(model, vocab, config, model_dir, cache_dir, args.split, args.beam,
                          args.max_length, args.length_penalty, args.batch_size,
                          coco=not args.no_coco)

    print(format_table({f"{args.split} beam{args.beam}": done.scores}))
    rate = len(done.captions) / done.seconds if done.seconds > 0 else math.inf
    print(f"\n{done.entry['num_images']} images captioned in {done.seconds:.1f} s "
          f"({rate:.1f} img/s)")
    references = done.references
    for image_id in [i for i in done.captions if references.get(i)][:3]:
        print(f"  {image_id}: {done.captions[image_id]!r}  (ref: {references[image_id][0]!r})")
    print(f"captions: {done.results_path}\nmetrics:  {done.metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
