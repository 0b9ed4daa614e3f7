"""Greedy and beam-search decoding of a trained Captioner, batched and in graph mode.

Both decoders run the whole caption loop inside one ``tf.function`` (a ``tf.while_loop``
over time) for a batch of images: ``model.encode`` and ``model.precompute_keys`` run once,
then ``model.decode_step`` once per word. The pure graph builders (``greedy_graph`` /
``beam_graph``) are also what the SavedModel export traces, so the Python path and the
exported model share one implementation.

Conventions:
- ``<pad>``, ``<start>`` and ``<unk>`` are never emitted: their logits are set to -inf before
  the log-softmax, so scores are log-probabilities over the words that *can* be emitted.
- ``max_length`` counts emitted tokens, ``<end>`` included (as ``ModelConfig.max_length``).
- Beam search uses the GNMT length penalty ``lp(n) = ((5 + n) / 6) ** alpha`` where ``n`` is
  the number of tokens including ``<end>``; the score is ``sum log p / lp(n)``. With
  ``alpha = 0`` (the default) that is the plain sum of log-probabilities, so beam size 1
  gives exactly the greedy caption and score.
- Beam size and max length may be Python ints or scalar int32 tensors (the export feeds
  them as signature inputs): all shapes inside are dynamic, nothing is retraced.
- Both are bounded (``MAX_CAPTION_LENGTH``, ``MAX_BEAM_SIZE`` and the vocabulary, see
  :func:`max_beam_size`): :func:`check_decoding` says so in one line before decoding, and the
  graphs themselves assert it (InvalidArgumentError), so a serving process given
  ``max_length=2**31-1`` refuses the request instead of aborting on a huge allocation.

The module is a little over 400 lines because greedy search, beam search and the top-k
candidates share the emit mask, the length penalty and the per-model compiled functions;
apart they would each need those and the export would import three modules.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from icapnet.config import MAX_BEAM_SIZE, MAX_CAPTION_LENGTH
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError

PAD_ID = Vocabulary.pad_id
START_ID = Vocabulary.start_id
END_ID = Vocabulary.end_id
UNK_ID = Vocabulary.unk_id
NEVER_EMITTED = (PAD_ID, START_ID, UNK_ID)


class DecodeResult(NamedTuple):
    """Decoded captions for a batch (tensors; ``.to_numpy()`` for arrays).

    tokens:    [B, T] int32 word ids, ``<end>`` included, 0-padded after it; T = max(lengths).
    scores:    [B] float32 sum of log-probabilities (beam: divided by the length penalty).
    attention: [B, T, R] float32 attention of each emitted token (zeros after ``<end>``).
    lengths:   [B] int32 emitted tokens including ``<end>`` (= max_length when none ended).
    """

    tokens: Any
    scores: Any
    attention: Any
    lengths: Any

    def to_numpy(self) -> DecodeResult:
        return DecodeResult(*(np.asarray(x) for x in self))


def max_beam_size(vocab_size: int) -> int:
    """The widest beam a user may ask of a model: ``MAX_BEAM_SIZE``, and no wider than the
    number of tokens the model can write (its vocabulary less <pad>, <start>, <unk>). The
    graphs themselves accept any beam up to ``MAX_BEAM_SIZE`` (a search over a tiny
    vocabulary can use more hypotheses than words; the tests do)."""
    return max(1, min(MAX_BEAM_SIZE, int(vocab_size) - len(NEVER_EMITTED)))


def check_decoding(beam_size: int, max_length: int, vocab_size: int | None = None,
                   beam_name: str = "beam size", length_name: str = "max length") -> None:
    """One-line IcapnetError for a beam or length out of bounds (names: flags or fields)."""
    if not 1 <= int(max_length) <= MAX_CAPTION_LENGTH:
        raise IcapnetError(f"{length_name} {max_length}: must be from 1 to {MAX_CAPTION_LENGTH}")
    limit = MAX_BEAM_SIZE if vocab_size is None else max_beam_size(vocab_size)
    if not 1 <= int(beam_size) <= limit:
        why = "" if vocab_size is None or limit == MAX_BEAM_SIZE else (
            ", the number of tokens this model can write")
        raise IcapnetError(f"{beam_name} {beam_size}: must be from 1 to {limit}{why}")


def assert_at_most(value: tf.Tensor, limit: int, what: str) -> tf.Tensor:
    """``value`` (int32 scalar) once asserted <= ``limit``: the ops that size buffers by it
    depend on the assertion, so a huge value fails as InvalidArgumentError before any
    allocation."""
    value = tf.cast(value, tf.int32)
    check = tf.debugging.assert_less_equal(
        value, tf.constant(int(limit), tf.int32), message=f"{what} must be at most {limit}")
    with tf.control_dependencies([check]):
        return tf.identity(value)


def _emit_mask(vocab_size: tf.Tensor) -> tf.Tensor:
    """[V] additive mask: -inf for the tokens a caption may never contain, 0 elsewhere."""
    ids = tf.range(vocab_size)
    banned = tf.reduce_any(ids[:, None] == tf.constant(NEVER_EMITTED)[None, :], axis=1)
    return tf.where(banned, float("-inf"), 0.0)


def _log_probs(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    return tf.nn.log_softmax(tf.cast(logits, tf.float32) + mask, axis=-1)


def _length_penalty(length: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """GNMT length penalty ((5 + n) / 6) ** alpha."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def _start(model: Any, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    encoded = model.encode(features, training=False)
    keys = model.precompute_keys(encoded)
    state = model.initial_state(encoded)
    return encoded, keys, state


