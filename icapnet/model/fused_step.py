"""Fused CPU kernels for the training step: the attention scores and the GRU's gates.

TensorFlow's own ops write the broadcast sum ``keys + W2·h``, its tanh and their gradients to
memory at every decoder step: about 15 passes over a [batch, 196, attention width] tensor, the
largest share of a CPU training step (benchmarks/README.md, ``profile_step.py``). The C++
kernels in ``kernels/fused_step.cc`` keep one row in registers: on the 2-core VM the scores'
forward + backward for 64 captions took 3.2 ms instead of 15 ms per step, with the same values
to float32 rounding. The GRU's gates, ~15 small ops forward and ~25 backward per step (each a
dispatch inside the while loop), are one op each way.

The kernels are compiled on first use with the C++ compiler TensorFlow's headers need (``g++``
or ``$CXX``) for this CPU (``-march=native``), once per source, TensorFlow version and CPU,
into ``$ICAPNET_KERNEL_CACHE`` (default ``~/.cache/icapnet/kernels``). Training and validation
use them (:mod:`icapnet.model.fused_teacher_forcing`); decoding, export and the SavedModel keep
TensorFlow's ops, so a saved model needs nothing but TensorFlow. ``train.fused_step="auto"``
uses them where they apply (float32 on a CPU, no XLA) and falls back to TensorFlow's ops when
they cannot be built.
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

SOURCE = Path(__file__).with_name("kernels") / "fused_step.cc"
CACHE_ENV = "ICAPNET_KERNEL_CACHE"
_OPTIMISE = ["-O3", "-march=native"]


class KernelUnavailable(Exception):
    """The kernels cannot be built or loaded here; the message says why, in one line."""


_module: ModuleType | None = None


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$ICAPNET_KERNEL_CACHE`` or ``~/.cache/icapnet``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icapnet" / "kernels"


def _compiler() -> str:
    compiler = os.environ.get("CXX") or "g++"
    found = shutil.which(compiler)
    if not found:
        raise KernelUnavailable(f"no C++ compiler ({compiler!r} not found; install g++ "
                                "or set CXX)")
    return found


def library_path(directory: Path | None = None) -> Path:
    """The compiled kernels' file for this source, TensorFlow version and CPU (a build with
    -march=native may not run on another CPU)."""
    from icapnet.model.precision import cpu_flags

    flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags() + _OPTIMISE
    cpu = " ".join(sorted(cpu_flags())) or platform.processor()
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__.encode(), " ".join(flags).encode(),
                 cpu.encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    return (directory or cache_dir()) / f"fused_step-{key.hexdigest()[:16]}.so"


def _compile(target: Path) -> None:
    """Build the kernels into ``target`` via a temporary file: never a half-written library."""
    compiler = _compiler()
    try:  # a cache folder that cannot be written means no kernels, not a failed training
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=target.parent)
    except OSError as err:
        raise KernelUnavailable(f"{target.parent}: cannot write the kernel cache "
                                f"({err.strerror or err})") from None
    os.close(handle)
    log.info("compiling the fused training kernels for this CPU (once, ~10 s) into %s",
             target.parent)
    command = [compiler, "-shared", "-fPIC", *_OPTIMISE, "-w", str(SOURCE), "-o", tmp,
               *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as err:
            raise KernelUnavailable(f"{compiler}: cannot run ({err.strerror or err})") from None
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if "error" in line]
            detail = (lines or result.stderr.strip().splitlines() or ["no output"])[0]
            raise KernelUnavailable(f"{SOURCE.name} did not compile ({detail.strip()})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(directory: Path | None = None) -> Path:
    """The kernels' library, compiled first if this machine has no build of it yet."""
    target = library_path(directory)
    if not target.exists():
        _compile(target)
    return target


