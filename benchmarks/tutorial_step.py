"""The peer of ``train_speed.py``: the training method of TensorFlow's tutorial "Image captioning
with visual attention" (tensorflow/docs, site/en/tutorials/text/image_captioning.ipynb),
re-implemented in this project's words so icapnet's step is compared with the method users
start from, not with a strawman.

What is kept from the tutorial, because it is what makes its step cost what it costs:

* the model: a Dense + ReLU "CNN encoder" over the cached region features; Bahdanau attention
  ``V·tanh(W1·features + W2·hidden)`` softmaxed over regions; an embedding, a ``keras.layers.GRU``
  layer called on a length-1 sequence, ``fc1`` (Dense units) and ``fc2`` (Dense vocabulary), no
  dropout; embedding 256, units 512 (attention width = units), batch 64, Adam (lr 1e-3);
* the step: ONE ``tf.function`` with a Python ``for`` loop over the caption's time steps
  (the graph holds one copy of the decoder per step), the decoder called once per step, so
  ``W1·features`` is recomputed at every step and the vocabulary projection runs per step;
  teacher forcing; the loss masks padding tokens but averages over the whole batch per step
  (``reduce_mean`` of the masked CE), summed over steps; gradients of that sum;
* the data: every caption padded to ONE length for the whole dataset: the longest caption of
  the dataset (``pad_sequences`` without ``maxlen``, the tutorial's code) or a fixed 50
  tokens (the other common setting); ``shuffle(1000).batch(64)`` of (image, caption) pairs,
  each caption carrying its own copy of the image's features, float32.

Deliberate differences, each one in the tutorial's favour or neutral for speed:

* the tutorial calls ``self.gru(x)`` without ``initial_state``, so its GRU restarts from zeros
  at every step (the hidden state only reaches the attention); we pass the hidden state, which
  makes it a recurrent decoder and costs the same operations;
* the tutorial reads each caption's features from its own ``.npy`` file through
  ``tf.numpy_function``; we gather them from one in-memory array (cheaper than disk);
* region grid and feature width are ours (VGG16 196 x 512, not InceptionV3 64 x 2048).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

BATCH_SIZE = 64
BUFFER_SIZE = 1000
EMBEDDING_DIM = 256
UNITS = 512


class TutorialEncoder(keras.Model):
    """One Dense + ReLU over the cached region features."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.fc = keras.layers.Dense(embedding_dim)

    def call(self, x):
        return tf.nn.relu(self.fc(x))


class TutorialAttention(keras.Model):
    """Additive attention; ``W1·features`` is computed inside, i.e. at every decoder call."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.W1 = keras.layers.Dense(units)
        self.W2 = keras.layers.Dense(units)
        self.V = keras.layers.Dense(1)

    def call(self, features, hidden):
        query = tf.expand_dims(hidden, 1)
        score = tf.nn.tanh(self.W1(features) + self.W2(query))  # [B, R, units]
        weights = tf.nn.softmax(self.V(score), axis=1)  # [B, R, 1]
        context = tf.reduce_sum(weights * features, axis=1)
        return context, weights


class TutorialDecoder(keras.Model):
    """Attention -> [context; word] -> GRU layer on one step -> fc1 -> fc2 (logits)."""

    def __init__(self, embedding_dim: int, units: int, vocab_size: int) -> None:
        super().__init__()
        self.units = units
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
        self.gru = keras.layers.GRU(units, return_sequences=True, return_state=True,
                                    recurrent_initializer="glorot_uniform")
        self.fc1 = keras.layers.Dense(units)
        self.fc2 = keras.layers.Dense(vocab_size)
        self.attention = TutorialAttention(units)

    def call(self, word, features, hidden):
        context, weights = self.attention(features, hidden)
        x = tf.concat([tf.expand_dims(context, 1), self.embedding(word)], axis=-1)
        output, state = self.gru(x, initial_state=hidden)
        x = self.fc1(output)
        x = tf.reshape(x, (-1, x.shape[2]))
        return self.fc2(x), state, weights

    def reset_state(self, batch_size):
        return tf.zeros((batch_size, self.units))


class TutorialTrainer:
    """Encoder + decoder + Adam and the tutorial's ``train_step``."""

    def __init__(self, vocab_size: int, start_id: int, embedding_dim: int = EMBEDDING_DIM,
                 units: int = UNITS, num_regions: int = 196, feature_dim: int = 512) -> None:
        self.encoder = TutorialEncoder(embedding_dim)
        self.decoder = TutorialDecoder(embedding_dim, units, vocab_size)
        self.optimizer = keras.optimizers.Adam()
        self.start_id = int(start_id)
        self._ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        # Build every variable once, outside the traced step.
        feats = tf.zeros([1, num_regions, feature_dim])
        encoded = self.encoder(feats)
        self.decoder(tf.ones([1, 1], tf.int32), encoded, self.decoder.reset_state(1))
        self.variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        self.optimizer.build(self.variables)
        self.train_step = tf.function(self._train_step)

    def _loss(self, real, pred):
        mask = tf.cast(tf.not_equal(real, 0), tf.float32)
        return tf.reduce_mean(self._ce(real, pred) * mask)

    def _train_step(self, img_tensor, target):
        loss = 0.0
        batch = target.shape[0] if target.shape[0] is not None else tf.shape(target)[0]
        hidden = self.decoder.reset_state(batch_size=batch)
        dec_input = tf.expand_dims(tf.fill([batch], self.start_id), 1)
        with tf.GradientTape() as tape:
            features = self.encoder(img_tensor)
            for i in range(1, target.shape[1]):  # Python loop: one decoder copy per step
                predictions, hidden, _ = self.decoder(dec_input, features, hidden)
                loss += self._loss(target[:, i], predictions)
                dec_input = tf.expand_dims(target[:, i], 1)
        total_loss = loss / int(target.shape[1])
        gradients = tape.gradient(loss, self.variables)
        self.optimizer.apply_gradients(zip(gradients, self.variables, strict=True))
        return loss, total_loss


def tutorial_dataset(features: np.ndarray, image_index: np.ndarray, captions: list[list[int]],
                     pad_to: int | None, seed: int) -> tf.data.Dataset:
    """(features [64,R,C] float32, captions [64,L]) batches, the tutorial's way, repeated.

    ``pad_to=None`` pads to the longest caption of the dataset (the tutorial's code); an int
    pads (and truncates, as ``pad_sequences(maxlen=...)`` does) to that many tokens.
    """
    width = max(len(c) for c in captions) if pad_to is None else int(pad_to)
    padded = np.zeros((len(captions), width), np.int32)
    for row, caption in enumerate(captions):
        caption = caption[:width]
        padded[row, : len(caption)] = caption
    table = tf.constant(features)  # float16 [N, R, C]: the in-memory stand-in for .npy files

    def load(index, caption):
        return tf.cast(tf.gather(table, index), tf.float32), caption

    ds = tf.data.Dataset.from_tensor_slices((image_index.astype(np.int32), padded))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(BUFFER_SIZE, seed=seed).batch(BATCH_SIZE, drop_remainder=True).repeat()
    return ds.prefetch(tf.data.AUTOTUNE)
