"""``python -m icapnet.demo``: the whole pipeline, end to end, in one command.

Generates captioned synthetic scenes (or reads Flickr8k), builds the feature cache, trains a
captioner, scores it on the held-out test split (greedy and beam search), captions a few
held-out images with attention heatmaps and prints where everything went. Each stage is the
same code the individual commands run (``prepare``, ``train``, ``evaluate``, ``caption``),
called in one process so TensorFlow loads once.

Re-running the same command reuses what is done: the scenes and the feature cache are kept,
training resumes from its last checkpoint (or is skipped when finished), and only
evaluation and captioning run again. A folder holding a run with other data settings is an
error rather than a silent mix.

On synthetic scenes the demo also reports *attention localisation*: when the decoder writes a
shape word, the share of its attention mass that falls on the box of the object it names.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icapnet.errors import IcapnetError, require_positive, run_cli
from icapnet.io import atomic_write_text

DATASETS = ("synthetic", "flickr8k")
SUMMARY_FILE = "summary.json"
STAMP_FILE = "demo.json"
# Sized so the synthetic demo finishes in under ~10 minutes on 2 CPU cores.
DEFAULT_NUM_IMAGES = 400
DEFAULT_EPOCHS = 20
# The synthetic demo trains a half-width model (about 3x cheaper per step than the default
# GRU 512 / attention 512 / embedding 256); flickr8k and explicit flags use the real sizes.
SMALL_MODEL = {"units": 256, "attention_units": 256, "embedding_dim": 128}


# --------------------------------------------------------------------------- localisation


def box_coverage(box: Sequence[float], width: int, height: int, grid: int = 14) -> np.ndarray:
    """[grid, grid] fraction of each attention cell's area covered by ``box``.

    ``box`` is ``[x0, y0, x1, y1]`` in pixels of a ``width`` x ``height`` image; the cells
    tile the image the way the backbone's feature grid does after the square resize.
    """
    edges = np.linspace(0.0, 1.0, grid + 1)
    x0, y0, x1, y1 = (float(v) for v in box)
    bx0, bx1, by0, by1 = x0 / width, x1 / width, y0 / height, y1 / height
    ox = np.clip(np.minimum(edges[1:], bx1) - np.maximum(edges[:-1], bx0), 0.0, None) * grid
    oy = np.clip(np.minimum(edges[1:], by1) - np.maximum(edges[:-1], by0), 0.0, None) * grid
    return (oy[:, None] * ox[None, :]).astype(np.float32)


def attention_in_box(
    words: Sequence[str],
    attention: np.ndarray,
    objects: Sequence[Mapping[str, Any]],
    image_size: tuple[int, int],
    window: int = 3,
    phrase: bool = False,
) -> tuple[list[float], int]:
    """Attention mass inside the named object's box, one value per shape word of a caption.

    ``attention`` is [T, R] (or [T, g, g]) for ``words``; ``objects`` are the scene's boxes
    (``{"shape", "color", "size", "box"}``), ``image_size`` is ``(width, height)``. The
    object named by a shape word is the one of that shape whose colour and size agree with
    the adjectives among the ``window`` words before it; when several still match, their
    boxes are merged. Mass inside a box is ``sum(alpha * covered fraction of the cell)``.
    Returns ``(shares, unmatched)``: ``unmatched`` counts shape words naming no object in
    the scene (a wrong caption, not a localisation), which are left out of ``shares``.
    With ``phrase=True`` each share is instead the mean over the steps of the whole phrase
    (the size/colour words before the shape word, and the shape word itself): a decoder may
    look at the object while writing its adjectives and carry the shape in its state.
    """
    att = np.asarray(attention, dtype=np.float32).reshape(len(attention), -1)
    grid = math.isqrt(att.shape[1])
    shapes = {str(o["shape"]) for o in objects}
    known_shapes = shapes | _SHAPE_WORDS
    colours = _COLOUR_WORDS | {str(o["color"]) for o in objects}
    sizes = _SIZE_WORDS | {str(o["size"]) for o in objects}
    shares: list[float] = []
    unmatched = 0
    for t, word in enumerate(words[: len(att)]):
        if word not in known_shapes:
            continue
        before = set(words[max(0, t - window) : t])
        found = [
            o for o in objects
            if o["shape"] == word
            and all(a == o["color"] for a in before & colours)
            and all(a == o["size"] for a in before & sizes)
        ]
        if not found:
            unmatched += 1
            continue
        cover = np.max([box_coverage(o["box"], *image_size, grid=grid) for o in found], axis=0)
        steps = [t]
        if phrase:
            steps += [s for s in range(max(0, t - window), t) if words[s] in colours | sizes]
        shares.append(float(np.mean([np.sum(att[s].reshape(grid, grid) * cover)
                                     for s in steps])))
    return shares, unmatched


_SHAPE_WORDS = {"circle", "square", "triangle"}
_COLOUR_WORDS = {"red", "green", "blue", "yellow"}
_SIZE_WORDS = {"small", "large"}


def localisation_report(
    model: Any,
    vocab: Any,
    cache_dir: str | Path,
    image_paths: Mapping[str, str | Path],
    split: str = "test",
    beams: Sequence[int] = (1, 3),
    max_length: int = 40,
    batch_size: int = 32,
) -> dict[str, dict[str, Any]]:
    """Attention-in-box for every image of a synthetic cache split, per beam size.

    Captions are decoded free-running from the cached features; image sizes come from the
    image files (``image_paths``: image_id -> file) so boxes map onto the feature grid
    whatever size the scenes were drawn at.
    """
    from PIL import Image

    from icapnet.data.features import open_cache
    from icapnet.data.pipeline import make_image_dataset
    from icapnet.inference.decoding import decode

    cache = open_cache(cache_dir)
    boxes = cache.boxes
    if not boxes:
        raise IcapnetError(f"{cache_dir}: cache has no boxes.json (not a synthetic dataset)")
    sizes: dict[str, tuple[int, int]] = {}
    report: dict[str, dict[str, Any]] = {}
    for beam in beams:
        shares: list[float] = []
        phrase_shares: list[float] = []
        unmatched = images = 0
        for raw_ids, features in make_image_dataset(cache_dir, split, batch_size):
            res = decode(model, features, beam, max_length).to_numpy()
            for k, raw in enumerate(raw_ids.numpy()):
                image_id = raw.decode("utf-8")
                if image_id not in boxes:
                    continue
                if image_id not in sizes:
                    with Image.open(image_paths[image_id]) as img:
                        sizes[image_id] = img.size
                words = vocab.tokens(res.tokens[k])
                got, missed = attention_in_box(words, res.attention[k], boxes[image_id],
                                               sizes[image_id])
                shares += got
                unmatched += missed
                phrase_shares += attention_in_box(words, res.attention[k], boxes[image_id],
                                                  sizes[image_id], phrase=True)[0]
                images += 1
        report[f"beam{beam}"] = {
            "attention_in_box": float(np.mean(shares)) if shares else None,
            # the same boxes, averaged over the size/colour/shape words of each phrase
            "attention_in_box_phrase": float(np.mean(phrase_shares)) if phrase_shares else None,
            "shape_words": len(shares),
            "unmatched_shape_words": unmatched,
            "num_images": images,
        }
    return report


def chance_in_box(boxes: Mapping[str, Sequence[Mapping[str, Any]]],
                  sizes: Mapping[str, tuple[int, int]]) -> float:
    """Share a uniform attention map would put inside the objects' boxes (the baseline)."""
    values = [
        float(box_coverage(o["box"], *sizes[i]).mean())
        for i, objs in boxes.items() if i in sizes for o in objs
    ]
    return float(np.mean(values)) if values else 0.0


