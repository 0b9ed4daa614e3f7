"""Greedy / beam-search decoding against eager step-by-step references on tiny random models."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import tensorflow as tf

from icapnet.config import Config, ModelConfig
from icapnet.inference.decoding import (
    END_ID,
    NEVER_EMITTED,
    _compiled,
    beam_candidates,
    beam_search,
    decode,
    greedy_decode,
)
from icapnet.model.store import build_captioner

VOCAB, REGIONS, CHANNELS = 14, 9, 8


def _model(seed: int, decoder: str = "gru", vocab: int = VOCAB, word_query: bool = False):
    """A tiny random captioner; its output layer is scaled so argmax is rarely a near-tie."""
    import keras

    keras.utils.set_random_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab,
        embedding_dim=8,
        units=16,
        attention_units=8,
        dropout=0.0,
        num_regions=REGIONS,
        feature_dim=CHANNELS,
        decoder=decoder,
        word_query=word_query,
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


@pytest.fixture(scope="module")
def gru_word_query():
    return _model(2, word_query=True)


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


def test_greedy_with_word_query_equals_eager_reference(gru_word_query) -> None:
    """The compiled loop feeds the word just read to the attention query as decode_step does."""
    feats = _features(5, batch=6)
    result = greedy_decode(gru_word_query, feats, 7).to_numpy()
    for i, (tokens, alphas, score) in enumerate(_eager_greedy(gru_word_query, feats, 7)):
        np.testing.assert_array_equal(result.tokens[i, : len(tokens)], tokens)
        np.testing.assert_allclose(result.attention[i, : len(tokens)], alphas, atol=1e-5)
        np.testing.assert_allclose(result.scores[i], score, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["gru", "lstm", "gru_word_query"])
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


def _exhaustive_best(model, image: np.ndarray, max_length: int, alpha: float):
    """(tokens, score) of the best finished caption among ALL of them: every word sequence
    w1..wn <end> with n + 1 <= max_length, scored by teacher forcing (GNMT-normalised)."""
    words = [t for t in range(model.model_config.vocab_size)
             if t not in NEVER_EMITTED and t != END_ID]
    best_tokens, best_score = None, -np.inf
    for n in range(max_length):
        combos = list(itertools.product(words, repeat=n))
        seqs = np.array(combos, np.int32).reshape(len(combos), n)
        inputs = np.concatenate([np.full((len(seqs), 1), 1, np.int32), seqs], axis=1)
        targets = np.concatenate([seqs, np.full((len(seqs), 1), END_ID, np.int32)], axis=1)
        feats = np.repeat(image[None], len(seqs), axis=0)
        logits, _ = model((feats, inputs))
        logp = _masked_log_softmax(logits.numpy())
        totals = np.take_along_axis(logp, targets[..., None], -1)[..., 0].sum(-1)
        scores = totals / ((5.0 + n + 1) / 6.0) ** alpha
        k = int(np.argmax(scores))
        if scores[k] > best_score:
            best_tokens, best_score = targets[k].tolist(), float(scores[k])
    return best_tokens, best_score


def test_wide_enough_beam_finds_the_exhaustive_optimum() -> None:
    """What beam search guarantees: once the beam holds every hypothesis it could prune
    (here 2 words, max length 5: 2**4 live prefixes, each with 3 extensions), it returns the
    best caption of all, with that caption's own score, with or without a length penalty.
    A narrower beam guarantees nothing (not even to beat greedy), so that is not asserted."""
    model = _model(0, vocab=6)  # 4 special tokens + 2 words
    feats = _features(11, batch=6)
    max_length, wide = 5, 2 ** 4 * 3
    with _bias(model, [END_ID], -2.0):  # optima of different lengths, and greedy misses them
        greedy = greedy_decode(model, feats, max_length).to_numpy()
        for alpha in (0.0, 0.7):
            beam = beam_search(model, feats, wide, max_length, length_penalty=alpha).to_numpy()
            best = [_exhaustive_best(model, f, max_length, alpha) for f in feats]
            lengths, greedy_hits = set(), 0
            for i, (tokens, score) in enumerate(best):
                n = int(beam.lengths[i])
                assert beam.tokens[i, :n].tolist() == tokens, f"alpha {alpha}, image {i}"
                np.testing.assert_allclose(beam.scores[i], score, rtol=1e-4, atol=1e-4)
                lengths.add(n)
                greedy_hits += greedy.tokens[i, : greedy.lengths[i]].tolist() == tokens
            assert len(lengths) > 1  # the optimum is not always the same length
            assert greedy_hits < len(feats)  # the search had something to find


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


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_beam_candidates_are_distinct_finished_hypotheses_best_first(gru, alpha: float) -> None:
    """Each candidate's score and attention are those of its own words; #0 is beam_search's."""
    feats = _features(12, batch=5)
    best = beam_search(gru, feats, 4, 8, length_penalty=alpha).to_numpy()
    cands = beam_candidates(gru, feats, 4, 8, length_penalty=alpha).to_numpy()
    assert cands.scores.shape == (5, 4) and cands.tokens.shape[:2] == (5, 4)
    np.testing.assert_allclose(cands.scores[:, 0], best.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cands.lengths[:, 0], best.lengths)
    filled = 0
    for i in range(len(feats)):
        n0 = int(best.lengths[i])
        np.testing.assert_array_equal(cands.tokens[i, 0, :n0], best.tokens[i, :n0])
        np.testing.assert_allclose(cands.attention[i, 0, :n0], best.attention[i, :n0], atol=1e-6)
        valid = np.isfinite(cands.scores[i])
        assert (np.diff(cands.scores[i][valid]) <= 1e-6).all(), "best first"
        seen = set()
        for j in np.flatnonzero(valid):
            n = int(cands.lengths[i, j])
            tokens = cands.tokens[i, j, :n].tolist()
            assert tokens[-1] == END_ID and END_ID not in tokens[:-1]
            assert tuple(tokens) not in seen, "candidates must differ"
            seen.add(tuple(tokens))
            total, alphas = _rescore(gru, feats[i], tokens)
            penalty = ((5.0 + n) / 6.0) ** alpha
            np.testing.assert_allclose(cands.scores[i, j], total / penalty, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(cands.attention[i, j, :n], alphas, atol=1e-5)
            assert (cands.attention[i, j, n:] == 0).all()
        assert (cands.lengths[i][~valid] == 0).all()
        filled += int(valid.sum())
    assert filled > len(feats), "some image should get more than one candidate"


def test_beam_candidates_count_and_unfinished_fallback(gru) -> None:
    feats = _features(13, batch=3)
    two = beam_candidates(gru, feats, 4, 8, num_candidates=2).to_numpy()
    assert two.scores.shape == (3, 2)
    capped = beam_candidates(gru, feats, 2, 8, num_candidates=9).to_numpy()
    assert capped.scores.shape == (3, 2)  # never more than the beam holds
    with _bias(gru, [END_ID], float("-inf")):  # nothing ever ends: the best partial, alone
        partial = beam_candidates(gru, feats, 3, 5).to_numpy()
        best = beam_search(gru, feats, 3, 5).to_numpy()
    np.testing.assert_array_equal(partial.tokens[:, 0], best.tokens)
    np.testing.assert_allclose(partial.scores[:, 0], best.scores, atol=1e-5)
    assert np.isneginf(partial.scores[:, 1:]).all() and (partial.lengths[:, 1:] == 0).all()
    with pytest.raises(ValueError, match="num_candidates"):
        beam_candidates(gru, feats, 3, 5, num_candidates=0)
