"""The captioner model: teacher forcing in a custom ``train_step`` with a masked loss.

The loss is cross-entropy averaged over *real* tokens (padding is excluded from both the sum
and the count) plus the doubly-stochastic attention penalty of Show-Attend-Tell. Both are
normalised by GLOBAL counts (all-reduced across replicas), so a ``tf.distribute`` run optimises
exactly the same objective as a single-device run with the same global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from icapnet.config import ModelConfig
from icapnet.model.layers import PACKAGE, CNNEncoder, Decoder
from icapnet.model.strategies import PrebuiltModel, step_logs


def masked_token_ce(labels, logits):
    """Sparse cross-entropy summed over real (id != 0) tokens, and their count.

    ``labels`` [B, T] int, ``logits`` [B, T, V] -> (sum over real tokens, number of them), both
    float32 scalars. Training divides the sum by the GLOBAL token count (all replicas), so this
    returns the two halves instead of a mean.
    """
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(tf.not_equal(labels, 0), tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(ce * mask), tf.reduce_sum(mask)


def masked_token_loss(labels, logits):
    """Mean sparse cross-entropy over non-pad (id != 0) tokens only: [B, T], [B, T, V] -> scalar."""
    total, count = masked_token_ce(labels, logits)
    return total / tf.maximum(count, 1.0)


def _masked_uniform_ce(logits, mask):
    """Sum over real tokens of the cross-entropy against the uniform distribution over the
    vocabulary. Label smoothing eps makes a token's loss (1 - eps) * CE + eps * this, which is
    Keras' ``label_smoothing`` without building [B, T, V] one-hot targets."""
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    return tf.reduce_sum(-tf.reduce_mean(log_probs, axis=-1) * mask)


def _rows(tokens) -> list:
    """Shape [-1, T] that flattens [..., T] to one row per caption (T static when known)."""
    steps = tokens.shape[-1]
    return [-1, int(steps) if steps is not None else tf.shape(tokens)[-1]]