# --------------------------------------------------------------------------- the demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m icapnet.demo",
        description="Generate synthetic scenes (or read Flickr8k), build the feature cache, "
        "train a captioner, evaluate it and caption held-out images with attention heatmaps.",
        epilog="Other flags go to 'python -m icapnet.train' (e.g. --learning-rate 1e-3 "
        "--dropout 0.3).",
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


def _train_flags() -> set[str]:
    from icapnet.train import build_parser as train_parser

    return {s for a in train_parser()._actions for s in a.option_strings if s.startswith("--")}


_TRAIN_FLAGS = _train_flags()


def _train_argv(args: argparse.Namespace, cache: Path, model_dir: Path,
                extra: Sequence[str]) -> list[str]:
    argv = ["--cache", str(cache), "--out", str(model_dir), "--seed", str(args.seed), *extra]
    epochs = args.epochs or (DEFAULT_EPOCHS if args.dataset == "synthetic" else None)
    for flag, value in (("--epochs", epochs), ("--batch-size", args.batch_size),
                        ("--units", args.units), ("--embedding-dim", args.embedding_dim),
                        ("--attention-units", args.attention_units)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _call(stage: str, main: Any, argv: list[str], capture: bool = False) -> str:
    """Run another command's ``main``; a non-zero exit stops the demo with one line."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer) if capture else contextlib.nullcontext():
        code = main(argv)
    if code:
        raise IcapnetError(f"{stage}: stopped with exit code {code} (see the messages above)")
    return buffer.getvalue()


def _test_images(cache_dir: Path, image_paths: Mapping[str, Path], count: int) -> list[Path]:
    from icapnet.data.features import open_cache

    ids = [i for i in open_cache(cache_dir).image_ids("test") if i in image_paths]
    return [image_paths[i] for i in ids[:count]]


def main(argv: Sequence[str] | None = None) -> int:
    args, train_extra = build_parser().parse_known_args(argv)
    unknown = [a for a in train_extra if a.startswith("--") and a.split("=")[0] not in _TRAIN_FLAGS]
    if unknown:
        raise IcapnetError(f"{unknown[0]}: unknown flag (not a demo or train option)")
    require_positive(args, optional=("num_images", "epochs", "batch_size", "units",
                                     "embedding_dim", "attention_units", "beam"))
    if args.show < 0:
        raise IcapnetError(f"--show: must be >= 0, got {args.show}")
    synthetic = args.dataset == "synthetic"
    random_split = not synthetic and args.split == "random"
    if not synthetic and not args.data_dir:
        raise IcapnetError("--data-dir: required for --dataset flickr8k "
                           "(get it with 'python -m icapnet.download --data-dir D')")
    if synthetic and args.num_images is None:
        args.num_images = DEFAULT_NUM_IMAGES
    if synthetic and args.small:
        for name, value in SMALL_MODEL.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    weights = args.weights or ("none" if synthetic else "imagenet")
    out = Path(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    cache_dir, model_dir, attention_dir = out / "cache", out / "model", out / "attention"
    _check_stamp(out, _settings(args, data_dir, weights))
    started = time.perf_counter()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from icapnet import evaluate, prepare, train
    from icapnet.data.datasets import load_dataset

    stages = _Stages()
    stages.start(1, "data", f"data: {args.dataset} in {data_dir}")
    if synthetic:
        from icapnet.data.synthetic import ensure_scenes

        ensure_scenes(data_dir, args.num_images, seed=args.seed)
    split = ["--split", "random", "--seed", str(args.seed)] if random_split else []
    dataset = load_dataset(args.dataset, data_dir,
                           **({"split": "random", "seed": args.seed} if random_split else {}))
    print(f"  {len(dataset.images)} images")

    stages.start(2, "features", f"feature cache ({weights} weights): {cache_dir}")
    prep = ["--dataset", args.dataset, "--data-dir", str(data_dir), "--out", str(cache_dir),
            "--weights", weights, *split]
    if not synthetic and args.num_images:
        prep += ["--limit", str(args.num_images)]
    _call("prepare", prepare.main, prep)

    stages.start(3, "training", f"training (resumes if interrupted): {model_dir}")
    _call("train", train.main, _train_argv(args, cache_dir, model_dir, train_extra))

    stages.start(4, "evaluation", "evaluating on the held-out test split (greedy and beam)")
    beams = sorted({1, args.beam})
    for beam in beams:
        ev = ["--model", str(model_dir), "--split", "test", "--beam", str(beam)]
        _call(f"evaluate (beam {beam})", evaluate.main,
              ev + (["--no-coco"] if args.no_coco else []))
    metrics = json.loads((model_dir / evaluate.METRICS_FILE).read_text(encoding="utf-8"))
    localisation = None
    if synthetic:
        from icapnet.model.store import load_model_dir

        model, vocab, config = load_model_dir(model_dir)
        localisation = localisation_report(model, vocab, cache_dir, dataset.images, "test",
                                           beams, int(config.model.max_length))

    stages.start(5, "captions", f"captioning {args.show} held-out images with attention "
                 f"heatmaps: {attention_dir}")
    shown = _caption_examples(args, cache_dir, model_dir, attention_dir, dataset, out)
    stages.stop()

    summary = _summary(out, model_dir, attention_dir, metrics, localisation, shown,
                       time.perf_counter() - started, beams, stages.seconds)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, metrics, localisation, beams)
    return 0


def _caption_examples(args: argparse.Namespace, cache_dir: Path, model_dir: Path,
                      attention_dir: Path, dataset: Any, out: Path) -> list[dict[str, Any]]:
    """Caption a few test images through ``icapnet.caption`` (heatmap PNG + .npz each)."""
    from icapnet import caption

    if not args.show:
        return []
    paths = _test_images(cache_dir, dataset.images, args.show)
    text = _call("caption", caption.main,
                 [*map(str, paths), "--model", str(model_dir), "--beam", str(args.beam),
                  "--attention-dir", str(attention_dir), "--json"], capture=True)
    shown = [json.loads(line) for line in text.splitlines() if line.strip()]
    for record in shown:
        name = Path(record["path"]).name
        record["reference"] = (dataset.captions.get(name) or [""])[0]
        print(f"  {name}: {record['caption']}\n  {'':{len(name)}}  "
              f"(a reference: {record['reference']})")
    atomic_write_text(out / "captions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in shown))
    return shown


def _summary(out: Path, model_dir: Path, attention_dir: Path, metrics: dict,
             localisation: dict | None, shown: list[dict], seconds: float,
             beams: list[int], stage_seconds: dict[str, float]) -> dict[str, Any]:
    test = metrics.get("test", {})
    return {
        "metrics": {f"beam{b}": test.get(f"beam{b}", {}) for b in beams},
        "attention_localisation": localisation,
        "captions": shown,
        "outputs": {
            "model": str(model_dir),
            "metrics": str(model_dir / "metrics.json"),
            "loss_curves": str(model_dir / "loss.png"),
            "attention": str(attention_dir),
            "captions": str(out / "captions.jsonl"),
            "summary": str(out / SUMMARY_FILE),
        },
        "seconds": round(seconds, 1),
        "stage_seconds": stage_seconds,
    }


def _print_summary(summary: dict, metrics: dict, localisation: dict | None,
                   beams: list[int]) -> None:
    from icapnet.inference.metrics import format_table

    test = metrics.get("test", {})
    rows = {("greedy" if b == 1 else f"beam {b}"): {
        k: v for k, v in test.get(f"beam{b}", {}).items() if isinstance(v, float)
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
