"""Backbone registry, the region-feature extractor and the sharded float16 feature cache.

Training never touches pixels: ``build_cache`` runs every image once through a frozen CNN
(VGG16 ``block5_conv3`` by default) and stores the [R, C] region grid as float16 TFRecord
shards with a manifest. The same ``build_feature_extractor`` model (resize + preprocessing
inside) is used later by the Predictor and the exported SavedModel, so a photo captioned
after training goes through exactly the pixels -> features path the cache did.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from icapnet.config import RANDOM_BACKBONE, DataConfig, FeatureConfig
from icapnet.data.datasets import SPLITS
from icapnet.data.images import load_image_bytes
from icapnet.data.text import VOCAB_FILE
from icapnet.errors import IcapnetError
from icapnet.io import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from icapnet.data.datasets import CaptionDataset
    from icapnet.data.text import Vocabulary

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
CAPTIONS_FILE = "captions.json"
BOXES_FILE = "boxes.json"
FEATURES_DIR = "features"
CACHE_DTYPE = "float16"
CACHE_VERSION = 1
DEFAULT_SHARD_SIZE = 256
# Seed of the deterministic "none" weights: every process must build the same random CNN.
NONE_WEIGHTS_SEED = 20240611
_FP16_MAX = 65504.0


# --------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class Backbone:
    """How to build one keras.applications CNN and read region features out of it."""

    name: str
    constructor: Callable[..., keras.Model]
    default_layer: str
    preprocess: Callable[[Any], Any]
    image_size: int


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> None:
    """Add (or replace) a backbone so ``FeatureConfig.backbone`` can name it."""
    BACKBONES[backbone.name] = backbone


def _apps() -> Any:
    return keras.applications


register_backbone(Backbone(
    "vgg16", lambda **kw: _apps().VGG16(**kw), "block5_conv3",
    lambda x: _apps().vgg16.preprocess_input(x), 224,
))
register_backbone(Backbone(
    "resnet50", lambda **kw: _apps().ResNet50(**kw), "conv5_block3_out",
    lambda x: _apps().resnet50.preprocess_input(x), 224,
))
register_backbone(Backbone(
    "mobilenet_v2", lambda **kw: _apps().MobileNetV2(**kw), "out_relu",
    lambda x: _apps().mobilenet_v2.preprocess_input(x), 224,
))
register_backbone(Backbone(
    "inception_v3", lambda **kw: _apps().InceptionV3(**kw), "mixed10",
    lambda x: _apps().inception_v3.preprocess_input(x), 299,
))


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise IcapnetError(
            f"{name}: unknown backbone (choose from {', '.join(sorted(BACKBONES))})"
        ) from None


def feature_config_for(
    backbone: str = "vgg16",
    weights: str = "imagenet",
    layer: str | None = None,
    image_size: int | None = None,
) -> FeatureConfig:
    """A FeatureConfig with the backbone's own defaults for whatever is left as None."""
    spec = get_backbone(backbone)
    return FeatureConfig(
        backbone=backbone,
        layer=layer or spec.default_layer,
        weights=weights,
        image_size=image_size or spec.image_size,
    )


# --------------------------------------------------------------------------- extractor


@keras.saving.register_keras_serializable(package="icapnet")
class ImagePreprocess(keras.layers.Layer):
    """uint8/float RGB of any size -> resized, backbone-normalised float32 (inside the model)."""

    def __init__(self, backbone: str, image_size: int, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.image_size = int(image_size)

    def call(self, images: Any) -> Any:
        images = resize_images(images, self.image_size)
        return get_backbone(self.backbone).preprocess(images)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone, "image_size": self.image_size}


def resize_images(images: Any, size: int) -> tf.Tensor:
    """Bilinear, antialiased resize to ``size``x``size`` float32; exact identity at that size.

    The cache builder (per image, in worker threads) and the model (per batch) both call
    this, so features do not depend on where the resize happened.
    """
    images = tf.cast(images, tf.float32)
    return tf.image.resize(images, (size, size), method="bilinear", antialias=True)


