"""Example photos the page offers to click, so a first visitor sees a result at once.

Where they come from, first match wins: the folder given to ``serve --examples``; an
``examples/`` folder inside the model directory (put a few test photos there when sharing a
model); for a model trained on synthetic scenes, a few freshly drawn scenes (the only kind
of picture such a model can describe). Otherwise there are none and the page hides the strip.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icapnet.data.images import is_image_file

MAX_EXAMPLES = 6
MAX_EXAMPLE_BYTES = 4 * 1024 * 1024
SYNTHETIC_EXAMPLES = 4
SYNTHETIC_SEED = 2024  # any seed: scenes are drawn, not taken from the training set
_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
          ".bmp": "image/bmp", ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class Example:
    name: str
    data: bytes
    content_type: str


def find_examples(
    model_dir: Path, dataset: str, examples_dir: str | Path | None = None
) -> list[Example]:
    """The examples for this model (see the module docstring); at most MAX_EXAMPLES."""
    folder = Path(examples_dir) if examples_dir is not None else model_dir / "examples"
    if folder.is_dir():
        return _from_folder(folder)
    if dataset == "synthetic":
        return synthetic_examples()
    return []


def _from_folder(folder: Path) -> list[Example]:
    out = []
    for path in sorted(folder.iterdir()):
        if len(out) == MAX_EXAMPLES:
            break
        if path.is_file() and is_image_file(path) and path.stat().st_size <= MAX_EXAMPLE_BYTES:
            out.append(Example(path.name, path.read_bytes(), _TYPES[path.suffix.lower()]))
    return out


def synthetic_examples(count: int = SYNTHETIC_EXAMPLES) -> list[Example]:
    """A few scenes from the synthetic generator, as JPEGs like the training images."""
    from icapnet.data.synthetic import render_scene

    rng = np.random.default_rng(SYNTHETIC_SEED)
    out = []
    for i in range(count):
        image, _ = render_scene(rng)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        out.append(Example(f"scene-{i + 1}.jpg", buffer.getvalue(), "image/jpeg"))
    return out
