"""Training glue: CLI outputs, exact resume after a crash, plateau state, MirroredStrategy."""

from __future__ import annotations

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

from icapnet.config import RANDOM_BACKBONE, Config, ModelConfig, TrainConfig
from icapnet.data.features import serialize_record
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.model.store import load_model_dir
from icapnet.model.training import _plateau_state, latest_checkpoint, train
from icapnet.train import main

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8, 6)  # regions x channels of the fake cache


def write_cache(root: Path, n_train: int = 24, n_val: int = 6) -> Path:
    """A small feature cache in the documented layout (no backbone run needed)."""
    rng = np.random.default_rng(0)
    colors, shapes = ["red", "blue", "green"], ["circle", "square", "star"]
    (root / "features").mkdir(parents=True)
    manifest = {"backbone": "vgg16", "layer": "block5_conv3", "weights": "none",
                "random_init": RANDOM_BACKBONE,
                "image_size": 224, "dtype": "float16", "feature_shape": list(SHAPE),
                "dataset": "synthetic", "images": {}, "shards": {}, "skipped": {},
                "complete": True}
    captions: dict[str, dict[str, list[str]]] = {}
    for split, count in (("train", n_train), ("val", n_val)):
        shard = f"{split}-00000.tfrecord"
        ids = [f"{split}_{i:03d}.jpg" for i in range(count)]
        with tf.io.TFRecordWriter(str(root / "features" / shard)) as writer:
            for image_id in ids:
                writer.write(serialize_record(image_id, rng.normal(size=SHAPE)))
        captions[split] = {}
        for i, image_id in enumerate(ids):
            c, s = colors[i % 3], shapes[(i // 3) % 3]
            captions[split][image_id] = [f"a {c} {s}", f"there is a {c} {s} here"]
            manifest["images"][image_id] = {"split": split, "shard": shard, "sha1": "0"}
        manifest["shards"][shard] = {"split": split, "count": count, "written": ids}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "captions.json").write_text(json.dumps(captions))
    train_caps = [c for caps in captions["train"].values() for c in caps]
    Vocabulary.build(train_caps, min_count=1).save(root / "vocab.json")
    return root


FLAGS = ["--epochs", "3", "--batch-size", "8", "--units", "16", "--embedding-dim", "8",
         "--attention-units", "8", "--dropout", "0.3", "--learning-rate", "0.01",
         "--seed", "7", "--quiet"]


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


def _config() -> Config:
    return Config(
        model=ModelConfig(embedding_dim=8, units=16, attention_units=8, dropout=0.3),
        train=TrainConfig(epochs=3, batch_size=8, learning_rate=0.01, seed=7),
    )


def test_cli_trains_and_a_crashed_run_resumes_to_identical_weights(tmp_path):
    cache = write_cache(tmp_path / "cache")
    # Uninterrupted run, through the CLI.
    full = tmp_path / "full"
    assert main(["--cache", str(cache), "--out", str(full), *FLAGS]) == 0
    names = {p.name for p in full.iterdir()}
    assert {"config.json", "vocab.json", "model.weights.h5", "model.keras", "history.csv",
            "loss.png", "checkpoints"} <= names
    assert not [n for n in names if n.startswith(".")]
    history = pd.read_csv(full / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert {"loss", "val_loss", "token_loss", "accuracy", "learning_rate"} <= set(history)

    # Same run, killed in the middle of the third epoch...
    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(_config(), cache, crashed, verbose=0, extra_callbacks=[CrashAt(2, 1)])
    assert not (crashed / "model.weights.h5").exists()  # no half-finished model dir
    assert latest_checkpoint(crashed)[0] == 2
    assert len(pd.read_csv(crashed / "history.csv")) == 2
    # ... then re-run: it continues at epoch 3 (index 2) only.
    epochs = Epochs()
    resumed = train(_config(), cache, crashed, verbose=0, extra_callbacks=[epochs])
    assert epochs.seen == [2]
    pd.testing.assert_frame_equal(resumed, history, check_exact=False, rtol=1e-6)

    a, _, _ = load_model_dir(full)
    b, _, _ = load_model_dir(crashed)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy(), err_msg=wa.path)
    # Dropout is on, so this only holds because the dropout RNG state is checkpointed.
    assert any("seed_generator" in v.path for v in a.variables)

    again = Epochs()  # a finished run is not trained again
    train(_config(), cache, full, verbose=0, extra_callbacks=[again])
    assert again.seen == []


def test_cli_errors_are_one_line(tmp_path):
    with pytest.raises(IcapnetError, match="nowhere"):
        main(["--cache", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    with pytest.raises(IcapnetError, match="--dropout"):
        main(["--cache", str(tmp_path), "--out", str(tmp_path / "m"), "--dropout", "1.5"])
    with pytest.raises(SystemExit):
        main(["--cache", str(tmp_path), "--out", "x", "--decoder", "transformer"])


def test_plateau_state_replays_keras_counters():
    assert _plateau_state([3.0, 2.0, 2.5, 2.6]) == (2.0, 2, 1)
    # ReduceLROnPlateau (patience 2) resets its wait after each reduction.
    assert _plateau_state([3.0, 2.0, 2.5, 2.6, 2.7], patience=2)[:2] == (2.0, 1)
    assert _plateau_state([]) == (float("inf"), 0, -1)


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras, numpy as np
    from icapnet.config import ModelConfig
    from icapnet.model import Captioner

    cfg = ModelConfig(vocab_size=15, embedding_dim=8, units=12, attention_units=6, dropout=0.0,
                      state_dropout=0.0, num_regions=5, feature_dim=4)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 5, 4)).astype("float32")
    # Uneven real-token counts per replica half: a per-replica mean would be wrong.
    caps = np.array([[1, 5, 6, 7, 8, 9, 2], [1, 5, 2, 0, 0, 0, 0],
                     [1, 6, 2, 0, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0]], "int32")
    ds = tf.data.Dataset.from_tensors((feats, caps))

    def run(strategy, weights=None):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = Captioner(cfg, attention_penalty=0.5, clip_norm=0.05)
            if weights is not None:
                model.set_weights(weights)
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        logs = model.fit(ds, epochs=1, verbose=0).history
        val = model.evaluate(ds, verbose=0, return_dict=True)
        return model, {k: v[-1] for k, v in logs.items()}, val

    keras.utils.set_random_seed(0)
    start = Captioner(cfg, attention_penalty=0.5, clip_norm=0.05).get_weights()
    single, logs1, val1 = run(tf.distribute.get_strategy(), start)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    multi, logs2, val2 = run(mirrored, start)
    diff = max(float(np.abs(a - b).max())
               for a, b in zip(single.get_weights(), multi.get_weights()))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), start))
    json.dump({"replicas": mirrored.num_replicas_in_sync, "diff": diff, "moved": moved,
               "logs1": logs1, "logs2": logs2, "val1": val1, "val2": val2}, sys.stdout)
""")


def test_mirrored_strategy_matches_single_device():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["moved"] > 1e-3  # the step did something ...
    assert out["diff"] < 1e-5  # ... and the same thing on 2 replicas as on 1 device
    for key in ("loss", "token_loss", "attention_penalty", "accuracy"):
        assert out["logs2"][key] == pytest.approx(out["logs1"][key], rel=1e-5), key
        assert out["val2"][key] == pytest.approx(out["val1"][key], rel=1e-5), key


def test_grouped_bucketed_training_runs_and_counts_its_steps(tmp_path):
    """The speed options end to end: whole-image batches, length buckets, exact step counts."""
    cache = write_cache(tmp_path / "cache")
    config = _config()
    config.train.epochs, config.train.group_by_image, config.train.length_buckets = 1, True, 2
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
