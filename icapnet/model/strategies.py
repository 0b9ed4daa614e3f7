"""tf.distribute strategies by name, and what multi-worker training needs around Keras 3.

``default`` is one device, ``mirrored`` every local GPU (else every logical CPU),
``multiworker`` a ``MultiWorkerMirroredStrategy`` over the machines listed in ``TF_CONFIG``
(synchronous data parallelism: every worker holds every variable; gradients are all-reduced
with collective ops: NCCL on GPUs, gRPC rings on CPUs), ``tpu`` a ``TPUStrategy``.

Two Keras 3 defects break ``Model.fit`` under ``MultiWorkerMirroredStrategy`` (keras-team/keras
#20585, tensorflow/tensorflow#72388; seen with TF 2.21 + Keras 3.15); icapnet works around
both in its own models, without patching Keras:

1. ``fit()`` / ``evaluate()`` pull one batch and ``strategy.reduce("MEAN", batch)`` it to build
   the model symbolically; the multi-worker strategy cannot reduce a nest of per-replica
   values ("Attempt to convert a value (PerReplica...)"). icapnet's models create every
   variable (model and optimizer) before ``fit()``, so :class:`PrebuiltModel` skips that step.
2. Each step's outputs are reduced with ``strategy.reduce("MEAN", v, axis=0)`` across workers,
   which fails on the scalar metrics every ``train_step`` returns ("Invalid reduction dimension
   0 for input with 0 dimensions"). :func:`step_logs` hands them over as shape-[1] tensors,
   which that same call turns back into scalars. Epoch logs do not depend on it: Keras reads
   them from the metric variables, summed over all workers.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import tensorflow as tf

from icapnet.config import STRATEGIES
from icapnet.errors import IcapnetError


def get_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called ``name`` (one of :data:`icapnet.config.STRATEGIES`)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return _mirrored(tuple(d.name for d in devices))
    if name == "multiworker":
        return _multi_worker()
    if name == "tpu":
        return _tpu()
    raise IcapnetError(f"--strategy {name}: unknown (choose from {', '.join(STRATEGIES)})")


@functools.cache
def _mirrored(devices: tuple[str, ...]) -> tf.distribute.MirroredStrategy:
    # One strategy per device set and process: two MirroredStrategy objects over the same
    # devices number their collective ops alike, and a second one's all-reduce can be
    # matched with the first one's (a "shape mismatch in the collective instance").
    return tf.distribute.MirroredStrategy(list(devices))


@functools.cache
def _multi_worker() -> tf.distribute.MultiWorkerMirroredStrategy:
    # One per process (TensorFlow allows only one: it configures the process's collectives).
    check_tf_config(os.environ.get("TF_CONFIG"))
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _tpu() -> tf.distribute.TPUStrategy:
    """Colab / Cloud TPU VM. Not testable here (no TPU): kept to the documented four calls."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as err:
        raise IcapnetError(f"--strategy tpu: no TPU found ({err})") from None
    return tf.distribute.TPUStrategy(resolver)


def check_tf_config(raw: str | None) -> dict[str, Any]:
    """TF_CONFIG as TensorFlow reads it, or a one-line error saying what is wrong with it."""
    if not raw:
        raise IcapnetError("--strategy multiworker: TF_CONFIG is not set (a JSON cluster spec "
                           "and this worker's task; see README 'Scaling out')")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise IcapnetError(f"TF_CONFIG: not valid JSON ({err})") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or (not cluster.get("worker") and not cluster.get("chief")):
        raise IcapnetError('TF_CONFIG: needs "cluster": {"worker": ["host:port", ...]}')
    if not isinstance(task, dict) or task.get("type") not in ("chief", "worker"):
        raise IcapnetError('TF_CONFIG: needs "task": {"type": "worker" (or "chief"), '
                           '"index": N}')
    members = cluster.get(task["type"]) or []
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise IcapnetError(f"TF_CONFIG: task index {index!r} is not in cluster "
                           f"{task['type']!r} ({len(members)} listed)")
    return spec


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """A strategy whose replicas span several processes (collectives cross the network)."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())  # no public equivalent


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: the "chief" task, else worker 0."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_name(strategy: tf.distribute.Strategy) -> str:
    if not is_multi_worker(strategy):
        return "worker"
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type} {resolver.task_id}"


def gather_from_workers(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """``value`` of every worker, in task order (one collective all-gather); ``[value]`` when
    the strategy is not multi-worker."""
    if not is_multi_worker(strategy):
        return [int(value)]

    @tf.function
    def gather():
        def replica():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_gather(tf.constant([value], tf.int64), axis=0)
        return strategy.run(replica)

    local = strategy.experimental_local_results(gather())[0].numpy()
    per_worker = len(strategy.extended.worker_devices)
    return [int(v) for v in local[::per_worker]]


def step_logs(logs: dict[str, Any]) -> dict[str, Any]:
    """A train/test step's metrics, shaped so Keras can reduce them across workers (item 2)."""
    if not is_multi_worker(tf.distribute.get_strategy()):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


class PrebuiltModel:
    """Mix-in for models whose variables all exist before ``fit()`` (item 1 above)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        built = all(layer.built for layer in self._flatten_layers(include_self=False))
        if built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


__all__ = ["PrebuiltModel", "check_tf_config", "gather_from_workers", "get_strategy", "is_chief",
           "is_multi_worker", "step_logs", "worker_name"]