def build_feature_extractor(cfg: FeatureConfig) -> keras.Model:
    """Images [B,H,W,3] (uint8 or float 0..255, any H,W) -> region features [B,R,C] float32.

    Weights: "imagenet" (Keras' download), a local .h5/.weights.h5 file, or "none" (a
    deterministic He-normal random CNN, identical in every process).
    """
    spec = get_backbone(cfg.backbone)
    weights = resolve_weights(cfg.weights)
    if weights is None and cfg.random_init != RANDOM_BACKBONE:
        raise IcapnetError(
            f"random backbone '{cfg.random_init}': this version builds '{RANDOM_BACKBONE}', "
            "whose features have another scale; re-run prepare and train"
        )
    size = int(cfg.image_size)
    base = _build_base(spec, weights, size)
    from icapnet.model.precision import backbone_precision

    if backbone_precision(cfg.precision) == "bfloat16":  # weights stay float32
        for layer in base.layers:
            layer.dtype_policy = keras.dtype_policies.get("mixed_bfloat16")
    try:
        cut = base.get_layer(cfg.layer).output
    except ValueError:
        raise IcapnetError(
            f"{cfg.layer}: no such layer in {spec.name} (its default is {spec.default_layer})"
        ) from None
    trunk = keras.Model(base.input, cut, name=f"{spec.name}_{cfg.layer}")
    trunk.trainable = False
    grid = trunk.output.shape
    if len(grid) != 4 or None in grid[1:]:
        raise IcapnetError(f"{cfg.layer}: layer output {grid} is not a fixed HxWxC grid")
    regions, channels = int(grid[1]) * int(grid[2]), int(grid[3])

    images = keras.Input((None, None, 3), name="images")
    x = ImagePreprocess(spec.name, size, name="preprocess")(images)
    x = trunk(x)
    x = keras.layers.Reshape((regions, channels), name="regions")(x)
    x = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    return keras.Model(images, x, name=f"feature_extractor_{spec.name}")


def resolve_weights(weights: str | None) -> str | None:
    """"imagenet" / "none" / path -> what keras.applications expects; bad paths -> error."""
    text = "none" if weights is None else str(weights).strip()
    if text.lower() in {"none", ""}:
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise IcapnetError(f"{path}: backbone weights file not found (use imagenet, none or .h5)")
    if not path.name.endswith((".h5", ".hdf5")):
        raise IcapnetError(f"{path}: backbone weights must be a .h5 or .weights.h5 file")
    return str(path.resolve())


