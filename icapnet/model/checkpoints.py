"""Resume state of a training run, with every variable matched to the model by NAME.

A checkpoint (``checkpoints/epoch-NNNN.npz``, one atomic file) holds the model's variables
including the dropout RNG states, the optimizer's variables including the learning rate,
and a small JSON state: where training continues (epoch, phase), which model wrote it, and
the counters of the plateau callbacks. ``best.npz`` holds the weights of the best epoch.

Names are the path of attributes through the layer tree (``decoder/attention/W1/kernel``),
not Keras' variable paths, which Keras uniquifies per process (a second model built in the
same process is ``captioner_1/...`` and its dropout states ``seed_generator_7``). Optimizer
slots are named after the variable they belong to (``decoder/fc2/kernel:momentum``). A
checkpoint whose names or shapes differ from the model is refused in one line: it was
written by another model. Why not ``tf.train.Checkpoint``: on Keras 3 models it reaches the
weights only through the optimizer's positional list and skips the RNG states, which exact
resume needs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from icapnet import fs
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_bytes
from icapnet.layout import (
    BEST_WEIGHTS_FILE,
    CHECKPOINT_DIR,
    checkpoint_epoch,
    checkpoint_name,
)

KEEP_CHECKPOINTS = 2
_STATE_KEY = "state"


@dataclass
class TrainState:
    """Where a run continues. ``model_phase``: 1 wrote a captioner, 2 a backbone + captioner."""

    next_epoch: int = 0
    next_phase: int = 1
    model_phase: int = 1
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------- names


def model_variables(model: keras.Layer, rng: bool = True) -> dict[str, Any]:
    """Every variable of ``model`` by its attribute path; ``rng=False`` leaves out seed states."""
    out: dict[str, Any] = {}
    _walk(model, "", out, set(), rng)
    return out


def _walk(layer: keras.Layer, prefix: str, out: dict[str, Any], seen: set[int], rng: bool) -> None:
    # Keras keeps a layer's direct sublayers in _flatten_layers(recursive=False) (what
    # Model.layers returns); there is no public equivalent for plain Layers.
    children = layer._flatten_layers(include_self=False, recursive=False)
    inside = {id(v) for child in children for v in child.variables}
    taken: dict[str, int] = {}
    for var in layer.variables:
        if id(var) in inside or id(var) in seen:
            continue
        seen.add(id(var))
        if not rng and var.name == "seed_generator_state":
            continue
        count = taken.get(var.name, 0)
        taken[var.name] = count + 1
        name = var.name if count == 0 else f"{var.name}_{count}"
        out[f"{prefix}{name}"] = var
    names = [child.name for child in children]
    if len(set(names)) < len(names):
        raise RuntimeError(f"{prefix or 'model'}: two sublayers share a name in {names}")
    for child in children:
        _walk(child, f"{prefix}{child.name}/", out, seen, rng)


def optimizer_variables(optimizer: keras.optimizers.Optimizer,
                        model: keras.Layer) -> dict[str, Any]:
    """Optimizer variables by name: slots as ``<model variable name>:<slot>``.

    Keras names a slot after its variable's path (``<path with / as _>_momentum``), so the
    owner is the trainable variable with the longest matching prefix. A wrapped optimizer
    (LossScaleOptimizer under mixed precision) keeps its own under ``inner/``.
    """
    out: dict[str, Any] = {}
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        out.update({f"inner/{k}": v for k, v in optimizer_variables(inner, model).items()})
    taken = {id(v) for v in out.values()}
    owners = {var.path.replace("/", "_"): name for name, var in model_variables(model).items()
              if var.trainable}
    for var in optimizer.variables:
        if id(var) in taken:
            continue
        prefix = max((p for p in owners if var.name.startswith(p + "_")), key=len, default=None)
        key = var.name if prefix is None else f"{owners[prefix]}:{var.name[len(prefix) + 1:]}"
        if key in out:
            raise RuntimeError(f"two optimizer variables are both named {key!r}")
        out[key] = var
    return out


# --------------------------------------------------------------------------- files


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _load(path: Path) -> Any:
    """An .npz read whole (a local file or a URL alike: np.load wants a seekable file)."""
    return np.load(io.BytesIO(path.read_bytes()))


def _values(prefix: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": np.asarray(keras.ops.convert_to_numpy(var))
            for name, var in variables.items()}


def _assign(path: Path, data: Any, prefix: str, variables: Mapping[str, Any]) -> None:
    stored = {k[len(prefix) + 1:] for k in data.files if k.startswith(prefix + "/")}
    missing, extra = sorted(set(variables) - stored), sorted(stored - set(variables))
    if missing or extra:
        detail = (f"missing {missing[0]}" if missing else f"unknown {extra[0]}")
        raise IcapnetError(f"{path}: {prefix} variables do not match ({detail}, "
                           f"{len(missing)} missing, {len(extra)} unknown); it belongs to "
                           "another model (use a new --out)")
    for name, var in variables.items():
        value = data[f"{prefix}/{name}"]
        if tuple(value.shape) != tuple(var.shape):
            raise IcapnetError(f"{path}: {name} has shape {tuple(value.shape)} in the "
                               f"checkpoint but {tuple(var.shape)} in the model (use a new --out)")
        var.assign(value)


def checkpoints(model_dir: str | Path) -> list[tuple[int, Path]]:
    """(next epoch, path) of every complete checkpoint, oldest first."""
    directory = fs.path(model_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(epoch, p) for p in directory.iterdir()
             if (epoch := checkpoint_epoch(p.name)) is not None]
    return sorted(found)


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    found = checkpoints(model_dir)
    return found[-1][1] if found else None


def save_checkpoint(model_dir: str | Path, state: TrainState, model: keras.Layer,
                    optimizer: keras.optimizers.Optimizer) -> Path:
    """Atomically write model + optimizer variables and ``state``; keep the newest two."""
    arrays = {**_values("model", model_variables(model)),
              **_values("optimizer", optimizer_variables(optimizer, model)),
              _STATE_KEY: np.array(json.dumps(asdict(state)))}
    path = fs.path(model_dir) / CHECKPOINT_DIR / checkpoint_name(state.next_epoch)
    atomic_write_bytes(path, _npz(arrays))
    for _, old in checkpoints(model_dir)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def read_state(path: Path) -> TrainState:
    """The state of a checkpoint, without touching any model (to know which one to build)."""
    try:
        with _load(path) as data:
            return TrainState(**json.loads(str(data[_STATE_KEY])))
    except Exception as err:
        raise IcapnetError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from err


def restore_checkpoint(path: Path, model: keras.Layer,
                       optimizer: keras.optimizers.Optimizer) -> TrainState:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` and ``optimizer``."""
    state = read_state(path)
    try:
        with _load(path) as data:
            _assign(path, data, "model", model_variables(model))
            _assign(path, data, "optimizer", optimizer_variables(optimizer, model))
    except IcapnetError:
        raise
    except Exception as err:
        raise IcapnetError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from err
    return state


def save_best(model_dir: str | Path, model: keras.Layer) -> None:
    """The weights of the best epoch so far (no RNG state: restoring them must not rewind it)."""
    atomic_write_bytes(fs.path(model_dir) / CHECKPOINT_DIR / BEST_WEIGHTS_FILE,
                       _npz(_values("model", model_variables(model, rng=False))))


def load_best(model_dir: str | Path, model: keras.Layer) -> bool:
    path = fs.path(model_dir) / CHECKPOINT_DIR / BEST_WEIGHTS_FILE
    if not path.is_file():
        return False
    with _load(path) as data:
        _assign(path, data, "model", model_variables(model, rng=False))
    return True
