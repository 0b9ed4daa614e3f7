"""Training loop: CLI outputs, exact resume after a crash, plateau callbacks across a resume,
checkpoints matched by name, mixed precision, MirroredStrategy, fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from icapnet.config import RANDOM_BACKBONE, Config, DataConfig, ModelConfig, TrainConfig
from icapnet.data.cache import serialize_record
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.model.checkpoints import (
    TrainState,
    latest_checkpoint,
    model_variables,
    read_state,
    restore_checkpoint,
    save_checkpoint,
)
from icapnet.model.store import build_captioner, load_model_dir
from icapnet.model.training import train
from icapnet.train import main

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8, 6)  # regions x channels of the fake cache


def write_cache(root: Path, n_train: int = 24, n_val: int = 6,
                val_unknown_words: bool = False) -> Path:
    """A small feature cache in the documented layout (no backbone run needed).

    ``val_unknown_words``: the val images are copies of train images captioned only with
    words the vocabulary does not know, so the better the model learns the train captions
    the worse its val loss gets: a plateau the callbacks must react to.
    """
    rng = np.random.default_rng(0)
    colors, shapes = ["red", "blue", "green"], ["circle", "square", "star"]
    (root / "features").mkdir(parents=True)
    manifest = {"backbone": "vgg16", "layer": "block5_conv3", "weights": "none",
                "random_init": RANDOM_BACKBONE,
                "image_size": 224, "dtype": "float16", "feature_shape": list(SHAPE),
                "dataset": "synthetic", "images": {}, "shards": {}, "skipped": {},
                "complete": True}
    captions: dict[str, dict[str, list[str]]] = {}
    train_features = [rng.normal(size=SHAPE) for _ in range(n_train)]
    for split, count in (("train", n_train), ("val", n_val)):
        shard = f"{split}-00000.tfrecord"
        ids = [f"{split}_{i:03d}.jpg" for i in range(count)]
        with tf.io.TFRecordWriter(str(root / "features" / shard)) as writer:
            for i, image_id in enumerate(ids):
                feats = train_features[i] if split == "train" or val_unknown_words else \
                    rng.normal(size=SHAPE)
                writer.write(serialize_record(image_id, feats))
        captions[split] = {}
        for i, image_id in enumerate(ids):
            c, s = colors[i % 3], shapes[(i // 3) % 3]
            captions[split][image_id] = [f"a {c} {s}", f"there is a {c} {s} here"]
            if split == "val" and val_unknown_words:
                captions[split][image_id] = ["zebra okapi gnu yak", "yak gnu"]
            manifest["images"][image_id] = {"split": split, "shard": shard, "sha1": "0"}
        manifest["shards"][shard] = {"split": split, "count": count, "written": ids,
                                     "images": ids,
                                     "bytes": (root / "features" / shard).stat().st_size}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "captions.json").write_text(json.dumps(captions))
    train_caps = [c for caps in captions["train"].values() for c in caps]
    Vocabulary.build(train_caps, min_count=1).save(root / "vocab.json")
    return root


FLAGS = ["--epochs", "4", "--batch-size", "8", "--units", "16", "--embedding-dim", "8",
         "--attention-units", "8", "--dropout", "0.3", "--learning-rate", "0.01",
         "--seed", "7", "--reduce-lr-patience", "1", "--early-stopping-patience", "10",
         "--quiet"]


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Dies in the middle of an epoch, like kill -9 (nothing of that epoch is saved)."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise Crash


class Epochs(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def _config(**train) -> Config:
    """What FLAGS say, as a Config."""
    return Config(
        model=ModelConfig(embedding_dim=8, units=16, attention_units=8, dropout=0.3),
        train=TrainConfig(**{"epochs": 4, "batch_size": 8, "learning_rate": 0.01, "seed": 7,
                             "reduce_lr_patience": 1, "early_stopping_patience": 10, **train}),
    )


def _weights(model_dir: Path) -> list[np.ndarray]:
    return [w.numpy() for w in load_model_dir(model_dir)[0].weights]


def _assert_same_weights(a: Path, b: Path) -> None:
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)


def _crash_and_resume(config: Config, cache: Path, crashed: Path, history: pd.DataFrame,
                      full: Path) -> Path:
    """Kill a run of ``config`` in the middle of its third epoch, re-run it, and check it
    ends where the uninterrupted run (``history``, model in ``full``) did."""
    with pytest.raises(Crash):
        train(config, cache, crashed, verbose=0, extra_callbacks=[CrashAt(2, 1)])
    resumed = train(config, cache, crashed, verbose=0)
    pd.testing.assert_frame_equal(resumed, history, check_exact=False, rtol=1e-6)
    _assert_same_weights(full, crashed)
    return crashed


def test_cli_trains_and_a_crashed_run_resumes_to_identical_weights(tmp_path):
    """Exact resume, with what a resume must carry: the dropout RNG states, a learning rate
    ReduceLROnPlateau lowered, and the plateau counters; then early stopping and the best
    weights. val_loss rises after every epoch on this cache (the val captions are words the
    vocabulary does not know), so the plateau callbacks have something to do."""
    cache = write_cache(tmp_path / "cache", val_unknown_words=True)
    # Uninterrupted run, through the CLI.
    full = tmp_path / "full"
    assert main(["--cache", str(cache), "--out", str(full), *FLAGS]) == 0
    names = {p.name for p in full.iterdir()}
    assert {"config.json", "vocab.json", "model.weights.h5", "history.csv",
            "loss.png", "checkpoints"} <= names
    assert not [n for n in names if n.startswith(".")]
    history = pd.read_csv(full / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3]
    assert {"loss", "val_loss", "accuracy", "learning_rate"} <= set(history)
    assert history["val_loss"].is_monotonic_increasing
    assert history["loss"].is_monotonic_decreasing
    # ReduceLROnPlateau (patience 1) halves the LR after epochs 1 and 2 (its wait restarts
    # after each reduction); EarlyStopping (patience 10) waits.
    np.testing.assert_allclose(history["learning_rate"], [0.01, 0.01, 0.005, 0.0025])

    # Same run, killed in the middle of the third epoch...
    crashed = tmp_path / "crashed"
    config = _config()
    with pytest.raises(Crash):
        train(config, cache, crashed, verbose=0, extra_callbacks=[CrashAt(2, 1)])
    assert config == _config()  # train() never changes the caller's config
    assert not (crashed / "model.weights.h5").exists()  # no half-finished model dir
    assert read_state(latest_checkpoint(crashed)).next_epoch == 2
    assert len(pd.read_csv(crashed / "history.csv")) == 2
    # ... then re-run: it continues at epoch 3 (index 2), with the LR reduced before the
    # crash (from the optimizer state); the reduction after epoch 2 needs the plateau
    # counters from the checkpoint (a fresh ReduceLROnPlateau would take epoch 2 as its
    # first, best value), and the same weights need the dropout RNG states.
    epochs = Epochs()
    resumed = train(_config(), cache, crashed, verbose=0, extra_callbacks=[epochs])
    assert epochs.seen == [2, 3]
    pd.testing.assert_frame_equal(resumed, history, check_exact=False, rtol=1e-6)
    _assert_same_weights(full, crashed)
    assert any("seed_generator" in name for name in model_variables(load_model_dir(full)[0]))

    again = Epochs()  # a finished run is not trained again
    train(_config(), cache, full, verbose=0, extra_callbacks=[again])
    assert again.seen == []

    # Early stopping (patience 1) fires after epoch 1 and ends the phase ...
    stopped = tmp_path / "stopped"
    history = train(_config(early_stopping_patience=1, reduce_lr_patience=10), cache, stopped,
                    verbose=0)
    assert list(history["epoch"]) == [0, 1]
    state = read_state(latest_checkpoint(stopped))
    assert (state.next_epoch, state.next_phase) == (4, 2)
    # ... and both runs end with the best (epoch 0) weights restored: the one state the run
    # stopped after epoch 1 and the run that went on to epoch 3 have in common.
    _assert_same_weights(stopped, full)


class RawWeights(keras.callbacks.Callback):
    """The weights after every training step of epoch 0 (the raw ones: training steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[np.ndarray]] = []
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 0:
            self.steps.append([w.numpy() for w in self.model.trainable_weights])


