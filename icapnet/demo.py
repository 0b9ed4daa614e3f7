"""``python -m icapnet.demo``: the whole pipeline, end to end, in one command.

Generates captioned synthetic scenes (or reads Flickr8k), builds the feature cache, trains a
captioner, scores it on the held-out test split (greedy and beam search), captions a few
held-out images with attention heatmaps and prints where everything went. Each stage calls
the same library functions as the individual commands (``prepare``, ``train``,
``evaluate``, ``caption``), in one process so TensorFlow and the model load once.

The trained model goes where ``caption`` and ``serve`` look by default
(``saved_models/<name of --out>``, with a few held-out photos in its ``examples/`` folder for
the web page); the data, cache, heatmaps and summary stay in the run folder. The summary
ends with the exact commands that caption a photo and open the web page.

Re-running the same command reuses what is done: the scenes and the feature cache are kept,
training resumes from its last checkpoint (or is skipped when finished), and only
evaluation and captioning run again. A folder holding a run with other data settings is an
error rather than a silent mix.

On synthetic scenes the demo also reports *attention localisation*
(:mod:`icapnet.inference.localisation`), computed on the same decoded test captions as the
metrics: when the decoder writes a shape word, the share of its attention mass that falls
on the box of the object it names.

(Over 400 lines: five stages, each a call into the library, plus the summary they feed;
the stage bookkeeping and the printed table are the rest.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from icapnet import cli
from icapnet.config import DEFAULT_BEAM, Config, DataConfig, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError, require_positive, run_cli
from icapnet.io import atomic_write_bytes, atomic_write_text
from icapnet.layout import LOSS_PLOT_FILE, METRICS_FILE
from icapnet.model.store import DEFAULT_MODELS_DIR
from icapnet.presets import PRESETS, apply_preset, preset_for, preset_help

DATASETS = ("synthetic", "flickr8k")
SUMMARY_FILE = "summary.json"
STAMP_FILE = "demo.json"
EXAMPLES_FILE = "captions.jsonl"  # the captioned held-out examples
MODEL_EXAMPLES_DIR = "examples"  # held-out photos beside the model, for the web page
MAX_MODEL_EXAMPLES = 6
MAX_EXAMPLE_BYTES = 4 * 1024 * 1024
# Sized so the synthetic demo finishes in under ~10 minutes on 2 CPU cores.
DEFAULT_NUM_IMAGES = 400
DEFAULT_EPOCHS = 20
# The synthetic demo trains a half-width model (about 3x cheaper per step than the default
# GRU 512 / attention 512 / embedding 256); flickr8k and explicit flags use the real sizes.
SMALL_MODEL = {"units": 256, "attention_units": 256, "embedding_dim": 128}
# Config fields the demo has its own flags for, or that the feature cache decides.
_OWN_MODEL_FLAGS = frozenset({"units", "attention_units", "embedding_dim"})
_OWN_TRAIN_FLAGS = frozenset({"epochs", "batch_size", "seed", "preset"})
_FROM_CACHE = frozenset({"vocab_size", "num_regions", "feature_dim"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m icapnet.demo",
        description="Generate synthetic scenes (or read Flickr8k), build the feature cache, "
        "train a captioner, evaluate it and caption held-out images with attention heatmaps.",
        epilog="The model and training flags are those of 'python -m icapnet.train'.",
    )
    p.add_argument("--out", default="runs/demo",
                   help="run folder: data, feature cache, heatmaps, summary (default: runs/demo)")
    p.add_argument("--model-dir", default=None,
                   help="where the trained model goes (default: saved_models/NAME, NAME being "
                   "the run folder's name): 'caption' and 'serve' use the newest model under "
                   "saved_models/ when given no --model")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None, help=preset_help())
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
    p.add_argument("--beam", type=int, default=DEFAULT_BEAM, metavar="K",
                   help=f"beam width evaluated next to greedy (default {DEFAULT_BEAM})")
    p.add_argument("--show", type=int, default=6, metavar="N",
                   help="held-out images to caption with attention heatmaps (default 6)")
    p.add_argument("--split", choices=("official", "random"), default="official",
                   help="flickr8k: the published split (default) or a random 80/10/10 split "
                   "by image, seeded by --seed (synthetic scenes are always split at random)")
    p.add_argument("--seed", type=int, default=0,
                   help="scene, training (and --split random) seed")
    p.add_argument("--no-coco", action="store_true",
                   help="nltk BLEU only (skip the Java-based METEOR/ROUGE-L/CIDEr)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="backbone input size for the feature cache (default: the backbone's, "
                   "224 for VGG16: 14x14 regions; 160 gives 10x10)")
    p.add_argument("--layer", default=None,
                   help="backbone layer the feature cache reads (default: the backbone's own, "
                   "block5_conv3 for VGG16)")
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
    if args.image_size:
        settings["image_size"] = args.image_size
    if args.layer:
        settings["layer"] = args.layer
    return settings


def _check_stamp(folder: Path, settings: dict[str, Any], what: str = "demo run folder",
                 flag: str = "--out") -> None:
    """A folder the demo reuses must hold a demo run with the same settings (or nothing)."""
    path = folder / STAMP_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            diff = sorted(k for k in settings if not isinstance(old, dict)
                          or old.get(k) != settings[k])
            raise IcapnetError(
                f"{folder}: holds a demo run with other settings ({', '.join(diff)}); "
                f"use another {flag} or delete that folder"
            )
    elif folder.is_dir() and any(folder.iterdir()):
        raise IcapnetError(f"{folder}: exists and is not a {what}; choose another {flag}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags with the demo's defaults filled in; unknown flags are a one-line error."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise IcapnetError(f"{unknown[0]}: unknown flag (not a demo or train option)")
    require_positive(args, optional=("num_images", "epochs", "batch_size", "units",
                                     "embedding_dim", "attention_units", "beam", "image_size"))
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
    """The training Config: train's defaults, the preset (named, or the dataset's), the demo's
    sizes, then the flags given."""
    base = apply_preset(Config(), args.preset or preset_for(args.dataset))
    return Config(model=cli.config_section(ModelConfig, args, base=base.model, skip=_FROM_CACHE),
                  train=cli.config_section(TrainConfig, args, base=base.train),
                  data=DataConfig(dataset=args.dataset, data_dir=str(data_dir)))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    synthetic = args.dataset == "synthetic"
    weights = args.weights or ("none" if synthetic else "imagenet")
    out = Path(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    cache_dir, attention_dir = out / "cache", out / "attention"
    model_dir = Path(args.model_dir) if args.model_dir else DEFAULT_MODELS_DIR / out.resolve().name
    config = demo_config(args, data_dir)
    config.validate()
    settings = _settings(args, data_dir, weights)
    _check_stamp(out, settings)
    _check_stamp(model_dir, settings, "model directory of this demo", "--model-dir")
    for folder in (out, model_dir):
        atomic_write_text(folder / STAMP_FILE, json.dumps(settings, indent=2, sort_keys=True)
                          + "\n")
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
    build_cache(dataset, cache_dir, feature_config_for("vgg16", weights, layer=args.layer,
                                                         image_size=args.image_size), data_cfg)
    cache = open_cache(cache_dir)
    print(describe_cache(cache, data_cfg))

    stages.start(3, "training", f"training, preset {config.train.preset} (resumes if "
                 f"interrupted): {model_dir}")
    history = train(config, cache_dir, model_dir, verbose=0 if args.quiet else 1)
    print(describe_history(history))

    stages.start(4, "evaluation", "evaluating on the held-out test split (greedy and beam)")
    predictor = load_predictor(model_dir)
    beams = sorted({1, args.beam})
    metrics, localisation = _evaluate(args, predictor, model_dir, cache, dataset, beams)

    stages.start(5, "captions", f"captioning {args.show} held-out images with attention "
                 f"heatmaps: {attention_dir}")
    shown = _caption_examples(args, predictor, cache, dataset, attention_dir, out)
    examples = _copy_examples(cache, dataset, model_dir)
    stages.stop()

    summary = _summary(out, model_dir, attention_dir, metrics, localisation, shown,
                       time.perf_counter() - started, stages.seconds)
    summary["next"] = _next_commands(model_dir, examples, out)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, metrics, localisation, beams)
    return 0


def _evaluate(args: argparse.Namespace, predictor: Any, model_dir: Path, cache: Any,
              dataset: Any, beams: list[int]) -> tuple[dict[str, dict], dict | None]:
    """Score the test split per beam; on synthetic scenes, localisation of the same captions."""
    from icapnet.inference.evaluation import evaluate_split
    from icapnet.inference.localisation import LocalisationTally

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
        print(f"  {_column(beam)}: {done.entry['num_images']} test images captioned and scored "
              f"in {done.seconds:.1f} s")
    return metrics, localisation


def _column(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"


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


def _copy_examples(cache: Any, dataset: Any, model_dir: Path) -> list[Path]:
    """A few held-out test photos into MODEL/examples/: the web page offers them to click,
    and the summary's caption command uses one."""
    folder = model_dir / MODEL_EXAMPLES_DIR
    ids = [i for i in cache.image_ids("test") if i in dataset.images]
    written = []
    for image_id in ids:
        if len(written) == MAX_MODEL_EXAMPLES:
            break
        source = Path(dataset.images[image_id])
        if source.stat().st_size > MAX_EXAMPLE_BYTES:
            continue
        target = folder / source.name
        if not target.is_file():
            atomic_write_bytes(target, source.read_bytes())
        written.append(target)
    return written


