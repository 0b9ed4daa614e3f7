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
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icapnet.caption import resolve_model
from icapnet.config import Config
from icapnet.errors import IcapnetError, require_positive, run_cli
from icapnet.io import atomic_write_text

METRICS_FILE = "metrics.json"


def results_path(model_dir: Path, split: str, beam: int) -> Path:
    return model_dir / f"results_{split}_beam{beam}.json"


def resolve_cache(model_dir: Path, config: Config, cache: str | None) -> Path:
    """``--cache``, else the cache the model was trained on (``config.data.cache_dir``)."""
    recorded = cache is None
    if recorded:
        if not config.data.cache_dir:
            raise IcapnetError(f"{model_dir}: config.json records no cache_dir; pass --cache")
        cache = config.data.cache_dir
    path = Path(cache)
    if not path.is_dir():
        hint = " (recorded in the model's config.json)" if recorded else ""
        raise IcapnetError(f"{path}: feature cache not found{hint}; pass --cache or run prepare")
    return path


def _check_backbone(cache_root: Path, manifest: dict[str, Any], config: Config) -> None:
    """Features from another backbone would give meaningless captions: say so, in one line."""
    want = config.features
    have = {k: manifest.get(k) for k in ("backbone", "layer", "image_size")}
    if have != {"backbone": want.backbone, "layer": want.layer, "image_size": want.image_size}:
        print(f"warning: {cache_root}: cache features {have} differ from the model's "
              f"({want.backbone}, {want.layer}, {want.image_size})", file=sys.stderr)


def caption_split(
    model: Any,
    vocab: Any,
    cache_dir: Path,
    split: str,
    beam: int,
    max_length: int,
    batch_size: int = 32,
    length_penalty: float = 0.0,
    num_images: int | None = None,
) -> dict[str, str]:
    """image_id -> free-running caption for every image of ``split`` (cache order)."""
    from tqdm.auto import tqdm

    from icapnet.data.pipeline import make_image_dataset
    from icapnet.inference.decoding import decode
    from icapnet.inference.predictor import results_from_decode

    dataset = make_image_dataset(cache_dir, split, batch_size)
    captions: dict[str, str] = {}
    total = num_images if num_images is not None else None
    with tqdm(total=total, desc=f"captioning {split} (beam {beam})", unit="img",
              disable=None) as bar:
        for image_ids, features in dataset:
            result = decode(model, features, beam, max_length, length_penalty)
            for raw_id, res in zip(image_ids.numpy(), results_from_decode(result, vocab),
                                   strict=True):
                captions[raw_id.decode("utf-8")] = res.caption
            bar.update(len(image_ids))
    return captions


def merge_metrics(model_dir: Path, split: str, beam: int, entry: dict[str, Any]) -> Path:
    """Put ``entry`` at ``metrics.json[split]["beam{k}"]``, keeping everything else."""
    path = model_dir / METRICS_FILE
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            print(f"warning: {path}: not valid JSON, starting a new file", file=sys.stderr)
        if not isinstance(data, dict):
            data = {}
    if not isinstance(data.get(split), dict):
        data[split] = {}
    data[split][f"beam{beam}"] = entry
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.evaluate",
        description="Caption every image of a split (free-running) and score the captions.",
    )
    parser.add_argument("--model", help="model directory, packaged .zip or http(s) URL of one "
                        "(default: newest in saved_models/)")
    parser.add_argument("--split", default="test", help="train | val | test (default: test)")
    parser.add_argument("--beam", type=int, default=1, metavar="K", help="beam size (1 = greedy)")
    parser.add_argument("--cache", help="feature cache (default: the one the model trained on)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="longest caption in tokens (default: the model's max_length)")
    parser.add_argument("--length-penalty", type=float, default=0.0, metavar="ALPHA",
                        help="GNMT length penalty for beam search (0 = plain log-prob sum)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per decoding batch")
    parser.add_argument("--no-coco", action="store_true",
                        help="nltk BLEU only (skip pycocoevalcap's METEOR/ROUGE-L/CIDEr)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_positive(args, "beam", "batch_size", optional=("max_length",))
    model_dir = resolve_model(args.model)
    try:
        config = Config.load(model_dir)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise IcapnetError(f"{model_dir}: invalid model config ({err})") from err
    cache_dir = resolve_cache(model_dir, config, args.cache)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from icapnet.data.features import open_cache
    from icapnet.inference import metrics
    from icapnet.model.store import load_model_dir

    cache = open_cache(cache_dir)
    references = cache.captions.get(args.split) or {}
    if args.split not in cache.splits or not references:
        raise IcapnetError(f"{cache_dir}: no '{args.split}' images with captions in the cache "
                           f"(splits: {', '.join(cache.splits) or 'none'})")
    _check_backbone(cache_dir, cache.manifest, config)
    model, vocab, config = load_model_dir(model_dir)
    max_length = args.max_length or int(config.model.max_length)

    start = time.perf_counter()
    captions = caption_split(model, vocab, cache_dir, args.split, args.beam, max_length,
                             args.batch_size, args.length_penalty, cache.num_images(args.split))
    seconds = time.perf_counter() - start
    scored = {i: c for i, c in captions.items() if references.get(i)}
    if len(scored) < len(captions):
        print(f"warning: {cache_dir}: {len(captions) - len(scored)} '{args.split}' image(s) "
              "have no reference captions and are not scored", file=sys.stderr)
    if not scored:
        raise IcapnetError(f"{cache_dir}: no '{args.split}' image has both features and captions")
    scores = metrics.score_captions(references, scored, coco=not args.no_coco)

    results = [{"image_id": i, "caption": c} for i, c in captions.items()]
    out = results_path(model_dir, args.split, args.beam)
    atomic_write_text(out, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    entry = {
        **scores,
        "num_images": len(scored),
        "beam": args.beam,
        "max_length": max_length,
        "length_penalty": args.length_penalty,
        "cache": str(cache_dir),
        "results": out.name,
        "seconds": round(seconds, 2),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    metrics_path = merge_metrics(model_dir, args.split, args.beam, entry)

    print(metrics.format_table({f"{args.split} beam{args.beam}": scores}))
    rate = len(captions) / seconds if seconds > 0 else math.inf
    print(f"\n{len(scored)} images captioned in {seconds:.1f} s ({rate:.1f} img/s)")
    for image_id in list(scored)[:3]:
        print(f"  {image_id}: {scored[image_id]!r}  (ref: {references[image_id][0]!r})")
    print(f"captions: {out}\nmetrics:  {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