def test_weight_average_is_validated_saved_and_resumed_exactly(tmp_path):
    """--ema-momentum: training steps on the raw weights (the same training losses as without
    it), validation and the saved model use their moving average, and a crashed run resumes
    to the same weights. val_loss rises every epoch on this cache, so the best epoch is the
    first and the saved weights are the average after its steps."""
    cache = write_cache(tmp_path / "cache", val_unknown_words=True)
    averaged = _config(ema_momentum=0.9, epochs=3)
    plain = train(_config(epochs=3), cache, tmp_path / "plain", verbose=0)
    raw = RawWeights()
    full = tmp_path / "full"
    history = train(averaged, cache, full, verbose=0, extra_callbacks=[raw])
    np.testing.assert_allclose(history["loss"], plain["loss"], rtol=1e-6)
    assert not np.allclose(history["val_loss"], plain["val_loss"], rtol=1e-3)
    assert history["val_loss"].idxmin() == 0
    average = raw.steps[0]  # Keras' first step copies the weights, then m * avg + (1 - m) * w
    for step in raw.steps[1:]:
        average = [0.9 * a + 0.1 * w for a, w in zip(average, step, strict=True)]
    model = load_model_dir(full)[0]
    for saved, expected in zip(model.trainable_weights, average, strict=True):
        np.testing.assert_allclose(saved.numpy(), expected, rtol=1e-4, atol=1e-6)

    crashed = _crash_and_resume(averaged, cache, tmp_path / "crashed", history, full)
    with pytest.raises(IcapnetError, match=r"--ema-momentum: .* with a weight average"):
        train(_config(epochs=3), cache, crashed, verbose=0)