def load() -> ModuleType:
    """The kernels' op module (loaded once per process: its ops can be registered once)."""
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
    """Whether training uses the fused step for ``train.fused_step=mode``.

    "off" never; "auto" when it applies (Bahdanau attention, float32, no XLA, no GPU or
    TPU) and builds, else TensorFlow's ops with a warning saying why; "on" the same, but a
    reason not to is an error.
    """
    if mode == "off" or attention != "bahdanau":
        return False
    reason, fixable = None, False
    if compute_dtype != "float32":
        reason = f"they compute in float32 only, this run in {compute_dtype}"
    elif jit_compile:
        reason = "XLA (--jit-compile) cannot compile custom ops"
    elif strategy == "tpu":
        reason = "they are CPU kernels and this run trains on a TPU"
    elif tf.config.list_physical_devices("GPU"):
        reason = "they are CPU kernels and TensorFlow sees a GPU"
    if reason is None:
        try:
            load()
            return True
        except KernelUnavailable as err:
            reason, fixable = str(err), True
    if mode == "on":
        raise IcapnetError(f"--fused-step on: cannot use the fused kernels: {reason}")
    # Kernels that do not build are worth a warning (a CPU run is ~1.7x slower without
    # them); ones that do not apply (a GPU, XLA, mixed precision) are as they should be.
    log.log(logging.WARNING if fixable else logging.INFO,
            "fused training step not used (%s): TensorFlow's ops instead", reason)
    return False


def for_config(config: Config) -> bool:
    """:func:`resolve` for a training run of ``config``, under the current Keras policy
    (training sets it from ``train.mixed_precision`` first)."""
    import keras

    t = config.train
    return resolve(t.fused_step, jit_compile=bool(t.jit_compile),
                   compute_dtype=keras.mixed_precision.global_policy().compute_dtype,
                   attention=config.model.attention, strategy=t.strategy)


def additive_attention(keys: tf.Tensor, query: tf.Tensor, v: tf.Tensor, values: tf.Tensor,
                       add_scores: tf.Tensor, add_context: tf.Tensor
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """Bahdanau attention of K captions per image, all float32: ``alpha = softmax_r(sum_a
    v[a] tanh(keys[g, r, a] + query[g, k, a]) + add_scores)`` [G, K, R] and ``context =
    alpha · values + add_context`` [G, K, E], from keys [G, R, A], query [G, K, A], v [A],
    values [G, R, E]. The gradient leaves out keys and values (None): the caller takes
    theirs once per sequence, from the gradients of ``add_scores`` (which are the scores')
    and ``add_context`` (:func:`keys_gradient`, :mod:`icapnet.model.fused_teacher_forcing`).
    """
    return tuple(load().icapnet_additive_attention(keys, query, v, values, add_scores,
                                                   add_context))


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


@tf.RegisterGradient("IcapnetAdditiveAttention")
def _additive_attention_grad(op: tf.Operation, d_alpha: tf.Tensor | None,
                             d_context: tf.Tensor | None) -> list[tf.Tensor | None]:
    alpha, context = op.outputs
    d_alpha = tf.zeros_like(alpha) if d_alpha is None else d_alpha
    d_context = tf.zeros_like(context) if d_context is None else d_context
    keys, query, v, values = op.inputs[:4]
    d_query, d_v, d_scores = load().icapnet_additive_attention_grad(
        keys, query, v, values, alpha, d_alpha, d_context)
    return [None, d_query, d_v, None, d_scores, d_context]


def gru_gates(x: tf.Tensor, inner: tf.Tensor, state: tf.Tensor) -> tf.Tensor:
    """Keras' GRUCell (reset_after, sigmoid / tanh) from its two projections: ``x`` [B, 3U]
    (input, with the input bias), ``inner`` [B, 3U] (state, with the recurrent bias) and
    ``state`` [B, U] -> the new state [B, U], in one op forward and one backward."""
    return load().icapnet_gru_gates(x, inner, state)


@tf.RegisterGradient("IcapnetGruGates")
def _gru_gates_grad(op: tf.Operation, d_h: tf.Tensor) -> list[tf.Tensor]:
    return load().icapnet_gru_gates_grad(*op.inputs, d_h)
