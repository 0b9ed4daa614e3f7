"""Where the model looked for each word: the one renderer behind every attention picture.

The caption CLI (``--attention-dir``), the demo (which calls it), the notebook and the web
page's downloadable PNG all draw through :func:`attention_figure` (and the GIF through
:mod:`icapnet.plots.animation`, which reuses :func:`draw_panel`). How to read a figure:

* the first panel is the photo itself and the whole caption is the figure's title;
* then one panel per word and one for ``<end>``: the photo with that step's attention over
  it. The overlay's *opacity* follows the attention, so where the model did not look the
  photo's own colours show through unchanged (a colour wash at a fixed opacity turned red
  shapes purple and made colour words impossible to check);
* one colour scale for all panels, from 0 to the largest weight of any step, with a colour
  bar: a faint panel means the model spread its attention, not that the map was rescaled;
* the g x g grid is stretched over the whole photo (the model squashes the photo to a square
  the same way), and panels keep the photo's aspect ratio.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from icapnet.io import atomic_write_bytes
from icapnet.plots.render import DPI, figure_bytes, save_figure

# The photo is shown at most this large (long side, pixels): enough for a sharp panel, and a
# 20-word figure of a 12-megapixel photo does not need gigabytes of float maps.
DISPLAY_MAX_SIDE = 640
PANEL_INCHES = 2.6  # long side of one panel
MAX_COLUMNS = 5
CMAP = "plasma"  # violet -> orange -> yellow: stands out on greys, never a black veil
MAX_OPACITY = 0.8  # the overlay at the top of the scale; the photo still shows a little
# Opacity grows as (weight / vmax) ** OPACITY_GAMMA: with 1.0 a word whose attention peaks at a
# quarter of the figure's maximum would be a barely visible 20 % tint; 0.5 makes it 40 %.
OPACITY_GAMMA = 0.5
END_LABEL = "<end>"
COLORBAR_LABEL = "attention per region"


@dataclass(frozen=True)
class AttentionView:
    """What every panel needs, computed once: the photo at display size, the maps per step
    (words, then ``<end>`` when known) and the top of the shared colour scale."""

    photo: np.ndarray  # HxWx3 uint8
    labels: tuple[str, ...]
    maps: np.ndarray  # [len(labels), g, g] float32 raw attention weights
    vmax: float
    caption: str

    @property
    def uniform(self) -> float:
        """The weight of each region when attention is spread evenly."""
        return 1.0 / max(1, self.maps[0].size)

    @property
    def norm(self) -> Normalize:
        return Normalize(vmin=0.0, vmax=self.vmax)

    def overlay(self, index: int) -> np.ndarray:
        """The photo with step ``index``'s attention blended in (HxWx3 uint8).

        Per pixel: ``photo * (1 - a) + colour * a`` with ``colour = cmap(weight / vmax)`` and
        ``a = MAX_OPACITY * f ** OPACITY_GAMMA``, where ``f`` rises from 0 at the uniform
        share (``1 / regions``: looking nowhere in particular) to 1 at ``vmax``. Where the
        weight is at or below the uniform share the photo is left exactly as it is.
        """
        height, width = self.photo.shape[:2]
        weight = upsample_map(self.maps[index], height, width)
        t = np.clip(weight / self.vmax, 0.0, 1.0)
        colour = colormaps[CMAP](t)[..., :3] * 255.0
        # At or below the uniform share the model looked nowhere in particular: transparent.
        floor = min(self.uniform, 0.5 * self.vmax)
        focus = np.clip((weight - floor) / (self.vmax - floor), 0.0, 1.0)
        alpha = (MAX_OPACITY * np.power(focus, OPACITY_GAMMA))[..., None]
        blended = self.photo.astype(np.float32) * (1.0 - alpha) + colour * alpha
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def as_maps(attention: np.ndarray, num_words: int) -> np.ndarray:
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


def display_image(image: np.ndarray, max_side: int | None = DISPLAY_MAX_SIDE) -> np.ndarray:
    """HxWx3 uint8 (gray and RGBA accepted), scaled down to ``max_side`` keeping its aspect."""
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
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return image


def upsample_map(attention_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Smoothly stretch one g x g map to ``height`` x ``width`` (bilinear, any aspect ratio).

    Unlike ``np.resize`` (which repeats the flat array) every output pixel interpolates the
    regions around it, so the heatmap lines up with the part of the photo each region saw:
    a cell's weight peaks at the centre of its 1/g-th of the photo and fades to zero at the
    neighbouring cells' centres.
    """
    grid = Image.fromarray(np.asarray(attention_map, dtype=np.float32), mode="F")
    return np.asarray(grid.resize((int(width), int(height)), Image.Resampling.BILINEAR))