def greedy_graph(model: Any, features: tf.Tensor, max_length: tf.Tensor) -> DecodeResult:
    """Graph body of :func:`greedy_decode` (call inside a tf.function)."""
    features = tf.convert_to_tensor(features)
    max_length = tf.maximum(assert_at_most(max_length, MAX_CAPTION_LENGTH, "max_length"), 1)
    batch = tf.shape(features)[0]
    encoded, keys, state = _start(model, features)
    regions = tf.shape(encoded)[1]

    def cond(t, tokens, state, finished, *_):
        return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

    def body(t, tokens, state, finished, scores, lengths, token_ta, alpha_ta):
        logits, state, alpha = model.decode_step(tokens, state, encoded, keys, training=False)
        logp = _log_probs(logits, _emit_mask(tf.shape(logits)[-1]))
        best = tf.argmax(logp, axis=-1, output_type=tf.int32)
        step_logp = tf.gather(logp, best, batch_dims=1)
        alive = tf.logical_not(finished)
        emitted = tf.where(alive, best, PAD_ID)
        scores += tf.where(alive, step_logp, 0.0)
        lengths += tf.cast(alive, tf.int32)
        alpha = tf.where(alive[:, None], tf.cast(alpha, tf.float32), 0.0)
        token_ta = token_ta.write(t, emitted)
        alpha_ta = alpha_ta.write(t, alpha)
        finished = tf.logical_or(finished, best == END_ID)
        return t + 1, emitted, state, finished, scores, lengths, token_ta, alpha_ta

    loop_vars = (
        tf.constant(0),
        tf.fill([batch], START_ID),
        state,
        tf.zeros([batch], tf.bool),
        tf.zeros([batch], tf.float32),
        tf.zeros([batch], tf.int32),
        tf.TensorArray(tf.int32, size=max_length, element_shape=[None]),
        tf.TensorArray(tf.float32, size=max_length, element_shape=[None, None]),
    )
    shapes = tf.nest.map_structure(_invariant, loop_vars)
    steps, _, _, _, scores, lengths, token_ta, alpha_ta = tf.while_loop(
        cond, body, loop_vars, shape_invariants=shapes, maximum_iterations=max_length
    )
    width = tf.reduce_max(lengths)
    tokens = tf.transpose(token_ta.gather(tf.range(steps)))[:, :width]
    attention = tf.transpose(
        tf.reshape(alpha_ta.gather(tf.range(steps)), [steps, batch, regions]), [1, 0, 2]
    )[:, :width]
    return DecodeResult(tokens, scores, attention, lengths)


