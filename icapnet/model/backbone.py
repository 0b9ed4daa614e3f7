"""Backbone registry and the region-feature extractor (pixels -> [R, C] features).

The same ``build_feature_extractor`` model (resize + preprocessing inside) builds the feature
cache, serves the Predictor, is fine-tuned end to end and is traced into the SavedModel, so
a photo captioned after training goes through exactly the pixels -> features path the cache
did. The "none" weights are a deterministic random CNN, identical in every process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from icapnet.config import RANDOM_BACKBONE, FeatureConfig
from icapnet.errors import IcapnetError

# Seed of the deterministic "none" weights: every process must build the same random CNN.
NONE_WEIGHTS_SEED = 20240611


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
    extractor: keras.Model, images: Sequence[np.ndarray], batch_size: int = 32,
    image_size: int | None = None,
) -> np.ndarray:
    """Features [N,R,C] float32 for images of mixed sizes (each resized, then batched).

    ``image_size`` (default: read from the extractor) is the square size it resizes to; the
    extractor itself is only ever called, once per batch.
    """
    size = int(image_size or extractor_image_size(extractor))
    chunks = [
        np.asarray(extractor(np.stack([prepare_image(np.asarray(im), size)
                                       for im in images[start:start + batch_size]]),
                             training=False), np.float32)
        for start in range(0, len(images), batch_size)
    ]
    if not chunks:
        return np.zeros((0, *extractor_feature_shape(extractor)), np.float32)
    return np.concatenate(chunks)


__all__ = [
    "BACKBONES", "Backbone", "ImagePreprocess", "build_feature_extractor", "extract_features",
    "extractor_feature_shape", "extractor_image_size", "feature_config_for", "get_backbone",
    "prepare_image", "register_backbone", "resize_images", "resolve_weights",
]