def attention_view(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    caption: str | None = None,
    end_attention: np.ndarray | None = None,
    max_side: int | None = DISPLAY_MAX_SIDE,
) -> AttentionView:
    """Check and prepare the inputs of a figure or animation (see :class:`AttentionView`)."""
    words = [str(w) for w in words]
    maps = as_maps(attention, len(words))
    labels = list(words)
    if end_attention is not None:
        end = np.asarray(end_attention, dtype=np.float32).reshape(1, *maps.shape[1:])
        maps = np.concatenate([maps, end])
        labels.append(END_LABEL)
    if not labels:
        raise ValueError("an attention figure needs at least one word or the <end> map")
    finite = maps[np.isfinite(maps)]
    peak = float(finite.max()) if finite.size else 0.0
    maps = np.nan_to_num(maps, nan=0.0, posinf=peak, neginf=0.0)
    return AttentionView(
        photo=display_image(image, max_side),
        labels=tuple(labels),
        maps=maps,
        vmax=peak if peak > 0 else 1.0,
        caption=" ".join(words) if caption is None else str(caption),
    )


def draw_panel(ax: Axes, view: AttentionView, index: int | None) -> None:
    """One panel: the plain photo (``index`` None) or step ``index`` over the photo."""
    image = view.photo if index is None else view.overlay(index)
    ax.imshow(image, interpolation="antialiased", aspect="auto")
    ax.set_axis_off()
    ax.set_gid("photo" if index is None else f"step-{index}")


def draw_colorbar(fig: Figure, cax: Axes, view: AttentionView, label: str = COLORBAR_LABEL) -> None:
    """The shared scale: colours of the overlay from weight 0 to ``view.vmax``."""
    bar = fig.colorbar(ScalarMappable(norm=view.norm, cmap=CMAP), cax=cax)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    cax.set_gid("colorbar")


def panel_size(photo: np.ndarray, long_side: float) -> tuple[float, float]:
    """(width, height) in inches of a panel showing ``photo`` with its aspect ratio."""
    height, width = photo.shape[:2]
    if width >= height:
        return long_side, long_side * height / width
    return long_side * width / height, long_side