class BeamCandidates(NamedTuple):
    """The ``n`` best finished hypotheses per image, best first (tensors; ``.to_numpy()``).

    tokens:    [B, n, T] int32 word ids, ``<end>`` included, 0-padded.
    scores:    [B, n] float32 length-penalised log-probabilities; -inf marks an empty slot
               (fewer than ``n`` hypotheses finished before the search stopped).
    attention: [B, n, T, R] float32 attention of each emitted token.
    lengths:   [B, n] int32 tokens including ``<end>`` (0 for empty slots).

    Candidate 0 is exactly :func:`beam_graph`'s result, including its fallback to the best
    unfinished hypothesis when none ended within ``max_length``.
    """

    tokens: Any
    scores: Any
    attention: Any
    lengths: Any

    def to_numpy(self) -> BeamCandidates:
        return BeamCandidates(*(np.asarray(x) for x in self))


def beam_graph(
    model: Any,
    features: tf.Tensor,
    beam_size: tf.Tensor,
    max_length: tf.Tensor,
    length_penalty: tf.Tensor,
) -> DecodeResult:
    """Graph body of :func:`beam_search` (call inside a tf.function): the best hypothesis."""
    best = beam_candidates_graph(model, features, beam_size, max_length, length_penalty, 1)
    width = tf.reduce_max(best.lengths[:, 0])
    return DecodeResult(
        best.tokens[:, 0, :width], best.scores[:, 0], best.attention[:, 0, :width],
        best.lengths[:, 0],
    )


