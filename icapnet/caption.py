"""``python -m icapnet.caption IMG [IMG... | DIR | GLOB]``: describe photos in one sentence.

Output on stdout, one line per image that could be read:

* one image in total: just the caption;
* several images: ``path<TAB>caption`` (paths as given / as expanded from DIR or GLOB);
* ``--json``: one JSON object per line, always: ``{"path", "caption", "score", "words"}``
  plus ``"attention_png"`` / ``"attention_npz"`` with ``--attention-dir``.

A folder contributes its image files (by extension, not recursive, sorted); a glob pattern
(``'photos/**/*.jpg'``, quoted so the shell leaves it alone) contributes its matching image
files. A file named explicitly is always tried. An image that cannot be read (missing,
corrupt, truncated, not an image, unsupported) gives one ``error: PATH: problem`` line on
stderr; the other images are still captioned and the exit code is 1. A bad ``--model``
(or no model under ``saved_models/``) is a one-line error with exit code 2.

``--attention-dir D`` writes, per image, ``D/<stem>_attention.png`` (the photo, then one panel
per word and ``<end>``: the 14x14 map over the photo, opacity following the attention, one
shared colour scale; see :mod:`icapnet.plots.attention`) -- or ``.gif`` stepping through the
words with ``--attention-format gif`` -- and ``D/<stem>_attention.npz`` (``words``, raw
``attention`` [T,14,14], ``end_attention``, ``caption``, ``image_path``, ``image_size``,
``score``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from icapnet.config import CONFIG_FILE
from icapnet.data.images import is_image_file, load_image
from icapnet.errors import IcapnetError, require_positive, run_cli

DEFAULT_MODELS_DIR = Path("saved_models")
_GLOB_CHARS = set("*?[")
# The last Predictor loaded in this process, reused when main() runs again in-process (demo,
# tests) for the same, unchanged model: loading VGG16 and tracing the decoder costs seconds.
_LOADED: dict[tuple, Any] = {}


def find_default_model(models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """The most recently saved model directory (one holding config.json) under ``models_dir``."""
    models_dir = Path(models_dir)
    candidates = []
    if models_dir.is_dir():
        candidates = [d for d in models_dir.iterdir() if (d / CONFIG_FILE).is_file()]
        if (models_dir / CONFIG_FILE).is_file():
            candidates.append(models_dir)
    if not candidates:
        raise IcapnetError(
            f"{models_dir}: no trained model found (no folder with {CONFIG_FILE}); "
            "train one with 'python -m icapnet train' or pass --model DIR"
        )

    def saved_at(model_dir: Path) -> float:
        files = [model_dir / CONFIG_FILE, model_dir / "model.weights.h5"]
        return max(f.stat().st_mtime for f in files if f.exists())

    return max(candidates, key=lambda d: (saved_at(d), d.name))


def resolve_model(model: str | None) -> Path:
    """``--model`` checked up front (before TensorFlow loads), or the newest saved model.

    A packaged ``.zip`` or an http(s) URL of one becomes its unpacked folder in the model
    cache (``icapnet.model.hub``).
    """
    if model is None:
        return find_default_model()
    if model.lower().startswith(("http://", "https://")) or model.lower().endswith(".zip"):
        from icapnet.model.hub import fetch_model

        return fetch_model(model)
    path = Path(model)
    if not path.exists():
        raise IcapnetError(f"{path}: model directory not found")
    if not (path / CONFIG_FILE).is_file():
        raise IcapnetError(f"{path}: not a model directory (no {CONFIG_FILE})")
    return path


def expand_inputs(items: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files, folders and glob patterns -> (image paths in order, one-line errors)."""
    paths: list[Path] = []
    errors: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not found:
                errors.append(f"{path}: folder has no image files")
            paths.extend(found)
        elif path.exists() or not (_GLOB_CHARS & set(item)):
            paths.append(path)  # missing files are reported when loading, in order
        else:
            found = sorted(
                Path(p) for p in glob.glob(item, recursive=True)
                if Path(p).is_file() and is_image_file(p)
            )
            if not found:
                errors.append(f"{item}: no image files match this pattern")
            paths.extend(found)
    return paths, errors


