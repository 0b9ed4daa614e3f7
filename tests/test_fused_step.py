"""The fused training step: the compiled attention kernel and the per-sequence gradients.

Training uses it by default on a CPU (``train.fused_step="auto"``), so every training
test runs it too; these tests compare it, value by value and gradient by gradient, with
TensorFlow's own ops, and check when it is (not) used.
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_training import write_cache

from icapnet.config import Config, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError
from icapnet.model import fused_step
from icapnet.model.captioner import Captioner
from icapnet.model.training import train
from icapnet.train import build_parser, config_from_args

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _reference_scores(keys, query, v):
    """What BahdanauAttention computes with TensorFlow's ops, V's bias left out."""
    return tf.reduce_sum(tf.tanh(keys[:, None] + query[:, :, None]) * v, -1)


def _random(rng, *shape):
    return tf.constant(rng.normal(size=shape).astype("float32") * 0.7)


def _reference_attention(keys, query, v, values, add_scores, add_context):
    alpha = tf.nn.softmax(_reference_scores(keys, query, v) + add_scores, axis=-1)
    return alpha, tf.matmul(alpha, values) + add_context


def test_attention_kernel_matches_tensorflow_ops_and_their_gradients():
    rng = np.random.default_rng(0)
    keys, query, v = _random(rng, 3, 7, 5), _random(rng, 3, 2, 5), _random(rng, 5)
    values, add_scores, add_context = (_random(rng, 3, 7, 4), _random(rng, 3, 2, 7),
                                       _random(rng, 3, 2, 4))
    weigh_alpha, weigh_context = _random(rng, 3, 2, 7), _random(rng, 3, 2, 4)
    inputs = [keys, query, v, values, add_scores, add_context]
    differentiated = [query, v, add_scores, add_context]  # keys, values: once per sequence
    results = []
    for attention in (_reference_attention, fused_step.additive_attention):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            alpha, context = attention(*inputs)
            loss = tf.reduce_sum(alpha * weigh_alpha) + tf.reduce_sum(context * weigh_context)
        results.append([alpha, context, *tape.gradient(loss, differentiated)])
    for expected, got in zip(*results, strict=True):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch([keys, values])
        alpha, context = fused_step.additive_attention(*inputs)
    assert tape.gradient([alpha, context], [keys, values]) == [None, None]


def test_keys_gradient_over_a_sequence_is_the_sum_of_the_steps():
    rng = np.random.default_rng(1)
    steps, keys, v = 4, _random(rng, 2, 6, 5), _random(rng, 5)
    queries, d_scores = _random(rng, steps, 2, 3, 5), _random(rng, steps, 2, 3, 6)
    d_scores = tf.tensor_scatter_nd_update(d_scores, [[3, 1, 2]], tf.zeros([1, 6]))  # padding
    expected = 0.0
    for t in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(keys)
            scores = _reference_scores(keys, queries[t], v)
        expected += tape.gradient(scores, keys, output_gradients=d_scores[t])
    got = fused_step.keys_gradient(keys, queries, v, d_scores)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _seed_states(model: keras.Model) -> list:
    return [layer.seed_generator.state for layer in model._flatten_layers()
            if getattr(layer, "seed_generator", None) is not None]


def _loss_and_gradients(model: Captioner, features, captions, fused: bool, training: bool):
    """The training loss and its gradients, dropout masks drawn from the same seeds."""
    states = _seed_states(model)
    saved = [s.numpy() for s in states]
    model.fused_step = fused
    with tf.GradientTape() as tape:
        loss, _ = model.compute_losses(features, captions, training=training)
    grads = tape.gradient(loss, model.trainable_variables)
    for state, value in zip(states, saved, strict=True):
        state.assign(value)
    return loss, [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                  for g, v in zip(grads, model.trainable_variables, strict=True)]


CASES = {
    "gru, 2 sub-batches": ({}, 2, False),
    "lstm": ({"decoder": "lstm"}, 1, False),
    "mean state, every option on": ({"init_state": "mean", "word_query": True,
                                     "deep_output": True, "context_gate": True,
                                     "feature_norm": True}, 2, False),
    "captions grouped by image": ({}, 1, True),
    "dropout, state dropout, training": ({"dropout": 0.3, "state_dropout": 0.3}, 2, False),
}


@pytest.mark.parametrize("case", CASES)
def test_fused_loss_and_gradients_match_tensorflow_ops(case):
    options, sub_batches, grouped = CASES[case]
    config = ModelConfig(vocab_size=30, embedding_dim=12, units=16, attention_units=10,
                         num_regions=9, feature_dim=8, **{"dropout": 0.0, **options})
    keras.utils.set_random_seed(3)
    model = Captioner(config, attention_penalty=0.5, sub_batches=sub_batches)
    rng = np.random.default_rng(2)
    lengths = [3, 9, 5, 2, 7, 4]  # tokens; 0 pads the rest
    captions = np.zeros((6, 10), "int32")
    for row, length in enumerate(lengths):
        captions[row, :length] = rng.integers(4, 30, length)
    features = rng.normal(size=(6, 9, 8)).astype("float32")
    if grouped:  # [G, K, T]: 3 images with 2 captions each
        features, captions = features[::2], captions.reshape(3, 2, 10)
    training = "training" in case
    expected_loss, expected = _loss_and_gradients(model, features, captions, False, training)
    loss, grads = _loss_and_gradients(model, features, captions, True, training)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    for variable, got, want in zip(model.trainable_variables, grads, expected, strict=True):
        scale = max(float(tf.reduce_max(tf.abs(want))), 1e-3)
        np.testing.assert_allclose(got / scale, want / scale, atol=2e-5, err_msg=variable.path)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads[:2])  # not all zero


def test_a_fused_training_run_follows_the_unfused_one(tmp_path):
    cache = write_cache(tmp_path / "cache")
    histories, used = {}, []
    for mode in ("on", "off"):
        config = Config(model=ModelConfig(embedding_dim=8, units=16, attention_units=8,
                                          dropout=0.0),
                        train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01, seed=7,
                                          fused_step=mode))
        histories[mode] = train(config, cache, tmp_path / mode, verbose=0,
                                on_model=lambda model: used.append(model.fused_step))
    assert used == [True, False]
    np.testing.assert_allclose(histories["on"]["loss"], histories["off"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(histories["on"]["val_loss"], histories["off"]["val_loss"],
                               rtol=1e-4)


def test_auto_falls_back_with_a_reason_and_on_refuses(monkeypatch, caplog):
    assert fused_step.resolve("off") is False
    caplog.set_level(logging.INFO, logger=fused_step.__name__)
    assert fused_step.resolve("auto", compute_dtype="bfloat16") is False
    assert "float32 only" in caplog.text
    assert fused_step.resolve("auto", jit_compile=True) is False
    assert "XLA" in caplog.text
    assert {r.levelname for r in caplog.records} == {"INFO"}  # not applying is no problem
    assert fused_step.resolve("auto", attention="none") is False
    with pytest.raises(IcapnetError, match=r"--fused-step on: .*float16"):
        fused_step.resolve("on", compute_dtype="float16")
    assert fused_step.resolve("auto") is True  # this machine builds it

    def unavailable():
        raise fused_step.KernelUnavailable("no C++ compiler ('g++' not found)")

    monkeypatch.setattr(fused_step, "load", unavailable)
    caplog.clear()
    assert fused_step.resolve("auto") is False
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # a kernel that should build
    assert "g++" in caplog.text
    with pytest.raises(IcapnetError, match=r"g\+\+' not found"):
        fused_step.resolve("on")


def test_kernel_is_built_once_per_machine_and_never_half_written(tmp_path, monkeypatch):
    built = fused_step.build(tmp_path / "cache")
    assert built.is_file() and built.parent == tmp_path / "cache"
    stamp = built.stat().st_mtime_ns
    assert fused_step.build(tmp_path / "cache") == built  # found, not compiled again
    assert built.stat().st_mtime_ns == stamp

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(fused_step.KernelUnavailable, match="no-such-compiler"):
        fused_step.build(tmp_path / "other")
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    with pytest.raises(fused_step.KernelUnavailable, match="did not compile"):
        fused_step.build(tmp_path / "failed")
    assert list((tmp_path / "failed").iterdir()) == []  # no temporary left behind
    (tmp_path / "a-file").write_text("")  # a cache folder that cannot be made
    with pytest.raises(fused_step.KernelUnavailable, match="cannot write the kernel cache"):
        fused_step.build(tmp_path / "a-file" / "cache")
    noexec = tmp_path / "noexec-compiler"
    noexec.write_text("")  # found on the path, but not runnable as a program
    noexec.chmod(0o755)
    monkeypatch.setenv("CXX", str(noexec))
    with pytest.raises(fused_step.KernelUnavailable, match="cannot run"):
        fused_step.build(tmp_path / "noexec")
    monkeypatch.setenv(fused_step.CACHE_ENV, str(tmp_path / "env"))
    assert fused_step.cache_dir() == tmp_path / "env"


def test_the_flag_sets_the_mode_and_rejects_others():
    args = build_parser().parse_args(["--cache", "c", "--out", "o",
                                      "--fused-step", "off"])
    assert config_from_args(args).train.fused_step == "off"
    config = Config(train=TrainConfig(fused_step="sometimes"))
    with pytest.raises(IcapnetError, match="--fused-step: 'sometimes' is not one of "
                                           "auto, on, off"):
        config.validate()
