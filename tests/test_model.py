"""Captioner layers, masked loss, teacher forcing vs step decoding, overfitting, serialisation."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from icapnet.config import Config, FeatureConfig, ModelConfig, TrainConfig
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.model import (
    BahdanauAttention,
    Captioner,
    CNNEncoder,
    Decoder,
    MeanAttention,
    load_model_dir,
    masked_token_loss,
    save_model_dir,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

R, F = 12, 10  # tiny "regions x channels" keeps every test fast


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=20, embedding_dim=16, units=24, attention_units=12, dropout=0.0,
                  num_regions=R, feature_dim=F, max_length=12, state_dropout=0.0)
    values.update(overrides)
    return ModelConfig(**values)


def padded_batch() -> tuple[tf.Tensor, tf.Tensor]:
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(3, R, F)).astype(np.float32))
    captions = tf.constant([[1, 5, 6, 7, 2, 0, 0],
                            [1, 8, 2, 0, 0, 0, 0],
                            [1, 9, 9, 10, 11, 12, 2]], tf.int32)
    return features, captions


def test_layer_shapes_and_attention_sums_to_one():
    features = tf.random.normal([4, R, F])
    encoded = CNNEncoder(16, dropout=0.5)(features, training=True)
    assert encoded.shape == (4, R, 16)
    assert float(tf.reduce_min(encoded)) >= 0.0  # ReLU

    attention = BahdanauAttention(8)
    keys = attention.precompute_keys(encoded)
    context, alpha = attention(encoded, keys, tf.random.normal([4, 24]))
    assert keys.shape == (4, R, 8) and context.shape == (4, 16) and alpha.shape == (4, R)
    np.testing.assert_allclose(tf.reduce_sum(alpha, -1).numpy(), 1.0, atol=1e-5)
    assert float(tf.math.reduce_std(alpha)) > 0  # not uniform: it depends on the inputs
    expected = tf.reduce_sum(alpha[:, :, None] * encoded, 1)
    np.testing.assert_allclose(context.numpy(), expected.numpy(), atol=1e-5)

    mean = MeanAttention()
    context, alpha = mean(encoded, mean.precompute_keys(encoded), tf.zeros([4, 24]))
    np.testing.assert_allclose(alpha.numpy(), 1.0 / R, atol=1e-7)
    np.testing.assert_allclose(context.numpy(), tf.reduce_mean(encoded, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("cell,units_factor", [("gru", 1), ("lstm", 2)])
def test_decoder_and_captioner_api_shapes(cell, units_factor):
    model = Captioner(tiny_config(decoder=cell))
    features, captions = padded_batch()
    logits, alphas = model((features, captions[:, :-1]))
    assert logits.shape == (3, 6, 20) and logits.dtype == tf.float32
    assert alphas.shape == (3, 6, R)
    np.testing.assert_allclose(tf.reduce_sum(alphas, -1).numpy(), 1.0, atol=1e-5)

    encoded = model.encode(features)
    keys = model.precompute_keys(encoded)
    state = model.initial_state(encoded)
    assert encoded.shape == (3, R, 16) and keys.shape == (3, R, 12)
    assert state.shape == (3, 24 * units_factor) == (3, model.state_size)
    step_logits, new_state, alpha = model.decode_step(captions[:, 0], state, encoded, keys)
    assert step_logits.shape == (3, 20) and new_state.shape == state.shape
    assert alpha.shape == (3, R)
    assert isinstance(model.decoder, Decoder)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_initial_state_zeros_or_from_mean_region(cell):
    features, _ = padded_batch()
    zeros = Captioner(tiny_config(decoder=cell, init_state="zeros"))
    state = zeros.initial_state(zeros.encode(features))
    assert state.shape == (3, zeros.state_size) and not np.any(state.numpy())
    assert not [w for w in zeros.decoder.weights if "init_" in w.path]  # nothing to learn

    mean = Captioner(tiny_config(decoder=cell, init_state="mean"))
    state = mean.initial_state(mean.encode(features)).numpy()
    assert state.shape == (3, mean.state_size)
    assert np.abs(state[0] - state[1]).max() > 1e-4  # depends on the image
    with pytest.raises(ValueError, match="init_state"):
        Decoder(30, init_state="learned")


@pytest.mark.parametrize("cell,init,deep,gate,word", [
    ("gru", "zeros", True, False, True), ("lstm", "zeros", False, True, False),
    ("gru", "mean", False, True, False), ("lstm", "mean", True, False, True)])
def test_teacher_forcing_matches_step_by_step_and_keys_computed_once(cell, init, deep, gate,
                                                                     word):
    model = Captioner(tiny_config(decoder=cell, init_state=init, deep_output=deep,
                                  state_dropout=0.3, context_gate=gate, word_query=word))
    features, captions = padded_batch()
    inputs = captions[:, :-1]

    calls = []
    w1 = model.decoder.attention.W1
    original = w1.call
    w1.call = lambda x, *a, **k: (calls.append(1), original(x, *a, **k))[1]
    try:
        logits, alphas = model((features, inputs))  # eager: the loop body runs per step
    finally:
        w1.call = original
    assert len(calls) == 1, "W1·features must be computed once per caption, not per step"

    encoded = model.encode(features)
    keys = model.precompute_keys(encoded)
    state = model.initial_state(encoded)
    for t in range(inputs.shape[1]):
        step_logits, state, alpha = model.decode_step(inputs[:, t], state, encoded, keys)
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t].numpy(), atol=1e-4)
        np.testing.assert_allclose(alpha.numpy(), alphas[:, t].numpy(), atol=1e-5)


def test_context_gate_scales_the_context_by_a_learned_sigmoid():
    features, captions = padded_batch()
    inputs = (features, captions[:, :-1])
    model = Captioner(tiny_config(context_gate=True, init_state="zeros"))
    gate = model.decoder.gate
    assert gate.kernel.shape == (24, 16)  # hidden units -> one gate per context channel
    assert Captioner(tiny_config()).decoder.gate is None  # off: no extra variables
    # A shut gate removes the image: with a zero initial state the logits no longer
    # depend on the features at all.
    gate.kernel.assign(np.zeros(gate.kernel.shape, "float32"))
    gate.bias.assign(np.full(gate.bias.shape, -60.0, "float32"))
    other = (np.random.default_rng(9).normal(size=features.shape).astype("float32"),
             inputs[1])
    np.testing.assert_allclose(model(inputs)[0].numpy(), model(other)[0].numpy(), atol=1e-5)
    gate.bias.assign(np.zeros(gate.bias.shape, "float32"))  # half open: the image matters
    assert np.abs(model(inputs)[0].numpy() - model(other)[0].numpy()).max() > 1e-4


def test_word_query_lets_the_word_just_read_steer_attention():
    features, _ = padded_batch()
    one, two = (np.full((features.shape[0],), t, "int32") for t in (5, 6))

    def alphas_after(model):
        """Attention maps for two different words read from the same (zero) state."""
        encoded = model.encode(features)
        keys, state = model.precompute_keys(encoded), model.initial_state(encoded)
        return [model.decode_step(w, state, encoded, keys)[2].numpy() for w in (one, two)]

    plain = Captioner(tiny_config(init_state="zeros", word_query=False))
    model = Captioner(tiny_config(init_state="zeros", word_query=True))
    assert plain.decoder.word_query is None
    alpha_one, alpha_two = alphas_after(model)
    assert np.abs(alpha_one - alpha_two).max() > 1e-4  # the word moved attention
    np.testing.assert_allclose(*alphas_after(plain))  # the state alone: the same map
    assert model.decoder.word_query.kernel.shape == (16, model.decoder.attention_units)
    # a serialisable decoder argument: a decoder rebuilt from its config has the layer too
    assert model.decoder.get_config()["word_query"] is True
    assert Decoder.from_config(model.decoder.get_config()).word_query is not None


def test_deep_output_and_state_dropout():
    features, captions = padded_batch()
    inputs = (features, captions[:, :-1])
    deep = Captioner(tiny_config(deep_output=True))
    deep(inputs)
    # the word projection sees the cell output (24) next to the attention context (16)
    assert deep.decoder.fc1.kernel.shape == (24 + 16, 24)

    model = Captioner(tiny_config(state_dropout=0.5))
    keras.utils.set_random_seed(1)
    first = model(inputs, training=True)[0].numpy()
    second = model(inputs, training=True)[0].numpy()
    assert np.abs(first - second).max() > 1e-4  # training: the carried state is dropped out
    np.testing.assert_array_equal(model(inputs)[0].numpy(), model(inputs)[0].numpy())
    clean = Captioner(tiny_config())
    clean(inputs)
    clean.set_weights(model.get_weights())  # same variables: dropout adds none
    np.testing.assert_allclose(clean(inputs)[0].numpy(), model(inputs)[0].numpy(), atol=1e-6)


def _np_ce(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


def test_masked_loss_matches_hand_computation():
    rng = np.random.default_rng(1)
    labels = np.array([[4, 5, 2, 0, 0], [6, 2, 0, 0, 0], [7, 8, 9, 10, 2]], np.int32)
    logits = rng.normal(size=(3, 5, 12)).astype(np.float32)
    mask = labels != 0
    expected = _np_ce(labels, logits)[mask].sum() / mask.sum()  # 10 real tokens, not 15
    got = float(masked_token_loss(labels, logits))
    assert got == pytest.approx(expected, rel=1e-5)
    naive = _np_ce(labels, logits).mean()  # the tutorial's bug: pads in the denominator
    assert abs(got - naive) > 1e-3


def test_total_loss_includes_penalty_over_real_steps_only():
    model = Captioner(tiny_config(), attention_penalty=0.7)
    features, captions = padded_batch()
    loss, stats = model.compute_losses(features, captions)
    logits, alphas = model((features, captions[:, :-1]))
    labels = captions[:, 1:].numpy()
    mask = labels != 0
    token = _np_ce(labels, logits.numpy())[mask].sum() / mask.sum()
    attended = (alphas.numpy() * mask[:, :, None]).sum(1)  # pads do not count as looking
    penalty = ((1.0 - attended) ** 2).mean(-1).mean()  # mean over regions, then captions
    assert float(loss) == pytest.approx(token + 0.7 * penalty, rel=1e-5)
    assert float(stats["tokens"]) == mask.sum()


def test_label_smoothing_trains_on_keras_smoothed_targets_and_reports_the_plain_loss():
    """The objective is Keras' label-smoothed cross-entropy over the real tokens; the loss it
    reports (and validation) is the plain cross-entropy, comparable with val_loss."""
    # feature_norm off: in training it normalises by the batch, not the moving statistics.
    model = Captioner(tiny_config(feature_norm=False), label_smoothing=0.2)
    features, captions = padded_batch()
    loss, stats = model.compute_losses(features, captions, training=True)
    logits = model((features, captions[:, :-1]))[0].numpy()
    labels = captions[:, 1:].numpy()
    mask = labels != 0
    vocab = logits.shape[-1]
    keras_ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2,
                                                    reduction=None)
    smoothed = keras_ce(np.eye(vocab)[labels][mask], logits[mask]).numpy().mean()
    plain = _np_ce(labels, logits)[mask].mean()
    assert float(loss) == pytest.approx(plain, rel=1e-5)
    assert float(loss + stats["smoothing"]) == pytest.approx(smoothed, rel=1e-5)
    assert abs(smoothed - plain) > 1e-3
    _, evaluated = model.compute_losses(features, captions, training=False)
    assert float(evaluated["smoothing"]) == 0.0


@pytest.mark.parametrize("field,value,flag", [("label_smoothing", -0.1, "--label-smoothing"),
                                              ("label_smoothing", 1.0, "--label-smoothing"),
                                              ("ema_momentum", 1.0, "--ema-momentum")])
def test_smoothing_and_weight_average_outside_0_1_are_refused(field, value, flag):
    with pytest.raises(IcapnetError, match=f"^{flag}: must be in \\[0, 1\\), got {value}$"):
        Config(train=TrainConfig(**{field: value})).validate()


def test_progress_metrics_show_the_penalty_only_when_it_is_on():
    """Issue 11: the bar shows what compares with val_loss; with the penalty on, loss is
    token_loss + lambda * attention_penalty (one batch: exactly)."""
    features, captions = padded_batch()
    plain = Captioner(tiny_config(), attention_penalty=0.0)
    plain.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = plain.evaluate(features, captions, batch_size=3, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    penalised = Captioner(tiny_config(), attention_penalty=0.7)
    penalised.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = penalised.evaluate(features, captions, batch_size=3, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "token_loss", "attention_penalty", "accuracy"}
    assert logs["loss"] == pytest.approx(logs["token_loss"] + 0.7 * logs["attention_penalty"],
                                         rel=1e-5)
    mean = Captioner(tiny_config(attention="none"), attention_penalty=0.7)
    mean.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = mean.evaluate(features, captions, batch_size=3, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}  # uniform weights: the penalty is not applied


def _greedy(model: Captioner, features, max_length: int) -> np.ndarray:
    encoded = model.encode(features)
    keys = model.precompute_keys(encoded)
    state = model.initial_state(encoded)
    tokens = tf.fill([features.shape[0]], Vocabulary.start_id)
    out = []
    for _ in range(max_length):
        logits, state, _ = model.decode_step(tokens, state, encoded, keys)
        tokens = tf.argmax(logits, -1, output_type=tf.int32)
        out.append(tokens.numpy())
    return np.stack(out, 1)


def test_tiny_model_overfits_eight_captions_and_decodes_them():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    vocab_size, n = 20, 8
    features = rng.normal(size=(n, R, F)).astype(np.float32)
    lengths = [3, 5, 4, 6, 2, 5, 7, 4]
    captions = np.zeros((n, 9), np.int32)
    targets = []
    for i, length in enumerate(lengths):
        words = rng.integers(4, vocab_size, size=length)
        targets.append([*words.tolist(), Vocabulary.end_id])
        captions[i, : length + 2] = [Vocabulary.start_id, *words, Vocabulary.end_id]
    model = Captioner(tiny_config(units=48, embedding_dim=24), attention_penalty=0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    # 150 steps on the one batch, as one epoch (Keras' per-epoch overhead would dominate),
    # then the loss and accuracy of the final weights.
    batches = tf.data.Dataset.from_tensors((features, captions)).repeat(150)
    model.fit(batches, epochs=1, verbose=0, shuffle=False)
    logs = model.evaluate(features, captions, batch_size=8, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}  # no penalty: loss is the cross-entropy per word
    assert logs["loss"] < 0.05
    assert logs["accuracy"] == pytest.approx(1.0)

    decoded = _greedy(model, tf.constant(features), 9)
    for i, target in enumerate(targets):
        assert list(decoded[i, : len(target)]) == target, f"caption {i}"
    from icapnet.inference.decoding import greedy_decode

    result = greedy_decode(model, tf.constant(features), 9)
    tokens = np.asarray(result.tokens)
    for i, target in enumerate(targets):
        assert list(tokens[i, : len(target)]) == target


def test_variable_caption_lengths_do_not_retrace():
    model = Captioner(tiny_config())
    traces = []
    original = model.compute_losses

    def counting(*args, **kwargs):
        traces.append(1)  # Python side effect: runs only while tracing
        return original(*args, **kwargs)

    model.compute_losses = counting
    model.compile(optimizer=keras.optimizers.Adam(1e-3))

    def dataset(lengths):
        def batches():
            for length in lengths:
                caps = np.zeros((2, length), np.int32)
                caps[:, 0], caps[:, 1:-1], caps[:, -1] = 1, 5, 2
                yield np.random.rand(2, R, F).astype(np.float32), caps

        return tf.data.Dataset.from_generator(batches, output_signature=(
            tf.TensorSpec([None, R, F], tf.float32), tf.TensorSpec([None, None], tf.int32)))

    model.fit(dataset([4, 7]), epochs=1, verbose=0)
    first = len(traces)  # tf.function may trace twice on the call that creates variables
    model.fit(dataset([5, 9, 12, 3]), epochs=2, verbose=0)
    assert len(traces) == first <= 2


@pytest.mark.parametrize("policy, cell, loss_scaled, feature_dtype", [
    ("mixed_float16", "lstm", True, tf.float32),  # float16's narrow range needs loss scaling
    ("mixed_bfloat16", "gru", False, tf.float16),  # the cache's float16 features, as trained
])
def test_mixed_precision_trains_with_float32_logits_loss_and_masters(
    policy, cell, loss_scaled, feature_dtype
):
    features, captions = padded_batch()
    compute = policy.removeprefix("mixed_")
    try:
        keras.mixed_precision.set_global_policy(policy)
        model = Captioner(tiny_config(decoder=cell))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == loss_scaled
        assert model.decoder.compute_dtype == compute
        assert model.decoder.cell.compute_dtype == compute
        logits, alphas = model((tf.cast(features, feature_dtype), captions[:, :-1]))
        assert logits.dtype == tf.float32 and alphas.dtype == tf.float32
        before = [w.copy() for w in model.get_weights()]
        logs = model.train_on_batch(features, captions, return_dict=True)
        assert np.isfinite(logs["loss"])
        assert any(not np.array_equal(a, b)
                   for a, b in zip(before, model.get_weights(), strict=True))
        assert all(w.dtype == np.float32 for w in model.get_weights())  # float32 masters
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_keras_serialisation_and_model_dir_round_trip(tmp_path):
    features, captions = padded_batch()
    model = Captioner(tiny_config(attention="none", decoder="lstm", init_state="mean"),
                      attention_penalty=0.3)
    inputs = (features, captions[:, :-1])
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert again.attention_penalty == 0.3 and again.model_config.attention == "none"
    assert again.get_config() == model.get_config()  # incl. Keras' own keys (name, dtype)
    assert {"name", "trainable", "dtype"} <= set(model.get_config())
    np.testing.assert_allclose(again(inputs)[0].numpy(), model(inputs)[0].numpy(), atol=1e-6)
    for layer in (CNNEncoder(8, 0.1), BahdanauAttention(4), MeanAttention(),
                  Decoder(30, 8, 16, 4, 0.2, "lstm", "none", "zeros")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()

    vocab = Vocabulary(list(Vocabulary.SPECIALS) + [f"w{i}" for i in range(16)])
    config = Config(model=model.model_config, train=TrainConfig(attention_penalty=0.3),
                    features=FeatureConfig(num_regions=R, feature_dim=F))
    out = save_model_dir(tmp_path / "dir", model, vocab, config)
    names = {p.name for p in out.iterdir()}
    # config.json is the one copy of the hyperparameters: no model.keras beside it
    assert names == {"config.json", "vocab.json", "model.weights.h5"}
    loaded, loaded_vocab, loaded_config = load_model_dir(out)
    assert loaded_vocab == vocab and loaded_config.model == model.model_config
    np.testing.assert_allclose(loaded(inputs)[0].numpy(), model(inputs)[0].numpy(), atol=1e-6)


def test_feature_norm_standardises_each_channel_and_saves_its_statistics(tmp_path):
    """Training: every backbone channel reaches the Dense layer standardised whatever its
    scale and offset. Inference: the moving statistics, which a model folder keeps."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(6, R, F)).astype(np.float32)
    scale = np.geomspace(0.5, 20.0, F).astype(np.float32)
    offset = np.linspace(-5.0, 5.0, F).astype(np.float32)
    normed = CNNEncoder(8, dropout=0.0, feature_norm=True)
    np.testing.assert_allclose(normed(features * scale + offset, training=True).numpy(),
                               normed(features, training=True).numpy(), rtol=1e-2, atol=1e-2)
    plain = CNNEncoder(8, dropout=0.0)
    assert not np.allclose(plain(features * scale + offset).numpy(), plain(features).numpy(),
                           rtol=1e-2, atol=1e-2)

    model = Captioner(tiny_config(feature_norm=True))
    norm = model.encoder.norm
    norm.moving_mean.assign(rng.normal(size=F).astype(np.float32))
    norm.moving_variance.assign(rng.uniform(0.5, 4.0, size=F).astype(np.float32))
    inputs = (tf.constant(features), padded_batch()[1][:1, :-1].numpy().repeat(6, 0))
    vocab = Vocabulary(list(Vocabulary.SPECIALS) + [f"w{i}" for i in range(16)])
    config = Config(model=model.model_config, features=FeatureConfig(num_regions=R, feature_dim=F))
    loaded, _, loaded_config = load_model_dir(save_model_dir(tmp_path / "m", model, vocab, config))
    assert loaded_config.model.feature_norm
    np.testing.assert_array_equal(loaded.encoder.norm.moving_variance.numpy(),
                                  norm.moving_variance.numpy())
    np.testing.assert_allclose(loaded(inputs)[0].numpy(), model(inputs)[0].numpy(), atol=1e-6)