def _build_base(spec: Backbone, weights: str | None, size: int) -> keras.Model:
    shape = (size, size, 3)
    if weights == "imagenet":
        try:
            return spec.constructor(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as err:  # offline, proxy, corrupt download ...
            raise IcapnetError(
                f"{spec.name}: could not get ImageNet weights ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); pass a local .h5 file "
                "or --weights none"
            ) from None
    base = spec.constructor(include_top=False, weights=None, input_shape=shape)
    if weights is None:
        _deterministic_init(base, NONE_WEIGHTS_SEED)
        _unit_output_scale(base, NONE_WEIGHTS_SEED)
    else:
        _load_weights_file(base, weights)
    return base


def _load_weights_file(model: keras.Model, path: str) -> None:
    try:
        model.load_weights(path)
        return
    except Exception as err:
        first = err
    if not path.endswith(".weights.h5"):  # a full model's legacy .h5 (with top): match by name
        try:
            model.load_weights(path, by_name=True)
            return
        except Exception:
            pass
    raise IcapnetError(f"{path}: cannot load backbone weights ({str(first).splitlines()[0]})")


def _deterministic_init(model: keras.Model, seed: int) -> None:
    """Re-initialise every variable from a fixed seed (He-normal kernels, zero biases).

    Keras' own initialisers are seeded per process, so a random backbone built for the cache
    would differ from the one built later to caption a photo. std = sqrt(2 / fan_in) keeps
    activation scale through the ReLU stack, so random features still carry information.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        name = var.path.rsplit("/", 1)[-1]
        shape = tuple(var.shape)
        if name in {"gamma", "moving_variance"}:
            value = np.ones(shape, np.float32)
        elif len(shape) < 2 or name in {"bias", "beta", "moving_mean"}:
            value = np.zeros(shape, np.float32)
        else:
            # depthwise (kh, kw, in, mult): each output sees kh*kw inputs
            depthwise = name == "depthwise_kernel"
            fan_in = shape[0] * shape[1] if depthwise else int(np.prod(shape[:-1]))
            std = np.sqrt(2.0 / max(fan_in, 1))
            value = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        var.assign(value)


def _unit_output_scale(model: keras.Model, seed: int) -> None:
    """Rescale the first kernel so a random backbone's outputs have RMS ~1 on image-like input.

    He-normal keeps the scale of a 0..255-range input through the ReLU stack, so random VGG16
    features come out with mean ~40 and std ~60: a freshly initialised captioner then
    saturates and learns slowly. With zero biases a ReLU/max-pool network is positively
    homogeneous, so dividing the first kernel by the output RMS divides every feature by the
    same number (exactly for VGG16; approximately for batch-norm/ReLU6 backbones). The RMS is
    rounded to 3 significant digits so tiny float differences between processes cannot leak
    into the weights.
    """
    height, width, channels = model.input_shape[1:]
    # Smooth noise (an 8x8 grid, upsampled) has roughly the spectrum of a photo; white noise
    # would excite the random filters ~2.5x more than real images do.
    coarse = np.random.default_rng(seed).uniform(-128.0, 128.0, (2, 8, 8, channels))
    probe = tf.image.resize(coarse.astype(np.float32), (height, width), method="bilinear")
    rms = float(np.sqrt(np.mean(np.square(model(probe, training=False).numpy()))))
    if not np.isfinite(rms) or rms <= 0:
        return
    first = next(v for v in model.weights if v.path.endswith("kernel"))
    first.assign(first.numpy() / float(f"{rms:.3g}"))


def extractor_image_size(extractor: keras.Model) -> int:
    """The square size the extractor resizes to (read from its preprocessing layer)."""
    return int(extractor.get_layer("preprocess").image_size)


def extractor_feature_shape(extractor: keras.Model) -> tuple[int, int]:
    """(regions, channels) of the extractor's output, e.g. (196, 512) for VGG16."""
    _, regions, channels = extractor.output.shape
    return int(regions), int(channels)


def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
    """One HxWx3 image -> float32 [size,size,3] with the same resize the model applies."""
    if image.shape[:2] == (size, size):
        return image.astype(np.float32, copy=False)
    return resize_images(image, size).numpy()


def extract_features(
    extractor: keras.Model, images: Sequence[np.ndarray], batch_size: int = 32
) -> np.ndarray:
    """Features [N,R,C] float32 for images of mixed sizes (each resized, then batched)."""
    size = extractor_image_size(extractor)
    regions, channels = extractor_feature_shape(extractor)
    out = np.zeros((len(images), regions, channels), np.float32)
    for start in range(0, len(images), batch_size):
        chunk = [prepare_image(np.asarray(im), size) for im in images[start:start + batch_size]]
        out[start:start + len(chunk)] = extractor(np.stack(chunk), training=False).numpy()
    return out


# --------------------------------------------------------------------------- records


def serialize_record(image_id: str, features: np.ndarray) -> bytes:
    """One TFRecord: image_id bytes + float16 little-endian feature bytes."""
    raw = np.ascontiguousarray(features, dtype="<f2").tobytes()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
        "features": tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw])),
    }))
    return example.SerializeToString()


_RECORD_SPEC = {
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "features": tf.io.FixedLenFeature([], tf.string),
}


