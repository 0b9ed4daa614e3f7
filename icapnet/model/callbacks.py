"""Callbacks of a training run: what is written after each epoch, and plateau callbacks
whose counters survive a restart.

Keras' own ``EarlyStopping`` / ``ReduceLROnPlateau`` keep their counters in memory only;
the subclasses here hand them to the checkpoint and take them back on resume, so a resumed
run stops (and lowers its learning rate) exactly when the uninterrupted run would have.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from icapnet.layout import LOG_DIR, LOSS_PLOT_FILE, write_history
from icapnet.model.checkpoints import TrainState, load_best, save_best, save_checkpoint

log = logging.getLogger(__name__)


class _Resumable:
    """Mix-in: ``state()`` for the checkpoint; the counters given as ``resume`` are restored
    when training begins (after Keras resets them)."""

    STATE: tuple[str, ...] = ()
    resume: Mapping[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.STATE}
        return {k: v.item() if hasattr(v, "item") else v for k, v in values.items()}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # type: ignore[misc]
        for name, value in (self.resume or {}).items():
            setattr(self, name, value)


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    STATE = ("best", "wait", "best_epoch")


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    STATE = ("best", "wait", "cooldown_counter")


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras' ``SwapEMAWeights(swap_on_epoch=True)``: validation and every callback after
    this one at the end of an epoch (scorer, plateau callbacks, the recorder's best weights)
    see the optimizer's moving average of the weights, and training steps on the raw ones.

    The recorder's checkpoint is therefore written with the average in the model and the raw
    weights in the optimizer's average slots. A run resumed from it (``resumed``) starts in
    that state, so the first ``on_epoch_begin`` swaps them back, as in the run that was
    interrupted.
    """

    def __init__(self, resumed: bool = False) -> None:
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = bool(resumed)


class EpochRecorder(keras.callbacks.Callback):
    """After each epoch, in this order: history row, loss plot, best weights, checkpoint.

    It must come last in the callback list, after the plateau callbacks, so the checkpoint
    holds the learning rate and the counters the next epoch will use. When the phase ends
    (its last epoch, or early stopping fired) the best weights are restored before the
    checkpoint is written, so the next phase and the saved model start from them.

    loss.png is redrawn when ``plot_every`` seconds have passed since the last drawing and
    always when the phase ends: drawing takes ~0.3 s, nothing next to a real epoch, but most
    of an epoch of a few seconds (tests, smoke runs).
    """

    plot_every = 10.0

    def __init__(self, model_dir: Path, phase: int, phase_end: int, history: pd.DataFrame,
                 monitor: str, plateau: Mapping[str, _Resumable], mode: str = "min") -> None:
        super().__init__()
        self.mode = mode  # "max" for a score (val_bleu4), "min" for a loss
        self.model_dir = model_dir
        self.phase = phase
        self.phase_end = phase_end
        self.history = history
        self.monitor = monitor
        self.plateau = plateau
        self.state: TrainState | None = None  # set once an epoch has finished
        self._learning_rate = math.nan
        self._plotted_at = -math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self._learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()},
               "learning_rate": self._learning_rate, "phase": self.phase}
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)
        write_history(self.model_dir, self.history)
        ends = bool(self.model.stop_training) or epoch + 1 >= self.phase_end
        if ends or time.monotonic() - self._plotted_at >= self.plot_every:
            plot_history(self.history, self.model_dir / LOSS_PLOT_FILE)
            self._plotted_at = time.monotonic()
        values = self._phase_values()
        best = max(values) if self.mode == "max" else min(values) if values else None
        if values and values[-1] == best:
            save_best(self.model_dir, self.model)
        if ends:
            load_best(self.model_dir, self.model)
        self.state = TrainState(
            next_epoch=self.phase_end if ends else epoch + 1,
            next_phase=self.phase + 1 if ends else self.phase,
            model_phase=self.phase,
            callbacks={name: cb.state() for name, cb in self.plateau.items()},
        )
        save_checkpoint(self.model_dir, self.state, self.model, self.model.optimizer)

    def _phase_values(self) -> list[float]:
        rows = self.history[self.history["phase"] == self.phase]
        if self.monitor not in rows:
            self.monitor, self.mode = "loss", "min"
        return [float(v) for v in rows[self.monitor]]


class ValidationBleu(keras.callbacks.Callback):
    """After each epoch: BLEU-4 of greedy captions of the validation split, as ``val_bleu4``.

    What Show-Attend-Tell stops on. The validation features are streamed from the cache
    every epoch (Flickr8k's would take 400 MB held as float32), the captions are decoded
    free-running (the decoder sees only its own words) and scored with nltk's corpus BLEU
    against every reference, like ``evaluate``. It must come before the callbacks that
    watch ``val_bleu4``.
    """

    def __init__(self, cache_dir: Path, captioner: keras.Model, max_length: int,
                 batch_size: int) -> None:
        super().__init__()
        self.cache_dir = Path(cache_dir)
        self.captioner = captioner
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        from icapnet.data.cache import open_cache
        from icapnet.data.pipeline import make_image_dataset
        from icapnet.inference.decoding import greedy_decode
        from icapnet.inference.metrics import nltk_bleu

        cache = open_cache(self.cache_dir)
        references = cache.captions.get("val") or {}
        captions: dict[str, str] = {}
        for ids, features in make_image_dataset(self.cache_dir, "val", self.batch_size):
            tokens = greedy_decode(self.captioner, features, self.max_length).tokens
            for raw_id, row in zip(ids.numpy(), keras.ops.convert_to_numpy(tokens), strict=True):
                image_id = raw_id.decode("utf-8")
                if references.get(image_id):
                    captions[image_id] = cache.vocab.decode(row.tolist())
        if captions:
            logs["val_bleu4"] = nltk_bleu(references, captions)["BLEU-4"]


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def plot_history(history: pd.DataFrame, path: Path) -> None:
    """Redraw loss.png; a plot must never stop training, so failures are logged once."""
    try:
        from icapnet.plots import plot_loss_curves

        plot_loss_curves(history, path)
    except Exception as err:
        _warn_once("plot", "%s: could not draw loss curves (%s)", path, err)


def tensorboard(model_dir: Path) -> list[keras.callbacks.Callback]:
    """TensorBoard logs under MODEL/logs when the tensorboard package is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        _warn_once("tensorboard", "tensorboard is not installed: no TensorBoard logs "
                   "(pip install tensorboard)")
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(model_dir / LOG_DIR))]
