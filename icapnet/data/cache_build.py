"""Build (or resume) a feature cache: every image once through the frozen backbone.

Images are decoded in a thread pool while the CNN runs; features are streamed into float16
TFRecord shards (one shard at a time, each written atomically and recorded in the manifest
right after, with its record count, size and sha256), so a killed build continues where it
stopped. What the features depend on (``cache_settings``) is recorded and checked: a cache is
never silently reused for other settings. Before a finished shard is reused it is verified
(``data/cache_check.py``: sha256, every record's CRC, count, ids); a damaged one is rebuilt.

(About 400 lines: planning shards, reusing finished ones, decoding, extracting and recording
them all read and write the one manifest, so they stay together; the read side is
``data/cache.py``.)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from icapnet import fs
from icapnet.config import RANDOM_BACKBONE, DataConfig, FeatureConfig
from icapnet.data.cache import FeatureCache, open_cache, serialize_record
from icapnet.data.cache_check import (
    CACHE_DTYPE,
    CACHE_VERSION,
    file_sha256,
    settings_fingerprints,
    validate_manifest,
    verify_shard,
)
from icapnet.data.cache_parts import (
    PART_GLOB,
    check_worker,
    merge_parts,
    part_name,
    read_parts,
    remove_parts,
    select_shards,
)
from icapnet.data.images import load_image_bytes
from icapnet.data.splits import SPLITS
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.io import atomic_path, atomic_write_text, remove_stale_temps
from icapnet.layout import (
    CACHE_BOXES_FILE,
    CACHE_CAPTIONS_FILE,
    FEATURES_DIR,
    MANIFEST_FILE,
    VOCAB_FILE,
    read_json,
    shard_name,
)
from icapnet.model.backbone import (
    build_feature_extractor,
    extractor_feature_shape,
    extractor_image_size,
    prepare_image,
    resolve_weights,
)

if TYPE_CHECKING:
    from icapnet.data.datasets import CaptionDataset

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 256
_FP16_MAX = 65504.0


@dataclass
class _Loaded:
    image_id: str
    sha1: str
    pixels: np.ndarray | None
    error: str | None


def cache_settings(cfg: FeatureConfig) -> dict[str, Any]:
    """What the features depend on; a cache built with other settings must not be reused."""
    from icapnet.model.precision import backbone_precision

    weights = resolve_weights(cfg.weights)
    settings: dict[str, Any] = {
        "backbone": cfg.backbone,
        "layer": cfg.layer,
        "weights": "none" if weights is None else weights,
        "image_size": int(cfg.image_size),
        "dtype": CACHE_DTYPE,
        # What the backbone computed in ("auto" resolves per machine): bfloat16 features
        # differ from float32 ones by ~0.8 %, so a cache is not reused across the two.
        "backbone_dtype": backbone_precision(cfg.precision),
    }
    if weights is None:
        settings["random_init"] = RANDOM_BACKBONE
    elif weights != "imagenet":
        settings["weights_sha1"] = _sha1_file(Path(weights))
    return settings


def build_cache(
    dataset: CaptionDataset,
    cache_dir: str | Path,
    feature_cfg: FeatureConfig,
    data_cfg: DataConfig | None = None,
    *,
    batch_size: int = 32,
    shard_size: int = DEFAULT_SHARD_SIZE,
    extractor: keras.Model | None = None,
    workers: int | None = None,
    on_shard: Callable[[str], None] | None = None,
    progress: bool = True,
    num_workers: int = 1,
    worker_index: int | None = 0,
) -> Path:
    """Extract features for every image of ``dataset`` into ``cache_dir`` (resumable).

    Shards already finished for the same settings and image files are kept, so a killed run
    continues where it stopped. ``on_shard(name)`` is called after each shard is recorded.
    Unreadable images are logged by path, listed under "skipped" and left out.
    ``num_workers`` > 1: only worker ``worker_index``'s shards, merged into the cache once all
    parts are complete (``worker_index=None``: only merge); see :mod:`.cache_parts`.
    """
    data_cfg = data_cfg or DataConfig()
    root = fs.path(cache_dir)
    # Temp files of killed runs (only those of the cache's own files: --out may be any folder).
    remove_stale_temps(root, targets=(MANIFEST_FILE, VOCAB_FILE, CACHE_CAPTIONS_FILE,
                                      CACHE_BOXES_FILE))
    settings = cache_settings(feature_cfg)
    plan = _plan(dataset, shard_size)
    check_worker(worker_index, num_workers)
    parted = num_workers > 1
    manifest_path = root / (part_name(worker_index or 0, num_workers) if parted
                            else MANIFEST_FILE)
    if parted and worker_index is None:  # merge only
        return _merge(root, plan, num_workers, dataset, data_cfg, _base_manifest(
            dataset, settings, None))
    old = _existing_manifest(root, settings, dataset.name, manifest_path)
    mine = select_shards(plan, worker_index, num_workers) if parted else plan

    manifest = _base_manifest(dataset, settings, old.get("feature_shape") if old else None)
    todo = []
    for name, shard in mine.items():
        if old and _reusable(root, old, name, shard, dataset):
            _record_shard(manifest, name, old["shards"][name],
                          {i: old["images"][i]["sha1"] for i in old["shards"][name]["written"]},
                          {i: old["skipped"][i] for i in shard["images"] if i in old["skipped"]})
        else:
            todo.append(name)

    if old and todo:
        log.info("%s: %d of %d shards done and intact, extracting the rest", root,
                 len(mine) - len(todo), len(mine))
    features_dir = root / FEATURES_DIR
    features_dir.mkdir(parents=True, exist_ok=True)
    # Shards a killed run was writing (a live worker's temps are left: its pid is alive).
    remove_stale_temps(features_dir)

    if todo:
        if extractor is None:
            extractor = build_feature_extractor(feature_cfg)
        shape = list(extractor_feature_shape(extractor))
        if manifest["feature_shape"] not in (None, shape):
            raise IcapnetError(f"{root / MANIFEST_FILE}: feature shape "
                               f"{manifest['feature_shape']} != extractor output {shape}")
        manifest["feature_shape"] = shape
        _Extractor(extractor, batch_size, workers, progress).run(
            manifest_path, manifest, {n: plan[n] for n in todo}, dataset, on_shard)
    if not parted:
        _finish(root, manifest, dataset, data_cfg)
        return root
    manifest["complete"] = True  # this part is
    _write_manifest(manifest_path, manifest)
    return _merge(root, plan, num_workers, dataset, data_cfg, manifest)


def _base_manifest(dataset: CaptionDataset, settings: dict[str, Any],
                   feature_shape: list[int] | None) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION, **settings, "dataset": dataset.name,
        "split": dataset.split_info,  # where the train/val/test lists came from
        # where the images are, so fine-tuning can read them without being told
        "data_dir": str(Path(dataset.root).resolve()),
        "feature_shape": feature_shape,
        "images": {}, "shards": {}, "skipped": {}, "complete": False,
    }


def _merge(root: Path, plan: dict, count: int, dataset: CaptionDataset, data_cfg: DataConfig,
           base: dict[str, Any]) -> Path:
    """Finish the cache from its parts if they are all complete (else say who is missing)."""
    parts, waiting = read_parts(root, count)
    if waiting:
        if (root / MANIFEST_FILE).is_file() and read_json(root / MANIFEST_FILE).get("complete"):
            return root  # another worker merged (and removed the parts) meanwhile
        log.info("%s: waiting for part(s) %s of %d; the last worker to finish merges them "
                 "(or run prepare with --merge)", root, ", ".join(map(str, waiting)), count)
        return root
    shared = {k: v for k, v in base.items() if k not in ("images", "shards", "skipped")}
    _finish(root, merge_parts(root, plan, parts, shared), dataset, data_cfg)
    remove_parts(root)
    return root


def _plan(dataset: CaptionDataset, shard_size: int) -> dict[str, dict[str, Any]]:
    """Deterministic shard layout: each split's sorted ids cut into ``shard_size`` chunks."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    order = [s for s in SPLITS if s in dataset.splits] + sorted(set(dataset.splits) - set(SPLITS))
    seen: dict[str, str] = {}
    plan: dict[str, dict[str, Any]] = {}
    for split in order:
        ids = sorted(dataset.splits[split])
        for image_id in ids:
            if image_id in seen:
                raise IcapnetError(f"{dataset.root}: image {image_id} is in both "
                                   f"'{seen[image_id]}' and '{split}' splits")
            seen[image_id] = split
        for k in range(0, len(ids), shard_size):
            name = shard_name(split, k // shard_size)
            plan[name] = {"split": split, "images": ids[k:k + shard_size]}
    if not plan:
        raise IcapnetError(f"{dataset.root}: dataset has no images to extract")
    return plan


def _existing_manifest(root: Path, settings: dict[str, Any], dataset: str,
                       path: Path) -> dict | None:
    """The manifest (or this worker's part) of an earlier build, checked against ``settings``;
    a worker without a part yet reuses the shards of a finished cache's manifest."""
    if not path.is_file() and path.name != MANIFEST_FILE:
        path = root / MANIFEST_FILE
    if not path.is_file():
        ours = {FEATURES_DIR, VOCAB_FILE, CACHE_CAPTIONS_FILE, CACHE_BOXES_FILE}
        if root.is_dir() and any(p.name not in ours and not p.match(PART_GLOB)
                                 for p in root.iterdir()):
            raise IcapnetError(f"{root}: exists and is not a feature cache (no {MANIFEST_FILE}); "
                               "choose an empty or new --out folder")
        if root.exists() and not root.is_dir():
            raise IcapnetError(f"{root}: exists and is not a folder")
        return None
    old = validate_manifest(read_json(path), path)
    wanted = {**settings, "dataset": dataset}
    diffs = [f"{k}={old.get(k)!r} (requested {v!r})" for k, v in wanted.items() if old.get(k) != v]
    if old.get("weights_sha1") and "weights_sha1" not in settings:
        diffs.append(f"weights_sha1={old['weights_sha1']!r} (requested none)")
    if diffs:
        raise IcapnetError(f"{path}: cache was built with other settings: {'; '.join(diffs)}; "
                           "use another --out folder or delete this one")
    return old


def _reusable(root: Path, old: dict, name: str, shard: dict, dataset: CaptionDataset) -> bool:
    """A finished shard is kept if it holds the same images with unchanged file contents and
    reads back as written (a damaged one is logged and rebuilt)."""
    info = old["shards"].get(name)
    if not info or info["split"] != shard["split"] or info["images"] != shard["images"]:
        return False
    for image_id in info["written"]:
        file = dataset.images.get(image_id)
        try:
            if file is None or _sha1_file(file) != old["images"][image_id]["sha1"]:
                log.info("%s: source image %s changed; rebuilding the shard", name, image_id)
                return False
        except (OSError, KeyError):
            return False
    path = root / FEATURES_DIR / name
    problem = verify_shard(path, info, old["feature_shape"])
    if problem:
        log.warning("%s: %s; rebuilding it", path, problem)
        return False
    return True


def _record_shard(manifest: dict, name: str, info: dict, sha1s: dict[str, str],
                  skipped: dict[str, str]) -> None:
    manifest["shards"][name] = info
    for image_id in info["written"]:
        manifest["images"][image_id] = {"split": info["split"], "shard": name,
                                        "sha1": sha1s[image_id]}
    manifest["skipped"].update(skipped)


def _write_manifest(path: Path, manifest: dict) -> None:
    if manifest.get("feature_shape") is not None:
        manifest["fingerprints"] = settings_fingerprints(manifest)
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


_FORWARDS: weakref.WeakKeyDictionary[keras.Model, Callable] = weakref.WeakKeyDictionary()


def _fp16_forward(extractor: keras.Model, size: int) -> Callable[[Any], tf.Tensor]:
    """Traced extractor call returning float16 (cast on the device); one trace per model."""
    if extractor in _FORWARDS:
        return _FORWARDS[extractor]
    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    model_ref = weakref.ref(extractor)  # a strong ref here would keep the key alive forever

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def forward(images: tf.Tensor) -> tf.Tensor:
        feats = model_ref()(images, training=False)
        return tf.cast(tf.clip_by_value(feats, -_FP16_MAX, _FP16_MAX), tf.float16)

    _FORWARDS[extractor] = forward
    return forward


class _Extractor:
    """Decode in a thread pool while the CNN runs; stream float16 records into shards."""

    def __init__(self, extractor: keras.Model, batch_size: int, workers: int | None,
                 progress: bool) -> None:
        self.size = extractor_image_size(extractor)
        self.batch_size = max(1, int(batch_size))
        self.workers = workers or max(2, min(8, os.cpu_count() or 2))
        self.progress = progress
        self.forward = _fp16_forward(extractor, self.size)

    def load(self, image_id: str, path: Path | None) -> _Loaded:
        if path is None:
            return _Loaded(image_id, "", None, f"{image_id}: image file missing")
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            return _Loaded(image_id, "", None, f"{path}: cannot read file ({err.strerror or err})")
        sha1 = hashlib.sha1(data).hexdigest()
        try:
            pixels = prepare_image(load_image_bytes(data, str(path)), self.size)
        except IcapnetError as err:
            return _Loaded(image_id, sha1, None, str(err))
        return _Loaded(image_id, sha1, pixels, None)

    def run(self, manifest_path: Path, manifest: dict, todo: dict[str, dict],
            dataset: CaptionDataset, on_shard: Callable[[str], None] | None) -> None:
        jobs = [(name, image_id) for name, shard in todo.items() for image_id in shard["images"]]
        bar = tqdm(total=len(jobs), unit="img", desc="features", disable=not self.progress)
        ahead = 2 * self.batch_size + self.workers  # decoded images waiting for the CNN
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            queue: collections.deque[Future[_Loaded]] = collections.deque()
            feed = iter(jobs)

            def top_up() -> None:
                while len(queue) < ahead:
                    job = next(feed, None)
                    if job is None:
                        return
                    queue.append(pool.submit(self.load, job[1], dataset.images.get(job[1])))

            top_up()
            for name, shard in todo.items():
                self._shard(manifest_path, manifest, name, shard, queue, top_up, bar)
                if on_shard is not None:
                    on_shard(name)
        bar.close()

    def _shard(self, manifest_path: Path, manifest: dict, name: str, shard: dict,
               queue: collections.deque, top_up: Callable[[], None], bar: tqdm) -> None:
        written: list[str] = []
        sha1s: dict[str, str] = {}
        skipped: dict[str, str] = {}
        path = manifest_path.parent / FEATURES_DIR / name
        with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
            ids = shard["images"]
            for start in range(0, len(ids), self.batch_size):
                batch: list[_Loaded] = []
                for _ in ids[start:start + self.batch_size]:
                    item = queue.popleft().result()
                    top_up()
                    if item.error:
                        log.warning("skipped %s", item.error)
                        skipped[item.image_id] = item.error
                    else:
                        batch.append(item)
                if batch:
                    feats = self.forward(np.stack([b.pixels for b in batch])).numpy()
                    for item, row in zip(batch, feats, strict=True):
                        writer.write(serialize_record(item.image_id, row))
                        written.append(item.image_id)
                        sha1s[item.image_id] = item.sha1
                bar.update(min(self.batch_size, len(ids) - start))
            writer.flush()
        info = {"split": shard["split"], "images": shard["images"], "written": written,
                "count": len(written), "bytes": path.stat().st_size,
                "sha256": file_sha256(path)}
        _record_shard(manifest, name, info, sha1s, skipped)
        _write_manifest(manifest_path, manifest)


def _finish(root: Path, manifest: dict, dataset: CaptionDataset, data_cfg: DataConfig) -> None:
    """Write vocab/captions/boxes for the images that have features, then mark complete."""
    if not manifest["images"]:
        raise IcapnetError(f"{dataset.root}: none of the images could be read; nothing cached")
    by_split: dict[str, dict[str, list[str]]] = {}
    for name in sorted(manifest["shards"]):
        info = manifest["shards"][name]
        split = by_split.setdefault(info["split"], {})
        for image_id in info["written"]:
            split[image_id] = list(dataset.captions.get(image_id, []))
    train = [c for caps in by_split.get("train", {}).values() for c in caps]
    if not train:
        log.warning("%s: the train split has no images; vocabulary holds special tokens only",
                    root)
    vocab = Vocabulary.build(train, min_count=data_cfg.min_count,
                             max_size=data_cfg.max_vocab_size)
    vocab.save(root / VOCAB_FILE)
    atomic_write_text(root / CACHE_CAPTIONS_FILE, json.dumps(by_split, ensure_ascii=False) + "\n")
    boxes_path = root / CACHE_BOXES_FILE
    if dataset.boxes is not None:
        boxes = {i: dataset.boxes[i] for i in sorted(manifest["images"]) if i in dataset.boxes}
        atomic_write_text(boxes_path, json.dumps(boxes) + "\n")
    elif boxes_path.exists():
        boxes_path.unlink()
    for shard in (root / FEATURES_DIR).glob("*.tfrecord"):
        if shard.name not in manifest["shards"]:  # left by an earlier, larger plan
            shard.unlink()
    manifest["complete"] = True
    manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_manifest(root / MANIFEST_FILE, manifest)


def _sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



def limit_dataset(dataset: CaptionDataset, limit: int) -> CaptionDataset:
    """Keep the first ``limit`` image ids (sorted) of every split (quick experiments)."""
    splits = {s: sorted(ids)[:limit] for s, ids in dataset.splits.items()}
    keep = {i for ids in splits.values() for i in ids}
    return dataclasses.replace(
        dataset,
        images={i: p for i, p in dataset.images.items() if i in keep},
        captions={i: c for i, c in dataset.captions.items() if i in keep},
        splits=splits,
        split_info=None if dataset.split_info is None else {**dataset.split_info,
                                                            "limit": limit},
        boxes=None if dataset.boxes is None else {
            i: b for i, b in dataset.boxes.items() if i in keep},
    )


def prepare_cache(data_cfg: DataConfig, feature_cfg: FeatureConfig, limit: int | None = None,
                  split: str | None = None, seed: int | None = None,
                  images_dir: str | None = None, json_file: str | None = None,
                  **build_options: Any) -> FeatureCache | None:
    """What ``python -m icapnet.prepare`` does: read ``data_cfg.dataset`` from
    ``data_cfg.data_dir`` (``split``/``seed``: which train/val/test lists; the first ``limit``
    images of each split), build or resume the cache at ``data_cfg.cache_dir`` and open it.
    ``build_options`` go to :func:`build_cache`. None: this worker's part is done but other
    workers' parts are not (``num_workers`` > 1)."""
    from icapnet.data.datasets import load_dataset

    dataset = load_dataset(data_cfg.dataset, data_cfg.data_dir, seed=seed, split=split,
                           images_dir=images_dir, json_file=json_file)
    if limit:
        dataset = limit_dataset(dataset, limit)
    build_cache(dataset, data_cfg.cache_dir, feature_cfg, data_cfg, **build_options)
    if not (fs.path(data_cfg.cache_dir) / MANIFEST_FILE).is_file():
        return None
    cache = open_cache(data_cfg.cache_dir, require_complete=False)
    return cache if cache.complete else None


__all__ = ["DEFAULT_SHARD_SIZE", "build_cache", "cache_settings", "limit_dataset",
           "prepare_cache"]
