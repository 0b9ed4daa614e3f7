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
    """Projects backbone region features [B, R, F] to the decoder's width [B, R, E].

    ``feature_norm`` standardises each backbone channel (batch normalisation over all the
    regions of a batch) before the Dense layer. VGG16's channels differ ~20x in spread and
    carry large constant offsets; with Adam a weight on a quiet channel moves the encoding
    ~20x less per step, so what only quiet channels encode (an object's shape) is learned
    last. Standardised, the decoder learned the synthetic scenes in half the epochs.

    The normalisation is folded into the Dense layer's kernel and bias (per-channel scale and
    shift commute with the matmul), so no normalised copy of the [B, R, F] features is made
    and the backward pass needs no gradient with respect to them: a separate
    ``BatchNormalization`` layer cost ~10 % of a training step. Its variables (gamma, beta,
    moving mean and variance) are those of the ``norm`` BatchNormalization layer, which is
    built, never called, so saved weights have the usual layout.
    """

    def __init__(self, embedding_dim: int, dropout: float = 0.5, feature_norm: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.dropout_rate = float(dropout)
        self.feature_norm = bool(feature_norm)
        self.norm = (keras.layers.BatchNormalization(name="norm") if self.feature_norm
                     else None)
        self.dense = keras.layers.Dense(self.embedding_dim, activation="relu", name="fc")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")

    def build(self, input_shape) -> None:
        if self.norm is not None:
            self.norm.build(input_shape)
        self.dense.build(input_shape)
        self.built = True

    def call(self, features, training=False):
        if self.norm is None:
            return self.dropout(self.dense(features), training=training)
        return self.dropout(self._normalised_dense(features, training), training=training)

    def _normalised_dense(self, features, training):
        """``relu(Dense(BatchNormalization(features)))``, the normalisation folded into Dense."""
        norm, dense = self.norm, self.dense
        if training:  # statistics in float32, as Keras' BatchNormalization computes them
            mean, variance = _channel_moments(tf.cast(features, tf.float32))
            for moving, batch in ((norm.moving_mean, mean), (norm.moving_variance, variance)):
                moving.assign(moving * norm.momentum + batch * (1.0 - norm.momentum))
        else:
            mean, variance = norm.moving_mean, norm.moving_variance
        # Folded in float32: under a mixed policy the Dense variables and gamma / beta read as
        # float16 here (the statistics are float32: computed so, or stored without autocast).
        w, b, gamma, beta = (tf.cast(v, tf.float32)
                             for v in (dense.kernel, dense.bias, norm.gamma, norm.beta))
        scale = gamma * tf.math.rsqrt(variance + norm.epsilon)  # [F]
        shift = beta - mean * scale
        kernel = w * scale[:, None]  # [F, E]
        bias = b + tf.linalg.matvec(w, shift, transpose_a=True)
        dtype = self.compute_dtype
        out = tf.tensordot(tf.cast(features, dtype), tf.cast(kernel, dtype), 1)
        return dense.activation(out + tf.cast(bias, dtype))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.embedding_dim)

    def get_config(self) -> dict:
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "dropout": self.dropout_rate, "feature_norm": self.feature_norm}