def beam_candidates_graph(
    model: Any,
    features: tf.Tensor,
    beam_size: tf.Tensor,
    max_length: tf.Tensor,
    length_penalty: tf.Tensor,
    num_candidates: tf.Tensor,
) -> BeamCandidates:
    """Beam search keeping the ``num_candidates`` best finished hypotheses (at most the beam).

    Layout: ``k`` live hypotheses per image, flattened to ``[B*k]`` for ``decode_step``.
    Each step, the ``<end>`` extensions among the top ``k`` of all ``k * V`` extensions are
    finished candidates; they are merged into a pool of the ``k`` best finished hypotheses
    so far, and the top ``k`` non-``<end>`` extensions become the new live set, so the beam
    stays full while finished hypotheses are tracked separately. An image is done when its
    ``n``-th best finished hypothesis already beats anything a live one could still reach
    (with ``n = 1`` this is the classic stopping rule, so the best hypothesis does not depend
    on ``n``). Per step we store the chosen words, their parent slots and the attention of
    every parent, then walk the backpointers from each kept hypothesis so its attention rows
    belong to its own words.
    """
    features = tf.convert_to_tensor(features)
    k = tf.maximum(assert_at_most(beam_size, MAX_BEAM_SIZE, "beam_size"), 1)
    n = tf.clip_by_value(tf.cast(num_candidates, tf.int32), 1, k)
    max_length = tf.maximum(assert_at_most(max_length, MAX_CAPTION_LENGTH, "max_length"), 1)
    alpha = tf.cast(length_penalty, tf.float32)
    batch = tf.shape(features)[0]
    encoded, keys, state = _start(model, features)
    regions = tf.shape(encoded)[1]
    encoded_k = tf.repeat(encoded, k, axis=0)
    keys_k = tf.repeat(keys, k, axis=0)
    state = tf.repeat(state, k, axis=0)
    neg_inf = tf.constant(float("-inf"))
    # Only slot 0 is live at the start; the other k-1 copies would duplicate it.
    live_scores = tf.tile(tf.where(tf.range(k) == 0, 0.0, neg_inf)[None, :], [batch, 1])
    best_max = _length_penalty(max_length, alpha)
    offsets = tf.range(batch)[:, None] * k

    def cond(t, tokens, state, live_scores, fin_score, fin_step, fin_parent, done, *_):
        return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(done)))

    def body(t, tokens, state, live_scores, fin_score, fin_step, fin_parent, done, *tas):
        w_ta, p_ta, a_ta = tas
        logits, new_state, attn = model.decode_step(
            tokens, state, encoded_k, keys_k, training=False
        )
        vocab = tf.shape(logits)[-1]
        logp = tf.reshape(_log_probs(logits, _emit_mask(vocab)), [batch, k, vocab])
        cand = live_scores[:, :, None] + logp  # [B, k, V]
        # Finished candidates: <end> extensions among the top k of ALL extensions (as in
        # the classic algorithm; this is what makes beam 1 == greedy), length t + 1.
        top_all, top_all_idx = tf.math.top_k(tf.reshape(cand, [batch, k * vocab]), k=k)
        is_end = tf.equal(top_all_idx % vocab, END_ID)
        end_norm = tf.where(is_end, top_all / _length_penalty(t + 1, alpha), neg_inf)
        # Merge into the pool of the k best finished ones (ties keep the older hypothesis).
        pool_score, pick = tf.math.top_k(tf.concat([fin_score, end_norm], axis=1), k=k)
        pool_step = tf.gather(
            tf.concat([fin_step, tf.fill([batch, k], t)], axis=1), pick, batch_dims=1
        )
        pool_parent = tf.gather(
            tf.concat([fin_parent, top_all_idx // vocab], axis=1), pick, batch_dims=1
        )
        keep = done[:, None]
        fin_score = tf.where(keep, fin_score, pool_score)
        fin_step = tf.where(keep, fin_step, pool_step)
        fin_parent = tf.where(keep, fin_parent, pool_parent)
        # Live candidates: the best k extensions by any word but <end>.
        no_end = tf.where(tf.range(vocab) == END_ID, neg_inf, 0.0)
        flat = tf.reshape(cand + no_end, [batch, k * vocab])
        live_scores, top = tf.math.top_k(flat, k=k)
        parent = top // vocab
        word = top % vocab
        state = tf.gather(new_state, tf.reshape(parent + offsets, [-1]))
        w_ta = w_ta.write(t, word)
        p_ta = p_ta.write(t, parent)
        a_ta = a_ta.write(t, tf.reshape(tf.cast(attn, tf.float32), [batch, k, regions]))
        # No live hypothesis can beat the n-th best finished one any more: sum log p only
        # drops, and lp(n) <= lp(max_length) for alpha >= 0.
        done = tf.logical_or(done, fin_score[:, n - 1] >= live_scores[:, 0] / best_max)
        tokens = tf.reshape(word, [-1])
        fin = (fin_score, fin_step, fin_parent, done)
        return (t + 1, tokens, state, live_scores, *fin, w_ta, p_ta, a_ta)

    loop_vars = (
        tf.constant(0),
        tf.fill([batch * k], START_ID),
        state,
        live_scores,
        tf.fill([batch, k], neg_inf),
        tf.zeros([batch, k], tf.int32),
        tf.zeros([batch, k], tf.int32),
        tf.zeros([batch], tf.bool),
        tf.TensorArray(tf.int32, size=max_length, element_shape=[None, None]),
        tf.TensorArray(tf.int32, size=max_length, element_shape=[None, None]),
        tf.TensorArray(tf.float32, size=max_length, element_shape=[None, None, None]),
    )
    shapes = tf.nest.map_structure(_invariant, loop_vars)
    out = tf.while_loop(
        cond, body, loop_vars, shape_invariants=shapes, maximum_iterations=max_length
    )
    steps, _, _, live_scores, fin_score, fin_step, fin_parent, _, w_ta, p_ta, a_ta = out
    words = w_ta.gather(tf.range(steps))  # [S, B, k]
    parents = p_ta.gather(tf.range(steps))  # [S, B, k]
    attns = tf.reshape(a_ta.gather(tf.range(steps)), [steps, batch, k, regions])

    # The kept hypotheses: the n best finished; when none finished, candidate 0 is the best
    # partial one (live slot 0) and the other slots stay empty.
    fin_score, fin_step, fin_parent = fin_score[:, :n], fin_step[:, :n], fin_parent[:, :n]
    has_fin = fin_score > neg_inf  # [B, n]
    fallback = tf.logical_and(
        tf.logical_not(has_fin[:, :1]), tf.range(n)[None, :] == 0
    )  # [B, n]: slot 0 of images without any finished hypothesis
    valid = tf.logical_or(has_fin, fallback)
    last_pos = tf.where(has_fin, fin_step, steps - 1)
    last_word = tf.where(has_fin, END_ID, words[steps - 1][:, :1])
    # For both kinds, the slot one step earlier is also the slot whose attention is used.
    last_parent = tf.where(has_fin, fin_parent, parents[steps - 1][:, :1])
    partial = live_scores[:, :1] / _length_penalty(steps, alpha)
    scores = tf.where(has_fin, fin_score, tf.where(fallback, partial, neg_inf))
    lengths = tf.where(valid, last_pos + 1, 0)

    def back_cond(u, *_):
        return u >= 0

    def back_body(u, slot, tok_ta, att_ta):
        is_last = tf.logical_and(tf.equal(u, last_pos), valid)
        before = tf.logical_and(u < last_pos, valid)
        par = tf.gather(parents[u], slot, batch_dims=1)
        tok = tf.where(
            is_last, last_word, tf.where(before, tf.gather(words[u], slot, batch_dims=1), PAD_ID)
        )
        att_slot = tf.where(is_last, slot, par)
        att = tf.gather(attns[u], att_slot, batch_dims=1)
        att = tf.where(tf.logical_or(is_last, before)[:, :, None], att, 0.0)
        slot = tf.where(before, par, slot)
        return u - 1, slot, tok_ta.write(u, tok), att_ta.write(u, att)

    back_vars = (
        steps - 1,
        last_parent,
        tf.TensorArray(tf.int32, size=steps, element_shape=[None, None]),
        tf.TensorArray(tf.float32, size=steps, element_shape=[None, None, None]),
    )
    back_shapes = tf.nest.map_structure(_invariant, back_vars)
    _, _, tok_ta, att_ta = tf.while_loop(
        back_cond, back_body, back_vars, shape_invariants=back_shapes
    )
    width = tf.reduce_max(lengths)
    tokens = tf.transpose(tok_ta.stack(), [1, 2, 0])[:, :, :width]  # [B, n, T]
    attention = tf.transpose(
        tf.reshape(att_ta.stack(), [steps, batch, n, regions]), [1, 2, 0, 3]
    )[:, :, :width]
    return BeamCandidates(tokens, scores, attention, lengths)


def _invariant(value: Any) -> Any:
    """Shape invariant with every dimension free (batch, beam and state sizes are dynamic)."""
    if isinstance(value, tf.TensorArray):
        return tf.TensorShape(None)
    shape = tf.convert_to_tensor(value).shape
    return tf.TensorShape([None] * shape.rank)


# One compiled function pair per model, created on first use and dropped with the model.
# The graph bodies use tf.while_loop / tf.cond explicitly, so AutoGraph has nothing to
# convert; switching it off cut the first (tracing) call of greedy decoding from ~1.4 to
# ~0.5 CPU-seconds (a one-photo `python -m icapnet.caption` pays it every time).
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model: Any) -> dict[str, Any]:
    fns = _COMPILED.get(model)
    if fns is None:
        spec_feat = tf.TensorSpec([None, None, None], tf.float32)
        spec_int = tf.TensorSpec([], tf.int32)
        spec_float = tf.TensorSpec([], tf.float32)
        fns = {
            "greedy": tf.function(
                lambda f, n: greedy_graph(model, f, n),
                input_signature=[spec_feat, spec_int],
                reduce_retracing=True,
                autograph=False,
            ),
            "beam": tf.function(
                lambda f, k, n, a: beam_graph(model, f, k, n, a),
                input_signature=[spec_feat, spec_int, spec_int, spec_float],
                reduce_retracing=True,
                autograph=False,
            ),
            "candidates": tf.function(
                lambda f, k, n, a, c: beam_candidates_graph(model, f, k, n, a, c),
                input_signature=[spec_feat, spec_int, spec_int, spec_float, spec_int],
                reduce_retracing=True,
                autograph=False,
            ),
        }
        _COMPILED[model] = fns
    return fns


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, (int, np.integer)) and value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    limit = MAX_BEAM_SIZE if name == "beam_size" else MAX_CAPTION_LENGTH
    if name != "num_candidates" and isinstance(value, (int, np.integer)) and value > limit:
        raise ValueError(f"{name} must be at most {limit}, got {value}")


