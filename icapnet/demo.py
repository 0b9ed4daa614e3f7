"""``python -m icapnet.demo``: the whole pipeline, end to end, in one command.

Generates captioned synthetic scenes (or reads Flickr8k), builds the feature cache, trains a
captioner, scores it on the held-out test split (greedy and beam search), captions a few
held-out images with attention heatmaps and prints where everything went. Each stage calls
the same library functions as the individual commands (``prepare``, ``train``,
``evaluate``, ``caption``), in one process so TensorFlow and the model load once.

Re-running the same command reuses what is done: the scenes and the feature cache are kept,
training resumes from its last checkpoint (or is skipped when finished), and only
evaluation and captioning run again. A folder holding a run with other data settings is an
error rather than a silent mix.

On synthetic scenes the demo also reports *attention localisation*
(:mod:`icapnet.inference.localisation`), computed on the same decoded test captions as the
metrics: when the decoder writes a shape word, the share of its attention mass that falls
on the box of the object it names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icapnet import cli
from icapnet.config import Config, DataConfig, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError, require_positive, run_cli
from icapnet.io import atomic_write_text
from icapnet.layout import LOSS_PLOT_FILE, METRICS_FILE

DATASETS = ("synthetic", "flickr8k")
SUMMARY_FILE = "summary.json"
STAMP_FILE = "demo.json"
EXAMPLES_FILE = "captions.jsonl"  # the captioned held-out examples
# Sized so the synthetic demo finishes in under ~10 minutes on 2 CPU cores.
DEFAULT_NUM_IMAGES = 400
DEFAULT_EPOCHS = 20
# The synthetic demo trains a half-width model (about 3x cheaper per step than the default
# GRU 512 / attention 512 / embedding 256); flickr8k and explicit flags use the real sizes.
SMALL_MODEL = {"units": 256, "attention_units": 256, "embedding_dim": 128}
# Config fields the demo has its own flags for, or that the feature cache decides.
_OWN_MODEL_FLAGS = frozenset({"units", "attention_units", "embedding_dim"})
_OWN_TRAIN_FLAGS = frozenset({"epochs", "batch_size", "seed"})
_FROM_CACHE = frozenset({"vocab_size", "num_regions", "feature_dim"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m icapnet.demo",
        description="Generate synthetic scenes (or read Flickr8k), build the feature cache, "
        "train a captioner, evaluate it and caption held-out images with attention heatmaps.",
        epilog="The model and training flags are those of 'python -m icapnet.train'.",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--dataset", choices=DATASETS, default="synthetic")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder (synthetic: default OUT/data, generated if needed)")
    p.add_argument("--weights", default=None,
                   help="backbone weights: imagenet, none or a .h5 file "
                   "(default: none for synthetic, imagenet for flickr8k)")
    p.add_argument("--num-images", type=int, default=None, metavar="N",
                   help=f"synthetic: scenes to generate (default {DEFAULT_NUM_IMAGES}); "
                   "flickr8k: use only the first N images of each split (default: all)")
    p.add_argument("--epochs", type=int, default=None, metavar="E",
                   help=f"training epochs (default {DEFAULT_EPOCHS} synthetic, 20 flickr8k)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument("--units", type=int, default=None,
                   help="decoder units (default: 256 synthetic, 512 flickr8k)")
    p.add_argument("--embedding-dim", type=int, default=None,
                   help="embedding size (default: 128 synthetic, 256 flickr8k)")
    p.add_argument("--attention-units", type=int, default=None,
                   help="attention size (default: 256 synthetic, 512 flickr8k)")
    p.add_argument("--full-size", dest="small", action="store_false",
                   help="synthetic: train the default-size model, not the small demo one")
    p.add_argument("--beam", type=int, default=3, metavar="K",
                   help="beam size evaluated next to greedy (default 3)")
    p.add_argument("--show", type=int, default=6, metavar="N",
                   help="held-out images to caption with attention heatmaps (default 6)")
    p.add_argument("--split", choices=("official", "random"), default="official",
                   help="flickr8k: the published split (default) or a random 80/10/10 split "
                   "by image, seeded by --seed (synthetic scenes are always split at random)")
    p.add_argument("--seed", type=int, default=0,
                   help="scene, training (and --split random) seed")
    p.add_argument("--no-coco", action="store_true",
                   help="nltk BLEU only (skip the Java-based METEOR/ROUGE-L/CIDEr)")
    p.add_argument("--quiet", action="store_true", help="no training progress bar")
    cli.add_config_flags(p, ModelConfig, "model (as in train)",
                         skip=_FROM_CACHE | _OWN_MODEL_FLAGS, unset_default=True)
    cli.add_config_flags(p, TrainConfig, "training (as in train)", skip=_OWN_TRAIN_FLAGS,
                         unset_default=True)
    return p


class _Stages:
    """Announces each stage and records how long it took (for the summary)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._start = 0.0

    def start(self, number: int, name: str, text: str) -> None:
        self.stop()
        print(f"\n[{number}/5] {text}", flush=True)
        self._name, self._start = name, time.perf_counter()

    def stop(self) -> None:
        if self._name is not None:
            took = time.perf_counter() - self._start
            self.seconds[self._name] = round(took, 1)
            print(f"  ({took:.0f} s)", flush=True)
            self._name = None


