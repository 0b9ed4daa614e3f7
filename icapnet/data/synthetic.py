"""Deterministic captioned shape scenes: a dataset whose right answers are known exactly.

Each scene holds 1-3 coloured shapes on a textured background. Captions are a fixed function
of the scene content (five phrasings, objects always named left to right), and every object's
bounding box is recorded, so tests and the demo can check both caption quality (BLEU) and
whether attention looks at the object being named.

The output is the Kaggle Flickr8k layout (``Images/*.jpg`` + ``captions.txt``) plus
``boxes.json``, so it goes through the same reader as real data:
``load_dataset("synthetic", out_dir)``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from icapnet.errors import IcapnetError
from icapnet.io import atomic_path

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 205, 30),
}
# Side length as a fraction of the image size: ~40-55 px and ~70-90 px at 224.
SIZES: dict[str, tuple[float, float]] = {"small": (0.18, 0.245), "large": (0.315, 0.40)}
IMAGES_DIR = "Images"
KAGGLE_CAPTIONS_FILE = "captions.txt"  # the Kaggle Flickr8k layout the readers know
BOXES_FILE = "boxes.json"
META_FILE = "scenes.json"
_FORMAT = "icapnet-synthetic-1"
_MARGIN = 4  # pixels kept free between objects and around the border
_JPEG_QUALITY = 92


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape; ``box`` is ``[x0, y0, x1, y1]`` in pixels, x1/y1 exclusive."""

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "box": list(self.box)}


def describe_scene(objects: list[SceneObject]) -> list[str]:
    """The five captions of a scene; objects are named in left-to-right order.

    The set is a pure function of the content, so a model can learn it exactly; the five
    phrasings differ so BLEU sees several references, as with real datasets.
    """
    objs = sorted(objects, key=lambda o: o.center_x)
    p = [o.phrase for o in objs]
    if len(p) == 1:
        return [
            p[0],
            f"there is {p[0]}",
            f"one shape: {p[0]}",
            f"a picture of {p[0]}",
            f"{p[0]} on a textured background",
        ]
    if len(p) == 2:
        return [
            f"{p[0]} to the left of {p[1]}",
            f"two shapes: {p[0]} and {p[1]}",
            f"there is {p[0]} and {p[1]}",
            f"{p[0]} on the left and {p[1]} on the right",
            f"a picture of {p[0]} and {p[1]}",
        ]
    if len(p) == 3:
        listed = f"{p[0]}, {p[1]} and {p[2]}"
        return [
            f"three shapes: {listed}",
            f"there is {listed}",
            f"{p[0]} on the left, {p[1]} in the middle and {p[2]} on the right",
            f"a picture of {listed}",
            f"from left to right: {listed}",
        ]
    raise ValueError(f"a scene has 1-3 objects, got {len(p)}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-contrast textured background: tinted grey + gradient + stripes + noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(95, 165) + rng.uniform(-12, 12, size=3)
    angle = rng.uniform(0, np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    gradient = rng.uniform(-25, 25) * (ramp - ramp.mean())
    s_angle = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 14)
    stripes = rng.uniform(4, 12) * np.sin(
        2 * np.pi * freq * (np.cos(s_angle) * xx + np.sin(s_angle) * yy) + rng.uniform(0, 2 * np.pi)
    )
    img = base[None, None, :] + (gradient + stripes)[..., None]
    img += rng.normal(0.0, rng.uniform(4, 10), size=img.shape)
    return img


def _place(
    rng: np.random.Generator, sides: list[int], size: int
) -> list[tuple[int, int, int]] | None:
    """``(object index, x0, y0)`` left to right for squares of ``sides``; None if they do not fit.

    Boxes never overlap (with a margin) and centres are far apart horizontally, so
    "left of" is unambiguous.
    """
    for _ in range(200):
        placed = [
            (
                i,
                int(rng.integers(_MARGIN, size - s - _MARGIN + 1)),
                int(rng.integers(_MARGIN, size - s - _MARGIN + 1)),
            )
            for i, s in enumerate(sides)
        ]
        placed.sort(key=lambda p: p[1] + sides[p[0]] / 2)
        boxes = [(x, y, x + sides[i], y + sides[i]) for i, x, y in placed]
        if _fits(boxes, size):
            return placed
    return None


def _fits(boxes: list[tuple[int, int, int, int]], size: int) -> bool:
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            apart = (
                a[2] + _MARGIN <= b[0]
                or b[2] + _MARGIN <= a[0]
                or a[3] + _MARGIN <= b[1]
                or b[3] + _MARGIN <= a[1]
            )
            gap = abs((a[0] + a[2]) - (b[0] + b[2])) / 2
            need = max(0.2 * size, 0.3 * ((a[2] - a[0]) + (b[2] - b[0])))
            if not apart or gap < need:
                return False
    return True


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, rgb: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = obj.box
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=rgb)