def attention_figure(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    caption: str | None = None,
    end_attention: np.ndarray | None = None,
    max_side: int | None = DISPLAY_MAX_SIDE,
    columns: int = MAX_COLUMNS,
) -> Figure:
    """The photo, then one panel per word (and ``<end>``), one colour bar, caption on top.

    Panels carry gids ``photo``, ``step-0`` ... (in ``view.labels`` order) and ``colorbar``,
    so tests can find them. The layout is placed by hand in inches (no tight_layout), which
    is several times faster than measuring tick labels.
    """
    view = attention_view(image, words, attention, caption, end_attention, max_side)
    count = 1 + len(view.labels)
    cols = max(1, min(columns, count))
    rows = math.ceil(count / cols)
    panel_w, panel_h = panel_size(view.photo, PANEL_INCHES)
    pad, label_h, bar_w, bar_room = 0.1, 0.3, 0.15, 1.0
    grid_w = pad + cols * (panel_w + pad)
    lines = textwrap.wrap(view.caption, width=max(16, int(grid_w * 9))) or ["(empty caption)"]
    header_h = 0.25 + 0.27 * len(lines)
    fig_w = grid_w + bar_room
    fig_h = header_h + rows * (label_h + panel_h + pad) + pad
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    fig.text(grid_w / 2 / fig_w, 1 - 0.12 / fig_h, "\n".join(lines), ha="center", va="top",
             fontsize=13, fontweight="bold")
    for i in range(count):
        row, col = divmod(i, cols)
        left = pad + col * (panel_w + pad)
        top = header_h + row * (label_h + panel_h + pad) + label_h
        ax = fig.add_axes((left / fig_w, 1 - (top + panel_h) / fig_h, panel_w / fig_w,
                           panel_h / fig_h))
        index = None if i == 0 else i - 1
        draw_panel(ax, view, index)
        label = "photo" if index is None else view.labels[index]
        faint = index is None or label == END_LABEL
        ax.set_title(label, fontsize=11, pad=3, color="0.4" if faint else "black",
                     fontstyle="italic" if faint else "normal")
    bar_top = header_h + label_h
    bar_bottom = header_h + rows * (label_h + panel_h + pad) - pad
    bar_h = min(bar_bottom - bar_top, 3.0)
    cax = fig.add_axes(((grid_w + 0.05) / fig_w, 1 - (bar_top + bar_h) / fig_h, bar_w / fig_w,
                        bar_h / fig_h))
    draw_colorbar(fig, cax, view)
    return fig


def attention_png(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    caption: str | None = None,
    end_attention: np.ndarray | None = None,
) -> bytes:
    """The figure as PNG bytes (the web page's download); see :func:`attention_grid`."""
    fig = attention_figure(image, words, attention, caption, end_attention)
    return figure_bytes(fig, "png", **_metadata(fig, words, caption))


def attention_grid(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    out_path: str | Path,
    caption: str | None = None,
    end_attention: np.ndarray | None = None,
) -> Path:
    """Write the attention figure of ``image`` to ``out_path`` (PNG) and return the path.

    The PNG carries ``Panels`` (photo + one per step), ``Words`` and ``Caption`` in its text
    metadata, so it can be checked without looking at pixels.
    """
    fig = attention_figure(image, words, attention, caption, end_attention)
    return save_figure(fig, out_path, **_metadata(fig, words, caption))


def _metadata(fig: Figure, words: Sequence[str], caption: str | None) -> dict[str, str]:
    panels = sum(1 for ax in fig.axes if ax.get_gid() != "colorbar")
    text = " ".join(words)
    return {"Panels": str(panels), "Words": text, "Caption": text if caption is None else caption}


def save_attention_npz(
    path: str | Path,
    words: Sequence[str],
    attention: np.ndarray,
    caption: str,
    image_path: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    score: float | None = None,
    end_attention: np.ndarray | None = None,
) -> Path:
    """Save the raw maps so users can plot them their own way.

    Keys: ``words`` [T] str, ``attention`` [T,g,g] float32 (rows sum to 1 over the regions),
    ``end_attention`` [g,g] (all NaN when the caption did not end), ``caption``,
    ``image_path``, ``image_size`` (height, width; -1 when unknown), ``score``.
    """
    maps = as_maps(attention, len(words))
    end = (np.full(maps.shape[1:], np.nan, np.float32) if end_attention is None
           else np.asarray(end_attention, np.float32).reshape(maps.shape[1:]))
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        words=np.asarray(list(words), dtype=str),
        attention=maps,
        end_attention=end,
        caption=np.asarray(caption),
        image_path=np.asarray("" if image_path is None else str(image_path)),
        image_size=np.asarray(image_size if image_size else (-1, -1), dtype=np.int32),
        score=np.asarray(np.nan if score is None else float(score), dtype=np.float32),
    )
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
