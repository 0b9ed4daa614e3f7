"""A fused CPU kernel for the training step's attention scores ``V·tanh(keys + query)``.

TensorFlow's own ops write the broadcast sum, its tanh and their gradients to memory at every
decoder step: about 15 passes over a [batch, 196, attention width] tensor, the largest share
of a CPU training step (benchmarks/README.md, ``profile_step.py``). The C++ kernels in
``kernels/additive_scores.cc`` keep one row in registers: on the 2-core VM the scores'
forward + backward for 64 captions took 3.2 ms instead of 15 ms per step, with the same
values to float32 rounding.

The kernel is compiled on first use with the C++ compiler TensorFlow's headers need (``g++``
or ``$CXX``) for this CPU (``-march=native``), once per source, TensorFlow version and CPU,
into ``$ICAPNET_KERNEL_CACHE`` (default ``~/.cache/icapnet/kernels``). It is used by
training and validation only: decoding, export and the SavedModel keep TensorFlow's ops, so
a saved model needs nothing but TensorFlow. ``train.fused_attention="auto"`` uses it where it
can (float32 on a CPU, no XLA) and falls back to TensorFlow's ops with a warning when it
cannot be built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import tensorflow as tf

from icapnet.errors import IcapnetError

if TYPE_CHECKING:
    from icapnet.config import Config

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "additive_scores.cc"
CACHE_ENV = "ICAPNET_KERNEL_CACHE"
_OPTIMISE = ["-O3", "-march=native"]


class KernelUnavailable(Exception):
    """The kernel cannot be built or loaded here; the message says why, in one line."""


_module: ModuleType | None = None


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$ICAPNET_KERNEL_CACHE`` or ``~/.cache/icapnet``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icapnet" / "kernels"


def _cpu_flags() -> str:
    """The CPU's feature flags: a kernel built with -march=native may not run on another CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compiler() -> str:
    compiler = os.environ.get("CXX") or "g++"
    found = shutil.which(compiler)
    if not found:
        raise KernelUnavailable(f"no C++ compiler ({compiler!r} not found; install g++ "
                                "or set CXX)")
    return found


def library_path(directory: Path | None = None) -> Path:
    """The compiled kernel's file for this source, TensorFlow version and CPU."""
    flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags() + _OPTIMISE
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__.encode(), " ".join(flags).encode(),
                 _cpu_flags().encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    return (directory or cache_dir()) / f"additive_scores-{key.hexdigest()[:16]}.so"


def _compile(target: Path) -> None:
    """Build the kernel into ``target`` via a temporary file: never a half-written library."""
    compiler = _compiler()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KernelUnavailable(f"{target.parent}: cannot create the kernel cache "
                                f"({err.strerror or err})") from None
    log.info("compiling the fused attention kernel for this CPU (once, ~10 s) into %s",
             target.parent)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=target.parent)
    os.close(handle)
    command = [compiler, "-shared", "-fPIC", *_OPTIMISE, "-w", str(SOURCE), "-o", tmp,
               *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if "error" in line]
            detail = (lines or result.stderr.strip().splitlines() or ["no output"])[0]
            raise KernelUnavailable(f"{SOURCE.name} did not compile ({detail.strip()})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(directory: Path | None = None) -> Path:
    """The compiled kernel, compiled first if this machine has no build of it yet."""
    target = library_path(directory)
    if not target.exists():
        _compile(target)
    return target


def load() -> ModuleType:
    """The kernel's op module (loaded once per process: its ops can be registered once)."""
    global _module
    if _module is not None:
        return _module
    target = build()
    try:
        _module = tf.load_op_library(str(target))
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, OSError) as err:
        # A library another build left broken: build it once more, then give up.
        target.unlink(missing_ok=True)
        try:
            _module = tf.load_op_library(str(build()))
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, OSError):
            raise KernelUnavailable(f"{target}: built but does not load ({err})") from None
    return _module


