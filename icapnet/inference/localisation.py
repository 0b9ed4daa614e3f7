"""Attention localisation on synthetic scenes: how much attention the named object gets.

When the decoder writes a shape word ("circle"), the share of that step's attention mass
that falls inside the box of the object the word names (picked by the colour and size
words before it). A uniform map scores the box's share of the image, so the number shows
whether attention points at what is being named. Used by the demo and the quality
benchmark on the held-out split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from icapnet.data.synthetic import COLORS, SHAPES, SIZES

if TYPE_CHECKING:
    from icapnet.inference.predictor import CaptionResult

_SHAPE_WORDS, _COLOUR_WORDS, _SIZE_WORDS = set(SHAPES), set(COLORS), set(SIZES)


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


def merged_box_coverage(objects: Sequence[Mapping[str, Any]], image_size: tuple[int, int],
                        grid: int = 14) -> np.ndarray:
    """[grid, grid] :func:`box_coverage` of several objects' boxes merged (cell-wise max):
    the region a phrase that fits more than one object points at."""
    return np.max([box_coverage(o["box"], *image_size, grid=grid) for o in objects], axis=0)


def described_objects(words: Sequence[str], t: int, objects: Sequence[Mapping[str, Any]],
                      window: int = 3) -> list[Mapping[str, Any]]:
    """The objects whose colour and size agree with the adjectives among the ``window``
    words before ``words[t]``, whatever their shape: what the phrase ending at ``t``
    describes (the object a shape word names is the one of them with that shape)."""
    colours = _COLOUR_WORDS | {str(o["color"]) for o in objects}
    sizes = _SIZE_WORDS | {str(o["size"]) for o in objects}
    before = set(words[max(0, t - window) : t])
    return [o for o in objects
            if all(a == o["color"] for a in before & colours)
            and all(a == o["size"] for a in before & sizes)]


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
    known_shapes = _SHAPE_WORDS | {str(o["shape"]) for o in objects}
    colours = _COLOUR_WORDS | {str(o["color"]) for o in objects}
    sizes = _SIZE_WORDS | {str(o["size"]) for o in objects}
    shares: list[float] = []
    unmatched = 0
    for t, word in enumerate(words[: len(att)]):
        if word not in known_shapes:
            continue
        found = [o for o in described_objects(words, t, objects, window) if o["shape"] == word]
        if not found:
            unmatched += 1
            continue
        cover = merged_box_coverage(found, image_size, grid)
        steps = [t]
        if phrase:
            steps += [s for s in range(max(0, t - window), t) if words[s] in colours | sizes]
        shares.append(float(np.mean([np.sum(att[s].reshape(grid, grid) * cover)
                                     for s in steps])))
    return shares, unmatched


class LocalisationTally:
    """Attention-in-box over the captions of one decoding run, fed one caption at a time.

    ``boxes``: image_id -> objects (the cache's boxes.json); ``image_paths``: image_id ->
    file, read once per image for its size so boxes map onto the feature grid whatever
    size the scenes were drawn at. Captions of images without boxes are ignored.
    """

    def __init__(self, boxes: Mapping[str, Sequence[Mapping[str, Any]]],
                 image_paths: Mapping[str, str | Path]) -> None:
        self.boxes = boxes
        self.image_paths = image_paths
        self.sizes: dict[str, tuple[int, int]] = {}
        self.shares: list[float] = []
        self.phrase_shares: list[float] = []
        self.unmatched = 0
        self.images = 0

    def add(self, image_id: str, result: CaptionResult) -> None:
        objects = self.boxes.get(image_id)
        if objects is None:
            return
        size = self._size(image_id)
        got, missed = attention_in_box(result.words, result.attention, objects, size)
        self.shares += got
        self.unmatched += missed
        self.phrase_shares += attention_in_box(result.words, result.attention, objects, size,
                                               phrase=True)[0]
        self.images += 1

    def _size(self, image_id: str) -> tuple[int, int]:
        if image_id not in self.sizes:
            from PIL import Image

            with Image.open(self.image_paths[image_id]) as img:
                self.sizes[image_id] = img.size
        return self.sizes[image_id]

    def report(self) -> dict[str, Any]:
        return {
            "attention_in_box": float(np.mean(self.shares)) if self.shares else None,
            # the same boxes, averaged over the size/colour/shape words of each phrase
            "attention_in_box_phrase": (float(np.mean(self.phrase_shares))
                                        if self.phrase_shares else None),
            "shape_words": len(self.shares),
            "unmatched_shape_words": self.unmatched,
            "num_images": self.images,
        }


__all__ = ["LocalisationTally", "attention_in_box", "box_coverage", "described_objects",
           "merged_box_coverage"]
