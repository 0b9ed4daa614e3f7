"""Time one training epoch as ``python -m icapnet.train`` runs it, on whatever device TF sees.

Used by ``benchmarks/flickr8k_epoch.py`` (a Flickr8k-sized cache of random features) and by
the Colab notebook (its real cache), so both print the same measurement. The epoch runs
through :func:`icapnet.model.training.train` into a scratch folder; a callback records when
every training batch ends, which separates the one-off cost of the first batches (tracing,
XLA compiling) from the steady per-step time a long run pays.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras


@dataclass
class EpochTiming:
    device: str
    steps: int
    captions: int
    epoch_s: float  # first batch begin -> last training batch end (validation excluded)
    steady_step_s: float  # mean step time without the batches that traced / compiled
    validation_s: float
    settings: dict

    @property
    def captions_per_s(self) -> float:
        return self.captions / self.epoch_s

    @property
    def one_off_s(self) -> float:
        """Time beyond ``steps`` steady steps: tracing / compiling, pipeline start-up."""
        return max(0.0, self.epoch_s - self.steps * self.steady_step_s)

    def projected_s(self, epochs: int) -> float:
        """``epochs`` epochs: the one-off cost once, then steady epochs."""
        return self.one_off_s + epochs * self.steps * self.steady_step_s

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "captions_per_s": self.captions_per_s,
                "one_off_s": self.one_off_s, "projected_20_epochs_s": self.projected_s(20)}


class _BatchClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.begin = 0.0
        self.ends: list[float] = []
        self.test_begin = self.test_end = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if not self.begin:
            self.begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def on_test_begin(self, logs=None):
        self.test_begin = time.perf_counter()

    def on_test_end(self, logs=None):
        self.test_end = time.perf_counter()


def device_name() -> str:
    """"GPU: Tesla T4" / "CPU: 2 cores" - what the epoch ran on."""
    import os

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)} (x{len(gpus)})"
    return f"CPU: {os.cpu_count()} cores"


def time_epoch(config, cache_dir: str | Path, out_dir: str | Path | None = None,
               verbose: int = 0) -> EpochTiming:
    """Train ``config`` for one epoch on ``cache_dir`` (into a scratch folder) and time it."""
    from icapnet.data.pipeline import count_pairs
    from icapnet.model.training import train

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    clock = _BatchClock()
    with tempfile.TemporaryDirectory(prefix="icapnet-epoch-") as scratch:
        train(config, cache_dir, Path(out_dir or scratch) / "model", verbose=verbose,
              extra_callbacks=[clock])
    steps = len(clock.ends)
    gaps = [b - a for a, b in zip([clock.begin, *clock.ends], clock.ends, strict=False)]
    # Batches that trace or compile (the first of each bucket shape) take many times a
    # normal step; the steady step is the mean of the others.
    typical = statistics.median(gaps)
    normal = [g for g in gaps if g <= 5 * typical] or gaps
    steady = statistics.fmean(normal)
    t = config.train
    settings = {"batch_size": t.batch_size, "mixed_precision": t.mixed_precision,
                "jit_compile": t.jit_compile, "group_by_image": t.group_by_image,
                "length_buckets": t.length_buckets}
    return EpochTiming(device=device_name(), steps=steps,
                       captions=count_pairs(cache_dir, "train"),
                       epoch_s=clock.ends[-1] - clock.begin, steady_step_s=steady,
                       validation_s=max(0.0, clock.test_end - clock.test_begin),
                       settings=settings)
