"""Fit-loop glue for ``python -m icapnet.train``: strategies, callbacks, resume, fine-tuning.

Resume is exact: each completed epoch writes one atomic checkpoint (model variables
including the dropout RNG state, optimizer variables including the learning rate, and the
next epoch), the history CSV is rewritten atomically, and the data order of epoch ``e`` is
a function of ``(seed, e)`` only. Re-running the same command after a crash (even
``kill -9``) therefore continues at the last completed epoch and reaches the same weights
as an uninterrupted run. EarlyStopping / ReduceLROnPlateau counters are rebuilt from the
history, and the best weights (lowest validation loss) are kept in their own file.

The run is driven one ``fit`` call per epoch (so each epoch gets a freshly seeded dataset)
with ``epochs`` set to the total, so the Keras progress bar still reads "Epoch 3/20".
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from icapnet.config import LEGACY_RANDOM_BACKBONE, RANDOM_BACKBONE, Config
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_bytes, atomic_write_text
from icapnet.model.captioner import Captioner
from icapnet.model.layers import PACKAGE
from icapnet.model.store import build_captioner, save_model_dir

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.csv"
LOSS_PLOT = "loss.png"
LOG_DIR = "logs"
BEST_FILE = "best.npz"
BACKBONE_FILE = "backbone.weights.h5"
STRATEGIES = ("default", "mirrored", "tpu")
_CKPT = re.compile(r"^epoch-(\d{4,})\.npz$")
_KEEP_CHECKPOINTS = 2


# --------------------------------------------------------------------------- basics


def get_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs) or ``tpu`` (Colab / Cloud TPU)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as err:
            raise IcapnetError(f"--strategy tpu: no TPU found ({err})") from None
        return tf.distribute.TPUStrategy(resolver)
    raise IcapnetError(f"--strategy {name}: unknown (choose from {', '.join(STRATEGIES)})")


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of one epoch: depends only on (seed, epoch), so resumes match."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31 - 1)


def config_from_cache(cache_dir: str | Path, config: Config) -> Config:
    """Fill in what the cache decides: vocab size, feature shape, backbone, dataset."""
    from icapnet.data.features import open_cache

    cache = open_cache(cache_dir)
    manifest = cache.manifest
    regions, channels = cache.feature_shape
    config.model.vocab_size = len(cache.vocab)
    config.model.num_regions, config.model.feature_dim = int(regions), int(channels)
    feats = config.features
    feats.backbone = manifest.get("backbone", feats.backbone)
    feats.layer = manifest.get("layer", feats.layer)
    feats.weights = str(manifest.get("weights", feats.weights))
    if feats.weights == "none":
        feats.random_init = str(manifest.get("random_init", LEGACY_RANDOM_BACKBONE))
        if feats.random_init != RANDOM_BACKBONE:
            raise IcapnetError(
                f"{cache.root / 'manifest.json'}: features come from the old random backbone "
                f"'{feats.random_init}' (this version builds '{RANDOM_BACKBONE}'); "
                "re-run prepare into a new folder"
            )
    feats.image_size = int(manifest.get("image_size", feats.image_size))
    feats.num_regions, feats.feature_dim = int(regions), int(channels)
    data = config.data
    data.cache_dir = str(Path(cache_dir))
    data.dataset = data.dataset or str(manifest.get("dataset", ""))
    data.data_dir = data.data_dir or str(manifest.get("data_dir", ""))
    return config


# --------------------------------------------------------------------------- checkpoints


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CKPT.match(p.name))]
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> tuple[int, Path] | None:
    """(next epoch, path) of the newest complete checkpoint under ``out_dir``, if any."""
    found = _checkpoints(Path(out_dir) / CHECKPOINT_DIR)
    return found[-1] if found else None


def _pack(prefix: str, variables: Sequence[Any]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{i:05d}": np.asarray(keras.ops.convert_to_numpy(v))
            for i, v in enumerate(variables)}


def _unpack(path: Path, data: Any, prefix: str, variables: Sequence[Any]) -> None:
    keys = sorted(k for k in data.files if k.startswith(prefix + "/"))
    if len(keys) != len(variables):
        raise IcapnetError(f"{path}: checkpoint has {len(keys)} {prefix} variables, the model "
                           f"{len(variables)}; it belongs to another model (use a new --out)")
    for key, var in zip(keys, variables, strict=True):
        value = data[key]
        if tuple(value.shape) != tuple(var.shape):
            raise IcapnetError(f"{path}: {var.path} has shape {tuple(value.shape)} in the "
                               f"checkpoint but {tuple(var.shape)} in the model (use a new --out)")
        var.assign(value)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_checkpoint(out_dir: Path, next_epoch: int, next_phase: int, model_phase: int,
                    model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Path:
    """Atomically write model + optimizer state; keep the newest two.

    ``model_phase`` says which model wrote it (1: captioner, 2: backbone + captioner);
    ``next_phase`` / ``next_epoch`` say where training continues.
    """
    directory = out_dir / CHECKPOINT_DIR
    arrays = {**_pack("model", model.variables), **_pack("optimizer", optimizer.variables),
              "next_epoch": np.array(next_epoch), "next_phase": np.array(next_phase),
              "model_phase": np.array(model_phase)}
    path = directory / f"epoch-{next_epoch:04d}.npz"
    atomic_write_bytes(path, _npz_bytes(arrays))
    for _, old in _checkpoints(directory)[:-_KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint_phases(path: Path) -> tuple[int, int]:
    """(model phase, next phase) of a checkpoint."""
    try:
        with np.load(path) as data:
            return int(data["model_phase"]), int(data["next_phase"])
    except Exception as err:
        raise IcapnetError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from err


def restore_checkpoint(path: Path, model: keras.Model,
                       optimizer: keras.optimizers.Optimizer) -> int:
    """Load a checkpoint written by :func:`save_checkpoint`; returns the next epoch."""
    try:
        with np.load(path) as data:
            _unpack(path, data, "model", model.variables)
            _unpack(path, data, "optimizer", optimizer.variables)
            return int(data["next_epoch"])
    except IcapnetError:
        raise
    except Exception as err:
        raise IcapnetError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from err


def _save_best(out_dir: Path, model: keras.Model) -> None:
    atomic_write_bytes(out_dir / CHECKPOINT_DIR / BEST_FILE,
                       _npz_bytes(_pack("model", model.weights)))


def _load_best(out_dir: Path, model: keras.Model) -> bool:
    path = out_dir / CHECKPOINT_DIR / BEST_FILE
    if not path.is_file():
        return False
    with np.load(path) as data:
        _unpack(path, data, "model", model.weights)
    return True


# --------------------------------------------------------------------------- history


def read_history(out_dir: Path) -> pd.DataFrame:
    path = out_dir / HISTORY_FILE
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise IcapnetError(f"{path}: unreadable training history ({err})") from None


def write_history(out_dir: Path, history: pd.DataFrame) -> None:
    atomic_write_text(out_dir / HISTORY_FILE, history.to_csv(index=False))


def _plateau_state(values: Sequence[float], patience: int | None = None) -> tuple[float, int, int]:
    """Replay Keras' "min" plateau logic: -> (best, wait, best index).

    With ``patience`` the wait counter resets after each LR reduction (ReduceLROnPlateau).
    """
    best, wait, best_index = math.inf, 0, -1
    for i, value in enumerate(values):
        if value < best:
            best, wait, best_index = float(value), 0, i
        else:
            wait += 1
            if patience is not None and wait >= patience:
                wait = 0
    return best, wait, best_index


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters survive a restart (seeded from the history)."""

    seed_state: tuple[float, int, int] = (math.inf, 0, -1)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.wait, self.best_epoch = self.seed_state


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart (the LR itself is in the optimizer)."""

    seed_state: tuple[float, int] = (math.inf, 0)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.wait = self.seed_state


class EpochEnd(keras.callbacks.Callback):
    """After each epoch: history row, loss plot, best weights, checkpoint; then stop ``fit``.

    Runs last, after ReduceLROnPlateau / EarlyStopping, so the checkpoint holds the learning
    rate the next epoch will use.
    """

    def __init__(self, run: _Run) -> None:
        super().__init__()
        self.run = run
        self.lr = math.nan

    def on_epoch_begin(self, epoch, logs=None):
        self.lr = float(keras.ops.convert_to_numpy(self.run.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        run = self.run
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()},
               "learning_rate": self.lr, "phase": run.phase}
        run.history = pd.concat([run.history, pd.DataFrame([row])], ignore_index=True)
        write_history(run.out_dir, run.history)
        _plot(run.history, run.out_dir / LOSS_PLOT)
        values = run.phase_values()
        if values and values[-1] <= min(values):
            _save_best(run.out_dir, run.trainable_model)
        stopped = bool(run.early_stopping.stopped_epoch) or epoch + 1 >= run.phase_end
        next_epoch = run.phase_end if stopped else epoch + 1
        next_phase = run.phase + 1 if stopped else run.phase
        if stopped:
            _load_best(run.out_dir, run.trainable_model)  # restore best before moving on
        save_checkpoint(run.out_dir, next_epoch, next_phase, run.phase, run.trainable_model,
                        run.optimizer)
        run.next_epoch, run.next_phase = next_epoch, next_phase
        self.model.stop_training = True  # one epoch per fit() call


_warned_plot = False


def _plot(history: pd.DataFrame, path: Path) -> None:
    global _warned_plot
    try:
        from icapnet.visualize import plot_loss_curves

        plot_loss_curves(history, path)
    except Exception as err:  # a plot must never stop training
        if not _warned_plot:
            log.warning("%s: could not draw loss curves (%s)", path, err)
            _warned_plot = True


def _tensorboard(out_dir: Path) -> list[keras.callbacks.Callback]:
    """TensorBoard logs under out/logs when the tensorboard package is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        global _warned_tensorboard
        if not _warned_tensorboard:
            log.warning("tensorboard is not installed: no TensorBoard logs "
                        "(pip install tensorboard)")
            _warned_tensorboard = True
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(out_dir / LOG_DIR))]


