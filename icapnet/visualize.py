"""The plotting functions under their original import path (``icapnet.visualize``).

The code lives in :mod:`icapnet.plots`; this module keeps ``from icapnet.visualize import
plot_loss_curves`` (training), ``attention_grid`` (caption CLI) and ``attention_figure``
(notebooks people already have) working.
"""

from icapnet.plots import (
    DISPLAY_MAX_SIDE,
    END_LABEL,
    attention_figure,
    attention_gif,
    attention_grid,
    attention_png,
    attention_view,
    loss_curves_figure,
    plot_loss_curves,
    save_attention_npz,
    save_figure,
    upsample_map,
)

__all__ = [
    "DISPLAY_MAX_SIDE",
    "END_LABEL",
    "attention_figure",
    "attention_gif",
    "attention_grid",
    "attention_png",
    "attention_view",
    "loss_curves_figure",
    "plot_loss_curves",
    "save_attention_npz",
    "save_figure",
    "upsample_map",
]
