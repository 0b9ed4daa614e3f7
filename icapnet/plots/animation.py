"""An animated GIF that steps through the caption word by word (slides, READMEs, chats).

Frame 0 is the photo with the caption; then one frame per word and one for ``<end>``, each
drawn by :func:`icapnet.plots.attention.draw_panel` with the same shared colour scale and
colour bar as the static figure, and the caption on top with the current word highlighted.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker
from PIL import Image

from icapnet.io import atomic_write_bytes
from icapnet.plots.attention import (
    END_LABEL,
    AttentionView,
    attention_view,
    draw_colorbar,
    draw_panel,
    panel_size,
)
from icapnet.plots.render import DPI, figure_pixels

FRAME_INCHES = 4.0  # long side of the photo in a frame
SECONDS_PER_WORD = 0.9
HIGHLIGHT = "#c2410c"


def _caption_box(words: Sequence[str], current: int | None, width_chars: int) -> VPacker:
    """The caption as lines of words; word ``current`` bold and coloured."""
    lines: list[list[TextArea]] = [[]]
    used = 0
    for i, word in enumerate(words):
        if lines[-1] and used + len(word) + 1 > width_chars:
            lines.append([])
            used = 0
        chosen = i == current
        props = {"fontsize": 13, "color": HIGHLIGHT if chosen else "0.15",
                 "fontweight": "bold" if chosen else "normal",
                 "fontstyle": "italic" if word.startswith("<") else "normal"}
        lines[-1].append(TextArea(word, textprops=props))
        used += len(word) + 1
    rows = [HPacker(children=line, align="baseline", pad=0, sep=5) for line in lines]
    return VPacker(children=rows, align="center", pad=0, sep=3)


def _caption_words(view: AttentionView, index: int | None) -> tuple[list[str], int | None]:
    """The caption's words and which one to highlight for step ``index``."""
    words = view.caption.split() or ["(empty caption)"]
    if index is None:
        return words, None
    if index < len(words) and view.labels[index] != END_LABEL:
        return words, index
    return [*words, view.labels[index]], len(words)  # <end>: shown after the caption


class FrameDrawer:
    """One figure for every frame: the layout, photo axes and colour bar are built once and
    each frame only swaps the overlay and the highlighted word (several times faster than a
    new figure per word)."""

    def __init__(self, view: AttentionView) -> None:
        self.view = view
        panel_w, panel_h = panel_size(view.photo, FRAME_INCHES)
        pad, bar_room = 0.12, 1.0
        longest = sum(len(w) + 1 for w in _caption_words(view, len(view.labels) - 1)[0])
        self.width_chars = max(16, int(panel_w * 9.5))
        lines = max(1, -(-longest // self.width_chars))
        header_h = 0.3 + 0.27 * lines
        fig_w = pad + panel_w + bar_room
        fig_h = header_h + panel_h + pad
        self.fig = Figure(figsize=(fig_w, fig_h), dpi=DPI, facecolor="white")
        self.anchor = ((pad + panel_w / 2) / fig_w, 1 - 0.1 / fig_h)
        self.ax = self.fig.add_axes((pad / fig_w, pad / fig_h, panel_w / fig_w, panel_h / fig_h))
        draw_panel(self.ax, view, None)
        self.image = self.ax.images[0]
        bar_h = panel_h * 0.9
        cax = self.fig.add_axes(((pad + panel_w + 0.1) / fig_w,
                                 (pad + (panel_h - bar_h) / 2) / fig_h, 0.14 / fig_w,
                                 bar_h / fig_h))
        draw_colorbar(self.fig, cax, view, label="attention weight per region")
        self.box: AnchoredOffsetbox | None = None

    def show(self, index: int | None) -> Figure:
        """Set the figure to step ``index`` (None: the plain photo) and return it."""
        self.image.set_data(self.view.photo if index is None else self.view.overlay(index))
        self.ax.set_gid("photo" if index is None else f"step-{index}")
        if self.box is not None:
            self.box.remove()
        words, current = _caption_words(self.view, index)
        self.box = AnchoredOffsetbox(
            loc="upper center", child=_caption_box(words, current, self.width_chars),
            frameon=False, bbox_to_anchor=self.anchor, bbox_transform=self.fig.transFigure,
            borderpad=0)
        self.fig.add_artist(self.box)
        return self.fig


def frame_figure(view: AttentionView, index: int | None) -> Figure:
    """One frame as a figure: caption on top (word ``index`` highlighted), panel, colour bar."""
    return FrameDrawer(view).show(index)


def attention_frames(view: AttentionView) -> list[np.ndarray]:
    """HxWx3 uint8 frames: the photo, then each step (words, then ``<end>``)."""
    drawer = FrameDrawer(view)
    indices: list[int | None] = [None, *range(len(view.labels))]
    return [figure_pixels(drawer.show(i)) for i in indices]


def gif_bytes(frames: Sequence[np.ndarray], seconds_per_frame: float = SECONDS_PER_WORD) -> bytes:
    """Encode frames as a looping GIF (one adaptive 256-colour palette per frame)."""
    images = [
        Image.fromarray(f).quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                    dither=Image.Dither.NONE)
        for f in frames
    ]
    buffer = io.BytesIO()
    durations = [int(seconds_per_frame * 1000)] * len(images)
    durations[0] = int(seconds_per_frame * 1500)  # linger on the plain photo a little
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=0, disposal=1, optimize=False)
    return buffer.getvalue()


def attention_gif(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    out_path: str | Path | None = None,
    caption: str | None = None,
    end_attention: np.ndarray | None = None,
    seconds_per_word: float = SECONDS_PER_WORD,
) -> bytes:
    """Render the GIF; also write it atomically to ``out_path`` when given. Returns the bytes."""
    view = attention_view(image, words, attention, caption, end_attention)
    data = gif_bytes(attention_frames(view), seconds_per_word)
    if out_path is not None:
        atomic_write_bytes(Path(out_path), data)
    return data