def resolve(mode: str, *, jit_compile: bool = False, compute_dtype: str = "float32",
            attention: str = "bahdanau", strategy: str = "default") -> bool:
    """Whether training uses the kernel for ``train.fused_attention=mode``.

    "off" never; "auto" when it applies (Bahdanau attention, float32, no XLA, no GPU or
    TPU) and builds, else TensorFlow's ops with a warning saying why; "on" the same, but a
    reason not to is an error.
    """
    if mode == "off" or attention != "bahdanau":
        return False
    reason, fixable = None, False
    if compute_dtype != "float32":
        reason = f"it computes in float32 only, this run in {compute_dtype}"
    elif jit_compile:
        reason = "XLA (--jit-compile) cannot compile a custom op"
    elif strategy == "tpu":
        reason = "it is a CPU kernel and this run trains on a TPU"
    elif tf.config.list_physical_devices("GPU"):
        reason = "it is a CPU kernel and TensorFlow sees a GPU"
    if reason is None:
        try:
            load()
            return True
        except KernelUnavailable as err:
            reason, fixable = str(err), True
    if mode == "on":
        raise IcapnetError(f"--fused-attention on: cannot use the fused kernel: {reason}")
    # A kernel that does not build is worth a warning (a CPU run is ~1.7x slower without
    # it); one that does not apply (a GPU, XLA, mixed precision) is as it should be.
    log.log(logging.WARNING if fixable else logging.INFO,
            "fused attention kernel not used (%s): TensorFlow's ops instead", reason)
    return False


def for_config(config: Config) -> bool:
    """:func:`resolve` for a training run of ``config``, under the current Keras policy
    (training sets it from ``train.mixed_precision`` first)."""
    import keras

    t = config.train
    return resolve(t.fused_attention, jit_compile=bool(t.jit_compile),
                   compute_dtype=keras.mixed_precision.global_policy().compute_dtype,
                   attention=config.model.attention, strategy=t.strategy)


def additive_scores(keys: tf.Tensor, query: tf.Tensor, v: tf.Tensor,
                    keys_gradient: bool = True) -> tf.Tensor:
    """``scores[g, k, r] = sum_a v[a] * tanh(keys[g, r, a] + query[g, k, a])``.

    keys [G, R, A], query [G, K, A] (K captions per image), v [A], all float32 -> [G, K, R].
    ``keys_gradient=False``: the op's gradient leaves the keys out (None), for a caller that
    takes it once per sequence with :func:`keys_gradient`.
    """
    return load().icapnet_additive_scores(keys, query, v, keys_gradient=keys_gradient)


def keys_gradient(keys: tf.Tensor, queries: tf.Tensor, v: tf.Tensor,
                  d_scores: tf.Tensor) -> tf.Tensor:
    """The gradient with respect to ``keys`` [G, R, A] of the scores of EVERY step at once:
    ``queries`` [T, G, K, A] and ``d_scores`` [T, G, K, R] -> [G, R, A]. One pass over the
    keys per caption instead of a [G, R, A] gradient written and summed at every step."""
    shape = tf.shape(queries)
    per_image = tf.stack([shape[1], shape[0] * shape[2], -1])  # [G, T * K, ...]
    queries = tf.reshape(tf.transpose(queries, [1, 0, 2, 3]), per_image)
    d_scores = tf.reshape(tf.transpose(d_scores, [1, 0, 2, 3]), per_image)
    return load().icapnet_additive_scores_grad(keys, queries, v, d_scores, want_keys=True,
                                               want_query=False)[0]


@tf.RegisterGradient("IcapnetAdditiveScores")
def _additive_scores_grad(op: tf.Operation, d_scores: tf.Tensor) -> list[tf.Tensor | None]:
    with_keys = op.get_attr("keys_gradient")
    d_keys, d_query, d_v = load().icapnet_additive_scores_grad(
        *op.inputs, d_scores, want_keys=with_keys, want_query=True)
    return [d_keys if with_keys else None, d_query, d_v]