def parse_record(
    serialized: tf.Tensor, feature_shape: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Graph-side inverse of :func:`serialize_record` -> (image_id, float16 [R, C])."""
    parsed = tf.io.parse_single_example(serialized, _RECORD_SPEC)
    feats = tf.io.decode_raw(parsed["features"], tf.float16, little_endian=True)
    return parsed["image_id"], tf.reshape(feats, list(feature_shape))


# --------------------------------------------------------------------------- cache reading


class FeatureCache:
    """Read side of a cache directory: manifest, vocabulary, captions, boxes and features."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @property
    def feature_shape(self) -> tuple[int, int]:
        regions, channels = self.manifest["feature_shape"]
        return int(regions), int(channels)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @cached_property
    def vocab(self) -> Vocabulary:
        from icapnet.data.text import Vocabulary

        return Vocabulary.load(self.root / VOCAB_FILE)

    @cached_property
    def captions(self) -> dict[str, dict[str, list[str]]]:
        return _read_json(self.root / CAPTIONS_FILE)

    @cached_property
    def boxes(self) -> dict[str, list[dict]] | None:
        path = self.root / BOXES_FILE
        return _read_json(path) if path.is_file() else None

    @property
    def splits(self) -> list[str]:
        found = {info["split"] for info in self.manifest["shards"].values()}
        return [s for s in SPLITS if s in found] + sorted(found - set(SPLITS))

    def shard_names(self, split: str) -> list[str]:
        return sorted(n for n, info in self.manifest["shards"].items() if info["split"] == split)

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / FEATURES_DIR / name for name in self.shard_names(split)]

    def image_ids(self, split: str) -> list[str]:
        """Ids with features in ``split``, in shard order."""
        return [i for n in self.shard_names(split) for i in self.manifest["shards"][n]["written"]]

    def num_images(self, split: str) -> int:
        return sum(self.manifest["shards"][n]["count"] for n in self.shard_names(split))

    def num_captions(self, split: str) -> int:
        """(features, caption) pairs in one epoch of ``split``."""
        return sum(len(caps) for caps in self.captions.get(split, {}).values())

    def read_features(self, split: str) -> Iterator[tuple[str, np.ndarray]]:
        """Stream (image_id, float16 [R, C]) for every image of ``split``, shard by shard."""
        for path in self.shard_paths(split):
            yield from self._read_shard(path)

    def get_features(self, image_ids: Iterable[str]) -> np.ndarray:
        """Float16 [N, R, C] features of ``image_ids`` in the order given (reads their shards)."""
        ids = list(image_ids)
        images = self.manifest["images"]
        missing = [i for i in ids if i not in images]
        if missing:
            raise IcapnetError(f"{self.root}: not in the feature cache: {', '.join(missing[:5])}")
        wanted = set(ids)
        found: dict[str, np.ndarray] = {}
        for shard in sorted({images[i]["shard"] for i in ids}):
            for image_id, feats in self._read_shard(self.root / FEATURES_DIR / shard):
                if image_id in wanted:
                    found[image_id] = feats
        out = np.zeros((len(ids), *self.feature_shape), np.float16)
        for k, image_id in enumerate(ids):
            out[k] = found[image_id]
        return out

    def _read_shard(self, path: Path) -> Iterator[tuple[str, np.ndarray]]:
        if not path.is_file():
            raise IcapnetError(f"{path}: feature shard missing; rebuild the cache")
        shape = self.feature_shape
        try:
            for raw in tf.data.TFRecordDataset(str(path)):
                example = tf.train.Example.FromString(raw.numpy())
                fields = example.features.feature
                image_id = fields["image_id"].bytes_list.value[0].decode()
                data = fields["features"].bytes_list.value[0]
                yield image_id, np.frombuffer(data, dtype="<f2").reshape(shape)
        except tf.errors.DataLossError as err:
            raise IcapnetError(f"{path}: corrupt feature shard ({err.message})") from None


def open_cache(cache_dir: str | Path, require_complete: bool = True) -> FeatureCache:
    """Open a cache built by :func:`build_cache`; incomplete caches are an error by default."""
    root = Path(cache_dir)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise IcapnetError(f"{root}: not a feature cache (no {MANIFEST_FILE}); run prepare")
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or "shards" not in manifest:
        raise IcapnetError(f"{path}: not an icapnet feature-cache manifest")
    if require_complete and not manifest.get("complete"):
        raise IcapnetError(f"{root}: feature cache is incomplete; re-run prepare to finish it")
    return FeatureCache(root, manifest)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IcapnetError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IcapnetError(f"{path}: not valid JSON ({err})") from None


