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

(Over 400 lines: the phases, the resume state, the multi-worker write folder and the
dataset choice all read and change one ``_Run``; split apart they would pass it around.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from icapnet import fs
from icapnet.config import LEGACY_RANDOM_BACKBONE, RANDOM_BACKBONE, Config
from icapnet.data.cache import open_cache
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_bytes, remove_stale_temps
from icapnet.layout import (
    BACKBONE_WEIGHTS_FILE,
    BEST_WEIGHTS_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    MANIFEST_FILE,
    read_history,
)
from icapnet.model.callbacks import (
    AveragedWeights,
    EpochRecorder,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    tensorboard,
)
from icapnet.model.checkpoints import (
    TrainState,
    latest_checkpoint,
    load_best,
    read_state,
    restore_checkpoint,
)
from icapnet.model.store import build_captioner, save_model_dir
from icapnet.model.strategies import (
    gather_from_workers,
    get_strategy,
    is_chief,
    is_multi_worker,
    worker_name,
)

log = logging.getLogger(__name__)

MIN_LEARNING_RATE = 1e-7


def make_optimizer(name: str, learning_rate: float,
                   ema_momentum: float = 0.0) -> keras.optimizers.Optimizer:
    """``adam``, or ``rmsprop`` as Show-Attend-Tell's code has it (Graves' centred RMSProp
    with momentum; see icapnet/presets.py); with a moving average of the weights when
    ``ema_momentum`` > 0."""
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum > 0 else {}
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=0.95, momentum=0.9, epsilon=1e-4,
                                        centered=True, **ema)
    return keras.optimizers.Adam(learning_rate, **ema)


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
        cache_dir=str(fs.path(cache_dir)),
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

    def __init__(self, config: Config, cache_dir: Path, model_dir: Path,
                 strategy: tf.distribute.Strategy, write_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self.model_dir = model_dir  # where the run's state is read from (shared by workers)
        self.write_dir = write_dir  # where this process writes it (model_dir on the chief)
        self.strategy = strategy
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
            self.captioner.fused_step = self._fused_step
            if on_model is not None:
                on_model(self.captioner)
            if model_phase == 1:
                self._compile(self.captioner, self._first_phase_learning_rate())
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

    def _first_phase_learning_rate(self) -> float | keras.optimizers.schedules.CosineDecay:
        """The initial rate, or with ``lr_schedule="cosine"`` Keras' cosine decay over every
        step of the phase (a function of the optimizer's step count, which the checkpoint
        holds, so a resumed run continues on the same curve)."""
        tcfg = self.config.train
        if tcfg.lr_schedule != "cosine":
            return tcfg.learning_rate
        total = max(1, self.train_steps(1) * int(tcfg.epochs))
        return keras.optimizers.schedules.CosineDecay(tcfg.learning_rate, decay_steps=total)

    def _compile(self, model: keras.Model,
                 learning_rate: float | keras.optimizers.schedules.LearningRateSchedule) -> None:
        model.compile(optimizer=make_optimizer(self.config.train.optimizer, learning_rate,
                                               self.config.train.ema_momentum),
                      jit_compile=bool(self.config.train.jit_compile))
        model.optimizer.build(model.trainable_variables)
        self.model = model

    @functools.cached_property
    def _fused_step(self) -> bool:
        """Whether the training step runs on the fused kernels (decided once per run: "auto"
        logs once why it falls back)."""
        from icapnet.model.fused_step import for_config

        return for_config(self.config)

    @functools.cached_property
    def _padding(self) -> tuple[bool, int | None]:
        """(drop the last partial batch, the one caption length every batch pads to). Cached:
        the length tokenises every train and val caption, and the step count and the datasets
        both need it."""
        from icapnet.data.pipeline import longest_caption

        tcfg = self.config.train
        # Static shapes (TPUs always): one caption length for train and val, no partial batch.
        # XLA on CPU needs the fixed length too (its gradient of a while loop over a varying
        # caption length fails to compile); a smaller last batch only costs one more compile.
        drop = bool(tcfg.static_shapes) or tcfg.strategy == "tpu"
        fixed = drop or bool(tcfg.jit_compile)
        return drop, longest_caption(self.cache_dir, ("train", "val")) if fixed else None

    def train_steps(self, phase_number: int) -> int:
        """Training steps per epoch of a phase."""
        from icapnet.data.pipeline import Batching, steps_per_epoch

        tcfg = self.config.train
        drop, length = self._padding
        batching = Batching.from_config(tcfg) if phase_number == 1 else None
        return steps_per_epoch(self.cache_dir, "train", tcfg.batch_size, drop_remainder=drop,
                               batching=batching, caption_length=length)

    def datasets(self, phase: _Phase, first: int) -> tuple[tf.data.Dataset, int,
                                                            tf.data.Dataset | None]:
        """(train epochs ``first``..end, steps per epoch, validation or None) of a phase."""
        from icapnet.data.pipeline import (
            Batching,
            make_dataset,
            make_epochs_dataset,
            steps_per_epoch,
        )
        from icapnet.model.finetune import image_dataset

        tcfg = self.config.train
        drop, length = self._padding
        seeds = [epoch_seed(tcfg.seed, e) for e in range(first, phase.end)]
        batching = Batching.from_config(tcfg) if phase.number == 1 else None
        steps = self.train_steps(phase.number)
        if steps < 1:
            raise IcapnetError(f"{self.cache_dir}: no 'train' captions to train on"
                               + (" (fewer than one full batch)" if drop else ""))
        if phase.number == 1:
            train_ds = make_epochs_dataset(self.cache_dir, "train", tcfg.batch_size, seeds,
                                           drop_remainder=drop, shuffle_buffer=tcfg.shuffle_buffer,
                                           caption_length=length, batching=batching)
        else:
            train_ds = image_dataset(self.config, self.cache_dir, "train", tcfg.batch_size,
                                     seeds, drop, length)
        try:
            if phase.number == 1:
                val_ds = make_dataset(self.cache_dir, "val", tcfg.batch_size, shuffle=False,
                                      drop_remainder=drop, caption_length=length)
            else:
                val_ds = image_dataset(self.config, self.cache_dir, "val", tcfg.batch_size,
                                       None, drop, length)
        except IcapnetError:
            return self._sharded(train_ds), steps, None
        val_steps = steps_per_epoch(self.cache_dir, "val", tcfg.batch_size, drop_remainder=drop)
        if val_steps < 1:
            return self._sharded(train_ds), steps, None
        # A known length makes Keras start a fresh pass over it every epoch.
        val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(val_steps))
        return self._sharded(train_ds), steps, self._sharded(val_ds)

    def _sharded(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """Across workers, split every global batch (not the shard files): each worker reads
        the whole cache, and the run sees the batches of a one-process run."""
        if not is_multi_worker(self.strategy):
            return ds
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.DATA
        return ds.with_options(options)

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
        # The cosine schedule owns the first phase's rate; the plateau cut would fight it.
        cosine = phase.number == 1 and tcfg.lr_schedule == "cosine"
        if tcfg.reduce_lr_patience > 0 and not cosine:
            reduce = ResumableReduceLROnPlateau(monitor=monitor, mode=mode,
                                                factor=tcfg.reduce_lr_factor,
                                                patience=tcfg.reduce_lr_patience,
                                                min_lr=MIN_LEARNING_RATE)
            reduce.resume = resume.get("reduce_lr")
            plateau = {"early_stopping": early, "reduce_lr": reduce}
        recorder = EpochRecorder(self.write_dir, phase.number, phase.end, history, monitor,
                                 plateau, mode=mode)
        # The averaged weights go in first, so the scorer, the plateau callbacks and the
        # recorder (best weights) see them; the plateau callbacks run in the order reduce,
        # early (as before), the recorder last.
        resumed = state.model_phase == phase.number and state.next_epoch > phase.start
        averaged = [AveragedWeights(resumed)] if tcfg.ema_momentum > 0 else []
        callbacks = [*averaged, *scorer, *extra_callbacks, *tensorboard(self.write_dir),
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
        if averaged:  # fit() ended by copying the optimizer's averages in: the best again
            load_best(self.write_dir, self.model)
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
    cache_dir, out_dir = fs.path(cache_dir), fs.path(out_dir)
    cfg = config_from_cache(cache_dir, config)
    vocab = open_cache(cache_dir).vocab
    _check_previous_run(out_dir, cfg)
    # Multi-worker: created before the first TensorFlow op runs here (it sets up collectives).
    strategy = get_strategy(cfg.train.strategy)
    chief = is_chief(strategy)
    if chief:
        out_dir.mkdir(parents=True, exist_ok=True)
        for folder in (out_dir, out_dir / CHECKPOINT_DIR):  # writes a killed run left half-done
            remove_stale_temps(folder)
    keras.utils.set_random_seed(cfg.train.seed)
    previous_policy = keras.mixed_precision.global_policy().name
    from icapnet.model.precision import policy_name

    keras.mixed_precision.set_global_policy(policy_name(cfg.train.mixed_precision,
                                                        cfg.train.strategy))
    # Every worker writes what the chief writes, the others into a private folder deleted at
    # the end (TensorFlow's advice: a save may need all workers to take part).
    with contextlib.ExitStack() as stack:
        write_dir = out_dir if chief else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="icapnet-worker-")))
        try:
            run = _Run(cfg, cache_dir, out_dir, strategy, write_dir)
            try:
                history = _run_phases(run, verbose, extra_callbacks, on_model)
            except (tf.errors.UnavailableError, tf.errors.AbortedError) as err:
                if not is_multi_worker(strategy):
                    raise
                # A worker died or cannot be reached: the collectives were aborted everywhere.
                detail = " ".join(line.strip() for line in err.message.splitlines()[:3])
                raise IcapnetError(f"{out_dir}: {worker_name(strategy)} lost another worker "
                                   f"({detail}); start every worker again with the same "
                                   "command: training resumes from the last checkpoint"
                                   ) from None
            if run.model is not run.captioner:  # fine-tuned: the backbone changed too
                from icapnet.model.finetune import save_backbone

                backbone = write_dir / BACKBONE_WEIGHTS_FILE
                save_backbone(run.model.extractor, cfg, backbone)
                cfg = dataclasses.replace(cfg, features=dataclasses.replace(
                    cfg.features, weights=str((out_dir / BACKBONE_WEIGHTS_FILE).resolve())))
            save_model_dir(write_dir, run.captioner, vocab, cfg)
            return history
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)


