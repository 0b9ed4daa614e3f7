"""Pictures people look at: loss curves while training, and where the model looked per word.

Everything draws on ``matplotlib.figure.Figure`` with the Agg canvas directly (never pyplot),
so it works without a display, from threads (the web server) and from Keras callbacks, and
leaves no global figure state behind. Files are written atomically through ``icapnet.io``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_bytes
from icapnet.layout import read_history

# Heatmaps are upsampled to the image's real size unless its long side exceeds this; then the
# image and the maps are both shown at a copy scaled to this long side (same aspect ratio),
# which keeps a 20-word grid of a 12-megapixel photo from needing gigabytes of float maps.
DISPLAY_MAX_SIDE = 1024
PANEL_INCHES = 3.0
MAX_COLUMNS = 5


def save_figure(fig: Figure, out_path: str | Path, dpi: int = 100, **metadata: str) -> Path:
    """Render ``fig`` into memory and write it atomically; the format follows the suffix."""
    out_path = Path(out_path)
    fmt = (out_path.suffix.lstrip(".") or "png").lower()
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    save_kwargs: dict = {"format": fmt, "dpi": dpi}  # tight_layout already; one render only
    if metadata and fmt == "png":
        save_kwargs["metadata"] = metadata
    fig.savefig(buffer, **save_kwargs)
    atomic_write_bytes(out_path, buffer.getvalue())
    return out_path


# ----------------------------------------------------------------------------- loss curves


def _read_history(history: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(history, pd.DataFrame):
        return history
    return read_history(history, required=True)


def loss_curves_figure(history: pd.DataFrame | str | Path) -> Figure:
    """Loss (train vs val) on the left; accuracy (train vs val) on the right when recorded."""
    frame = _read_history(history)
    if "loss" not in frame.columns:
        raise IcapnetError(f"history has no 'loss' column (columns: {list(frame.columns)})")
    x = frame["epoch"].to_numpy() if "epoch" in frame.columns else np.arange(len(frame))
    # Keras' CSVLogger counts epochs from 0; people count from 1.
    if len(x) and "epoch" in frame.columns and x.min() == 0:
        x = x + 1
    panels = [("loss", "loss")]
    if "accuracy" in frame.columns:
        panels.append(("accuracy", "token accuracy"))
    fig = Figure(figsize=(5.0 * len(panels), 3.6))
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for column, style, name in ((key, "-o", "train"), (f"val_{key}", "-s", "validation")):
            if column in frame.columns and frame[column].notna().any():
                ax.plot(x, frame[column].to_numpy(dtype=float), style, markersize=3, label=name)
        if key == "loss" and "val_loss" in frame.columns and frame["val_loss"].notna().any():
            best = int(np.nanargmin(frame["val_loss"].to_numpy(dtype=float)))
            ax.axvline(x[best], color="grey", linestyle=":", linewidth=1, label="best val")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss_curves(history: pd.DataFrame | str | Path, out_path: str | Path) -> Path:
    """Draw the training history (DataFrame or ``history.csv``) to ``out_path`` (e.g. loss.png).

    Called by the training callback after every epoch, so it is cheap and atomic: a reader
    never sees a half-written image.
    """
    return save_figure(loss_curves_figure(history), out_path)


# ----------------------------------------------------------------------- attention grids


def _as_maps(attention: np.ndarray, num_words: int) -> np.ndarray:
    """``attention`` [T,g,g] or [T,g*g] -> float32 [num_words,g,g] (extra rows are padding)."""
    maps = np.asarray(attention, dtype=np.float32)
    if maps.ndim == 2:
        side = math.isqrt(maps.shape[1])
        if side * side != maps.shape[1]:
            raise ValueError(f"attention rows of {maps.shape[1]} regions are not a square grid")
        maps = maps.reshape(maps.shape[0], side, side)
    if maps.ndim != 3:
        raise ValueError(f"attention must be [T,g,g] or [T,g*g], got shape {maps.shape}")
    if maps.shape[0] < num_words:
        raise ValueError(f"{num_words} words but only {maps.shape[0]} attention maps")
    return maps[:num_words]


def _display_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be HxWx3 uint8, got shape {image.shape}")
    image = image[..., :3].astype(np.uint8, copy=False)
    height, width = image.shape[:2]
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return image


def upsample_map(attention_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Smoothly stretch one g x g map to ``height`` x ``width`` (bilinear, any aspect ratio).

    Unlike ``np.resize`` (which repeats the flat array) every output pixel interpolates the
    regions around it, so the heatmap lines up with the part of the photo each region saw.
    """
    grid = Image.fromarray(np.asarray(attention_map, dtype=np.float32), mode="F")
    return np.asarray(grid.resize((int(width), int(height)), Image.Resampling.BILINEAR))