_warned_tensorboard = False


# --------------------------------------------------------------------------- fine-tuning


@keras.saving.register_keras_serializable(package=PACKAGE)
class FineTuner(keras.Model):
    """Backbone + captioner trained end to end from images (the backbone partly unfrozen)."""

    def __init__(self, extractor: keras.Model, captioner: Captioner, **kwargs) -> None:
        super().__init__(**kwargs)
        self.extractor = extractor
        self.captioner = captioner

    @property
    def metrics(self) -> list:
        return self.captioner.metrics

    def call(self, inputs, training=False):
        images, captions_in = inputs
        return self.captioner((self.extractor(images, training=training), captions_in),
                              training=training)

    def train_step(self, data):
        images, captions = data[0], data[1]
        with tf.GradientTape() as tape:
            features = self.extractor(images, training=True)
            loss, stats = self.captioner.compute_losses(features, captions, training=True)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = self.captioner.clip_gradients(tape.gradient(scaled, variables), variables,
                                              self.optimizer)
        self.optimizer.apply(grads, variables)
        return self.captioner.update_metrics(loss, stats)

    def test_step(self, data):
        features = self.extractor(data[0], training=False)
        loss, stats = self.captioner.compute_losses(features, data[1], training=False)
        return self.captioner.update_metrics(loss, stats)