def _run_phases(run: _Run, verbose: int | str,
                extra_callbacks: Sequence[keras.callbacks.Callback],
                on_model: Callable[[keras.Model], None] | None) -> pd.DataFrame:
    """Restore the newest checkpoint (if any), then fit each phase that is not done yet."""
    found = latest_checkpoint(run.model_dir)
    state = read_state(found) if found else TrainState()
    _check_workers_agree(run, found, state)
    # The run's config sits beside its checkpoints from the start (not in the model dir yet).
    run.config.save(run.write_dir / CHECKPOINT_DIR)
    if found and run.write_dir != run.model_dir:  # a worker restores the chief's best weights
        best = run.model_dir / CHECKPOINT_DIR / BEST_WEIGHTS_FILE
        if best.is_file():
            atomic_write_bytes(run.write_dir / CHECKPOINT_DIR / BEST_WEIGHTS_FILE,
                               best.read_bytes())
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


def _check_workers_agree(run: _Run, found: Path | None, state: TrainState) -> None:
    """Every worker must resume from the same checkpoint (they read it from ``--out``)."""
    mark = -1 if found is None else state.next_phase * 1_000_000 + state.next_epoch
    marks = gather_from_workers(run.strategy, mark)
    if len(set(marks)) > 1:
        seen = ", ".join("none" if m < 0 else f"epoch {m % 1_000_000}" for m in marks)
        raise IcapnetError(f"{run.model_dir}: the workers found different checkpoints ({seen}); "
                           "--out must be one folder every worker reads (a shared file system "
                           f"or gs://), this is {worker_name(run.strategy)}")


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
    if (old.train.ema_momentum > 0) != (cfg.train.ema_momentum > 0):
        # The checkpoint holds the average in the model and the raw weights in the
        # optimizer's slots (callbacks.AveragedWeights), or no average at all.
        raise IcapnetError(f"--ema-momentum: {out_dir} was trained "
                           f"{'with' if old.train.ema_momentum else 'without'} a weight "
                           f"average; keep --ema-momentum {old.train.ema_momentum} or use "
                           "another --out")
    if old.train.lr_schedule != cfg.train.lr_schedule:
        # A schedule has no learning-rate variable among the optimizer's: the checkpoint's
        # optimizer state would not match.
        raise IcapnetError(f"--lr-schedule: {out_dir} was trained with --lr-schedule "
                           f"{old.train.lr_schedule}; keep it or use another --out")
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