def attention_figure(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    alpha: float = 0.55,
    cmap: str = "jet",
    max_side: int | None = DISPLAY_MAX_SIDE,
) -> Figure:
    """One panel per word: the photo with that word's attention map laid over it.

    Each map is scaled to its own maximum for display (the raw values go to the .npz). The
    figure has exactly ``len(words)`` axes, so callers and tests can count panels.
    """
    words = list(words)
    if not words:
        raise ValueError("attention grid needs at least one word")
    maps = _as_maps(attention, len(words))
    shown = _display_image(image, max_side)
    height, width = shown.shape[:2]
    cols = min(MAX_COLUMNS, len(words))
    rows = math.ceil(len(words) / cols)
    # Fixed layout (no tight_layout): panels keep the photo's aspect, a strip above for the
    # word. Placing axes by hand is several times faster than measuring tick labels.
    panel_w, panel_h, title_h, pad = PANEL_INCHES, PANEL_INCHES * height / width, 0.3, 0.08
    fig_w = cols * (panel_w + pad) + pad
    fig_h = rows * (panel_h + title_h + pad) + pad
    fig = Figure(figsize=(fig_w, fig_h))
    for i, (word, grid) in enumerate(zip(words, maps, strict=False)):
        row, col = divmod(i, cols)
        left = (pad + col * (panel_w + pad)) / fig_w
        bottom = 1 - (pad + (row + 1) * (panel_h + title_h + pad) - pad) / fig_h
        ax = fig.add_axes((left, bottom, panel_w / fig_w, panel_h / fig_h))
        heat = upsample_map(grid, height, width)
        peak = float(heat.max())
        if peak > 0:
            heat = heat / peak
        ax.imshow(shown, interpolation="bilinear", aspect="auto")
        ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="nearest",
                  aspect="auto")
        ax.set_title(word, fontsize=12, pad=3)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    return fig


def attention_grid(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    out_path: str | Path,
    alpha: float = 0.55,
) -> Path:
    """Write the per-word attention grid of ``image`` to ``out_path`` (PNG) and return the path.

    The PNG carries ``Panels`` (the panel count) and ``Words`` in its text metadata, so the
    grid can be checked without looking at pixels.
    """
    fig = attention_figure(image, words, attention, alpha=alpha)
    return save_figure(fig, out_path, Panels=str(len(fig.axes)), Words=" ".join(words))


def save_attention_npz(
    path: str | Path,
    words: Sequence[str],
    attention: np.ndarray,
    caption: str,
    image_path: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    score: float | None = None,
) -> Path:
    """Save the raw maps so users can plot them their own way.

    Keys: ``words`` [T] str, ``attention`` [T,g,g] float32 (rows sum to 1 over the regions),
    ``caption``, ``image_path``, ``image_size`` (height, width; -1 when unknown), ``score``.
    """
    maps = _as_maps(attention, len(words))
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        words=np.asarray(list(words), dtype=str),
        attention=maps,
        caption=np.asarray(caption),
        image_path=np.asarray("" if image_path is None else str(image_path)),
        image_size=np.asarray(image_size if image_size else (-1, -1), dtype=np.int32),
        score=np.asarray(np.nan if score is None else float(score), dtype=np.float32),
    )
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
