"""Teacher forcing for training on a CPU in float32: the fused step.

:meth:`icapnet.model.layers.Decoder.call` with ``fused=True`` runs this instead of its own
loop. The attention (scores, softmax, context) and a GRU's gates run on the C++ kernels of
:mod:`icapnet.model.fused_step`; the gradients of everything the loop reads unchanged (the
keys, the encoded regions, the attention query's and the cell's weights) are taken once per
caption after the loop (:mod:`icapnet.model.sequence_gradients`), not summed step by step.
The state's two projections (attention query ``W2`` and the cell's recurrent kernel) are one
matmul. V's bias is left out: it shifts every score of a softmax alike, so it changes nothing
and its gradient is zero either way. Same outputs and gradients as ``Decoder.call`` to float32
rounding; tests/test_fused_step.py compares them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from icapnet.model import fused_step
from icapnet.model.sequence_gradients import Deferred, constant_matmul, matmul_rule, probe

if TYPE_CHECKING:
    from icapnet.model.layers import Decoder


def teacher_forcing(decoder: Decoder, encoded: tf.Tensor, tokens: tf.Tensor, training: bool,
                    group: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``Decoder.call((encoded, tokens), training, group)`` -> (logits [B, T, V], alphas
    [B, T, R]), for a decoder with Bahdanau attention."""
    attention = decoder.attention
    keys = decoder.precompute_keys(encoded)  # [G, R, A]
    state = decoder.initial_state(encoded)
    if group > 1:
        state = tf.repeat(state, group, axis=0)
    weights = decoder._cell_weights(encoded.shape[-1])
    context_kernel, recurrent_kernel, recurrent_bias = weights[0], weights[3], weights[4]
    cell = decoder.cell
    fused_gates = (decoder.decoder_type == "gru" and cell.reset_after
                   and cell.activation is keras.activations.tanh
                   and cell.recurrent_activation is keras.activations.sigmoid)
    words = decoder.embedding(tokens)
    word_proj = tf.transpose(decoder._word_projection(words, weights), [1, 0, 2])
    steps = tokens.shape[1] if tokens.shape[1] is not None else tf.shape(tokens)[1]
    rows, images, regions = tf.shape(tokens)[0], tf.shape(encoded)[0], tf.shape(encoded)[1]
    width, gates = attention.units, recurrent_kernel.shape[-1]
    hidden_kernel = tf.concat([attention.W2.kernel, recurrent_kernel], axis=1)
    v = tf.reshape(attention.V.kernel, [-1])
    per_image_step = tf.stack([-1, group, regions])  # [B, R] -> [G, K, R]

    names = ("hidden", "context", "keys", "values")  # what the loop reads unchanged
    rules = {name: Deferred(name) for name in names}
    widths = [width + gates, gates, regions, encoded.shape[-1]]  # the parts of a probe row
    probes = tf.TensorArray(encoded.dtype, size=steps).unstack(probe(
        [hidden_kernel, context_kernel, keys, encoded], [rules[n] for n in names],
        tf.stack([steps, rows]), widths))
    read = {"words": tf.TensorArray(word_proj.dtype, size=steps).unstack(word_proj)}
    if decoder.word_query is not None:
        read["query"] = tf.TensorArray(encoded.dtype, size=steps).unstack(
            tf.transpose(decoder.word_query(words), [1, 0, 2]))
    written = {name: tf.TensorArray(dtype, size=steps) for name, dtype in (
        ("outs", encoded.dtype), ("alphas", tf.float32), ("hidden", encoded.dtype),
        ("context", encoded.dtype), ("queries", encoded.dtype))}
    fixed = {"hidden": tf.stop_gradient(hidden_kernel),
             "context": tf.stop_gradient(context_kernel),
             "keys": tf.stop_gradient(keys), "values": tf.stop_gradient(encoded)}
    transposed = {"hidden": tf.transpose(fixed["hidden"]),
                  "context": tf.transpose(fixed["context"])}

    def body(t, state, written):
        state, hidden = decoder._step_state(state, training)
        added = dict(zip(names, tf.split(probes.read(t), widths, axis=1, num=len(names)),
                         strict=True))
        with tf.name_scope("state_projection"):  # names for benchmarks/profile_step.py
            projected = (constant_matmul(hidden, fixed["hidden"], transposed["hidden"])
                         + added["hidden"])
        query, recurrent = tf.split(projected, [width, gates], axis=1)
        query = query + attention.W2.bias
        if "query" in read:
            query = query + read["query"].read(t)
        query = tf.reshape(query, [-1, group, width])  # [G, K, A]
        alpha, context = fused_step.additive_attention(
            fixed["keys"], query, v, fixed["values"],
            tf.reshape(added["keys"], per_image_step),
            tf.reshape(added["values"], [-1, group, encoded.shape[-1]]))
        context = tf.reshape(context, [-1, encoded.shape[-1]])
        if decoder.gate is not None:
            context = context * decoder.gate(hidden)
        with tf.name_scope("context_projection"):
            x_proj = (constant_matmul(context, fixed["context"], transposed["context"])
                      + added["context"] + read["words"].read(t))
        if fused_gates:
            state = fused_step.gru_gates(x_proj, recurrent + recurrent_bias, state)
            out = state
        else:
            out, state = decoder._cell(x_proj, state, weights, recurrent)
        if decoder.deep_output:
            out = tf.concat([out, context], axis=-1)
        alpha = tf.reshape(alpha, tf.stack([-1, regions]))
        records = {"outs": out, "alphas": alpha, "hidden": hidden, "context": context,
                   "queries": query}
        return t + 1, state, {name: written[name].write(t, value)
                              for name, value in records.items()}

    _, _, written = tf.while_loop(lambda t, *_: t < steps, body,
                                  (tf.constant(0), state, written),
                                  maximum_iterations=steps)
    recorded = {name: array.stack() for name, array in written.items()}
    rules["hidden"].rule = matmul_rule(recorded["hidden"])
    rules["context"].rule = matmul_rule(recorded["context"])
    per_image = tf.stack([steps, images, group, -1])  # [T, B, ...] -> [T, G, K, ...]
    rules["keys"].rule = lambda d_scores: fused_step.keys_gradient(
        keys, recorded["queries"], v, tf.reshape(d_scores, per_image))
    alphas = tf.reshape(recorded["alphas"], per_image)
    rules["values"].rule = lambda d_context: tf.einsum(
        "tgkr,tgke->gre", alphas, tf.reshape(d_context, per_image))
    outputs = tf.transpose(recorded["outs"], [1, 0, 2])  # [B, T, U]
    return decoder.project(outputs, training), tf.transpose(recorded["alphas"], [1, 0, 2])