# --------------------------------------------------------------------------- cache building


@dataclass
class _Loaded:
    image_id: str
    sha1: str
    pixels: np.ndarray | None
    error: str | None


def cache_settings(cfg: FeatureConfig) -> dict[str, Any]:
    """What the features depend on; a cache built with other settings must not be reused."""
    weights = resolve_weights(cfg.weights)
    settings: dict[str, Any] = {
        "backbone": cfg.backbone,
        "layer": cfg.layer,
        "weights": "none" if weights is None else weights,
        "image_size": int(cfg.image_size),
        "dtype": CACHE_DTYPE,
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
) -> Path:
    """Extract features for every image of ``dataset`` into ``cache_dir`` (resumable).

    Shards already finished for the same settings and image files are kept, so a killed run
    continues where it stopped. ``on_shard(name)`` is called after each shard is recorded.
    Unreadable images are logged by path, listed under "skipped" and left out.
    """
    data_cfg = data_cfg or DataConfig()
    root = Path(cache_dir)
    settings = cache_settings(feature_cfg)
    plan = _plan(dataset, shard_size)
    old = _existing_manifest(root, settings, dataset.name)

    manifest: dict[str, Any] = {
        "version": CACHE_VERSION, **settings, "dataset": dataset.name,
        "split": dataset.split_info,  # where the train/val/test lists came from
        "feature_shape": old.get("feature_shape") if old else None,
        "images": {}, "shards": {}, "skipped": {}, "complete": False,
    }
    todo = []
    for name, shard in plan.items():
        if old and _reusable(root, old, name, shard, dataset):
            _record_shard(manifest, name, old["shards"][name],
                          {i: old["images"][i]["sha1"] for i in old["shards"][name]["written"]},
                          {i: old["skipped"][i] for i in shard["images"] if i in old["skipped"]})
        else:
            todo.append(name)

    if old and todo:
        log.info("%s: resuming, %d of %d shards already done", root, len(plan) - len(todo),
                 len(plan))
    features_dir = root / FEATURES_DIR
    features_dir.mkdir(parents=True, exist_ok=True)
    for stale in features_dir.glob(".*.tmp-*"):  # temp shards of a killed run
        with contextlib.suppress(OSError):
            os.unlink(stale)

    if todo:
        if extractor is None:
            extractor = build_feature_extractor(feature_cfg)
        shape = list(extractor_feature_shape(extractor))
        if manifest["feature_shape"] not in (None, shape):
            raise IcapnetError(f"{root / MANIFEST_FILE}: feature shape "
                               f"{manifest['feature_shape']} != extractor output {shape}")
        manifest["feature_shape"] = shape
        _Extractor(extractor, batch_size, workers, progress).run(
            root, manifest, {n: plan[n] for n in todo}, dataset, on_shard)
    _finish(root, manifest, dataset, data_cfg)
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
            name = f"{split}-{k // shard_size:05d}.tfrecord"
            plan[name] = {"split": split, "images": ids[k:k + shard_size]}
    if not plan:
        raise IcapnetError(f"{dataset.root}: dataset has no images to extract")
    return plan


def _existing_manifest(root: Path, settings: dict[str, Any], dataset: str) -> dict | None:
    path = root / MANIFEST_FILE
    if not path.is_file():
        ours = {FEATURES_DIR, VOCAB_FILE, CAPTIONS_FILE, BOXES_FILE}
        if root.is_dir() and any(p.name not in ours for p in root.iterdir()):
            raise IcapnetError(f"{root}: exists and is not a feature cache (no {MANIFEST_FILE}); "
                               "choose an empty or new --out folder")
        if root.exists() and not root.is_dir():
            raise IcapnetError(f"{root}: exists and is not a folder")
        return None
    old = _read_json(path)
    if not isinstance(old, dict) or "shards" not in old:
        raise IcapnetError(f"{path}: not an icapnet feature-cache manifest")
    wanted = {**settings, "dataset": dataset}
    diffs = [f"{k}={old.get(k)!r} (requested {v!r})" for k, v in wanted.items() if old.get(k) != v]
    if old.get("weights_sha1") and "weights_sha1" not in settings:
        diffs.append(f"weights_sha1={old['weights_sha1']!r} (requested none)")
    if diffs:
        raise IcapnetError(f"{path}: cache was built with other settings: {'; '.join(diffs)}; "
                           "use another --out folder or delete this one")
    return old