def test_folded_feature_norm_equals_batch_normalization_then_dense():
    """The encoder folds the normalisation into its Dense layer: same outputs, moving
    statistics and gradients as Keras' BatchNormalization followed by that Dense layer."""
    rng = np.random.default_rng(5)
    features = tf.constant((rng.normal(size=(4, R, F)) * np.geomspace(0.1, 10, F) + 2.0)
                           .astype(np.float16))  # float16, as the cache stores them
    encoder = CNNEncoder(8, dropout=0.0, feature_norm=True)
    encoder.build(features.shape)
    norm, dense = encoder.norm, encoder.dense
    norm.gamma.assign(rng.uniform(0.5, 2.0, F).astype(np.float32))
    norm.beta.assign(rng.normal(size=F).astype(np.float32))
    reference = keras.layers.BatchNormalization()
    reference.build(features.shape)
    reference.set_weights(norm.get_weights())
    variables = [norm.gamma, norm.beta, dense.kernel, dense.bias]
    for training in (True, False):
        with tf.GradientTape(persistent=True) as tape:
            ours = encoder(features, training=training)
            theirs = dense(reference(features, training=training))
            weights = tf.constant(rng.normal(size=ours.shape).astype(np.float32))
            loss_ours, loss_theirs = (tf.reduce_sum(y * weights) for y in (ours, theirs))
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-4)
        grads = tape.gradient(loss_ours, variables)
        reference_grads = tape.gradient(loss_theirs, [reference.gamma, reference.beta,
                                                      dense.kernel, dense.bias])
        for g, r, v in zip(grads, reference_grads, variables, strict=True):
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-3, atol=1e-3, err_msg=v.path)
        np.testing.assert_allclose(norm.moving_mean.numpy(), reference.moving_mean.numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(norm.moving_variance.numpy(),
                                   reference.moving_variance.numpy(), rtol=1e-4)
    assert not np.allclose(norm.moving_mean.numpy(), 0.0)  # the training call moved them


def test_feature_norm_is_on_by_default_and_off_for_configs_saved_before_it():
    assert ModelConfig().feature_norm
    old = Config().to_dict()
    del old["model"]["feature_norm"]
    assert not Config.from_dict(old).model.feature_norm
    assert Config.from_dict({}).model.feature_norm  # no model section: today's defaults


def test_load_model_dir_errors_name_the_path(tmp_path):
    with pytest.raises(IcapnetError, match="nowhere"):
        load_model_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IcapnetError, match=r"empty.*config\.json"):
        load_model_dir(tmp_path / "empty")