def unfreeze_from(extractor: keras.Model, layer_name: str) -> int:
    """Make the backbone layers from ``layer_name`` on trainable; returns how many have weights."""
    for trunk in extractor.layers:
        if isinstance(trunk, keras.Model):
            names = [layer.name for layer in trunk.layers]
            if layer_name not in names:
                raise IcapnetError(f"--fine-tune-from {layer_name}: no such backbone layer "
                                   f"(e.g. {', '.join(n for n in names if 'conv' in n)[-60:]})")
            trunk.trainable = True
            start = names.index(layer_name)
            count = 0
            for i, layer in enumerate(trunk.layers):
                layer.trainable = i >= start
                count += int(i >= start and bool(layer.weights))
            return count
    raise IcapnetError(f"--fine-tune-from {layer_name}: the feature extractor has no backbone")


def image_dataset(config: Config, cache_dir: Path, split: str, batch_size: int,
                  shuffle: bool, seed: int, drop_remainder: bool = False) -> tf.data.Dataset:
    """(images [B,S,S,3] float32, captions [B,T]) from the image files, for fine-tuning."""
    from icapnet.data.datasets import load_dataset
    from icapnet.data.features import open_cache, resize_images
    from icapnet.data.images import load_image

    if not config.data.dataset or not config.data.data_dir:
        raise IcapnetError(f"{cache_dir}: the cache does not record where its images are; "
                           "pass --dataset and --data-dir to fine-tune")
    dataset = load_dataset(config.data.dataset, config.data.data_dir)
    cache = open_cache(cache_dir)
    vocab = cache.vocab
    paths, rows = [], []
    for image_id in cache.image_ids(split):
        path = dataset.images.get(image_id)
        if path is None:
            raise IcapnetError(f"{Path(config.data.data_dir) / image_id}: image of the cache "
                               "is missing from the dataset")
        for caption in cache.captions.get(split, {}).get(image_id, []):
            ids = vocab.encode(caption)
            if len(ids) > 2:
                paths.append(str(path))
                rows.append(ids)
    if not rows:
        raise IcapnetError(f"{cache_dir}: no '{split}' captions to fine-tune on")
    size = int(config.features.image_size)
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.ragged.constant(rows, tf.int32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed)

    def load(path, caption):
        image = tf.numpy_function(lambda p: load_image(p.decode("utf-8")), [path], tf.uint8)
        image = resize_images(tf.ensure_shape(image, [None, None, 3]), size)
        return tf.ensure_shape(image, [size, size, 3]), caption

    ds = ds.map(lambda p, c: load(p, c), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.padded_batch(batch_size, padded_shapes=([size, size, 3], [None]),
                         drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def save_backbone(extractor: keras.Model, config: Config, path: Path) -> None:
    """Write the fine-tuned backbone as weights the feature extractor can load by itself."""
    from icapnet.data.features import get_backbone

    spec = get_backbone(config.features.backbone)
    size = int(config.features.image_size)
    base = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    tuned = {layer.name: layer for m in extractor.layers if isinstance(m, keras.Model)
             for layer in m.layers}
    for layer in base.layers:
        if layer.weights and layer.name in tuned:
            layer.set_weights(tuned[layer.name].get_weights())
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}.weights.h5"
    base.save_weights(str(tmp))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the run


@dataclass
class _Run:
    config: Config
    cache_dir: Path
    out_dir: Path
    strategy: tf.distribute.Strategy
    history: pd.DataFrame
    captioner: Captioner | None = None
    trainable_model: keras.Model | None = None
    optimizer: Any = None
    early_stopping: ResumableEarlyStopping | None = None
    phase: int = 1
    phase_start: int = 0
    phase_end: int = 0
    next_epoch: int = 0
    next_phase: int = 1

    monitor: str = "val_loss"

    def phase_values(self) -> list[float]:
        """The monitored loss of every finished epoch of the current phase."""
        if self.history.empty:
            return []
        rows = self.history[self.history["phase"] == self.phase]
        column = self.monitor if self.monitor in rows else "loss"
        return [float(v) for v in rows[column]]


def train(
    config: Config,
    cache_dir: str | Path,
    out_dir: str | Path,
    verbose: int | str = 1,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    on_model: Callable[[keras.Model], None] | None = None,
) -> pd.DataFrame:
    """Train (or resume training) a captioner on a feature cache into ``out_dir``.

    Returns the full history. The model directory (config.json, vocab.json, weights,
    model.keras) is written at the end with the best weights; history.csv, loss.png,
    checkpoints/ and logs/ are kept up to date after every epoch.
    """
    from icapnet.data.features import open_cache

    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    cfg = config_from_cache(cache_dir, config)
    tcfg = cfg.train
    vocab = open_cache(cache_dir).vocab
    _check_previous_run(out_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".save-tmp-*"):
        import shutil

        shutil.rmtree(stale, ignore_errors=True)

    keras.utils.set_random_seed(tcfg.seed)
    previous_policy = keras.mixed_precision.global_policy().name
    from icapnet.model.precision import policy_name

    keras.mixed_precision.set_global_policy(policy_name(tcfg.mixed_precision, tcfg.strategy))
    try:
        run = _Run(cfg, cache_dir, out_dir, get_strategy(tcfg.strategy), read_history(out_dir))
        run.history = _fit_phases(run, vocab, verbose, extra_callbacks, on_model)
        if run.trainable_model is not run.captioner:  # fine-tuned: the backbone changed too
            backbone = out_dir / BACKBONE_FILE
            save_backbone(run.trainable_model.extractor, cfg, backbone)
            cfg.features.weights = str(backbone.resolve())
        save_model_dir(out_dir, run.captioner, vocab, cfg)
        return run.history
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _check_previous_run(out_dir: Path, cfg: Config) -> None:
    """Refuse to resume into a directory trained with a different model shape."""
    from icapnet.config import CONFIG_FILE

    path = out_dir / CHECKPOINT_DIR / CONFIG_FILE
    if not path.is_file() or latest_checkpoint(out_dir) is None:
        return
    try:
        old = Config.load(path)
    except (ValueError, TypeError) as err:
        raise IcapnetError(f"{path}: unreadable config of the previous run ({err})") from None
    if old.model != cfg.model:
        raise IcapnetError(f"{out_dir}: holds a run with a different model config; "
                           "use another --out or delete it")


def _compile(run: _Run, model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  jit_compile=bool(run.config.train.jit_compile))
    run.optimizer = model.optimizer
    run.optimizer.build(model.trainable_variables)
    run.trainable_model = model


def _fit_phases(run: _Run, vocab, verbose, extra_callbacks, on_model) -> pd.DataFrame:
    """Restore the newest checkpoint (if any), then run the frozen and fine-tuning phases."""
    cfg, tcfg = run.config, run.config.train
    frozen_end = int(tcfg.epochs)
    fine_tune = bool(tcfg.fine_tune_from) and tcfg.fine_tune_epochs > 0
    total = frozen_end + (int(tcfg.fine_tune_epochs) if fine_tune else 0)

    found = latest_checkpoint(run.out_dir)
    model_phase, next_phase = read_checkpoint_phases(found[1]) if found else (1, 1)
    # The run's config sits beside its checkpoints from the start (not in the model dir yet).
    cfg.save(run.out_dir / CHECKPOINT_DIR)

    with run.strategy.scope():
        run.captioner = build_captioner(cfg)
        if on_model is not None:
            on_model(run.captioner)
        if model_phase == 1:
            _compile(run, run.captioner, tcfg.learning_rate)
        else:
            _enter_fine_tuning(run)
        run.next_epoch, run.next_phase = 0, 1
        if found:
            run.next_epoch = restore_checkpoint(found[1], run.trainable_model, run.optimizer)
            run.next_phase = next_phase
            log.info("resuming %s at epoch %d", run.out_dir, run.next_epoch + 1)
    run.history = _trim_history(run.history, run.next_epoch)

    while run.next_epoch < total and run.next_phase <= (2 if fine_tune else 1):
        if run.next_phase == 2 and run.phase == 1 and run.trainable_model is run.captioner:
            with run.strategy.scope():
                _enter_fine_tuning(run)
        run.phase = run.next_phase
        run.phase_start, run.phase_end = (0, frozen_end) if run.phase == 1 else (frozen_end, total)
        run.next_epoch = max(run.next_epoch, run.phase_start)
        if run.next_epoch >= run.phase_end:
            run.next_phase += 1
            continue
        _fit_one_epoch(run, verbose, extra_callbacks)
    return run.history


def _trim_history(history: pd.DataFrame, next_epoch: int) -> pd.DataFrame:
    """Drop rows of epochs whose checkpoint was never written (a crash right after the row)."""
    if history.empty or "epoch" not in history:
        return history
    return history[history["epoch"] < next_epoch].reset_index(drop=True)


def _enter_fine_tuning(run: _Run) -> None:
    from icapnet.data.features import build_feature_extractor

    cfg = run.config
    extractor = build_feature_extractor(cfg.features)
    count = unfreeze_from(extractor, cfg.train.fine_tune_from)
    log.info("fine-tuning %d backbone layers from %s", count, cfg.train.fine_tune_from)
    model = FineTuner(extractor, run.captioner, name="fine_tuner")
    _compile(run, model, cfg.train.fine_tune_learning_rate)
    run.phase = 2


def _datasets(run: _Run, epoch: int) -> tuple[tf.data.Dataset, int, tf.data.Dataset | None, int]:
    """(train, train steps, val or None, val steps) for ``epoch``; the order is seeded by it."""
    from icapnet.data.pipeline import Batching, make_dataset, steps_per_epoch

    tcfg = run.config.train
    drop = tcfg.strategy == "tpu"  # TPUs need a static batch dimension
    seed = epoch_seed(tcfg.seed, epoch)
    if run.phase == 1:
        batching = Batching.from_config(tcfg)
        train_ds = make_dataset(run.cache_dir, "train", tcfg.batch_size, shuffle=True, seed=seed,
                                drop_remainder=drop, shuffle_buffer=tcfg.shuffle_buffer,
                                batching=batching)
        steps = steps_per_epoch(run.cache_dir, "train", tcfg.batch_size, drop_remainder=drop,
                                batching=batching)
        try:
            val_ds = make_dataset(run.cache_dir, "val", tcfg.batch_size, shuffle=False,
                                  drop_remainder=drop, batching=batching)
        except IcapnetError:
            val_ds = None
        return train_ds, steps, val_ds, _val_steps(run, val_ds)
    train_ds = image_dataset(run.config, run.cache_dir, "train", tcfg.batch_size, True, seed, drop)
    steps = steps_per_epoch(run.cache_dir, "train", tcfg.batch_size, drop_remainder=drop)
    try:
        val_ds = image_dataset(run.config, run.cache_dir, "val", tcfg.batch_size, False, 0, drop)
    except IcapnetError:
        val_ds = None
    return train_ds, steps, val_ds, _val_steps(run, val_ds)


def _val_steps(run: _Run, val_ds: tf.data.Dataset | None) -> int | None:
    from icapnet.data.pipeline import Batching, steps_per_epoch

    if val_ds is None:
        return None
    tcfg = run.config.train
    batching = Batching.from_config(tcfg) if run.phase == 1 else None
    return steps_per_epoch(run.cache_dir, "val", tcfg.batch_size,
                           drop_remainder=tcfg.strategy == "tpu", batching=batching) or None


def _fit_one_epoch(run: _Run, verbose, extra_callbacks) -> None:
    tcfg = run.config.train
    epoch = run.next_epoch
    train_ds, steps, val_ds, val_steps = _datasets(run, epoch)
    run.monitor = "val_loss" if val_ds is not None else "loss"
    values = run.phase_values()
    early = ResumableEarlyStopping(monitor=run.monitor, patience=tcfg.early_stopping_patience,
                                   restore_best_weights=False)
    early.seed_state = _plateau_state(values)
    reduce = ResumableReduceLROnPlateau(monitor=run.monitor, factor=tcfg.reduce_lr_factor,
                                        patience=tcfg.reduce_lr_patience, min_lr=1e-7)
    reduce.seed_state = _plateau_state(values, tcfg.reduce_lr_patience)[:2]
    run.early_stopping = early
    callbacks = [*extra_callbacks, *_tensorboard(run.out_dir), reduce, early, EpochEnd(run)]
    run.trainable_model.fit(
        train_ds,
        validation_data=val_ds,
        validation_steps=val_steps,
        steps_per_epoch=steps,
        shuffle=False,  # the dataset is already shuffled, by (seed, epoch)
        initial_epoch=epoch,
        epochs=run.phase_end,
        callbacks=callbacks,
        verbose=verbose,
    )
    if run.next_epoch == epoch:  # fit returned without finishing the epoch
        raise IcapnetError(f"{run.cache_dir}: training stopped before the end of epoch "
                           f"{epoch + 1} (no training data?)")
