"""Fine-tuning: the backbone (partly unfrozen) and the captioner trained end to end on images.

The frozen phase reads cached features; this phase has to run the backbone, so it reads the
image files again (paths recorded in the cache's config) through the same resize the cache
used. The tuned backbone is saved as a weights file the feature extractor loads by itself,
so the model directory stays a plain captioner plus ``backbone.weights.h5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from icapnet.config import Config
from icapnet.data.cache import open_cache
from icapnet.data.pipeline import concatenate
from icapnet.errors import IcapnetError
from icapnet.io import atomic_path
from icapnet.model.backbone import get_backbone, resize_images
from icapnet.model.captioner import Captioner
from icapnet.model.strategies import PrebuiltModel


class FineTuner(PrebuiltModel, keras.Model):
    """Backbone + captioner: images [B,S,S,3] and captions [B,T] in, the captioner's step.

    Training-only: it is never saved as a Keras model (the run saves the captioner and the
    tuned backbone weights separately), hence no ``get_config`` and no registration.
    """

    def __init__(self, extractor: keras.Model, captioner: Captioner, **kwargs) -> None:
        kwargs.setdefault("name", "fine_tuner")
        super().__init__(**kwargs)
        self.extractor = extractor
        self.captioner = captioner

    @property
    def metrics(self) -> list:
        return self.captioner.metrics

    def call(self, inputs, training=False):
        images, captions_in = inputs
        return self.captioner((self.extractor(images, training=training), captions_in),
                              training=training)

    def train_step(self, data):
        images, captions = data[0], data[1]
        return self.captioner.gradient_step(lambda: self.extractor(images, training=True),
                                            captions, self.trainable_variables, self.optimizer)

    def test_step(self, data):
        return self.captioner.score_batch(self.extractor(data[0], training=False), data[1])


def unfreeze_from(extractor: keras.Model, layer_name: str) -> int:
    """Make the backbone layers from ``layer_name`` on trainable; returns how many have weights."""
    for trunk in extractor.layers:
        if isinstance(trunk, keras.Model):
            names = [layer.name for layer in trunk.layers]
            if layer_name not in names:
                raise IcapnetError(f"--fine-tune-from {layer_name}: no such backbone layer "
                                   f"(e.g. {', '.join(n for n in names if 'conv' in n)[-60:]})")
            trunk.trainable = True
            start = names.index(layer_name)
            count = 0
            for i, layer in enumerate(trunk.layers):
                layer.trainable = i >= start
                count += int(i >= start and bool(layer.weights))
            return count
    raise IcapnetError(f"--fine-tune-from {layer_name}: the feature extractor has no backbone")


def image_dataset(config: Config, cache_dir: Path, split: str, batch_size: int,
                  seeds: Sequence[int] | None, drop_remainder: bool = False,
                  caption_length: int | None = None) -> tf.data.Dataset:
    """(images [B,S,S,3] float32, captions [B,T]) read from the image files.

    With ``seeds``: one shuffled epoch per seed, each batched on its own (as
    :func:`icapnet.data.pipeline.make_epochs_dataset`); without: one pass in cache order.
    """
    from icapnet.data.datasets import load_dataset
    from icapnet.data.images import load_image

    if not config.data.dataset or not config.data.data_dir:
        raise IcapnetError(f"{cache_dir}: the cache does not record where its images are; "
                           "pass --dataset and --data-dir to fine-tune")
    dataset = load_dataset(config.data.dataset, config.data.data_dir)
    cache = open_cache(cache_dir)
    vocab = cache.vocab
    paths, rows = [], []
    for image_id in cache.image_ids(split):
        path = dataset.images.get(image_id)
        if path is None:
            raise IcapnetError(f"{Path(config.data.data_dir) / image_id}: image of the cache "
                               "is missing from the dataset")
        for caption in cache.captions.get(split, {}).get(image_id, []):
            ids = vocab.encode(caption)
            if len(ids) > 2:
                paths.append(str(path))
                rows.append(ids)
    if not rows:
        raise IcapnetError(f"{cache_dir}: no '{split}' captions to fine-tune on")
    size = int(config.features.image_size)
    captions = tf.ragged.constant(rows, tf.int32)

    def load(path, caption):
        image = tf.numpy_function(lambda p: load_image(p.decode("utf-8")), [path], tf.uint8)
        image = resize_images(tf.ensure_shape(image, [None, None, 3]), size)
        return tf.ensure_shape(image, [size, size, 3]), caption

    def epoch(seed: int | None = None) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((paths, captions))
        if seed is not None:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.padded_batch(batch_size, padded_shapes=([size, size, 3], [caption_length]),
                               drop_remainder=drop_remainder)

    ds = epoch() if seeds is None else concatenate([epoch(int(seed)) for seed in seeds])
    return ds.prefetch(tf.data.AUTOTUNE)


def save_backbone(extractor: keras.Model, config: Config, path: Path) -> None:
    """Write the fine-tuned backbone as weights the feature extractor can load by itself."""
    spec = get_backbone(config.features.backbone)
    size = int(config.features.image_size)
    base = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    tuned = {layer.name: layer for m in extractor.layers if isinstance(m, keras.Model)
             for layer in m.layers}
    for layer in base.layers:
        if layer.weights and layer.name in tuned:
            layer.set_weights(tuned[layer.name].get_weights())
    with atomic_path(path, suffix=".weights.h5") as tmp:
        base.save_weights(str(tmp))
