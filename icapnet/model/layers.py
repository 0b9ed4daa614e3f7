"""Building blocks of the captioner: region encoder, attention and the recurrent decoder.

Every layer is a registered, serialisable Keras layer so a model directory can be rebuilt
from ``model.keras`` alone. The decoder exposes the per-step pieces (``precompute_keys``,
``initial_state``, ``step``) that both teacher forcing and the decoding loops share, with
the recurrent state packed in ONE tensor ``[B, S]`` (LSTM: ``concat([h, c])``) so a
``tf.while_loop`` can carry it unchanged for either cell.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from icapnet.config import ATTENTIONS, DECODERS, INIT_STATES

PACKAGE = "icapnet"


@keras.saving.register_keras_serializable(package=PACKAGE)
class CNNEncoder(keras.layers.Layer):
    """Projects backbone region features [B, R, F] to the decoder's width [B, R, E]."""

    def __init__(self, embedding_dim: int, dropout: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.dropout_rate = float(dropout)
        self.dense = keras.layers.Dense(self.embedding_dim, activation="relu", name="fc")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")

    def build(self, input_shape) -> None:
        self.dense.build(input_shape)
        self.built = True

    def call(self, features, training=False):
        return self.dropout(self.dense(features), training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.embedding_dim)

    def get_config(self) -> dict:
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BahdanauAttention(keras.layers.Layer):
    """Additive attention ``score = V·tanh(W1·features + W2·hidden)``, softmax over regions.

    ``W1·features`` does not depend on the time step, so callers compute it once per caption
    with :meth:`precompute_keys` and pass it to every step: this is the single most expensive
    term (R × E × A per image) and recomputing it each step would dominate training time.
    """

    def __init__(self, units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.W1 = keras.layers.Dense(self.units, name="W1")
        self.W2 = keras.layers.Dense(self.units, name="W2")
        self.V = keras.layers.Dense(1, name="V")

    def precompute_keys(self, features):
        """[B, R, E] -> [B, R, A]: the hidden-independent half of the score."""
        return self.W1(features)

    def call(self, features, keys, hidden):
        """Returns ``(context [B, E], alpha [B, R] float32)`` for query ``hidden`` [B, H]."""
        query = tf.expand_dims(self.W2(hidden), 1)  # [B, 1, A]
        score = self.V(tf.tanh(keys + query))  # [B, R, 1]
        # Softmax in float32: under mixed precision 196-way float16 softmax loses mass.
        alpha = tf.nn.softmax(tf.cast(tf.squeeze(score, -1), tf.float32), axis=-1)
        context = tf.reduce_sum(tf.expand_dims(tf.cast(alpha, features.dtype), -1) * features, 1)
        return context, alpha

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanAttention(keras.layers.Layer):
    """No-attention baseline: uniform weights, i.e. the context is the mean-pooled image.

    Same interface as :class:`BahdanauAttention` so the decoder and decoding loops do not
    care which one they run; the "keys" are the features themselves (nothing to precompute).
    """

    def precompute_keys(self, features):
        return features

    def call(self, features, keys, hidden):
        regions = tf.shape(features)[1]
        alpha = tf.fill(tf.stack([tf.shape(features)[0], regions]),
                        1.0 / tf.cast(regions, tf.float32))
        return tf.reduce_mean(features, axis=1), alpha


@keras.saving.register_keras_serializable(package=PACKAGE)
class Decoder(keras.layers.Layer):
    """Word embedding -> concat(context, word) -> GRU|LSTM -> Dense -> dropout -> vocab logits.

    ``deep_output`` feeds this step's attention context straight into the output layer next
    to the cell output (Show-Attend-Tell's ``L_z z_t`` term): the word being written can then
    be read off the region being looked at, so attention has a reason to be on that region
    *now* rather than a step earlier with the answer memorised in the state.
    ``context_gate`` scales the context by ``sigmoid(W_beta·h)`` (Show-Attend-Tell's beta):
    the decoder can shut the image out for words like "of" or "and" instead of parking
    attention somewhere arbitrary, which sharpens the maps on the words that name things.
    ``state_dropout`` drops units of the state carried between steps (training only), so a
    word is cheaper to read from the image at the step that writes it than to memorise.
    ``init_state="zeros"`` starts every caption from a zero state (the ICapNet / TensorFlow
    tutorial recipe): the image then reaches the decoder only through attention, which is
    what makes the attention maps point at the thing being named. ``"mean"`` derives the
    state from the mean encoded region (Show-Attend-Tell); the decoder can then read the whole
    scene from its first state and attention maps tend to stay diffuse. Logits are always
    float32, so the loss stays float32 under ``mixed_float16``.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 256,
        units: int = 512,
        attention_units: int = 512,
        dropout: float = 0.5,
        decoder: str = "gru",
        attention: str = "bahdanau",
        init_state: str = "mean",
        deep_output: bool = False,
        state_dropout: float = 0.0,
        context_gate: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if init_state not in INIT_STATES:
            raise ValueError(f"init_state must be one of {INIT_STATES}, got {init_state!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if vocab_size <= 4:
            raise ValueError(f"vocab_size must exceed the 4 special tokens, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.embedding_dim = int(embedding_dim)
        self.units = int(units)
        self.attention_units = int(attention_units)
        self.dropout_rate = float(dropout)
        self.decoder_type = decoder
        self.attention_type = attention
        self.init_state = init_state
        self.deep_output = bool(deep_output)
        self.state_dropout_rate = float(state_dropout)
        self.context_gate = bool(context_gate)

        self.embedding = keras.layers.Embedding(self.vocab_size, self.embedding_dim,
                                                name="embedding")
        if attention == "bahdanau":
            self.attention = BahdanauAttention(self.attention_units, name="attention")
        else:
            self.attention = MeanAttention(name="attention")
        if decoder == "gru":
            self.cell = keras.layers.GRUCell(self.units, name="gru_cell")
        else:
            self.cell = keras.layers.LSTMCell(self.units, name="lstm_cell")
        learned = init_state == "mean"
        self.init_h = (keras.layers.Dense(self.units, activation="tanh", name="init_h")
                       if learned else None)
        self.init_c = (keras.layers.Dense(self.units, activation="tanh", name="init_c")
                       if learned and decoder == "lstm" else None)
        self.state_dropout = (keras.layers.Dropout(self.state_dropout_rate, name="state_dropout")
                              if self.state_dropout_rate > 0 else None)
        self.gate = (keras.layers.Dense(self.embedding_dim, activation="sigmoid", name="gate")
                     if self.context_gate and attention == "bahdanau" else None)
        self.fc1 = keras.layers.Dense(self.units, name="fc1")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")
        # float32 logits even under a mixed policy: softmax / CE need the range.
        self.fc2 = keras.layers.Dense(self.vocab_size, dtype="float32", name="fc2")

    @property
    def state_size(self) -> int:
        """Width S of the packed state tensor [B, S]."""
        return self.units * (2 if self.decoder_type == "lstm" else 1)

    # -- per-caption pieces -------------------------------------------------------------
    def precompute_keys(self, encoded):
        return self.attention.precompute_keys(encoded)

    def initial_state(self, encoded):
        if self.init_h is None:
            return tf.zeros(tf.stack([tf.shape(encoded)[0], self.state_size]), encoded.dtype)
        mean = tf.reduce_mean(encoded, axis=1)
        h = self.init_h(mean)
        if self.init_c is None:
            return h
        return tf.concat([h, self.init_c(mean)], axis=-1)

    # -- per-step pieces ----------------------------------------------------------------
    def _recurrent_step(self, word, state, encoded, keys, training=False):
        """One step before the output projection: -> (projection input, state, alpha).

        The projection input is the cell output [B, U], or with ``deep_output`` the cell
        output next to this step's context [B, U + E].
        """
        if self.state_dropout is not None:
            state = self.state_dropout(state, training=training)
        hidden = state[:, : self.units]
        context, alpha = self.attention(encoded, keys, hidden)
        if self.gate is not None:
            context = context * tf.cast(self.gate(hidden), context.dtype)
        x = tf.concat([tf.cast(context, word.dtype), word], axis=-1)
        if self.decoder_type == "gru":
            out, new = self.cell(x, [state], training=training)
            new_state = new[0]
        else:
            out, (h, c) = self.cell(x, [hidden, state[:, self.units:]], training=training)
            new_state = tf.concat([h, c], axis=-1)
        if self.deep_output:
            out = tf.concat([out, tf.cast(context, out.dtype)], axis=-1)
        return out, new_state, alpha

    def project(self, hidden_out, training=False):
        """Projection inputs [..., U] (or [..., U + E]) -> float32 logits [..., V]."""
        return self.fc2(self.dropout(self.fc1(hidden_out), training=training))

    def step(self, tokens, state, encoded, keys, training=False):
        """Decode one token per caption: -> (logits [B, V] float32, state [B, S], alpha [B, R])."""
        word = self.embedding(tokens)
        out, state, alpha = self._recurrent_step(word, state, encoded, keys, training)
        return self.project(out, training), state, alpha

    # -- teacher forcing ----------------------------------------------------------------
    def call(self, inputs, training=False):
        """Teacher forcing over ``tokens`` [B, T] -> (logits [B, T, V], alphas [B, T, R]).

        A ``tf.while_loop`` (not a Python loop) so the graph size does not grow with T and a
        batch padded to its own longest caption needs no retrace. The vocabulary projection,
        the largest matmul, runs once on all steps after the loop.
        """
        encoded, tokens = inputs
        keys = self.precompute_keys(encoded)
        state = self.initial_state(encoded)
        words = tf.transpose(self.embedding(tokens), [1, 0, 2])  # [T, B, E]
        steps = tf.shape(tokens)[1]
        words_ta = tf.TensorArray(words.dtype, size=steps).unstack(words)
        outs_ta = tf.TensorArray(encoded.dtype, size=steps)
        alphas_ta = tf.TensorArray(tf.float32, size=steps)

        def body(t, state, words_ta, outs_ta, alphas_ta):
            out, state, alpha = self._recurrent_step(words_ta.read(t), state, encoded, keys,
                                                     training)
            return t + 1, state, words_ta, outs_ta.write(t, out), alphas_ta.write(t, alpha)

        loop_vars = (tf.constant(0), state, words_ta, outs_ta, alphas_ta)
        _, _, _, outs_ta, alphas_ta = tf.while_loop(
            lambda t, *_: t < steps, body, loop_vars, maximum_iterations=steps  # XLA needs it
        )
        outputs = tf.transpose(outs_ta.stack(), [1, 0, 2])  # [B, T, U]
        alphas = tf.transpose(alphas_ta.stack(), [1, 0, 2])  # [B, T, R]
        logits = self.project(outputs, training)
        return logits, alphas

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "attention_units": self.attention_units,
            "dropout": self.dropout_rate,
            "decoder": self.decoder_type,
            "attention": self.attention_type,
            "init_state": self.init_state,
            "deep_output": self.deep_output,
            "state_dropout": self.state_dropout_rate,
            "context_gate": self.context_gate,
        }
