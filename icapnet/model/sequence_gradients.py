"""Gradients of loop-invariant tensors taken once per sequence instead of once per step.

Differentiating a ``tf.while_loop``, TensorFlow computes the gradient of every tensor the loop
reads but does not change (a weight matrix, the attention keys, the encoded regions) at every
step and adds it to a running sum: a weight-gradient matmul of batch rows and an ``AddN``
over the whole tensor per step, for the [batch, 196, width] keys about a third of a CPU
training step. Instead the loop reads the tensor with its gradient stopped, adds a zero
"probe" per step to what it computes from it, and records that step's input. The probe's
gradient is then the gradient of each step's result; one batched op after the loop turns all
of them and the recorded inputs into the tensor's gradient (a single matmul for a weight).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


class Deferred:
    """The per-sequence gradient of one tensor; its rule is given after the loop has run
    (it needs the inputs the loop recorded)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rule: Callable[[tf.Tensor], tf.Tensor] | None = None

    def __call__(self, d_probe: tf.Tensor) -> tf.Tensor:
        if self.rule is None:
            raise RuntimeError(f"no sequence gradient rule was set for {self.name}")
        return self.rule(d_probe)


def probe(tensors: list[tf.Tensor], gradients: list[Deferred], leading, widths) -> tf.Tensor:
    """Zeros of shape ``leading`` [T, B] + [sum(widths)]: part i of step t's row (``widths[i]``
    wide) is added to what step t computes from ``tensors[i]``, whose gradient is then
    ``gradients[i](d_part)`` with ``d_part`` [T, B, widths[i]]. One probe for all tensors:
    each probe is a read and an add per step, forward and backward."""
    widths = tf.stack(widths)

    @tf.custom_gradient
    def link(*inputs):
        zeros = tf.zeros(tf.concat([leading, [tf.reduce_sum(widths)]], 0), inputs[0].dtype)

        def backward(d_probe):
            with tf.name_scope("gradient_once_per_caption"):
                parts = tf.split(d_probe, widths, axis=-1, num=len(gradients))
                return [gradient(part) for gradient, part in zip(gradients, parts, strict=True)]

        return zeros, backward

    return link(*tensors)


def matmul_rule(inputs: tf.Tensor) -> Callable[[tf.Tensor], tf.Tensor]:
    """Rule for ``y_t = x_t @ W``: ``inputs`` [T, B, I] recorded -> dW = sum_t x_t^T dy_t."""
    width = inputs.shape[-1]

    def rule(d_outputs: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(inputs, [-1, width])
        return tf.matmul(flat, tf.reshape(d_outputs, [tf.shape(flat)[0], -1]), transpose_a=True)

    return rule


def constant_matmul(x: tf.Tensor, matrix: tf.Tensor, transposed: tf.Tensor) -> tf.Tensor:
    """``x @ matrix`` inside the loop, for a ``matrix`` whose gradient is taken per sequence
    (none here); ``x``'s gradient multiplies by ``transposed``, ``matrix``'s transpose made
    once before the loop: oneDNN's matmul with ``transpose_b`` (what TensorFlow's gradient
    uses) ran 4.5x slower than with a transposed copy for [32, 2048] x [2048, 512] here."""

    @tf.custom_gradient
    def product(x):
        return tf.matmul(x, matrix), lambda d_product: tf.matmul(d_product, transposed)

    return product(x)
