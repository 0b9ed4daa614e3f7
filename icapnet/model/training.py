"""The training loop of ``python -m icapnet.train``: phases, strategy, exact resume.

A run has one or two phases: the captioner on cached features, then (with
``fine_tune_from``) the backbone and captioner end to end on images. Each phase is ONE
``fit()`` call over a dataset that holds its epochs one after the other, each shuffled by
a seed that depends only on ``(seed, epoch)``.

Resume is exact: after every epoch :class:`~icapnet.model.callbacks.EpochRecorder` writes
the history and one atomic checkpoint (model variables including the dropout RNG states,
optimizer variables including the learning rate, the plateau callbacks' counters, and where
to continue). Re-running the same command after a crash (even ``kill -9``) continues at the
last completed epoch and reaches the same weights as an uninterrupted run.

Why not Keras' ``BackupAndRestore`` + ``CSVLogger(append=True)``: BackupAndRestore saves
``model.save_weights`` (weights and optimizer, matched by position, without the dropout RNG
states) and restarts the data iterator at its first epoch order; EarlyStopping and
ReduceLROnPlateau restart with empty counters; its weights file and epoch file are two
writes, not one atomic one; and CSVLogger appends a row for an epoch whose backup may never
have been written (a crash in between gives a duplicated epoch). Each of those breaks "same
weights and same history as an uninterrupted run", which is tested, so the run keeps its own
checkpoint and only uses Keras for the loop, the plateau logic and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from icapnet.config import LEGACY_RANDOM_BACKBONE, RANDOM_BACKBONE, STRATEGIES, Config
from icapnet.data.cache import open_cache
from icapnet.errors import IcapnetError
from icapnet.io import remove_stale_temps
from icapnet.layout import (
    BACKBONE_WEIGHTS_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    MANIFEST_FILE,
    read_history,
)
from icapnet.model.callbacks import (
    EpochRecorder,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    tensorboard,
)
from icapnet.model.checkpoints import (
    TrainState,
    latest_checkpoint,
    read_state,
    restore_checkpoint,
)
from icapnet.model.store import build_captioner, save_model_dir

log = logging.getLogger(__name__)

MIN_LEARNING_RATE = 1e-7


def get_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs, else every logical CPU) or
    ``tpu`` (Colab / Cloud TPU)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return _mirrored(tuple(d.name for d in devices))
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as err:
            raise IcapnetError(f"--strategy tpu: no TPU found ({err})") from None
        return tf.distribute.TPUStrategy(resolver)
    raise IcapnetError(f"--strategy {name}: unknown (choose from {', '.join(STRATEGIES)})")


@functools.cache
def _mirrored(devices: tuple[str, ...]) -> tf.distribute.MirroredStrategy:
    # One strategy per device set and process: two MirroredStrategy objects over the same
    # devices number their collective ops alike, and a second one's all-reduce can be
    # matched with the first one's (a "shape mismatch in the collective instance").
    return tf.distribute.MirroredStrategy(list(devices))


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """``adam``, or ``rmsprop`` as Show-Attend-Tell's code has it (Graves' centred RMSProp
    with momentum; see icapnet/presets.py)."""
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=0.95, momentum=0.9, epsilon=1e-4,
                                        centered=True)
    return keras.optimizers.Adam(learning_rate)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of one epoch: depends only on (seed, epoch), so resumes match."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31 - 1)


def config_from_cache(cache_dir: str | Path, config: Config) -> Config:
    """A copy of ``config`` with what the cache decides: vocab size, features, dataset."""
    cache = open_cache(cache_dir)
    manifest = cache.manifest
    regions, channels = cache.feature_shape
    model = dataclasses.replace(config.model, vocab_size=len(cache.vocab),
                                num_regions=regions, feature_dim=channels)
    weights = str(manifest.get("weights", config.features.weights))
    random_init = config.features.random_init
    if weights == "none":
        random_init = str(manifest.get("random_init", LEGACY_RANDOM_BACKBONE))
        if random_init != RANDOM_BACKBONE:
            raise IcapnetError(
                f"{cache.root / MANIFEST_FILE}: features come from the old random backbone "
                f"'{random_init}' (this version builds '{RANDOM_BACKBONE}'); "
                "re-run prepare into a new folder"
            )
    features = dataclasses.replace(
        config.features,
        backbone=manifest.get("backbone", config.features.backbone),
        layer=manifest.get("layer", config.features.layer),
        weights=weights,
        random_init=random_init,
        image_size=int(manifest.get("image_size", config.features.image_size)),
        num_regions=regions,
        feature_dim=channels,
    )
    split = manifest.get("split")
    data = dataclasses.replace(
        config.data,
        cache_dir=str(Path(cache_dir)),
        dataset=config.data.dataset or str(manifest.get("dataset", "")),
        data_dir=config.data.data_dir or str(manifest.get("data_dir", "")),
        # What the model was trained on, for the page, evaluate and the caption CLI.
        split=str(split["source"]) if isinstance(split, dict) and "source" in split else None,
        **{f"{s}_images": cache.num_images(s) for s in ("train", "val", "test")},
        **{f"{s}_captions": cache.num_captions(s) for s in ("train", "val", "test")},
    )
    return dataclasses.replace(config, model=model, features=features, data=data)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class _Phase:
    number: int  # 1: captioner on cached features, 2: fine-tuning on images
    start: int  # first epoch
    end: int  # one past the last epoch


class _Run:
    """The models, strategy and phases of one ``train()`` call."""

    def __init__(self, config: Config, cache_dir: Path, model_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self.model_dir = model_dir
        self.strategy = get_strategy(config.train.strategy)
        self.captioner: keras.Model | None = None
        self.model: keras.Model | None = None  # what fit() trains: captioner or fine-tuner

    def phases(self) -> list[_Phase]:
        tcfg = self.config.train
        frozen = _Phase(1, 0, int(tcfg.epochs))
        if not tcfg.fine_tune_from or tcfg.fine_tune_epochs <= 0:
            return [frozen]
        return [frozen, _Phase(2, frozen.end, frozen.end + int(tcfg.fine_tune_epochs))]

    def build(self, model_phase: int, on_model: Callable[[keras.Model], None] | None) -> None:
        with self.strategy.scope():
            self.captioner = build_captioner(self.config)
            if on_model is not None:
                on_model(self.captioner)
            if model_phase == 1:
                self._compile(self.captioner, self.config.train.learning_rate)
            else:
                self.start_fine_tuning()

    def start_fine_tuning(self) -> None:
        from icapnet.model.backbone import build_feature_extractor
        from icapnet.model.finetune import FineTuner, unfreeze_from

        cfg = self.config
        with self.strategy.scope():
            extractor = build_feature_extractor(cfg.features)
            count = unfreeze_from(extractor, cfg.train.fine_tune_from)
            log.info("fine-tuning %d backbone layers from %s", count, cfg.train.fine_tune_from)
            self._compile(FineTuner(extractor, self.captioner),
                          cfg.train.fine_tune_learning_rate)

    def _compile(self, model: keras.Model, learning_rate: float) -> None:
        model.compile(optimizer=make_optimizer(self.config.train.optimizer, learning_rate),
                      jit_compile=bool(self.config.train.jit_compile))
        model.optimizer.build(model.trainable_variables)
        self.model = model

    def datasets(self, phase: _Phase, first: int) -> tuple[tf.data.Dataset, int,
                                                            tf.data.Dataset | None]:
        """(train epochs ``first``..end, steps per epoch, validation or None) of a phase."""
        from icapnet.data.pipeline import make_dataset, make_epochs_dataset, steps_per_epoch
        from icapnet.model.finetune import image_dataset

        tcfg = self.config.train
        drop = tcfg.strategy == "tpu"  # TPUs need a static batch dimension
        seeds = [epoch_seed(tcfg.seed, e) for e in range(first, phase.end)]
        steps = steps_per_epoch(self.cache_dir, "train", tcfg.batch_size, drop_remainder=drop)
        if steps < 1:
            raise IcapnetError(f"{self.cache_dir}: no 'train' captions to train on")
        if phase.number == 1:
            train_ds = make_epochs_dataset(self.cache_dir, "train", tcfg.batch_size, seeds,
                                           drop_remainder=drop, shuffle_buffer=tcfg.shuffle_buffer)
        else:
            train_ds = image_dataset(self.config, self.cache_dir, "train", tcfg.batch_size,
                                     seeds, drop)
        try:
            if phase.number == 1:
                val_ds = make_dataset(self.cache_dir, "val", tcfg.batch_size, shuffle=False,
                                      drop_remainder=drop)
            else:
                val_ds = image_dataset(self.config, self.cache_dir, "val", tcfg.batch_size,
                                       None, drop)
        except IcapnetError:
            return train_ds, steps, None
        val_steps = steps_per_epoch(self.cache_dir, "val", tcfg.batch_size, drop_remainder=drop)
        if val_steps < 1:
            return train_ds, steps, None
        # A known length makes Keras start a fresh pass over it every epoch.
        return train_ds, steps, val_ds.apply(tf.data.experimental.assert_cardinality(val_steps))

    def fit(self, phase: _Phase, state: TrainState, history: pd.DataFrame, verbose: int | str,
            extra_callbacks: Sequence[keras.callbacks.Callback]) -> tuple[pd.DataFrame,
                                                                           TrainState]:
        """One ``fit()`` from ``state.next_epoch`` to the end of ``phase`` (or early stop)."""
        tcfg = self.config.train
        first = max(state.next_epoch, phase.start)
        train_ds, steps, val_ds = self.datasets(phase, first)
        monitor, scorer = self.monitor(phase, val_ds is not None)
        mode = "max" if monitor == "val_bleu4" else "min"
        resume = state.callbacks if state.model_phase == phase.number else {}
        early = ResumableEarlyStopping(monitor=monitor, mode=mode,
                                       patience=tcfg.early_stopping_patience)
        early.resume = resume.get("early_stopping")
        plateau: dict[str, keras.callbacks.Callback] = {"early_stopping": early}
        if tcfg.reduce_lr_patience > 0:
            reduce = ResumableReduceLROnPlateau(monitor=monitor, mode=mode,
                                                factor=tcfg.reduce_lr_factor,
                                                patience=tcfg.reduce_lr_patience,
                                                min_lr=MIN_LEARNING_RATE)
            reduce.resume = resume.get("reduce_lr")
            plateau = {"early_stopping": early, "reduce_lr": reduce}
        recorder = EpochRecorder(self.model_dir, phase.number, phase.end, history, monitor,
                                 plateau, mode=mode)
        # The plateau callbacks run in the order reduce, early (as before), the recorder last.
        callbacks = [*scorer, *extra_callbacks, *tensorboard(self.model_dir),
                     *([plateau["reduce_lr"]] if "reduce_lr" in plateau else []), early,
                     recorder]
        try:
            self.model.fit(
                train_ds,
                validation_data=val_ds,
                steps_per_epoch=steps,
                initial_epoch=first,
                epochs=phase.end,
                callbacks=callbacks,
                shuffle=False,  # each epoch is already shuffled by its own seed
                verbose=verbose,
            )
        except (tf.errors.DataLossError, tf.errors.FailedPreconditionError) as err:
            # A corrupt record (TensorFlow names an offset, not the shard), or fewer records
            # than the manifest promised (the datasets' asserted cardinality).
            if isinstance(err, tf.errors.FailedPreconditionError) and \
                    "expected to contain" not in err.message:
                raise
            from icapnet.data.cache_check import corrupt_data_error

            raise corrupt_data_error(self.cache_dir, open_cache(self.cache_dir,
                                                                check_files=False).manifest,
                                     ("train", "val"), err) from None
        if recorder.state is None:
            raise IcapnetError(f"{self.cache_dir}: training stopped before the end of epoch "
                               f"{first + 1}")
        return recorder.history, recorder.state

    def monitor(self, phase: _Phase, has_val: bool) -> tuple[str, list[keras.callbacks.Callback]]:
        """What early stopping watches in ``phase``, and the callback that computes it.

        Validation BLEU-4 is decoded from the cached features, so it serves the first phase;
        the fine-tuning phase (whose features change with the backbone) watches val_loss.
        """
        if not has_val:
            return "loss", []
        if self.config.train.early_stopping_metric == "val_bleu4" and phase.number == 1:
            from icapnet.model.callbacks import ValidationBleu

            return "val_bleu4", [ValidationBleu(self.cache_dir, self.captioner,
                                                self.config.model.max_length,
                                                self.config.train.batch_size)]
        return "val_loss", []


def train(
    config: Config,
    cache_dir: str | Path,
    out_dir: str | Path,
    verbose: int | str = 1,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    on_model: Callable[[keras.Model], None] | None = None,
) -> pd.DataFrame:
    """Train (or resume training) a captioner on a feature cache into ``out_dir``.

    Returns the full history. The model directory (config.json, vocab.json, weights) is
    written at the end with the best weights; history.csv, loss.png, checkpoints/ and logs/
    are kept up to date after every epoch. ``config`` is not modified.
    """
    config.validate()
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    cfg = config_from_cache(cache_dir, config)
    vocab = open_cache(cache_dir).vocab
    _check_previous_run(out_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, out_dir / CHECKPOINT_DIR):  # writes a killed run left half-done
        remove_stale_temps(folder)

    keras.utils.set_random_seed(cfg.train.seed)
    previous_policy = keras.mixed_precision.global_policy().name
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        run = _Run(cfg, cache_dir, out_dir)
        history = _run_phases(run, verbose, extra_callbacks, on_model)
        if run.model is not run.captioner:  # fine-tuned: the backbone changed too
            from icapnet.model.finetune import save_backbone

            backbone = out_dir / BACKBONE_WEIGHTS_FILE
            save_backbone(run.model.extractor, cfg, backbone)
            cfg = dataclasses.replace(cfg, features=dataclasses.replace(
                cfg.features, weights=str(backbone.resolve())))
        save_model_dir(out_dir, run.captioner, vocab, cfg)
        return history
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run_phases(run: _Run, verbose: int | str,
                extra_callbacks: Sequence[keras.callbacks.Callback],
                on_model: Callable[[keras.Model], None] | None) -> pd.DataFrame:
    """Restore the newest checkpoint (if any), then fit each phase that is not done yet."""
    found = latest_checkpoint(run.model_dir)
    state = read_state(found) if found else TrainState()
    # The run's config sits beside its checkpoints from the start (not in the model dir yet).
    run.config.save(run.model_dir / CHECKPOINT_DIR)
    run.build(state.model_phase, on_model)
    if found:
        with run.strategy.scope():
            state = restore_checkpoint(found, run.model, run.model.optimizer)
    history = _trim_history(read_history(run.model_dir), state.next_epoch)
    todo = [phase for phase in run.phases() if not _phase_done(phase, state, history)]
    if found and todo:
        log.info("resuming %s at epoch %d", run.model_dir,
                 max(state.next_epoch, todo[0].start) + 1)
    elif found:
        log.info("%s: already trained (%d epochs in its history); nothing to do", run.model_dir,
                 len(history))
    for phase in run.phases():
        if _phase_done(phase, state, history):
            continue
        if phase.number == 2 and run.model is run.captioner:
            run.start_fine_tuning()
        history, state = run.fit(phase, state, history, verbose, extra_callbacks)
    return history


def _phase_done(phase: _Phase, state: TrainState, history: pd.DataFrame) -> bool:
    """Whether ``phase`` has nothing left to train.

    A phase that ran to its last epoch and is now given more epochs (a larger ``--epochs``
    on a finished run) continues; one that early stopping ended stays done, and so does a
    phase the run has moved past.
    """
    if state.next_epoch >= phase.end:
        return True
    if phase.number >= state.next_phase:
        return False
    if phase.number != state.model_phase or "phase" not in history:
        return True
    ran = history.loc[history["phase"] == phase.number, "epoch"]
    return ran.empty or int(ran.max()) + 1 != state.next_epoch


def _trim_history(history: pd.DataFrame, next_epoch: int) -> pd.DataFrame:
    """Drop rows of epochs whose checkpoint was never written (a crash right after the row)."""
    if history.empty or "epoch" not in history:
        return history
    return history[history["epoch"] < next_epoch].reset_index(drop=True)


def _check_previous_run(out_dir: Path, cfg: Config) -> None:
    """Refuse to resume into a directory trained with a different model shape."""
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
    state = read_state(latest_checkpoint(out_dir))
    if state.model_phase == 2 and old.train.epochs != cfg.train.epochs:
        raise IcapnetError(f"--epochs: {out_dir} already fine-tunes after epoch "
                           f"{old.train.epochs}; keep --epochs {old.train.epochs} "
                           "(use --fine-tune-epochs to train longer)")


def describe_history(history: pd.DataFrame) -> str:
    """One line about a finished run (what ``train`` prints)."""
    if history.empty:
        return "trained 0 epochs"
    best = "val_loss" if "val_loss" in history else "loss"
    text = (f"trained {len(history)} epochs; best {best} {history[best].min():.4f}, "
            f"last loss {history.iloc[-1]['loss']:.4f}")
    if "val_bleu4" in history and history["val_bleu4"].notna().any():
        text += f"; best val_bleu4 {history['val_bleu4'].max():.4f}"
    return text