# --------------------------------------------------------------------------- speed paths


def _grouped_batch():
    """2 images x 3 captions (one row empty), and the same captions one row per caption."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, R, F)).astype(np.float32)
    captions = np.array([[[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 9, 10, 2]],
                         [[1, 11, 2, 0, 0], [1, 12, 13, 2, 0], [0, 0, 0, 0, 0]]], np.int32)
    flat_features = np.repeat(features, 3, axis=0)[:5]  # the empty row is not a caption
    flat_captions = captions.reshape(6, 5)[:5]
    return features, captions, flat_features, flat_captions


@pytest.mark.parametrize("cell,word", [("gru", False), ("lstm", False), ("gru", True)])
def test_grouped_step_matches_the_per_caption_step(cell, word):
    """K captions sharing one encoder pass give the same loss and gradients as K copies."""
    model = Captioner(tiny_config(decoder=cell, init_state="mean", word_query=word),
                      attention_penalty=0.5)
    features, captions, flat_features, flat_captions = _grouped_batch()

    def loss_and_grads(f, c):
        with tf.GradientTape() as tape:
            loss, stats = model.compute_losses(tf.constant(f), tf.constant(c), training=False)
        return loss, stats, tape.gradient(loss, model.trainable_variables)

    grouped, g_stats, g_grads = loss_and_grads(features, captions)
    flat, f_stats, f_grads = loss_and_grads(flat_features, flat_captions)
    np.testing.assert_allclose(grouped.numpy(), flat.numpy(), rtol=1e-5)
    for key in ("tokens", "batch", "correct"):
        assert float(g_stats[key]) == float(f_stats[key]), key
    assert float(g_stats["batch"]) == 5  # the empty row is not counted as a caption
    for g, f, v in zip(g_grads, f_grads, model.trainable_variables, strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(),
                                   tf.convert_to_tensor(f).numpy(), atol=1e-5, err_msg=v.path)
    logits, _ = model((features, captions[..., :-1]))
    assert logits.shape == (6, 4, 20)  # one row per caption


def test_jit_compiled_train_step_runs_on_cpu_with_two_caption_lengths():
    """Under XLA (Keras' own compiled train function) grouped batches of two caption lengths
    train to the same loss and weights as the graph step."""
    rng = np.random.default_rng(2)

    def batches():
        for length in (5, 8, 5, 8):  # two caption lengths
            caps = np.zeros((2, 3, length), np.int32)
            caps[..., 0], caps[..., 1:-1], caps[..., -1] = 1, rng.integers(4, 20), 2
            yield rng.normal(size=(2, R, F)).astype(np.float16), caps

    spec = (tf.TensorSpec([2, R, F], tf.float16), tf.TensorSpec([2, 3, None], tf.int32))
    data = tf.data.Dataset.from_generator(batches, output_signature=spec).cache()
    results = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = Captioner(tiny_config())
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit)
        history = model.fit(data, epochs=1, verbose=0).history
        results[jit] = (history["loss"], model.get_weights())
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-4)
    for a, b in zip(results[True][1], results[False][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sub_batches_give_the_same_loss_and_gradients(cell):
    """Rows sorted by length and decoded in sub-batches: only padding work is skipped."""
    rng = np.random.default_rng(3)
    features = tf.constant(rng.normal(size=(7, R, F)).astype(np.float32))
    captions = np.zeros((7, 9), np.int32)
    for row, length in enumerate([3, 9, 5, 2, 6, 9, 4]):  # <start> .. <end>, then padding
        captions[row, :length] = [1, *rng.integers(4, 20, length - 2), 2]
    model = Captioner(tiny_config(decoder=cell, init_state="mean"), attention_penalty=0.5)

    def loss_and_grads(sub_batches):
        model.sub_batches = sub_batches
        with tf.GradientTape() as tape:
            loss, stats = model.compute_losses(features, tf.constant(captions), training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        return float(loss), float(stats["correct"]), [tf.convert_to_tensor(g).numpy()
                                                      for g in grads]

    whole = loss_and_grads(1)
    for sub_batches in (2, 3, 10):  # 10 > rows: some sub-batches are empty
        loss, correct, grads = loss_and_grads(sub_batches)
        assert loss == pytest.approx(whole[0], rel=1e-6) and correct == whole[1]
        for g, w in zip(grads, whole[2], strict=True):
            np.testing.assert_allclose(g, w, atol=1e-6)
    assert Captioner.from_config(model.get_config()).sub_batches == 10