def test_cosine_schedule_replaces_the_plateau_cut_and_resumes_on_its_curve(tmp_path):
    """--lr-schedule cosine: the rate falls from --learning-rate to 0 over every step of the
    run, even where the plateau cut (patience 1, val_loss rising every epoch on this cache)
    would halve it, and a run killed mid-epoch continues on the same curve."""
    cache = write_cache(tmp_path / "cache", val_unknown_words=True)
    cosine = _config(lr_schedule="cosine", epochs=3)
    full = tmp_path / "full"
    history = train(cosine, cache, full, verbose=0)
    assert history["val_loss"].is_monotonic_increasing
    # Recorded at the start of each epoch: 0.01 * (1 + cos(pi * epoch / 3)) / 2.
    np.testing.assert_allclose(history["learning_rate"], [0.01, 0.0075, 0.0025], rtol=1e-5)
    plateau = train(_config(epochs=3), cache, tmp_path / "plateau", verbose=0)
    np.testing.assert_allclose(plateau["learning_rate"], [0.01, 0.01, 0.005])
    assert not np.allclose(history["loss"], plateau["loss"])

    crashed = _crash_and_resume(cosine, cache, tmp_path / "crashed", history, full)
    with pytest.raises(IcapnetError, match=r"--lr-schedule: .* trained with --lr-schedule "
                                           r"cosine"):
        train(_config(epochs=4), cache, crashed, verbose=0)