def _python() -> str:
    """How to call this interpreter in the printed commands: ``python`` when that is what
    the PATH finds, else its path (e.g. ``.venv/bin/python`` right after set-up)."""
    exe = Path(sys.executable).absolute()
    found = shutil.which("python")
    if found and Path(found).absolute() == exe:
        return "python"
    relative = os.path.relpath(exe)
    return relative if not relative.startswith("..") else str(exe)


def _next_commands(model_dir: Path, examples: list[Path], out: Path) -> list[dict[str, str]]:
    """The commands that use the model just trained: caption a photo (with heatmaps), serve."""
    from icapnet.model.store import find_default_model

    try:
        is_default = find_default_model().resolve() == model_dir.resolve()
    except IcapnetError:
        is_default = False
    model = "" if is_default else f" --model {shlex.quote(str(model_dir))}"
    python = shlex.quote(_python())
    photo = shlex.quote(str(examples[0])) if examples else "photo.jpg"
    heatmaps = shlex.quote(str(out / "heatmaps"))
    return [
        {"what": "caption a photo and draw where the model looked for each word",
         "command": f"{python} -m icapnet.caption {photo}{model} --attention-dir {heatmaps}"},
        {"what": "open the web page at http://127.0.0.1:8000/ (Ctrl+C stops it)",
         "command": f"{python} -m icapnet.serve{model}"},
    ]


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

    rows = {_column(b): {k: v for k, v in metrics.get(f"beam{b}", {}).items()
                         if isinstance(v, float)} for b in beams}
    images = {metrics.get(f"beam{b}", {}).get("num_images") for b in beams} - {None}
    print("\n" + "=" * 60)
    count = f", {images.pop()} images" if len(images) == 1 else ""
    print(f"test-split metrics (free-running captions{count})\n")
    print(format_table(rows))
    if localisation:
        cells = "  ".join(f"{_column(b)}: {_fmt(localisation[f'beam{b}']['attention_in_box'])}"
                          for b in beams)
        print(f"\nattention in the named object's box, at its shape word  {cells}")
        cells = "  ".join(f"{_column(b)}: "
                          f"{_fmt(localisation[f'beam{b}'].get('attention_in_box_phrase'))}"
                          for b in beams)
        print(f"  ... averaged over its size/colour/shape words            {cells}")
        cells = "  ".join(f"{('greedy' if b == 1 else f'beam {b}')}: "
                          f"{_precision(localisation[f'beam{b}'])}" for b in beams)
        print(f"shape words that name an object in the scene             {cells}")
    print("\noutputs")
    width = max(map(len, summary["outputs"]))
    for name, path in summary["outputs"].items():
        print(f"  {name.ljust(width)}  {path}")
    print(f"\ndone in {summary['seconds'] / 60:.1f} min")
    print("\nnext:")
    for step in summary.get("next", []):
        print(f"  # {step['what']}\n  {step['command']}")


def _precision(loc: Mapping[str, Any]) -> str:
    """Shape-word precision: the share of written shape words that name a real object."""
    named, wrong = loc.get("shape_words") or 0, loc.get("unmatched_shape_words") or 0
    if not named + wrong:
        return "n/a (no shape words)"
    return f"{named / (named + wrong):.1%} ({wrong} of {named + wrong} name none)"


def _fmt(value: float | None) -> str:
    return "n/a (no shape words)" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(run_cli(main))
