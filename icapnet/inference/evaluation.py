"""Caption a split of the feature cache free-running and score it against its references.

Every image is captioned from its cached features with the decoder only ever seeing its own
previous words (greedy for beam 1, beam search otherwise), then scored against all
references of the image (:mod:`icapnet.inference.metrics`). The COCO-format captions and the
scores are written next to the model; ``on_result`` lets a caller look at each decoded
caption and its attention (the demo's localisation) without decoding the split twice.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icapnet import fs
from icapnet.config import Config
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_text, remove_stale_temps
from icapnet.layout import METRICS_FILE, read_metrics, results_file

if TYPE_CHECKING:
    from icapnet.inference.predictor import CaptionResult


@dataclass
class Evaluation:
    """One evaluated (split, beam): what was written and the numbers."""

    split: str
    beam: int
    captions: dict[str, str]  # image_id -> caption, cache order (all decoded images)
    references: dict[str, list[str]]  # image_id -> reference captions of the split
    scores: dict[str, float]  # metric -> value, over the images with references
    entry: dict[str, Any]  # what metrics.json now holds for this (split, beam)
    results_path: Path
    metrics_path: Path
    seconds: float


def resolve_cache(model_dir: Path, config: Config, cache: str | Path | None) -> Path:
    """``--cache``, else the cache the model was trained on (``config.data.cache_dir``)."""
    recorded = cache is None
    if recorded:
        if not config.data.cache_dir:
            raise IcapnetError(f"{model_dir}: config.json records no cache_dir; pass --cache")
        cache = config.data.cache_dir
    path = fs.path(cache)
    if not path.is_dir():
        hint = " (recorded in the model's config.json)" if recorded else ""
        raise IcapnetError(f"{path}: feature cache not found{hint}; pass --cache or run prepare")
    return path


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _check_backbone(cache_root: Path, manifest: dict[str, Any], config: Config) -> None:
    """Features from another backbone would give meaningless captions: say so, in one line."""
    want = config.features
    have = {k: manifest.get(k) for k in ("backbone", "layer", "image_size")}
    if have != {"backbone": want.backbone, "layer": want.layer, "image_size": want.image_size}:
        _warn(f"{cache_root}: cache features {have} differ from the model's "
              f"({want.backbone}, {want.layer}, {want.image_size})")


def decode_split(
    model: Any,
    vocab: Vocabulary,
    cache_dir: Path,
    split: str,
    beam: int,
    max_length: int,
    length_penalty: float = 0.0,
    batch_size: int = 32,
) -> Iterator[tuple[str, CaptionResult]]:
    """(image_id, caption with attention) for every image of ``split``, in cache order."""
    from tqdm.auto import tqdm

    from icapnet.data.cache import open_cache
    from icapnet.data.pipeline import make_image_dataset
    from icapnet.inference.decoding import decode
    from icapnet.inference.predictor import results_from_decode

    total = open_cache(cache_dir).num_images(split)
    with tqdm(total=total, desc=f"captioning {split} (beam {beam})", unit="img",
              disable=None) as bar:
        for image_ids, features in make_image_dataset(cache_dir, split, batch_size):
            result = decode(model, features, beam, max_length, length_penalty)
            for raw_id, res in zip(image_ids.numpy(), results_from_decode(result, vocab),
                                   strict=True):
                yield raw_id.decode("utf-8"), res
            bar.update(len(image_ids))


def merge_metrics(model_dir: Path, split: str, beam: int, entry: dict[str, Any]) -> Path:
    """Put ``entry`` at ``metrics.json[split]["beam{k}"]``, keeping everything else."""
    path = model_dir / METRICS_FILE
    data = read_metrics(model_dir)
    if data is None:
        if path.is_file():
            _warn(f"{path}: not valid JSON, starting a new file")
        data = {}
    if not isinstance(data.get(split), dict):
        data[split] = {}
    data[split][f"beam{beam}"] = entry
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def evaluate_split(
    model: Any,
    vocab: Vocabulary,
    config: Config,
    model_dir: Path,
    cache_dir: Path,
    split: str = "test",
    beam: int = 1,
    max_length: int | None = None,
    length_penalty: float = 0.0,
    batch_size: int = 32,
    coco: bool = True,
    on_result: Callable[[str, CaptionResult], None] | None = None,
) -> Evaluation:
    """Caption ``split`` once, score it, write ``results_{split}_beam{k}.json`` and merge the
    scores into ``metrics.json``; ``on_result(image_id, result)`` sees every caption."""
    import tensorflow as tf

    from icapnet.data.cache import open_cache
    from icapnet.data.cache_check import corrupt_data_error
    from icapnet.inference import metrics
    from icapnet.inference.decoding import check_decoding

    remove_stale_temps(model_dir)  # results / metrics a killed evaluation was writing
    cache = open_cache(cache_dir)
    references = cache.captions.get(split) or {}
    if split not in cache.splits or not references:
        raise IcapnetError(f"{cache_dir}: no '{split}' images with captions in the cache "
                           f"(splits: {', '.join(cache.splits) or 'none'})")
    _check_backbone(cache_dir, cache.manifest, config)
    if tuple(cache.feature_shape) != (config.model.num_regions, config.model.feature_dim):
        raise IcapnetError(f"{cache_dir}: features are {cache.feature_shape[0]}x"
                           f"{cache.feature_shape[1]}, the model takes {config.model.num_regions}"
                           f"x{config.model.feature_dim} (another backbone or layer)")
    max_length = max_length or int(config.model.max_length)
    check_decoding(beam, max_length, len(vocab))

    start = time.perf_counter()
    captions: dict[str, str] = {}
    try:
        for image_id, result in decode_split(model, vocab, cache_dir, split, beam, max_length,
                                             length_penalty, batch_size):
            captions[image_id] = result.caption
            if on_result is not None:
                on_result(image_id, result)
    except tf.errors.DataLossError as err:  # TensorFlow names an offset, not the shard
        raise corrupt_data_error(cache_dir, cache.manifest, [split], err) from None
    if len(captions) != cache.num_images(split):  # never score a part of the split
        raise corrupt_data_error(cache_dir, cache.manifest, [split], IcapnetError(
            f"read {len(captions)} '{split}' images, the manifest lists "
            f"{cache.num_images(split)}"))
    seconds = time.perf_counter() - start
    scored = {i: c for i, c in captions.items() if references.get(i)}
    if len(scored) < len(captions):
        _warn(f"{cache_dir}: {len(captions) - len(scored)} '{split}' image(s) have no "
              "reference captions and are not scored")
    if not scored:
        raise IcapnetError(f"{cache_dir}: no '{split}' image has both features and captions")
    scores = metrics.score_captions(references, scored, coco=coco)

    results = [{"image_id": i, "caption": c} for i, c in captions.items()]
    out = model_dir / results_file(split, beam)
    atomic_write_text(out, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    entry = {
        **scores,
        "num_images": len(scored),
        "beam": beam,
        "max_length": max_length,
        "length_penalty": length_penalty,
        "cache": str(cache_dir),
        "results": out.name,
        "seconds": round(seconds, 2),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    metrics_path = merge_metrics(model_dir, split, beam, entry)
    return Evaluation(split, beam, captions, references, scores, entry, out, metrics_path,
                      seconds)
