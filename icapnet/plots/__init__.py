"""Pictures people look at: loss curves, and where the model looked for each word.

``render`` (figure -> bytes/file/pixels), ``loss`` (training curves), ``attention`` (the one
attention renderer: static figure, PNG bytes, raw .npz) and ``animation`` (the word-by-word
GIF, drawn with the same panels and colour scale).
"""

from icapnet.plots.animation import attention_gif
from icapnet.plots.attention import (
    DISPLAY_MAX_SIDE,
    END_LABEL,
    attention_figure,
    attention_grid,
    attention_png,
    attention_view,
    save_attention_npz,
    upsample_map,
)
from icapnet.plots.loss import loss_curves_figure, plot_loss_curves
from icapnet.plots.render import figure_bytes, save_figure

__all__ = [
    "DISPLAY_MAX_SIDE",
    "END_LABEL",
    "attention_figure",
    "attention_gif",
    "attention_grid",
    "attention_png",
    "attention_view",
    "figure_bytes",
    "loss_curves_figure",
    "plot_loss_curves",
    "save_attention_npz",
    "save_figure",
    "upsample_map",
]
