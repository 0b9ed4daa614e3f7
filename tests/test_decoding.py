"""Greedy / beam-search decoding against eager step-by-step references on tiny random models."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from icapnet.config import Config, ModelConfig
from icapnet.inference.decoding import (
    END_ID,
    NEVER_EMITTED,
    _compiled,
    beam_search,
    decode,
    greedy_decode,
)
from icapnet.model.store import build_captioner

VOCAB, REGIONS, CHANNELS = 14, 9, 8


def _model(seed: int, decoder: str = "gru"):
    """A tiny random captioner; its output layer is scaled so argmax is rarely a near-tie."""
    import keras

    keras.utils.set_random_seed(seed)
    cfg = ModelConfig(
        vocab_size=VOCAB,
        embedding_dim=8,
        units=16,
        attention_units=8,
        dropout=0.0,
        num_regions=REGIONS,
        feature_dim=CHANNELS,
        decoder=decoder,
    )
    model = build_captioner(Config(model=cfg))
    kernel, bias = model.decoder.fc2.get_weights()
    model.decoder.fc2.set_weights([kernel * 3.0, bias])
    return model


@contextlib.contextmanager
def _bias(model, ids, delta: float):
    """Temporarily shift the output bias of token ``ids`` (no retrace: same variables)."""
    kernel, bias = model.decoder.fc2.get_weights()
    shifted = bias.copy()
    shifted[list(ids)] += delta
    model.decoder.fc2.set_weights([kernel, shifted])
    try:
        yield model
    finally:
        model.decoder.fc2.set_weights([kernel, bias])


@pytest.fixture(scope="module")
def gru():
    return _model(0)


@pytest.fixture(scope="module")
def lstm():
    return _model(1, decoder="lstm")


def _features(seed: int, batch: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, REGIONS, CHANNELS)).astype(np.float32)


def _masked_log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64).copy()
    logits[..., list(NEVER_EMITTED)] = -np.inf
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def _eager_greedy(model, features: np.ndarray, max_length: int):
    """Reference: one image at a time, numpy argmax over eager decode_step logits."""
    out = []
    for image in features:
        encoded = model.encode(image[None])
        keys = model.precompute_keys(encoded)
        state = model.initial_state(encoded)
        token = tf.constant([1])
        tokens, alphas, score = [], [], 0.0
        for _ in range(max_length):
            logits, state, alpha = model.decode_step(token, state, encoded, keys)
            logp = _masked_log_softmax(logits.numpy()[0])
            best = int(np.argmax(logp))
            tokens.append(best)
            alphas.append(alpha.numpy()[0])
            score += logp[best]
            token = tf.constant([best])
            if best == END_ID:
                break
        out.append((tokens, np.array(alphas), score))
    return out


def _rescore(model, image: np.ndarray, tokens: list[int]):
    """Teacher-force ``tokens`` through decode_step: (sum masked log-prob, attention rows)."""
    encoded = model.encode(image[None])
    keys = model.precompute_keys(encoded)
    state = model.initial_state(encoded)
    prev, total, alphas = 1, 0.0, []
    for tok in tokens:
        logits, state, alpha = model.decode_step(tf.constant([prev]), state, encoded, keys)
        total += _masked_log_softmax(logits.numpy()[0])[tok]
        alphas.append(alpha.numpy()[0])
        prev = tok
    return total, np.array(alphas)


@pytest.mark.parametrize("end_bias", [0.0, -0.5])
def test_greedy_equals_eager_argmax_reference(gru, end_bias: float) -> None:
    feats = _features(1, batch=8)
    with _bias(gru, [END_ID], end_bias):
        result = greedy_decode(gru, feats, 7).to_numpy()
        reference = _eager_greedy(gru, feats, 7)
    lengths = [len(r[0]) for r in reference]
    if end_bias == 0.0:  # the batch mixes captions that end and ones cut at max_length
        assert min(lengths) < 7 and max(lengths) == 7
    assert result.tokens.shape == (8, max(lengths))
    assert result.attention.shape == (8, max(lengths), REGIONS)
    np.testing.assert_array_equal(result.lengths, lengths)
    for i, (tokens, alphas, score) in enumerate(reference):
        np.testing.assert_array_equal(result.tokens[i, : len(tokens)], tokens)
        assert (result.tokens[i, len(tokens):] == 0).all()
        np.testing.assert_allclose(result.attention[i, : len(tokens)], alphas, atol=1e-5)
        assert (result.attention[i, len(tokens):] == 0).all()
        np.testing.assert_allclose(result.scores[i], score, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["gru", "lstm"])
def test_beam_size_one_equals_greedy(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    for end_bias in (0.0, 0.3, -1.0):
        feats = _features(10 + int(end_bias * 10), batch=8)
        with _bias(model, [END_ID], end_bias):
            greedy = greedy_decode(model, feats, 9).to_numpy()
            beam = beam_search(model, feats, 1, 9).to_numpy()
        np.testing.assert_array_equal(beam.tokens, greedy.tokens)
        np.testing.assert_array_equal(beam.lengths, greedy.lengths)
        np.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(beam.attention, greedy.attention, atol=1e-6)


def test_beam_never_worse_than_greedy_in_log_prob(gru) -> None:
    feats = _features(3, batch=10)
    with _bias(gru, [END_ID], 0.0):
        greedy = greedy_decode(gru, feats, 8).to_numpy()
        beam = beam_search(gru, feats, 4, 8).to_numpy()
    assert (beam.scores >= greedy.scores - 1e-4).all()
    assert (beam.scores > greedy.scores + 1e-3).any(), "beam should improve some caption"


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_beam_result_is_one_hypothesis_with_its_own_attention(gru, alpha: float) -> None:
    """Backpointers: the returned score and attention are those of the returned words."""
    feats = _features(4, batch=6)
    beam = beam_search(gru, feats, 3, 8, length_penalty=alpha).to_numpy()
    for i in range(len(feats)):
        n = int(beam.lengths[i])
        tokens = beam.tokens[i, :n].tolist()
        assert all(t not in NEVER_EMITTED for t in tokens)
        assert END_ID not in tokens[:-1]
        total, alphas = _rescore(gru, feats[i], tokens)
        penalty = ((5.0 + n) / 6.0) ** alpha
        np.testing.assert_allclose(beam.scores[i], total / penalty, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(beam.attention[i, :n], alphas, atol=1e-5)
        assert (beam.attention[i, n:] == 0).all()


def test_never_ending_model_returns_max_length_captions(gru) -> None:
    feats = _features(5, batch=4)
    with _bias(gru, [END_ID], float("-inf")):
        results = [beam_search(gru, feats, 3, 6), greedy_decode(gru, feats, 6)]
    for result in results:
        res = result.to_numpy()
        assert res.tokens.shape == (4, 6)
        assert (res.lengths == 6).all()
        assert not np.isin(res.tokens, [END_ID, *NEVER_EMITTED]).any()
        assert np.isfinite(res.scores).all()
        np.testing.assert_allclose(res.attention.sum(-1), 1.0, atol=1e-5)


def test_special_tokens_are_never_emitted_even_when_most_likely(gru) -> None:
    feats = _features(6, batch=4)
    with _bias(gru, NEVER_EMITTED, 50.0):
        results = [greedy_decode(gru, feats, 5), beam_search(gru, feats, 3, 5)]
    for result in results:
        res = result.to_numpy()
        for row, n in zip(res.tokens, res.lengths, strict=True):
            assert not np.isin(row[:n], NEVER_EMITTED).any()
        assert np.isfinite(res.scores).all()


def test_beam_size_and_max_length_as_tensors_share_one_graph(gru) -> None:
    feats = _features(7, batch=3)
    wide = beam_search(gru, feats, tf.constant(5), tf.constant(4)).to_numpy()
    narrow = beam_search(gru, feats, tf.constant(2), tf.constant(9)).to_numpy()
    assert wide.tokens.shape[1] <= 4 and (wide.lengths <= 4).all()
    assert (narrow.lengths <= 9).all()
    # A beam larger than the number of emittable words must not break.
    huge = beam_search(gru, feats, VOCAB * 2, 4).to_numpy()
    assert np.isfinite(huge.scores).all() and (huge.lengths >= 1).all()
    assert _compiled(gru)["beam"].experimental_get_tracing_count() == 1


def test_decode_dispatch_and_argument_checks(gru) -> None:
    feats = _features(8, batch=2)
    via_decode = decode(gru, feats, beam_size=1, max_length=5).to_numpy()
    direct = greedy_decode(gru, feats, 5).to_numpy()
    np.testing.assert_array_equal(via_decode.tokens, direct.tokens)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(gru, feats, 0, 5)
    with pytest.raises(ValueError, match="max_length"):
        greedy_decode(gru, feats, 0)
