"""Caption image files: expand folders and globs, caption in batches, write attention maps.

What ``python -m icapnet.caption`` does, as functions the demo (and anyone) can call: one
record per readable image, an ``IcapnetError`` in place of each unreadable one, in input
order. With an attention folder each record also names the PNG grid (one panel per word,
over the photo) and the ``.npz`` with the raw maps.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icapnet.config import DEFAULT_BEAM
from icapnet.data.images import is_image_file, load_image
from icapnet.errors import IcapnetError

_GLOB_CHARS = set("*?[")
ATTENTION_FORMATS = ("png", "gif")
# The last Predictor loaded in this process, reused when the same, unchanged model is asked
# for again (the caption CLI run several times in one process): loading the backbone and
# tracing the decoder costs seconds.
_LOADED: dict[tuple, Any] = {}


def expand_inputs(items: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files, folders and glob patterns -> (image paths in order, one-line errors).

    A folder contributes its image files (by extension, not recursive, sorted); a pattern its
    matching image files; a file named explicitly is always tried (and reported if bad).
    """
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


def check_output_dir(path: Path, flag: str) -> Path:
    """A folder outputs can go in (created if missing); anything else is one line naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IcapnetError(f"{path}: {flag} names an existing file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IcapnetError(f"{path}: {flag}: cannot create the folder "
                           f"({err.strerror or err})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise IcapnetError(f"{path}: {flag}: folder is not writable")
    return path


def load_predictor(model_dir: Path, feature_weights: str | None = None,
                   trace_beam: int | None = None) -> Any:
    """``Predictor.from_dir``, reusing the previous one when the model files are unchanged."""
    from icapnet.inference.predictor import Predictor

    stamps = tuple(f.stat().st_mtime_ns for f in sorted(model_dir.iterdir()) if f.is_file())
    key = (str(model_dir.resolve()), feature_weights, stamps)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = Predictor.from_dir(model_dir, feature_weights=feature_weights,
                                          trace_beam=trace_beam)
    return _LOADED[key]


def caption_files(
    predictor: Any,
    paths: Sequence[Path],
    beam_size: int = DEFAULT_BEAM,
    max_length: int | None = None,
    batch_size: int = 16,
    attention_dir: Path | None = None,
    attention_format: str = "png",
) -> Iterator[dict[str, Any] | IcapnetError]:
    """For each path, in order: ``{"path", "caption", "score", "words"}`` (plus
    ``"attention_npz"`` / ``"attention_png"`` (or ``_gif``) with ``attention_dir``) or the
    IcapnetError that says why the file could not be read."""
    used_stems: set[str] = set()
    for start in range(0, len(paths), batch_size):
        loaded: list[tuple[Path, np.ndarray]] = []
        failed: dict[int, IcapnetError] = {}
        for k, path in enumerate(paths[start:start + batch_size]):
            try:
                loaded.append((path, load_image(path)))
            except IcapnetError as err:
                failed[k] = err
        results = iter(predictor.caption_images(
            [image for _, image in loaded], beam_size=beam_size, max_length=max_length
        ) if loaded else [])
        good = iter(loaded)
        for k in range(min(batch_size, len(paths) - start)):
            if k in failed:
                yield failed[k]
                continue
            (path, image), result = next(good), next(results)
            record = {"path": str(path), "caption": result.caption,
                      "score": float(result.score), "words": list(result.words)}
            if attention_dir is not None:
                record.update(write_attention(attention_dir, path, image, result, used_stems,
                                              attention_format))
            yield record


def write_attention(out_dir: Path, path: Path, image: np.ndarray, result: Any,
                    used_stems: set[str], fmt: str = "png") -> dict[str, str]:
    """Attention figure (PNG grid or GIF, :mod:`icapnet.plots`) + raw .npz for one image,
    under names unique in ``out_dir``; returns their paths for the record."""
    from icapnet.plots import attention_gif, attention_grid, save_attention_npz

    draw = {"png": attention_grid, "gif": attention_gif}[fmt]
    stem = _unique_stem(path, used_stems)
    words = list(result.words)
    npz = save_attention_npz(out_dir / f"{stem}.npz", words, result.attention, result.caption,
                             image_path=path, image_size=image.shape[:2],
                             score=float(result.score), end_attention=result.end_attention)
    out = {"attention_npz": str(npz)}
    if words:
        figure = out_dir / f"{stem}.{fmt}"
        draw(image, words, result.attention, figure, caption=result.caption,
             end_attention=result.end_attention)
        out[f"attention_{fmt}"] = str(figure)
    else:
        print(f"note: {path}: empty caption, no attention grid drawn", file=sys.stderr)
    return out


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = f"{path.stem}_attention", 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}_attention"
    used.add(stem)
    return stem


__all__ = ["ATTENTION_FORMATS", "caption_files", "check_output_dir", "expand_inputs",
           "load_predictor", "write_attention"]