def greedy_decode(model: Any, features: Any, max_length: Any) -> DecodeResult:
    """Argmax caption for each image of ``features`` [B, R, C] (one compiled graph per model)."""
    _check_positive("max_length", max_length)
    feats = tf.convert_to_tensor(features, tf.float32)
    return _compiled(model)["greedy"](feats, tf.cast(max_length, tf.int32))


def beam_search(
    model: Any, features: Any, beam_size: Any, max_length: Any, length_penalty: Any = 0.0
) -> DecodeResult:
    """Best caption per image by beam search; ``scores`` are length-penalised (see module doc)."""
    _check_positive("beam_size", beam_size)
    _check_positive("max_length", max_length)
    feats = tf.convert_to_tensor(features, tf.float32)
    return _compiled(model)["beam"](
        feats,
        tf.cast(beam_size, tf.int32),
        tf.cast(max_length, tf.int32),
        tf.cast(length_penalty, tf.float32),
    )


def beam_candidates(
    model: Any,
    features: Any,
    beam_size: Any,
    max_length: Any,
    length_penalty: Any = 0.0,
    num_candidates: Any = None,
) -> BeamCandidates:
    """The ``num_candidates`` (default: ``beam_size``) best captions per image, best first.

    Candidate 0 equals :func:`beam_search`'s caption; asking for more only lets the search
    run until the others are settled too (see :func:`beam_candidates_graph`).
    """
    _check_positive("beam_size", beam_size)
    _check_positive("max_length", max_length)
    count = beam_size if num_candidates is None else num_candidates
    _check_positive("num_candidates", count)
    feats = tf.convert_to_tensor(features, tf.float32)
    return _compiled(model)["candidates"](
        feats,
        tf.cast(beam_size, tf.int32),
        tf.cast(max_length, tf.int32),
        tf.cast(length_penalty, tf.float32),
        tf.cast(count, tf.int32),
    )