def _global_sum(value):
    """Sum ``value`` over all replicas (identity outside ``tf.distribute``)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _num_replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


@keras.saving.register_keras_serializable(package=PACKAGE)
class Captioner(PrebuiltModel, keras.Model):
    """Encoder + attention decoder; ``call((features, captions_in))`` -> (logits, alphas)."""

    def __init__(
        self,
        config: ModelConfig | dict[str, Any],
        attention_penalty: float = 0.0,
        clip_norm: float = 5.0,
        sub_batches: int = 1,
        label_smoothing: float = 0.0,
        **kwargs,
    ) -> None:
        # A fixed name: checkpoints of the fine-tuner address the captioner inside it by name.
        kwargs.setdefault("name", "captioner")
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = ModelConfig(**config)
        self.model_config = config
        self.attention_penalty = float(attention_penalty)
        self.clip_norm = float(clip_norm)
        self.sub_batches = int(sub_batches)  # see teacher_forcing; TrainConfig.sub_batches
        self.label_smoothing = float(label_smoothing)  # TrainConfig.label_smoothing
        # The training loss by icapnet.model.fused_step's kernels (Decoder's fused teacher
        # forcing). Set by training once they are known to build here; not saved.
        self.fused_step = False
        self.encoder = CNNEncoder(config.embedding_dim, config.dropout,
                                  feature_norm=config.feature_norm, name="encoder")
        self.decoder = Decoder(
            vocab_size=config.vocab_size,
            embedding_dim=config.embedding_dim,
            units=config.units,
            attention_units=config.attention_units,
            dropout=config.dropout,
            decoder=config.decoder,
            attention=config.attention,
            init_state=config.init_state,
            deep_output=config.deep_output,
            state_dropout=config.state_dropout,
            context_gate=config.context_gate,
            word_query=config.word_query,
            name="decoder",
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.token_loss_tracker = keras.metrics.Mean(name="token_loss")
        self.penalty_tracker = keras.metrics.Mean(name="attention_penalty")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self._build_all()

    def _build_all(self) -> None:
        """Create every variable now, so weights can be loaded / checkpointed before training."""
        cfg = self.model_config
        self.build(((None, cfg.num_regions, cfg.feature_dim), (None, None)))

    def build(self, input_shape=None) -> None:
        """Variables from shapes alone, not by running a forward pass: an eager pass through
        the decoder loop cost ~0.4-0.9 CPU-seconds of every cold ``icapnet.caption``."""
        cfg = self.model_config
        self.encoder.build((None, cfg.num_regions, cfg.feature_dim))
        self.decoder.build(((None, cfg.num_regions, cfg.embedding_dim), (None, None)))

    @property
    def state_size(self) -> int:
        return self.decoder.state_size

    @property
    def penalised(self) -> bool:
        """Whether the doubly-stochastic penalty is part of the loss."""
        return self.attention_penalty > 0 and self.decoder.attention_type == "bahdanau"

    @property
    def metrics(self) -> list:
        # What the progress bar and history.csv show. Without the penalty, loss IS the
        # cross-entropy per word (token_loss would repeat it, averaged by tokens instead of
        # batches); with it, loss = token_loss + lambda * attention_penalty.
        if self.penalised:
            return [self.loss_tracker, self.token_loss_tracker, self.penalty_tracker,
                    self.accuracy_tracker]
        return [self.loss_tracker, self.accuracy_tracker]

    # -- forward ------------------------------------------------------------------------
    def call(self, inputs, training=False):
        """``captions_in`` [B, T], or [G, K, T] for K captions of each of the G images in
        ``features`` [G, R, F]: the encoder and ``W1·features`` then run once per image.
        Outputs have one row per caption either way."""
        features, captions_in = inputs
        return self.teacher_forcing(features, captions_in, training=training)

    def teacher_forcing(self, features, captions_in, training=False, sub_batches: int = 1,
                        fused=False):
        """:meth:`call`. With ``sub_batches`` > 1 (flat captions) the rows are sorted by
        length and cut into that many sub-batches, each decoded only up to its own longest
        caption: a batch padded to its longest caption otherwise runs every caption to that
        length. The batch, its loss and gradients stay the same (positions past a caption's
        end are padding: zero outputs, masked out of the loss); only padding work goes.
        ``fused``: the decoder's fused teacher forcing (see ``fused_step``)."""
        if captions_in.shape.rank == 3:
            group = captions_in.shape[1]
            if group is None:
                raise ValueError("grouped captions [G, K, T] need a static K")
            encoded = self.encoder(features, training=training)
            captions_in = tf.reshape(captions_in, _rows(captions_in))
            return self.decoder((encoded, captions_in), training=training, group=int(group),
                                fused=fused)
        if sub_batches <= 1:
            encoded = self.encoder(features, training=training)
            return self.decoder((encoded, captions_in), training=training, fused=fused)
        lengths = tf.reduce_sum(tf.cast(captions_in != 0, tf.int32), axis=1)
        order = tf.argsort(lengths, direction="DESCENDING", stable=True)
        # Sorted inputs (no gradient to carry back), longest caption first.
        encoded = self.encoder(tf.gather(features, order), training=training)
        captions_in, lengths = tf.gather(captions_in, order), tf.gather(lengths, order)
        rows, steps = tf.shape(captions_in)[0], tf.shape(captions_in)[1]
        size = (rows + sub_batches - 1) // sub_batches
        starts = [tf.minimum(k * size, rows) for k in range(sub_batches + 1)]
        # tf.split, not slices: the gradient of a slice is a zero tensor of the whole batch's
        # [B, R, E] with the slice written in, per sub-batch; split's is one concat.
        encoded_parts = tf.split(encoded, tf.stack(starts[1:]) - tf.stack(starts[:-1]),
                                 num=sub_batches)
        logits, alphas = [], []
        for k in range(sub_batches):
            start, end = starts[k], starts[k + 1]
            width = tf.reduce_max(tf.concat([lengths[start:end], [1]], 0))  # own longest
            part_logits, part_alphas = self.decoder(
                (encoded_parts[k], captions_in[start:end, :width]), training=training,
                fused=fused)
            pad = [[0, 0], [0, steps - width], [0, 0]]
            logits.append(tf.pad(part_logits, pad))
            alphas.append(tf.pad(part_alphas, pad))
        inverse = tf.math.invert_permutation(order)
        return (tf.gather(tf.concat(logits, 0), inverse), tf.gather(tf.concat(alphas, 0), inverse))

    def encode(self, features, training=False):
        """[B, R, F] -> encoded regions [B, R, E]."""
        return self.encoder(tf.convert_to_tensor(features), training=training)

    def precompute_keys(self, encoded):
        """W1·features, once per caption: [B, R, E] -> [B, R, A]."""
        return self.decoder.precompute_keys(encoded)

    def initial_state(self, encoded):
        """[B, R, E] -> packed recurrent state [B, S] (S = units, or 2*units for LSTM)."""
        return self.decoder.initial_state(encoded)

    def decode_step(self, tokens, state, encoded, keys, training=False):
        """One decoding step -> (logits [B, V] float32, state [B, S], alpha [B, R] float32)."""
        return self.decoder.step(tokens, state, encoded, keys, training=training)

    # -- loss ---------------------------------------------------------------------------
    def compute_losses(self, features, captions, training=False):
        """Teacher-forced losses for one (per-replica) batch.

        Returns ``(loss, stats)``: ``loss`` is this replica's share of the global objective
        (summing it over replicas gives the global-batch loss) and ``stats`` holds local sums
        and counts for the metrics. With label smoothing, training adds ``stats["smoothing"]``
        to the loss it differentiates; the loss it reports stays the plain cross-entropy, so
        loss and val_loss (and early stopping) mean what they mean without it.
        """
        captions = tf.cast(captions, tf.int32)
        inputs, labels = captions[..., :-1], captions[..., 1:]
        logits, alphas = self.teacher_forcing(features, inputs, training=training,
                                              sub_batches=self.sub_batches,
                                              fused=self.fused_step)
        labels = tf.reshape(labels, _rows(labels))  # one row per caption
        mask = tf.cast(tf.not_equal(labels, 0), tf.float32)
        # Rows without a token (padding of a grouped or fixed-size batch) are not captions.
        real = tf.cast(tf.reduce_any(labels != 0, axis=-1), tf.float32)  # [B]
        local_ce, local_tokens = masked_token_ce(labels, logits)
        batch = tf.reduce_sum(real)
        global_tokens = tf.maximum(_global_sum(local_tokens), 1.0)
        global_batch = tf.maximum(_global_sum(batch), 1.0)

        if self.decoder.attention_type == "bahdanau":
            attended = tf.reduce_sum(alphas * mask[:, :, None], axis=1)  # [B, R]
            # Mean (not sum) over regions: summed over 196 regions the term is ~170 and
            # swamps the per-token cross-entropy (~1-3), flattening every attention map.
            per_caption = tf.reduce_mean(tf.square(1.0 - attended), axis=-1)  # [B]
            local_penalty = tf.reduce_sum(per_caption * real)
        else:  # uniform weights: the penalty is a constant, leave it out
            local_penalty = tf.constant(0.0)

        loss = local_ce / global_tokens + self.attention_penalty * local_penalty / global_batch
        smoothing = tf.constant(0.0)
        if training and self.label_smoothing > 0:
            smoothing = self.label_smoothing * (
                _masked_uniform_ce(logits, mask) - local_ce) / global_tokens
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32) * mask)
        stats = {"ce": local_ce, "tokens": local_tokens, "penalty": local_penalty,
                 "batch": batch, "correct": correct, "smoothing": smoothing}
        return loss, stats

    def update_metrics(self, loss, stats) -> dict:
        # Metric variables are summed across replicas on read, so feed local sums/counts;
        # the total loss is all-reduced and weighted by the global batch on every replica.
        global_batch = _global_sum(stats["batch"])
        self.loss_tracker.update_state(_global_sum(loss), sample_weight=global_batch)
        tokens = tf.maximum(stats["tokens"], 1e-9)
        self.accuracy_tracker.update_state(stats["correct"] / tokens,
                                           sample_weight=stats["tokens"])
        if self.penalised:
            self.token_loss_tracker.update_state(stats["ce"] / tokens,
                                                 sample_weight=stats["tokens"])
            batch = tf.maximum(stats["batch"], 1e-9)
            self.penalty_tracker.update_state(stats["penalty"] / batch,
                                              sample_weight=stats["batch"])
        return step_logs({m.name: m.result() for m in self.metrics})

    # -- steps ----------------------------------------------------------------------------
    def train_step(self, data):
        features, captions = data[0], data[1]
        return self.gradient_step(lambda: features, captions, self.trainable_variables,
                                  self.optimizer)

    def test_step(self, data):
        return self.score_batch(data[0], data[1])

    def gradient_step(self, features_fn, captions, variables, optimizer) -> dict:
        """One optimiser step on the teacher-forced loss; returns the metrics.

        ``features_fn()`` runs under the gradient tape, so a model wrapping the captioner
        (the fine-tuner: features from a trainable backbone) takes exactly this step too.
        """
        with tf.GradientTape() as tape:
            loss, stats = self.compute_losses(features_fn(), captions, training=True)
            scaled = optimizer.scale_loss(loss + stats["smoothing"])
        grads = self.clip_gradients(tape.gradient(scaled, variables), variables, optimizer)
        optimizer.apply(grads, variables)
        return self.update_metrics(loss, stats)

    def score_batch(self, features, captions) -> dict:
        """Evaluation step: losses and accuracy of one batch, without training."""
        loss, stats = self.compute_losses(features, captions, training=False)
        return self.update_metrics(loss, stats)

    def clip_gradients(self, grads, variables, optimizer):
        """Clip the GLOBAL (all-replica, unscaled) gradient by norm ``clip_norm``."""
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, variables, strict=True)]
        if self.clip_norm <= 0:
            return grads
        scale = getattr(optimizer, "dynamic_scale", None)  # LossScaleOptimizer
        limit = self.clip_norm if scale is None else self.clip_norm * tf.cast(scale, tf.float32)
        replicas = _num_replicas()
        if replicas > 1:
            # The optimizer sums replica gradients after we return; clip the sum first and
            # hand back 1/R of it so that sum is the clipped global gradient.
            grads = _global_sum(grads)
            grads, _ = tf.clip_by_global_norm(grads, limit)
            return [g / replicas for g in grads]
        grads, _ = tf.clip_by_global_norm(grads, limit)
        return grads

    # -- serialisation ------------------------------------------------------------------
    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "config": dataclasses.asdict(self.model_config),
            "attention_penalty": self.attention_penalty,
            "clip_norm": self.clip_norm,
            "sub_batches": self.sub_batches,
            "label_smoothing": self.label_smoothing,
        }

    @classmethod
    def from_config(cls, config: dict) -> Captioner:
        return cls(**config)
