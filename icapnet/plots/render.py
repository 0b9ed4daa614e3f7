"""Turn a matplotlib Figure into pixels or a file, without pyplot.

Everything in :mod:`icapnet.plots` draws on ``matplotlib.figure.Figure`` with the Agg canvas
directly, so it works without a display, from threads (the web server) and from Keras
callbacks, and leaves no global figure state behind. Files are written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from icapnet import fs
from icapnet.io import atomic_write_bytes

DPI = 100


def figure_bytes(fig: Figure, fmt: str = "png", dpi: int = DPI, **metadata: str) -> bytes:
    """Render ``fig`` once, in memory; PNG text chunks carry ``metadata``."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    save_kwargs: dict = {"format": fmt, "dpi": dpi}  # layouts are fixed: one render only
    if metadata and fmt == "png":
        save_kwargs["metadata"] = metadata
    fig.savefig(buffer, **save_kwargs)
    return buffer.getvalue()


def save_figure(fig: Figure, out_path: str | Path, dpi: int = DPI, **metadata: str) -> Path:
    """Write ``fig`` atomically (a reader never sees half an image); format from the suffix."""
    out_path = fs.path(out_path)
    fmt = (out_path.suffix.lstrip(".") or "png").lower()
    atomic_write_bytes(out_path, figure_bytes(fig, fmt, dpi, **metadata))
    return out_path


def figure_pixels(fig: Figure) -> np.ndarray:
    """The figure as an HxWx3 uint8 array at its own dpi (frames of an animation)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