def load_predictor(model_dir: Path, feature_weights: str | None = None) -> Any:
    """``Predictor.from_dir``, reusing the previous one when the model files are unchanged."""
    from icapnet.inference.predictor import Predictor

    stamps = tuple(f.stat().st_mtime_ns for f in sorted(model_dir.iterdir()) if f.is_file())
    key = (str(model_dir.resolve()), feature_weights, stamps)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = Predictor.from_dir(model_dir, feature_weights=feature_weights)
    return _LOADED[key]


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = f"{path.stem}_attention", 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}_attention"
    used.add(stem)
    return stem


def _chunks(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.caption",
        description="Caption images with a trained icapnet model.",
        epilog="One image: prints the caption. Several: 'path<TAB>caption' per line. "
        "Unreadable images are reported on stderr and the exit code is 1.",
    )
    parser.add_argument("images", nargs="+", metavar="IMG", help="image file, folder or glob")
    parser.add_argument("--model", help="model dir, packaged .zip or http(s) URL of one "
                        f"(default: newest in {DEFAULT_MODELS_DIR}/)")
    parser.add_argument("--beam", type=int, default=1, metavar="K", help="beam size (1 = greedy)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="longest caption in tokens (default: the model's max_length)")
    parser.add_argument("--attention-dir", type=Path, metavar="D",
                        help="write an attention figure and the raw maps (.npz) per image")
    parser.add_argument("--attention-format", choices=("png", "gif"), default="png",
                        help="attention figure: png (all words side by side, default) or gif "
                        "(animated, one word per frame)")
    parser.add_argument("--json", action="store_true", help="JSON lines with path, caption, score")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--feature-weights", default=None,
                        help="override the backbone weights recorded in the model's config")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_positive(args, "beam", "batch_size", optional=("max_length",))
    model_dir = resolve_model(args.model)
    paths, errors = expand_inputs(args.images)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if not paths:
        return 1

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tqdm.auto import tqdm

    draw = save_attention_npz = None
    if args.attention_dir is not None:  # matplotlib costs ~0.7 CPU-s: only when drawing
        from icapnet.plots import attention_gif, attention_grid, save_attention_npz

        draw = attention_grid if args.attention_format == "png" else attention_gif

    predictor = load_predictor(model_dir, args.feature_weights)
    single = len(paths) == 1 and not errors
    failed = bool(errors)
    used_stems: set[str] = set()
    with tqdm(total=len(paths), desc="captioning", unit="img", disable=None, leave=False) as bar:
        for chunk in _chunks(paths, args.batch_size):
            loaded = []
            for path in chunk:
                try:
                    loaded.append((path, load_image(path)))
                except IcapnetError as err:
                    print(f"error: {err}", file=sys.stderr)
                    failed = True
            results = predictor.caption_images(
                [image for _, image in loaded], beam_size=args.beam, max_length=args.max_length
            ) if loaded else []
            for (path, image), result in zip(loaded, results, strict=True):
                record = {"path": str(path), "caption": result.caption,
                          "score": float(result.score), "words": list(result.words)}
                if args.attention_dir is not None:
                    record.update(_write_attention(args.attention_dir, path, image, result,
                                                   used_stems, draw, save_attention_npz,
                                                   args.attention_format))
                if args.json:
                    print(json.dumps(record, ensure_ascii=False), flush=True)
                elif single:
                    print(result.caption, flush=True)
                else:
                    print(f"{path}\t{result.caption}", flush=True)
            bar.update(len(chunk))
    return 1 if failed else 0


def _write_attention(out_dir, path, image, result, used_stems, draw, save_npz, fmt) -> dict:
    """Attention figure (PNG or GIF) + raw .npz for one image; their paths for the record."""
    stem = _unique_stem(path, used_stems)
    words = list(result.words)
    npz = save_npz(out_dir / f"{stem}.npz", words, result.attention, result.caption,
                   image_path=path, image_size=image.shape[:2], score=float(result.score),
                   end_attention=result.end_attention)
    out = {"attention_npz": str(npz)}
    if words:
        figure = out_dir / f"{stem}.{fmt}"
        draw(image, words, result.attention, figure, caption=result.caption,
             end_attention=result.end_attention)
        out[f"attention_{fmt}"] = str(figure)
    else:
        print(f"note: {path}: empty caption, no attention grid drawn", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
