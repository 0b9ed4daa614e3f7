"""Where a training step's time goes: a TensorFlow profiler trace, summed by model part.

Runs icapnet's compiled train function (the configuration of ``train_speed.py``'s
``ours-*`` variants, same cache) for ``--steps`` steps under ``tf.profiler``, reads the
trace (the ``.xplane.pb`` TensorBoard's profile plugin shows) and sums the time of every
TensorFlow op by the part of the model its name belongs to (encoder, attention keys
``W1·features``, the per-step attention chain, GRU cell, word projection, loss, optimizer,
loop bookkeeping, input pipeline), forward and backward apart. Op times are summed over the
inter-op threads, so on 2 cores they can add up to more than the wall time of a step; the
shares are what matter. Under XLA the step is a few fused clusters and the names are gone:
the breakdown then shows XLA's clusters as one line (use the timed ablations instead).

    python benchmarks/profile_step.py [--captions synthetic] [--steps 20] [--set ...]
    python benchmarks/profile_step.py --tutorial --pad-to 24     # the tutorial's step
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

# First match wins; matched against the op's name with numeric suffixes dropped, lower-cased;
# for a gradient op, against the forward op it differentiates (the part after "gradients/").
PARTS = (
    ("input pipeline", ("iteratorgetnext", "optionalgetvalue", "optionalfromvalue")),
    ("optimizer + clipping", ("adam/", "/adam", "assignvariableop", "clip_by_global_norm",
                              "global_norm", "assignaddvariableop")),
    ("gradient accumulation over steps (AddN)", ("addn:",)),
    ("encoder", ("encoder/",)),
    ("attention keys W1·features", ("/w1/", "attention_keys")),
    # The fused step (icapnet.model.fused_step): one kernel for scores, softmax and context,
    # the [W2 | recurrent kernel] matmul, the cell's context matmul, per-sequence gradients.
    ("fused attention kernel (scores, softmax, context)", ("icapnetadditiveattention",)),
    ("keys gradient, once per caption (kernel)", ("icapnetadditivescoresgrad",)),
    ("GRU gates (kernel)", ("icapnetgrugates",)),
    ("state projection [W2 | recurrent kernel]", ("state_projection",)),
    ("context projection (cell input)", ("context_projection",)),
    ("other gradients once per caption (weights, regions)", ("gradient_once_per_caption",)),
    ("attention step: W2·h", ("/w2/",)),
    ("attention step: V·tanh(keys + W2·h)", ("icapnetadditivescores", "attention/add", "/tanh",
                                             "/v/", "attention/score",
                                             "attention/mul_1", "attention/energy")),
    ("attention step: softmax + context", ("attention",)),
    ("GRU cell", ("gru_cell", "gru/", "lstm_cell")),
    ("word projection (fc1, fc2)", ("fc1", "fc2")),
    ("loss + metrics", ("sparse_softmax_cross_entropy", "argmax", "metrics", "loss")),
    ("embedding", ("embedding",)),
    ("dropout", ("dropout", "random", "stateless")),
    ("loop bookkeeping (while, TensorArray, transpose)",
     ("while", "tensorarray", "tensorlist", "transpose", "strided_slice", "concat")),
)
_SUFFIX = re.compile(r"_\d+(?=[/:])")


def classify(name: str) -> tuple[str, str]:
    """(part, "fwd"|"bwd") of a profiled op name such as '.../W1_1/Tensordot/MatMul:MatMul'."""
    lower = _SUFFIX.sub("", name.lower())
    direction = "bwd" if "gradient" in lower else "fwd"
    tail = lower.rsplit("gradients/", 1)[-1]
    if lower.startswith("cluster") or "xla" in tail:
        return "XLA clusters", "all"
    for part, keys in PARTS:
        if any(k in tail for k in keys):
            return part, direction
    return "other", direction


def op_times(logdir: str) -> dict[str, float]:
    """Seconds per op name, summed over the tf_Compute threads of the host plane."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, float] = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(path).read_bytes())
        for plane in space.planes:
            meta = plane.event_metadata
            for line in plane.lines:
                if not line.name.startswith(("tf_Compute", "tf_XLA", "tf_xla")):
                    continue
                for event in line.events:
                    name = meta[event.metadata_id].name
                    if ":" in name and "::" not in name:  # "scope/op:Type": an op
                        totals[name] += event.duration_ps * 1e-12
    return totals


def breakdown(totals: dict[str, float], steps: int) -> tuple[dict, dict]:
    parts: dict[tuple[str, str], float] = collections.Counter()
    types: dict[str, float] = collections.Counter()
    for name, seconds in totals.items():
        parts[classify(name)] += seconds / steps
        types[name.rsplit(":", 1)[-1]] += seconds / steps
    return dict(parts), dict(types)


def print_breakdown(parts: dict, types: dict, wall_per_step: float) -> None:
    total = sum(parts.values())
    print(f"\nop time per step {1000 * total:.0f} ms (summed over threads); wall per step "
          f"{1000 * wall_per_step:.0f} ms")
    names = sorted({p for p, _ in parts}, key=lambda p: -sum(
        v for (q, _), v in parts.items() if q == p))
    print(f"{'part':52s} {'fwd ms':>8s} {'bwd ms':>8s} {'share':>6s}")
    for part in names:
        fwd = parts.get((part, "fwd"), 0.0) + parts.get((part, "all"), 0.0)
        bwd = parts.get((part, "bwd"), 0.0)
        print(f"{part:52s} {1000 * fwd:8.1f} {1000 * bwd:8.1f} {100 * (fwd + bwd) / total:5.1f}%")
    print("\ntop op types:")
    for kind, seconds in sorted(types.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {kind:28s} {1000 * seconds:8.1f} ms  {100 * seconds / total:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    import train_speed

    parser = train_speed.build_parser()
    parser.description = __doc__.split("\n")[0]
    parser.add_argument("--steps", type=int, default=20, help="profiled steps")
    parser.add_argument("--default-config", action="store_true",
                        help="profile the default configuration (not the tutorial's sizes)")
    parser.add_argument("--tutorial", action="store_true", help="profile the tutorial's step")
    parser.add_argument("--pad-to", type=int, default=None,
                        help="tutorial: pad to this length (default: longest caption)")
    parser.add_argument("--logdir", default=None, help="keep the trace here (TensorBoard)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    cache, source = train_speed.prepare_cache(args)
    if args.tutorial:
        variant, _ = train_speed.tutorial_variant("tutorial", cache, args.pad_to, args.seed)
    else:
        variant, _ = train_speed.icapnet_variant("ours", cache, args,
                                                 tutorial_sizes=not args.default_config)
    print(f"captions: {source}; {variant.note}")
    train_speed.run_captions(variant, args.round_captions)  # warm-up: tracing, compiling
    logdir = args.logdir or tempfile.mkdtemp(prefix="icapnet-profile-")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        variant.step()
    wall = (time.perf_counter() - start) / args.steps
    tf.profiler.experimental.stop()
    parts, types = breakdown(op_times(logdir), args.steps)
    print_breakdown(parts, types, wall)
    print(f"\ntrace: {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