def _channel_moments(x):
    """Per-channel mean and variance of ``x`` over every axis but the last, over the GLOBAL
    batch: under a distribution strategy each replica's sums are all-reduced first, so two
    replicas normalise (and train) exactly as one device with the whole batch."""
    axes = list(range(x.shape.rank - 1))
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return tf.nn.moments(x, axes=axes)
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    total, squares = tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes)
    count, total, squares = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                                               [count, total, squares])
    mean = total / tf.maximum(count, 1.0)
    return mean, tf.maximum(squares / tf.maximum(count, 1.0) - tf.square(mean), 0.0)


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

    def build(self, input_shape) -> None:
        """``(features [B, R, E], hidden [B, H])`` shapes -> W2 and V (W1 is built by the
        caller that computes the keys). Given only the features' shape (a first call), the
        layers build when they first run."""
        if input_shape and isinstance(input_shape[0], (tuple, list)):
            self.W2.build(tuple(input_shape[1]))
            self.V.build((None, self.units))

    def precompute_keys(self, features):
        """[B, R, E] -> [B, R, A]: the hidden-independent half of the score."""
        return self.W1(features)

    def call(self, features, keys, hidden, group: int = 1, word_query=None):
        """Returns ``(context [B, E], alpha [B, R] float32)`` for query ``hidden`` [B, H].

        ``features`` / ``keys`` hold one row per IMAGE ([B / group, R, ...]) and ``hidden``
        one row per caption, ``group`` consecutive captions per image: the captions of an
        image share its keys by broadcasting, so nothing of size [B, R, E] is copied.
        ``word_query`` [B, A], when given, is added to ``W2·hidden`` (the decoder's
        projection of the word just read).
        """
        query = self.W2(hidden)
        if word_query is not None:
            query = query + tf.cast(word_query, query.dtype)
        query = tf.reshape(query, [-1, group, 1, self.units])  # [G, K, 1, A]
        score = self.V(tf.tanh(tf.expand_dims(keys, 1) + query))  # [G, K, R, 1]
        # Softmax in float32: under mixed precision 196-way float16 softmax loses mass.
        alpha = tf.nn.softmax(tf.cast(tf.squeeze(score, -1), tf.float32), axis=-1)  # [G, K, R]
        # A batched matmul, not multiply + sum over regions: measured ~8 % less time for the
        # attention step's forward + backward on CPU (benchmarks/README.md).
        context = tf.matmul(tf.cast(alpha, features.dtype), features)  # [G, K, E]
        regions = tf.shape(alpha)[-1]
        return (tf.reshape(context, [-1, features.shape[-1]]),
                tf.reshape(alpha, tf.stack([-1, regions])))

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

    def call(self, features, keys, hidden, group: int = 1, word_query=None):
        regions = tf.shape(features)[1]
        alpha = tf.fill(tf.stack([tf.shape(hidden)[0], regions]),
                        1.0 / tf.cast(regions, tf.float32))
        return tf.repeat(tf.reduce_mean(features, axis=1), group, axis=0), alpha


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
    ``word_query`` adds a projection of the word just read to the attention query, so
    attention at the step after "yellow" can go to the yellow thing; the state alone learns
    which word was read only after the step that reads it (attention comes first).
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
        word_query: bool = False,
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
        self.use_word_query = bool(word_query)

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
        self.word_query = (keras.layers.Dense(self.attention_units, use_bias=False,
                                              name="word_query")
                           if self.use_word_query and attention == "bahdanau" else None)
        self.fc1 = keras.layers.Dense(self.units, name="fc1")
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")
        # float32 logits even under a mixed policy: softmax / CE need the range.
        self.fc2 = keras.layers.Dense(self.vocab_size, dtype="float32", name="fc2")

    def build(self, input_shape) -> None:
        """Every variable from ``(encoded [B, R, E], tokens [B, T])`` shapes, no forward pass."""
        encoded_shape = tuple(input_shape[0])
        context_dim = int(encoded_shape[-1])
        self.embedding.build((None,))
        if isinstance(self.attention, BahdanauAttention):  # W1 runs at this level
            self.attention.W1.build((None, context_dim))
        self.attention.build((encoded_shape, (None, self.units)))
        self.cell.build((None, context_dim + self.embedding_dim))
        for dense in (self.init_h, self.init_c):
            if dense is not None:
                dense.build((None, context_dim))
        if self.gate is not None:
            self.gate.build((None, self.units))
        if self.word_query is not None:
            self.word_query.build((None, self.embedding_dim))
        self.fc1.build((None, self.units + (context_dim if self.deep_output else 0)))
        self.fc2.build((None, self.units))

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

    # -- the recurrent cell -------------------------------------------------------------
    # The cell's input is [context; word]. Its input projection is linear, so it splits into
    # a context part (per step) and a word part that teacher forcing computes for ALL steps
    # in one matmul before the loop. The cell layer holds the weights (checkpoints and saved
    # models are unchanged); the gate arithmetic below is Keras' GRUCell (reset_after) /
    # LSTMCell, and both teacher forcing and step decoding use it, so they agree exactly.
    def _cell_weights(self, context_dim: int):
        if not self.cell.built:  # only its weights are used: it is built, never called
            self.cell.build((None, int(context_dim) + self.embedding_dim))
        dtype = self.compute_dtype
        kernel = tf.cast(self.cell.kernel, dtype)
        split = kernel.shape[0] - self.embedding_dim
        bias = tf.cast(self.cell.bias, dtype)
        input_bias = bias[0] if self.decoder_type == "gru" else bias
        recurrent_bias = bias[1] if self.decoder_type == "gru" else None
        return (kernel[:split], kernel[split:], input_bias,
                tf.cast(self.cell.recurrent_kernel, dtype), recurrent_bias)

    def _word_projection(self, words, weights):
        """Word half of the cell's input projection (+ input bias): [..., Emb] -> [..., gates*U]."""
        _, word_kernel, input_bias, _, _ = weights
        return tf.tensordot(words, word_kernel, 1) + input_bias

    def _cell(self, x_proj, state, weights, recurrent=None):
        """Gates from the input projection ``x_proj`` [B, gates*U] -> (output [B, U], state)."""
        with tf.name_scope(self.cell.name):
            return self._gates(x_proj, state, weights, recurrent)

    def _gates(self, x_proj, state, weights, recurrent=None):
        """``recurrent``: the state's projection ``h @ recurrent_kernel`` when the caller
        computed it already (the fused teacher forcing)."""
        _, _, _, recurrent_kernel, recurrent_bias = weights
        act, rec_act = self.cell.activation, self.cell.recurrent_activation
        if self.decoder_type == "gru":
            if recurrent is None:
                recurrent = tf.matmul(state, recurrent_kernel)
            inner = recurrent + recurrent_bias
            x_z, x_r, x_h = tf.split(x_proj, 3, axis=-1)
            r_z, r_r, r_h = tf.split(inner, 3, axis=-1)
            z = rec_act(x_z + r_z)
            h = z * state + (1 - z) * act(x_h + rec_act(x_r + r_r) * r_h)
            return h, h
        h_prev, c_prev = state[:, : self.units], state[:, self.units:]
        if recurrent is None:
            recurrent = tf.matmul(h_prev, recurrent_kernel)
        z_i, z_f, z_c, z_o = tf.split(x_proj + recurrent, 4, axis=-1)
        c = rec_act(z_f) * c_prev + rec_act(z_i) * act(z_c)
        h = rec_act(z_o) * act(c)
        return h, tf.concat([h, c], axis=-1)

    # -- per-step pieces ----------------------------------------------------------------
    def _step_state(self, state, training):
        """The state a step starts from (state dropout applied) and its hidden part [B, U],
        the attention query's input. A GRU's state is its hidden vector: slicing it anyway
        costs a gradient op per step."""
        if self.state_dropout is not None:
            state = self.state_dropout(state, training=training)
        return state, state if self.decoder_type == "gru" else state[:, : self.units]

    def _recurrent_step(self, word_proj, state, encoded, keys, weights, training=False,
                        group: int = 1, word_query=None):
        """One step before the output projection: -> (projection input, state, alpha).

        ``word_proj`` is this step's :meth:`_word_projection`. The projection input is the
        cell output [B, U], or with ``deep_output`` the cell output next to this step's
        context [B, U + E]. ``encoded`` / ``keys`` have one row per image, ``group``
        captions (rows of ``state``) per image. ``word_query`` is this step's projection of
        the word read (with ``word_query`` on), else None.
        """
        state, hidden = self._step_state(state, training)
        context, alpha = self.attention(encoded, keys, hidden, group=group,
                                        word_query=word_query)
        if self.gate is not None:
            context = context * tf.cast(self.gate(hidden), context.dtype)
        context_kernel = weights[0]
        x_proj = tf.matmul(tf.cast(context, context_kernel.dtype), context_kernel) + word_proj
        out, new_state = self._cell(x_proj, state, weights)
        if self.deep_output:
            out = tf.concat([out, tf.cast(context, out.dtype)], axis=-1)
        return out, new_state, alpha

    def project(self, hidden_out, training=False):
        """Projection inputs [..., U] (or [..., U + E]) -> float32 logits [..., V]."""
        return self.fc2(self.dropout(self.fc1(hidden_out), training=training))

    def step(self, tokens, state, encoded, keys, training=False):
        """Decode one token per caption: -> (logits [B, V] float32, state [B, S], alpha [B, R])."""
        weights = self._cell_weights(encoded.shape[-1])
        words = self.embedding(tokens)
        word_proj = self._word_projection(words, weights)
        query = self.word_query(words) if self.word_query is not None else None
        out, state, alpha = self._recurrent_step(word_proj, state, encoded, keys, weights,
                                                 training, word_query=query)
        return self.project(out, training), state, alpha

    # -- teacher forcing ----------------------------------------------------------------
    def call(self, inputs, training=False, group: int = 1, fused=False):
        """Teacher forcing over ``tokens`` [B, T] -> (logits [B, T, V], alphas [B, T, R]).

        ``encoded`` [B / group, R, E] holds each image once for its ``group`` consecutive
        captions (the encoder and ``W1·features`` run once per image, not per caption).
        A ``tf.while_loop`` (not a Python loop) so the graph size does not grow with T and a
        batch padded to its own longest caption needs no retrace. The word half of the cell's
        input projection and the vocabulary projection, the largest matmuls, run once on all
        steps outside the loop. ``fused``: the same by
        :func:`icapnet.model.fused_teacher_forcing.teacher_forcing` (training on a CPU).
        """
        encoded, tokens = inputs
        if fused and isinstance(self.attention, BahdanauAttention):
            from icapnet.model.fused_teacher_forcing import teacher_forcing

            return teacher_forcing(self, encoded, tokens, training, group)
        keys = self.precompute_keys(encoded)
        state = self.initial_state(encoded)
        if group > 1:
            state = tf.repeat(state, group, axis=0)
        weights = self._cell_weights(encoded.shape[-1])
        words = self.embedding(tokens)
        word_proj = self._word_projection(words, weights)  # [B, T, gates*U]
        word_proj = tf.transpose(word_proj, [1, 0, 2])  # [T, B, gates*U]
        steps = tokens.shape[1] if tokens.shape[1] is not None else tf.shape(tokens)[1]
        words_ta = tf.TensorArray(word_proj.dtype, size=steps).unstack(word_proj)
        # The word half of the attention query, like the cell's, in one matmul for all
        # steps; without word_query the loop carries no extra array.
        queries_ta = ([tf.TensorArray(encoded.dtype, size=steps).unstack(
            tf.transpose(self.word_query(words), [1, 0, 2]))]
            if self.word_query is not None else [])
        outs_ta = tf.TensorArray(encoded.dtype, size=steps)
        alphas_ta = tf.TensorArray(tf.float32, size=steps)

        def body(t, state, words_ta, outs_ta, alphas_ta, *queries_ta):
            query = queries_ta[0].read(t) if queries_ta else None
            out, state, alpha = self._recurrent_step(words_ta.read(t), state, encoded, keys,
                                                     weights, training, group, query)
            return (t + 1, state, words_ta, outs_ta.write(t, out), alphas_ta.write(t, alpha),
                    *queries_ta)

        loop_vars = (tf.constant(0), state, words_ta, outs_ta, alphas_ta, *queries_ta)
        _, _, _, outs_ta, alphas_ta, *_ = tf.while_loop(
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
            "word_query": self.use_word_query,
        }