def render_scene(
    rng: np.random.Generator, image_size: int = 224
) -> tuple[Image.Image, list[SceneObject]]:
    """Draw one random scene; returns the RGB image and its objects in left-to-right order."""
    while True:
        count = int(rng.integers(1, 4))
        kinds = [
            (
                SHAPES[int(rng.integers(len(SHAPES)))],
                list(COLORS)[int(rng.integers(len(COLORS)))],
                list(SIZES)[int(rng.integers(len(SIZES)))],
            )
            for _ in range(count)
        ]
        sides = [round(rng.uniform(*SIZES[k[2]]) * image_size) for k in kinds]
        placed = _place(rng, sides, image_size)
        if placed is not None:
            break
    objects = [SceneObject(*kinds[i], (x, y, x + sides[i], y + sides[i])) for i, x, y in placed]
    canvas = Image.fromarray(np.clip(_background(rng, image_size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        jitter = rng.integers(-15, 16, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLORS[obj.color]) + jitter, 0, 255))
        _draw(draw, obj, rgb)
    noise = rng.normal(0.0, 4.0, (image_size, image_size, 3))
    pixels = np.asarray(canvas, dtype=np.float32) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), objects


def _captions_csv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    return buf.getvalue()


def generate_scenes(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: int = 224,
    progress: bool = True,
) -> Path:
    """Write ``num_images`` scenes to ``out_dir`` (Kaggle layout + boxes.json), atomically.

    The whole folder is built beside ``out_dir`` and renamed into place, so an interrupted
    run never leaves a half dataset. Scene ``i`` depends only on ``(seed, i)``: the same seed
    gives byte-identical files, and a larger ``num_images`` extends a smaller run.
    """
    out_dir = Path(out_dir)
    if num_images < 1:
        raise IcapnetError(f"{out_dir}: num_images must be >= 1, got {num_images}")
    if image_size < 64:
        raise IcapnetError(f"{out_dir}: image_size must be >= 64, got {image_size}")
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file())
    ):
        raise IcapnetError(
            f"{out_dir}: exists and is not a synthetic dataset; choose an empty or new folder"
        )
    rows: list[tuple[str, str]] = []
    boxes: dict[str, list[dict]] = {}
    with atomic_path(out_dir) as tmp:
        images = tmp / IMAGES_DIR
        images.mkdir(parents=True)
        for i in tqdm(range(num_images), desc="synthetic scenes", disable=not progress):
            rng = np.random.default_rng([seed, i])
            image, objects = render_scene(rng, image_size)
            image_id = f"scene_{i:05d}.jpg"
            image.save(images / image_id, format="JPEG", quality=_JPEG_QUALITY)
            rows += [(image_id, c) for c in describe_scene(objects)]
            boxes[image_id] = [o.to_dict() for o in objects]
        (tmp / KAGGLE_CAPTIONS_FILE).write_text(_captions_csv(rows), encoding="utf-8")
        (tmp / BOXES_FILE).write_text(json.dumps(boxes, indent=1) + "\n", encoding="utf-8")
        meta = _meta(num_images, seed, image_size)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out_dir


def _meta(num_images: int, seed: int, image_size: int) -> dict:
    """What scenes.json records; a folder is reused only when it matches exactly."""
    return {"format": _FORMAT, "num_images": num_images, "seed": seed, "image_size": image_size}


def read_meta(out_dir: str | Path) -> dict | None:
    """Generation settings of an existing synthetic folder (None if it is not one)."""
    path = Path(out_dir) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def ensure_scenes(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: int = 224,
    progress: bool = True,
) -> Path:
    """Reuse ``out_dir`` when it already holds exactly these scenes, otherwise (re)generate."""
    same = read_meta(out_dir) == _meta(num_images, seed, image_size)
    if same and (Path(out_dir) / KAGGLE_CAPTIONS_FILE).is_file():
        return Path(out_dir)
    return generate_scenes(out_dir, num_images, seed=seed, image_size=image_size, progress=progress)


__all__ = [
    "BOXES_FILE",
    "COLORS",
    "SHAPES",
    "SIZES",
    "SceneObject",
    "describe_scene",
    "ensure_scenes",
    "generate_scenes",
    "render_scene",
]
