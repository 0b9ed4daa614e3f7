"""Loss curves while training: train vs validation loss (and token accuracy when recorded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from icapnet.errors import IcapnetError
from icapnet.layout import read_history
from icapnet.plots.render import save_figure


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