def test_mixed_precision_run_trains_and_checkpoints_its_loss_scale(tmp_path):
    cache = write_cache(tmp_path / "cache", n_train=16, n_val=4)
    config = _config(epochs=2, mixed_precision="float16")
    history = train(config, cache, tmp_path / "m", verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    assert np.isfinite(history["loss"]).all() and history["loss"][1] < history["loss"][0]
    # The wrapped optimizer's own state (loss scale, step counter) is in the checkpoint, by
    # name, and goes back into a freshly built mixed-precision model.
    path = latest_checkpoint(tmp_path / "m")
    with np.load(path) as data:
        assert {"optimizer/dynamic_scale", "optimizer/inner/iteration"} <= set(data.files)
        saved_scale = float(data["optimizer/dynamic_scale"])
        saved_kernel = data["model/decoder/fc2/kernel"]
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        cfg = Config.load(tmp_path / "m" / "checkpoints")
        model = build_captioner(cfg)
        model.compile(optimizer=keras.optimizers.Adam(0.01))
        model.optimizer.build(model.trainable_variables)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert restore_checkpoint(path, model, model.optimizer).next_epoch == 2
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert float(model.optimizer.dynamic_scale) == saved_scale
    assert int(model.optimizer.inner_optimizer.iterations) == 2 * 4  # 2 epochs of 4 steps
    np.testing.assert_array_equal(model.decoder.fc2.kernel.numpy(), saved_kernel)


def test_checkpoints_match_variables_by_name(tmp_path):
    config = dataclasses.replace(_config(), model=dataclasses.replace(
        _config().model, vocab_size=12, num_regions=SHAPE[0], feature_dim=SHAPE[1]))
    first, second = build_captioner(config), build_captioner(config)
    # Keras names the second model's variables captioner_1/... and its RNG states
    # seed_generator_N; checkpoint names are the same for both.
    names = model_variables(first)
    assert list(names) == list(model_variables(second))
    assert {"decoder/attention/W1/kernel", "encoder/dropout/seed_generator_state"} <= set(names)
    for model in (first, second):
        model.compile(optimizer=keras.optimizers.Adam(0.01))
        model.optimizer.build(model.trainable_variables)
    second.optimizer.learning_rate.assign(0.5)
    second.decoder.fc2.kernel.assign(np.ones(second.decoder.fc2.kernel.shape, "float32"))
    path = save_checkpoint(tmp_path, TrainState(next_epoch=3), second, second.optimizer)
    state = restore_checkpoint(path, first, first.optimizer)
    assert state.next_epoch == 3
    assert float(first.optimizer.learning_rate) == 0.5
    np.testing.assert_array_equal(first.decoder.fc2.kernel.numpy(), 1.0)
    # A checkpoint of another model is refused in one line that names a variable.
    other = build_captioner(dataclasses.replace(config, model=dataclasses.replace(
        config.model, decoder="lstm")))
    other.compile(optimizer=keras.optimizers.Adam(0.01))
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(IcapnetError, match=r"epoch-0003\.npz: model variables do not match "
                       r"\(missing decoder/\S+, .*another model"):
        restore_checkpoint(path, other, other.optimizer)


def test_cli_errors_are_one_line(tmp_path):
    with pytest.raises(IcapnetError, match="nowhere"):
        main(["--cache", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    with pytest.raises(IcapnetError, match="--dropout"):
        main(["--cache", str(tmp_path), "--out", str(tmp_path / "m"), "--dropout", "1.5"])
    for flag, value in (("--decoder", "transformer"), ("--init-state", "learned")):
        with pytest.raises(SystemExit):  # argparse: not one of the choices
            main(["--cache", str(tmp_path), "--out", "x", flag, value])
    # A library caller gets the same one-line check instead of a ValueError from the layers.
    bad = dataclasses.replace(_config(), model=dataclasses.replace(_config().model,
                                                                   init_state="learned"))
    with pytest.raises(IcapnetError, match="--init-state: 'learned' is not one of zeros, mean"):
        train(bad, tmp_path, tmp_path / "m")


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import numpy as np
    from icapnet.config import Config, ModelConfig, TrainConfig
    from icapnet.model import load_model_dir
    from icapnet.model.training import get_strategy, train

    cache, out = sys.argv[1], sys.argv[2]
    histories, weights = {}, {}
    for strategy in ("default", "mirrored"):
        config = Config(model=ModelConfig(embedding_dim=8, units=16, attention_units=8,
                                          dropout=0.0, state_dropout=0.0),
                        train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01, seed=7,
                                          strategy=strategy, attention_penalty=0.5,
                                          clip_norm=0.05))
        history = train(config, cache, f"{out}/{strategy}", verbose=0)
        histories[strategy] = history.drop(columns="learning_rate").to_dict("list")
        weights[strategy] = [w.numpy() for w in load_model_dir(f"{out}/{strategy}")[0].weights]
    diff = max(float(np.abs(a - b).max())
               for a, b in zip(weights["default"], weights["mirrored"]))
    json.dump({"replicas": get_strategy("mirrored").num_replicas_in_sync, "diff": diff,
               "histories": histories}, sys.stdout)
""")


def test_mirrored_strategy_matches_single_device(tmp_path):
    """train() on two replicas (2 logical CPUs) is the same run as on one device.

    The captions have different lengths, so the two halves of a batch hold different numbers
    of real tokens (a per-replica mean would be wrong); the attention penalty is normalised
    by the global batch and the tiny clip_norm makes the global-norm clipping bite. Every
    epoch's batches come from its seed alone, however many iterators tf.distribute makes.
    """
    cache = write_cache(tmp_path / "cache", n_train=16, n_val=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(cache), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    single, multi = out["histories"]["default"], out["histories"]["mirrored"]
    assert single["loss"][1] < single["loss"][0]  # it trained ...
    for key, values in single.items():  # ... and the same on two replicas
        np.testing.assert_allclose(multi[key], values, rtol=1e-4, err_msg=key)
    assert out["diff"] < 1e-4


@pytest.fixture(scope="module")
def image_cache(synthetic_scenes_dir, tiny_backbone, tmp_path_factory):
    """A real cache of the 12 synthetic scenes through the tiny backbone (a 4x4 grid):
    fine-tuning reads the images again and trains that backbone."""
    from icapnet.data.cache_build import build_cache
    from icapnet.data.datasets import load_dataset
    from icapnet.model.backbone import feature_config_for

    return build_cache(load_dataset("synthetic", synthetic_scenes_dir),
                       tmp_path_factory.mktemp("ft") / "cache",
                       feature_config_for(tiny_backbone, "none"), DataConfig(min_count=1),
                       progress=False)


def test_fine_tuning_phase_trains_the_backbone_and_resumes(image_cache, tmp_path):
    from icapnet.inference.predictor import Predictor
    from icapnet.model.backbone import build_feature_extractor

    config = _config(epochs=1, fine_tune_from="conv_b", fine_tune_epochs=2,
                     fine_tune_learning_rate=1e-3)
    full = tmp_path / "full"
    history = train(config, image_cache, full, verbose=0)
    assert list(history["phase"]) == [1, 2, 2] and list(history["epoch"]) == [0, 1, 2]
    assert list(history["learning_rate"]) == pytest.approx([0.01, 1e-3, 1e-3])
    saved = Config.load(full)
    assert saved.features.weights == str((full / "backbone.weights.h5").resolve())

    random = build_feature_extractor(Config.load(full / "checkpoints").features)
    tuned = build_feature_extractor(saved.features)

    def kernel(extractor, layer):
        return extractor.get_layer("tiny_conv_b").get_layer(layer).get_weights()[0]

    assert not np.allclose(kernel(tuned, "conv_b"), kernel(random, "conv_b"))
    np.testing.assert_array_equal(kernel(tuned, "conv_a"), kernel(random, "conv_a"))  # frozen
    result = Predictor.from_dir(full).caption_paths(
        sorted(Path(saved.data.data_dir, "Images").glob("*.jpg"))[:2])
    assert all(r.words and r.attention.shape == (len(r.words), 4, 4) for r in result)

    # A crash in the fine-tuning phase resumes there, backbone and all, exactly.
    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(config, image_cache, crashed, verbose=0, extra_callbacks=[CrashAt(2, 0)])
    assert read_state(latest_checkpoint(crashed)).model_phase == 2
    epochs = Epochs()
    train(config, image_cache, crashed, verbose=0, extra_callbacks=[epochs])
    assert epochs.seen == [2]
    _assert_same_weights(full, crashed)
    np.testing.assert_array_equal(
        kernel(build_feature_extractor(Config.load(crashed).features), "conv_b"),
        kernel(tuned, "conv_b"))


class ScoreCheck(keras.callbacks.Callback):
    """Recomputes val_bleu4 on its own (greedy captions of the val split, nltk BLEU-4)."""

    def __init__(self, cache: Path) -> None:
        super().__init__()
        self.cache, self.seen = cache, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((logs["val_bleu4"], _val_bleu4(self.model, self.cache)))


def _val_bleu4(model, cache_dir: Path) -> float:
    from icapnet.data.cache import open_cache
    from icapnet.inference.decoding import greedy_decode
    from icapnet.inference.metrics import nltk_bleu

    cache = open_cache(cache_dir)
    ids, features = zip(*cache.read_features("val"), strict=True)
    tokens = greedy_decode(model, np.stack(features).astype(np.float32), 40).tokens.numpy()
    captions = {i: cache.vocab.decode(row.tolist()) for i, row in zip(ids, tokens, strict=True)}
    return nltk_bleu(cache.captions["val"], captions)["BLEU-4"]


@pytest.mark.slow
def test_sat_preset_stops_on_val_bleu_and_a_finished_run_trains_more_epochs(tmp_path):
    """Issue 11: --preset sat (picked for a real-photo dataset) records itself, flags given
    win over it, early stopping watches validation BLEU-4 and keeps its best epoch; running a
    finished model again with a larger --epochs trains the extra epochs (only those)."""
    cache = write_cache(tmp_path / "cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["dataset"] = "flickr8k"
    manifest["split"] = {"source": "official (package data)", "sizes": {}, "missing": {}}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "sat"
    flags = ["--units", "16", "--embedding-dim", "8", "--attention-units", "8",
             "--batch-size", "8", "--learning-rate", "0.01", "--seed", "3", "--quiet"]
    assert main(["--cache", str(cache), "--out", str(out), "--epochs", "3", *flags]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["preset"] == "sat"
    assert saved["train"]["optimizer"] == "rmsprop"
    assert saved["train"]["early_stopping_metric"] == "val_bleu4"
    assert saved["train"]["attention_penalty"] == pytest.approx(5.4)
    assert saved["model"]["dropout"] == 0.5 and saved["model"]["context_gate"] is True
    assert saved["train"]["learning_rate"] == 0.01  # the flag given beats the preset's 1e-4
    assert {k: saved["data"][k] for k in ("split", "train_images", "val_images",
                                           "train_captions", "test_images")} == {
        "split": "official (package data)", "train_images": 24, "val_images": 6,
        "train_captions": 48, "test_images": 0}
    history = pd.read_csv(out / "history.csv")
    assert {"val_bleu4", "token_loss", "attention_penalty"} <= set(history)
    assert history["val_bleu4"].between(0, 1).all()
    # The saved weights are the best epoch's by BLEU (a score: the largest).
    model = load_model_dir(out)[0]
    assert _val_bleu4(model, cache) == pytest.approx(history["val_bleu4"].max(), abs=1e-9)

    # val_bleu4 is what an independent greedy decode of the val split scores, every epoch.
    config = Config.from_dict(saved)
    config.train.epochs = 5
    check, epochs = ScoreCheck(cache), Epochs()
    longer = train(config, cache, out, verbose=0, extra_callbacks=[check, epochs])
    assert epochs.seen == [3, 4]
    assert list(longer["epoch"]) == [0, 1, 2, 3, 4]
    for logged, recomputed in check.seen:
        assert logged == pytest.approx(recomputed, abs=1e-9)
    again = Epochs()
    train(config, cache, out, verbose=0, extra_callbacks=[again])
    assert again.seen == []  # finished at 5: nothing more to do


def test_grouped_bucketed_training_runs_and_counts_its_steps(tmp_path):
    """The speed options end to end: whole-image batches, length buckets, exact step counts."""
    cache = write_cache(tmp_path / "cache")
    config = _config(epochs=1, group_by_image=True, length_buckets=2)
    steps = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    history = train(config, cache, tmp_path / "m", verbose=0, extra_callbacks=[Count()])
    assert list(history["epoch"]) == [0] and np.isfinite(history["val_loss"]).all()
    # 24 images x 2 captions in groups of 2, 8 captions a batch = 4 images: 2 length buckets
    assert len(steps) == 6
    saved = Config.load(tmp_path / "m")
    assert saved.train.group_by_image and saved.train.length_buckets == 2