def trace(model: Any, beam_size: int) -> None:
    """Make the graph :func:`decode` will use for ``beam_size`` ready now: trace it, then run
    it once for one word of a blank image.

    A one-photo ``icapnet.caption`` does this in a thread while the weights and VGG16 load and
    VGG16 runs (the result is thrown away, so weights still loading do not matter). Tracing
    alone left TensorFlow's graph optimisation and kernel set-up to the first real call
    (~0.25 s of a cold caption); the one-word run moves it off the critical path too.
    """
    cfg = model.model_config
    blank = tf.zeros([1, cfg.num_regions, cfg.feature_dim], tf.float32)
    decode(model, blank, int(beam_size), 1)


def decode(
    model: Any, features: Any, beam_size: int = 1, max_length: int = 40, length_penalty: float = 0.0
) -> DecodeResult:
    """Greedy for ``beam_size == 1`` (cheaper, same result), beam search otherwise."""
    if isinstance(beam_size, (int, np.integer)) and beam_size == 1:
        return greedy_decode(model, features, max_length)
    return beam_search(model, features, beam_size, max_length, length_penalty)


__all__ = [
    "BeamCandidates",
    "DecodeResult",
    "assert_at_most",
    "beam_candidates",
    "beam_candidates_graph",
    "beam_graph",
    "beam_search",
    "check_decoding",
    "decode",
    "greedy_decode",
    "greedy_graph",
    "max_beam_size",
    "trace",
]