def _reusable(root: Path, old: dict, name: str, shard: dict, dataset: CaptionDataset) -> bool:
    """A finished shard is kept if it holds the same images with unchanged file contents."""
    info = old["shards"].get(name)
    if not info or info["split"] != shard["split"] or info["images"] != shard["images"]:
        return False
    path = root / FEATURES_DIR / name
    if not path.is_file() or path.stat().st_size != info["bytes"]:
        return False
    for image_id in info["written"]:
        file = dataset.images.get(image_id)
        try:
            if file is None or _sha1_file(file) != old["images"][image_id]["sha1"]:
                return False
        except (OSError, KeyError):
            return False
    return True


def _record_shard(manifest: dict, name: str, info: dict, sha1s: dict[str, str],
                  skipped: dict[str, str]) -> None:
    manifest["shards"][name] = info
    for image_id in info["written"]:
        manifest["images"][image_id] = {"split": info["split"], "shard": name,
                                        "sha1": sha1s[image_id]}
    manifest["skipped"].update(skipped)


def _write_manifest(root: Path, manifest: dict) -> None:
    atomic_write_text(root / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


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

    def run(self, root: Path, manifest: dict, todo: dict[str, dict], dataset: CaptionDataset,
            on_shard: Callable[[str], None] | None) -> None:
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
                self._shard(root, manifest, name, shard, queue, top_up, bar)
                if on_shard is not None:
                    on_shard(name)
        bar.close()

    def _shard(self, root: Path, manifest: dict, name: str, shard: dict,
               queue: collections.deque, top_up: Callable[[], None], bar: tqdm) -> None:
        written: list[str] = []
        sha1s: dict[str, str] = {}
        skipped: dict[str, str] = {}
        path = root / FEATURES_DIR / name
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
                "count": len(written), "bytes": path.stat().st_size}
        _record_shard(manifest, name, info, sha1s, skipped)
        _write_manifest(root, manifest)


def _finish(root: Path, manifest: dict, dataset: CaptionDataset, data_cfg: DataConfig) -> None:
    """Write vocab/captions/boxes for the images that have features, then mark complete."""
    from icapnet.data.text import Vocabulary

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
    atomic_write_text(root / CAPTIONS_FILE, json.dumps(by_split, ensure_ascii=False) + "\n")
    boxes_path = root / BOXES_FILE
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
    _write_manifest(root, manifest)


def _sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_summary(cache: FeatureCache) -> dict[str, Any]:
    """Numbers for the prepare CLI: images/captions per split, skipped, size on disk."""
    size = sum(p.stat().st_size for p in (cache.root / FEATURES_DIR).glob("*.tfrecord"))
    return {
        "splits": {s: {"images": cache.num_images(s), "captions": cache.num_captions(s)}
                   for s in cache.splits},
        "skipped": len(cache.manifest.get("skipped", {})),
        "vocab_size": len(cache.vocab),
        "feature_shape": list(cache.feature_shape),
        "bytes": size,
        **{k: cache.manifest[k] for k in ("backbone", "layer", "weights", "image_size")},
    }


__all__ = [
    "BACKBONES", "Backbone", "FeatureCache", "ImagePreprocess", "build_cache",
    "build_feature_extractor", "cache_settings", "cache_summary", "extract_features",
    "extractor_feature_shape", "extractor_image_size", "feature_config_for", "get_backbone",
    "open_cache", "parse_record", "prepare_image", "register_backbone", "resize_images",
    "resolve_weights", "serialize_record",
]
