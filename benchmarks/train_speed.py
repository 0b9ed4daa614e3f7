"""Captions/second of icapnet's training step vs the TensorFlow tutorial's, alternated in one run.

The peer is a faithful re-implementation of the "Image captioning with visual attention"
tutorial's training method (``benchmarks/tutorial_step.py``: Python loop over time steps in a
``tf.function``, decoder called per step, ``W1·features`` recomputed every step, masked loss,
embedding 256 / units 512 / batch 64, its data pipeline), with the tutorial's padding: every
caption padded to the longest caption of the dataset (the tutorial's code) and, as a second
peer, to 50 tokens. Both sides read the same captions and the same random float16 features
(a feature cache written by ``bench_data.py``; speed does not depend on feature values) and
use the same vocabulary.

icapnet runs exactly what ``python -m icapnet.train`` runs: its own ``tf.data`` pipeline over
the cache and the compiled Keras train function, with the options of ``TrainConfig``.
Two icapnet configurations are timed: the tutorial's sizes and model (embedding 256, units
512, attention 512, batch 64, no dropout, zero initial state) and the DEFAULT configuration.

Variants run in turn, round after round (``--rounds``), each for about ``--round-captions``
captions per round, so load from other processes hits them alike. Reported per variant: the
median captions/s over rounds (wall clock), its spread (min-max), CPU seconds per 1,000
captions (process CPU time: all threads), and the warm-up round (tracing / XLA compiling)
separately. Ratios are icapnet / tutorial on medians of the same run.

    python benchmarks/train_speed.py                       # synthetic-scene captions
    python benchmarks/train_speed.py --captions flickr8k   # real Flickr8k lengths + vocabulary
    python benchmarks/train_speed.py --variants ours-tutorial-sizes tutorial-longest --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

VARIANTS = ("ours-tutorial-sizes", "ours-default", "tutorial-longest", "tutorial-50")


@dataclass
class Variant:
    name: str
    step: Callable[[], int]  # runs one training step, returns the captions it trained on
    note: str = ""
    warmup_s: float = 0.0
    warmup_captions: int = 0
    rounds: list[dict] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--captions", choices=("synthetic", "flickr8k"), default="synthetic",
                   help="caption set (default: the synthetic scenes of the quality benchmark)")
    p.add_argument("--num-images", type=int, default=640,
                   help="training images (default 640: the 800-scene benchmark's train split)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per variant")
    p.add_argument("--round-captions", type=int, default=1280,
                   help="captions per variant per round (default 1280 = 20 batches of 64)")
    p.add_argument("--warmup-captions", type=int, default=None,
                   help="untimed captions first (default: one round; XLA compiles here)")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="icapnet: XLA (default: TrainConfig)")
    p.add_argument("--mixed-precision", default=None,
                   help="icapnet: off|float16|bfloat16|auto (default: TrainConfig)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                   help="icapnet: override config fields, e.g. train.group_by_image=false")
    p.add_argument("--extra", nargs="*", default=[], metavar="LABEL=SECTION.FIELD=VALUE[,...]",
                   help="more icapnet variants at the tutorial's sizes, e.g. "
                   "grouped=train.group_by_image=true,train.length_buckets=6 or "
                   "unfused=train.fused_step=off (a label starting 'default' varies "
                   "the default configuration instead)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the random-feature cache goes (default runs/bench_cache/NAME)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


# --------------------------------------------------------------------------- data


def prepare_cache(args: argparse.Namespace) -> tuple[Path, str]:
    from bench_data import flickr8k_captions, synthetic_captions, write_random_cache

    if args.captions == "synthetic":
        captions, source = synthetic_captions(args.num_images, args.seed), "synthetic scenes"
    else:
        captions, source = flickr8k_captions()
        captions = dict(sorted(captions.items())[: args.num_images])
    name = f"{args.captions}-{len(captions)}"
    root = args.cache_dir or HERE.parent / "runs" / "bench_cache" / name
    write_random_cache(root, {"train": captions}, seed=args.seed)
    return root, source


def _set_field(config, assignment: str) -> None:
    import dataclasses

    key, _, raw = assignment.partition("=")
    section, _, name = key.partition(".")
    target = getattr(config, section)
    kind = {f.name: f.type for f in dataclasses.fields(target)}[name]
    if kind == "bool":
        value = raw.lower() in ("1", "true", "yes", "on")
    elif kind == "int":
        value = int(raw)
    elif kind == "float":
        value = float(raw)
    elif kind.startswith("tuple"):
        value = tuple(int(v) for v in raw.split(",") if v)
    else:
        value = raw
    setattr(target, name, value)


def icapnet_config(args: argparse.Namespace, tutorial_sizes: bool, extra: list[str] = ()):
    from icapnet.config import Config

    config = Config()
    if tutorial_sizes:
        m = config.model
        m.embedding_dim, m.units, m.attention_units = 256, 512, 512
        m.dropout, m.state_dropout, m.init_state = 0.0, 0.0, "zeros"
        config.train.batch_size = 64
    if args.jit_compile is not None:
        config.train.jit_compile = bool(args.jit_compile)
    if args.mixed_precision is not None:
        config.train.mixed_precision = args.mixed_precision
    for assignment in [*args.set, *extra]:
        if not assignment.startswith("captioner."):
            _set_field(config, assignment)
    return config


def icapnet_variant(name: str, cache: Path, args: argparse.Namespace,
                    tutorial_sizes: bool, extra: list[str] = ()) -> tuple[Variant, dict]:
    """The compiled Keras train function of ``python -m icapnet.train`` on its own pipeline."""
    import keras
    import tensorflow as tf

    from icapnet.data.pipeline import Batching, longest_caption, make_dataset
    from icapnet.model.fused_step import for_config
    from icapnet.model.precision import policy_name
    from icapnet.model.store import build_captioner
    from icapnet.model.training import config_from_cache

    config = config_from_cache(cache, icapnet_config(args, tutorial_sizes, extra))
    t = config.train
    keras.utils.set_random_seed(args.seed)
    # What icapnet.model.training does: policy, model, Adam, compile (jit flag), dataset.
    keras.mixed_precision.set_global_policy(policy_name(t.mixed_precision))
    model = build_captioner(config)
    model.fused_step = for_config(config)
    for assignment in [*args.set, *extra]:  # captioner.ATTR=VALUE: an attribute of the model
        if assignment.startswith("captioner."):
            attr, _, raw = assignment.removeprefix("captioner.").partition("=")
            setattr(model, attr, int(raw) if raw.isdigit() else raw.lower() == "true")
    model.compile(optimizer=keras.optimizers.Adam(t.learning_rate), jit_compile=t.jit_compile)
    model.optimizer.build(model.trainable_variables)
    keras.mixed_precision.set_global_policy("float32")
    model.make_train_function()
    # As training does: XLA and static shapes pad every batch to one caption length.
    fixed = t.jit_compile or t.static_shapes
    dataset = make_dataset(cache, "train", t.batch_size, shuffle=True, seed=args.seed,
                           repeat=True, shuffle_buffer=t.shuffle_buffer,
                           drop_remainder=t.static_shapes,
                           caption_length=longest_caption(cache, ("train",)) if fixed else None,
                           batching=Batching.from_config(t))
    iterator = iter(dataset)
    train_function = model.train_function

    def count(captions: tf.Tensor) -> int:
        rows = tf.reshape(captions, [-1, captions.shape[-1]])
        return int(tf.math.count_nonzero(tf.reduce_any(rows[:, 1:] != 0, axis=-1)))

    def step() -> int:
        batch = next(iterator)
        logs = train_function([batch])
        float(logs["loss"])  # wait for the step to finish
        return count(batch[1])

    return Variant(name, step, note=_describe(config)), config.to_dict()


def _describe(config) -> str:
    m, t = config.model, config.train
    return (f"emb {m.embedding_dim}, units {m.units}, attention {m.attention_units}, dropout "
            f"{m.dropout}, state dropout {m.state_dropout}, init {m.init_state}, batch "
            f"{t.batch_size}, group by image {t.group_by_image}, length buckets "
            f"{t.length_buckets}, jit {t.jit_compile}, precision {t.mixed_precision}")


def tutorial_variant(name: str, cache: Path, pad_to: int | None, seed: int) -> tuple[Variant, dict]:
    import numpy as np
    from tutorial_step import BATCH_SIZE, TutorialTrainer, tutorial_dataset

    from icapnet.data.cache import open_cache

    fc = open_cache(cache)
    vocab = fc.vocab
    ids = fc.image_ids("train")
    features = fc.get_features(ids)
    row = {image_id: k for k, image_id in enumerate(ids)}
    index, captions = [], []
    for image_id, caps in sorted(fc.captions["train"].items()):
        for caption in caps:
            encoded = vocab.encode(caption)
            if len(encoded) > 2:
                index.append(row[image_id])
                captions.append(encoded)
    ds = tutorial_dataset(features, np.array(index), captions, pad_to, seed)
    width = int(ds.element_spec[1].shape[1])
    trainer = TutorialTrainer(len(vocab), vocab.start_id, num_regions=features.shape[1],
                              feature_dim=features.shape[2])
    iterator = iter(ds)

    def step() -> int:
        img, target = next(iterator)
        loss, _ = trainer.train_step(img, target)
        float(loss)
        return BATCH_SIZE

    note = f"padded to {width} tokens ({'longest caption' if pad_to is None else 'fixed'})"
    return Variant(name, step, note=note), {"pad_to": width}


# --------------------------------------------------------------------------- timing


def run_captions(variant: Variant, captions: int) -> tuple[int, float, float]:
    """Steps until ``captions`` are trained on: (captions, wall s, CPU s)."""
    done, wall, cpu = 0, time.perf_counter(), time.process_time()
    while done < captions:
        done += variant.step()
    return done, time.perf_counter() - wall, time.process_time() - cpu


def summarize(variant: Variant) -> dict:
    rates = [r["captions"] / r["wall_s"] for r in variant.rounds]
    cpu = [1000 * r["cpu_s"] / r["captions"] for r in variant.rounds]
    return {
        "note": variant.note,
        "captions_per_s": statistics.median(rates),
        "captions_per_s_min": min(rates),
        "captions_per_s_max": max(rates),
        "cpu_s_per_1000_captions": statistics.median(cpu),
        "cpu_captions_per_s": 1000 / statistics.median(cpu),
        "warmup_s": variant.warmup_s,
        "warmup_captions": variant.warmup_captions,
        "rounds": variant.rounds,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    cache, source = prepare_cache(args)
    variants, settings = [], {}
    for name in args.variants:
        if name.startswith("ours"):
            v, s = icapnet_variant(name, cache, args, tutorial_sizes=name.endswith("sizes"))
        else:
            v, s = tutorial_variant(name, cache, None if name.endswith("longest") else 50,
                                    args.seed)
        variants.append(v)
        settings[name] = s
    for spec in args.extra:
        label, _, assignments = spec.partition("=")
        name = f"ours-{label}"  # a label starting "default" varies the default configuration
        v, s = icapnet_variant(name, cache, args, not label.startswith("default"),
                               [a for a in assignments.split(",") if a])
        variants.append(v)
        settings[name] = s
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    print(f"captions: {source}; cache {cache}; {os.cpu_count()} CPUs, intra-op threads "
          f"{threads or 'default'}; {args.rounds} rounds x {args.round_captions} captions")
    warmup = args.round_captions if args.warmup_captions is None else args.warmup_captions
    for v in variants:
        v.warmup_captions, v.warmup_s, _ = run_captions(v, warmup)
        print(f"  warm-up {v.name:22s} {v.warmup_s:7.1f} s ({v.note})", flush=True)
    for r in range(args.rounds):
        for v in variants:
            n, wall, cpu = run_captions(v, args.round_captions)
            v.rounds.append({"captions": n, "wall_s": wall, "cpu_s": cpu})
            print(f"  round {r + 1} {v.name:22s} {n / wall:7.1f} captions/s  "
                  f"(CPU {1000 * cpu / n:6.1f} s / 1000 captions)", flush=True)
    results = {v.name: summarize(v) for v in variants}
    ratios = _ratios(results)
    print_table(results, ratios)
    if args.json:
        report = {"benchmark": "train_speed", "captions": source, "cache": str(cache),
                  "results": results, "ratios": ratios, "settings": settings,
                  "args": {k: str(v) for k, v in vars(args).items()},
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "load_average": os.getloadavg()},
                  "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _ratios(results: dict) -> dict:
    out = {}
    for ours in (n for n in results if n.startswith("ours")):
        if ours not in ("ours-tutorial-sizes", "ours-default"):
            base_name = "ours-default" if ours.startswith("ours-default") else "ours-tutorial-sizes"
            base = results.get(base_name)
            if base:
                out[f"{ours} / {base_name}"] = {
                    "wall": results[ours]["captions_per_s"] / base["captions_per_s"],
                    "cpu": base["cpu_s_per_1000_captions"]
                    / results[ours]["cpu_s_per_1000_captions"]}
            continue
        for peer in (n for n in results if n.startswith("tutorial")):
            a, b = results[ours], results[peer]
            out[f"{ours} / {peer}"] = {
                "wall": a["captions_per_s"] / b["captions_per_s"],
                "cpu": b["cpu_s_per_1000_captions"] / a["cpu_s_per_1000_captions"],
            }
    return out


def print_table(results: dict, ratios: dict) -> None:
    print(f"\n{'variant':22s} {'captions/s':>11s} {'(min-max)':>15s} {'CPU s/1k cap':>13s} "
          f"{'warm-up s':>10s}")
    for name, r in results.items():
        spread = f"{r['captions_per_s_min']:.1f}-{r['captions_per_s_max']:.1f}"
        print(f"{name:22s} {r['captions_per_s']:11.1f} {spread:>15s} "
              f"{r['cpu_s_per_1000_captions']:13.1f} {r['warmup_s']:10.1f}")
    for name, r in ratios.items():
        print(f"{name:42s} {r['wall']:5.2f}x wall   {r['cpu']:5.2f}x CPU")


if __name__ == "__main__":
    sys.exit(main())
