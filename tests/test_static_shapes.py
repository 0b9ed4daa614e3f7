"""TPU-ready batches: every batch padded to one caption length with the remainder dropped
(static shapes), and XLA (``jit_compile``) training with them on CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from test_training import _config, write_cache

from icapnet.data.pipeline import (
    count_pairs,
    longest_caption,
    make_dataset,
    make_epochs_dataset,
    steps_per_epoch,
)
from icapnet.model.training import train


def test_static_batches_have_one_shape_and_no_remainder(tmp_path):
    cache = write_cache(tmp_path / "cache", n_train=15, n_val=3)  # 30 pairs
    length = longest_caption(cache, ("train", "val"))
    assert length == 8  # <start> there is a <colour> <shape> here <end>
    ds = make_epochs_dataset(cache, "train", 8, seeds=[1, 2], drop_remainder=True,
                             caption_length=length)
    assert ds.element_spec[1].shape.as_list() == [8, length]  # known while tracing
    assert ds.element_spec[0].shape.as_list() == [8, 8, 6]
    batches = list(ds)
    assert len(batches) == 2 * (count_pairs(cache, "train") // 8) == 2 * 3
    assert steps_per_epoch(cache, "train", 8, drop_remainder=True) == 3
    assert {tuple(c.shape) for _, c in batches} == {(8, length)}
    # Padding only: the tokens are those of the variable-length batches of the same seed.
    loose = list(make_epochs_dataset(cache, "train", 8, seeds=[1]))
    for (_, fixed), (_, free) in zip(batches[:3], loose, strict=False):
        np.testing.assert_array_equal(fixed[:, :free.shape[1]], free)
        assert not np.any(fixed[:, free.shape[1]:])
    val = make_dataset(cache, "val", 8, shuffle=False, caption_length=length)
    assert val.element_spec[1].shape.as_list() == [None, length]


@pytest.mark.slow  # XLA compiles the train step: ~35 s on 2 busy cores
def test_jit_compiled_training_with_static_shapes_on_cpu(tmp_path):
    cache = write_cache(tmp_path / "cache", n_train=15, n_val=4)  # val: one full batch
    models = []
    histories = {}
    for jit in (False, True):
        config = _config(epochs=2, static_shapes=True, jit_compile=jit)
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, dropout=0.0, state_dropout=0.0))
        histories[jit] = train(config, cache, tmp_path / f"jit{jit}", verbose=0,
                               on_model=models.append)
    assert models[1].jit_compile is True  # Keras kept XLA on (it drops it for unsupported layers)
    assert tf.config.list_physical_devices("GPU") == []  # this is the CPU path
    assert histories[True]["loss"].iloc[1] < histories[True]["loss"].iloc[0]
    for key in ("loss", "val_loss", "accuracy"):  # XLA only reorders float32 arithmetic
        np.testing.assert_allclose(histories[True][key], histories[False][key], rtol=1e-4,
                                   err_msg=key)