def _settings(args: argparse.Namespace, data_dir: Path, weights: str) -> dict[str, Any]:
    """What the scenes and the feature cache depend on (a reused folder must agree)."""
    settings = {"dataset": args.dataset, "data_dir": str(data_dir.resolve()),
                "weights": weights, "num_images": args.num_images, "seed": args.seed}
    if args.dataset == "flickr8k":
        settings["split"] = args.split
    return settings


def _check_stamp(out: Path, settings: dict[str, Any]) -> None:
    path = out / STAMP_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            diff = sorted(k for k in settings if not isinstance(old, dict)
                          or old.get(k) != settings[k])
            raise IcapnetError(
                f"{out}: holds a demo run with other settings ({', '.join(diff)}); "
                "use another --out or delete that folder"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise IcapnetError(f"{out}: exists and is not a demo run folder; choose another --out")
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags with the demo's defaults filled in; unknown flags are a one-line error."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise IcapnetError(f"{unknown[0]}: unknown flag (not a demo or train option)")
    require_positive(args, optional=("num_images", "epochs", "batch_size", "units",
                                     "embedding_dim", "attention_units", "beam"))
    if args.show < 0:
        raise IcapnetError(f"--show: must be >= 0, got {args.show}")
    synthetic = args.dataset == "synthetic"
    if not synthetic and not args.data_dir:
        raise IcapnetError("--data-dir: required for --dataset flickr8k "
                           "(get it with 'python -m icapnet.download --data-dir D')")
    if synthetic and args.num_images is None:
        args.num_images = DEFAULT_NUM_IMAGES
    if synthetic and args.small:
        for name, value in SMALL_MODEL.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if synthetic and args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    return args


def demo_config(args: argparse.Namespace, data_dir: Path) -> Config:
    """The training Config: train's defaults, the demo's sizes, then the flags given."""
    return Config(model=cli.config_section(ModelConfig, args, skip=_FROM_CACHE),
                  train=cli.config_section(TrainConfig, args),
                  data=DataConfig(dataset=args.dataset, data_dir=str(data_dir)))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    synthetic = args.dataset == "synthetic"
    weights = args.weights or ("none" if synthetic else "imagenet")
    out = Path(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    cache_dir, model_dir, attention_dir = out / "cache", out / "model", out / "attention"
    config = demo_config(args, data_dir)
    config.validate()
    _check_stamp(out, _settings(args, data_dir, weights))
    started = time.perf_counter()

    cli.start(log_info=True)
    from icapnet.data.cache import describe_cache, open_cache
    from icapnet.data.cache_build import build_cache, limit_dataset
    from icapnet.data.datasets import load_dataset
    from icapnet.inference.captioning import load_predictor
    from icapnet.model.backbone import feature_config_for
    from icapnet.model.training import describe_history, train

    stages = _Stages()
    stages.start(1, "data", f"data: {args.dataset} in {data_dir}")
    if synthetic:
        from icapnet.data.synthetic import ensure_scenes

        ensure_scenes(data_dir, args.num_images, seed=args.seed)
    random_split = not synthetic and args.split == "random"
    dataset = load_dataset(args.dataset, data_dir,
                           **({"split": "random", "seed": args.seed} if random_split else {}))
    print(f"  {len(dataset.images)} images")

    stages.start(2, "features", f"feature cache ({weights} weights): {cache_dir}")
    data_cfg = DataConfig(dataset=args.dataset, data_dir=str(data_dir), cache_dir=str(cache_dir))
    if not synthetic and args.num_images:
        dataset = limit_dataset(dataset, args.num_images)
    build_cache(dataset, cache_dir, feature_config_for("vgg16", weights), data_cfg)
    cache = open_cache(cache_dir)
    print(describe_cache(cache, data_cfg))

    stages.start(3, "training", f"training (resumes if interrupted): {model_dir}")
    history = train(config, cache_dir, model_dir, verbose=0 if args.quiet else 1)
    print(describe_history(history))

    stages.start(4, "evaluation", "evaluating on the held-out test split (greedy and beam)")
    predictor = load_predictor(model_dir)
    beams = sorted({1, args.beam})
    metrics, localisation = _evaluate(args, predictor, model_dir, cache, dataset, beams)

    stages.start(5, "captions", f"captioning {args.show} held-out images with attention "
                 f"heatmaps: {attention_dir}")
    shown = _caption_examples(args, predictor, cache, dataset, attention_dir, out)
    stages.stop()

    summary = _summary(out, model_dir, attention_dir, metrics, localisation, shown,
                       time.perf_counter() - started, stages.seconds)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, metrics, localisation, beams)
    return 0


def _evaluate(args: argparse.Namespace, predictor: Any, model_dir: Path, cache: Any,
              dataset: Any, beams: list[int]) -> tuple[dict[str, dict], dict | None]:
    """Score the test split per beam; on synthetic scenes, localisation of the same captions."""
    from icapnet.inference.evaluation import evaluate_split
    from icapnet.inference.localisation import LocalisationTally
    from icapnet.inference.metrics import format_table

    metrics: dict[str, dict] = {}
    localisation: dict[str, dict] | None = {} if cache.boxes else None
    for beam in beams:
        tally = LocalisationTally(cache.boxes, dataset.images) if cache.boxes else None
        done = evaluate_split(predictor.model, predictor.vocab, predictor.config, model_dir,
                              cache.root, "test", beam, coco=not args.no_coco,
                              on_result=tally.add if tally else None)
        metrics[f"beam{beam}"] = done.entry
        if tally is not None:
            localisation[f"beam{beam}"] = tally.report()
        print(format_table({f"test beam{beam}": done.scores}))
        print(f"  {done.entry['num_images']} images in {done.seconds:.1f} s\n")
    return metrics, localisation


def _caption_examples(args: argparse.Namespace, predictor: Any, cache: Any, dataset: Any,
                      attention_dir: Path, out: Path) -> list[dict[str, Any]]:
    """Caption a few test images (heatmap PNG + .npz each) and print them next to a reference."""
    from icapnet.inference.captioning import caption_files

    if not args.show:
        return []
    ids = [i for i in cache.image_ids("test") if i in dataset.images][: args.show]
    records = caption_files(predictor, [dataset.images[i] for i in ids], beam_size=args.beam,
                            attention_dir=attention_dir)
    shown = []
    for image_id, record in zip(ids, records, strict=True):
        if not isinstance(record, dict):
            print(f"  error: {record}")
            continue
        record["reference"] = (dataset.captions.get(image_id) or [""])[0]
        print(f"  {image_id}: {record['caption']}\n  {'':{len(image_id)}}  "
              f"(a reference: {record['reference']})")
        shown.append(record)
    atomic_write_text(out / EXAMPLES_FILE,
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in shown))
    return shown


def _summary(out: Path, model_dir: Path, attention_dir: Path, metrics: dict,
             localisation: dict | None, shown: list[dict], seconds: float,
             stage_seconds: dict[str, float]) -> dict[str, Any]:
    return {
        "metrics": metrics,
        "attention_localisation": localisation,
        "captions": shown,
        "outputs": {
            "model": str(model_dir),
            "metrics": str(model_dir / METRICS_FILE),
            "loss_curves": str(model_dir / LOSS_PLOT_FILE),
            "attention": str(attention_dir),
            "captions": str(out / EXAMPLES_FILE),
            "summary": str(out / SUMMARY_FILE),
        },
        "seconds": round(seconds, 1),
        "stage_seconds": stage_seconds,
    }


def _print_summary(summary: dict, metrics: dict, localisation: dict | None,
                   beams: list[int]) -> None:
    from icapnet.inference.metrics import format_table

    rows = {("greedy" if b == 1 else f"beam {b}"): {
        k: v for k, v in metrics.get(f"beam{b}", {}).items() if isinstance(v, float)
    } for b in beams}
    print("\n" + "=" * 60)
    print("test-split metrics\n")
    print(format_table(rows))
    if localisation:
        cells = "  ".join(f"{('greedy' if b == 1 else f'beam {b}')}: "
                          f"{_fmt(localisation[f'beam{b}']['attention_in_box'])}" for b in beams)
        print(f"\nattention in the named object's box, at its shape word  {cells}")
        cells = "  ".join(f"{('greedy' if b == 1 else f'beam {b}')}: "
                          f"{_fmt(localisation[f'beam{b}'].get('attention_in_box_phrase'))}"
                          for b in beams)
        print(f"  ... averaged over its size/colour/shape words            {cells}")
    print("\noutputs")
    width = max(map(len, summary["outputs"]))
    for name, path in summary["outputs"].items():
        print(f"  {name.ljust(width)}  {path}")
    print(f"\ndone in {summary['seconds'] / 60:.1f} min")


def _fmt(value: float | None) -> str:
    return "n/a (no shape words)" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(run_cli(main))
