"""Attention grids and loss curves render headless, atomically, with the right geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icapnet import visualize


def _image(height: int = 90, width: int = 240) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 3] = (255, 0, 0)
    return image


def test_upsample_keeps_real_size_aspect_and_location() -> None:
    grid = np.zeros((14, 14), np.float32)
    grid[0, 13] = 1.0  # top-right region
    heat = visualize.upsample_map(grid, 90, 240)
    assert heat.shape == (90, 240)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert row < 10 and col > 220  # still top-right, not wrapped around like np.resize
    assert heat[45, 120] == pytest.approx(0.0, abs=1e-6)
    # smooth: neighbouring pixels interpolate instead of jumping between blocks
    assert 0 < heat[0, 215] < heat[0, 235]


def test_attention_figure_one_panel_per_word() -> None:
    words = ["a", "red", "square", "on", "the", "left", "side"]
    attention = np.random.default_rng(0).random((10, 196), dtype=np.float32)  # padded rows
    fig = visualize.attention_figure(_image(), words, attention)
    assert len(fig.axes) == len(words)
    assert [ax.get_title() for ax in fig.axes] == words
    shown = fig.axes[0].images
    assert shown[0].get_array().shape[:2] == (90, 240)  # the photo at its real size
    assert shown[1].get_array().shape == (90, 240)  # heatmap upsampled to the same size


def test_attention_figure_caps_huge_images_keeping_aspect() -> None:
    fig = visualize.attention_figure(_image(300, 3000), ["x"], np.ones((1, 14, 14)), max_side=600)
    assert fig.axes[0].images[1].get_array().shape == (60, 600)


def test_attention_grid_png_and_npz(tmp_path: Path) -> None:
    words = ["a", "red", "square"]
    attention = np.random.default_rng(1).random((3, 14, 14)).astype(np.float32)
    png = visualize.attention_grid(_image(), words, attention, tmp_path / "out" / "grid.png")
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.info["Panels"] == "3" and im.info["Words"] == "a red square"
        assert im.width > im.height  # 3 panels in a row of a wide photo
    npz = visualize.save_attention_npz(
        tmp_path / "grid.npz", words, attention, "a red square", "img.png", (90, 240), -1.5
    )
    data = np.load(npz)
    assert data["words"].tolist() == words
    np.testing.assert_array_equal(data["attention"], attention)
    assert str(data["caption"]) == "a red square" and str(data["image_path"]) == "img.png"
    assert data["image_size"].tolist() == [90, 240]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_attention_shape_errors() -> None:
    with pytest.raises(ValueError, match="only 1 attention maps"):
        visualize.attention_figure(_image(), ["a", "b"], np.ones((1, 196)))
    with pytest.raises(ValueError, match="square"):
        visualize.attention_figure(_image(), ["a"], np.ones((1, 195)))


def test_plot_loss_curves_from_csv_and_frame(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"epoch": [0, 1, 2], "loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.5, 2.6],
         "accuracy": [0.1, 0.2, 0.3], "val_accuracy": [0.1, 0.15, 0.2]}
    )  # fmt: skip
    csv = tmp_path / "history.csv"
    frame.to_csv(csv, index=False)
    out = visualize.plot_loss_curves(csv, tmp_path / "loss.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height
    fig = visualize.loss_curves_figure(frame)
    assert len(fig.axes) == 2  # loss + accuracy
    loss_ax = fig.axes[0]
    train, val = loss_ax.lines[0], loss_ax.lines[1]
    assert list(train.get_xdata()) == [1, 2, 3]  # 0-based Keras epochs shown from 1
    assert list(val.get_ydata()) == [3.1, 2.5, 2.6]
    assert len(visualize.loss_curves_figure(frame[["epoch", "loss"]]).axes) == 1


def test_plot_loss_curves_bad_input(tmp_path: Path) -> None:
    from icapnet.errors import IcapnetError

    with pytest.raises(IcapnetError, match=r"history\.csv: training history not found"):
        visualize.plot_loss_curves(tmp_path / "history.csv", tmp_path / "loss.png")
    (tmp_path / "bad.csv").write_text("epoch,acc\n0,1\n")
    with pytest.raises(IcapnetError, match="no 'loss' column"):
        visualize.plot_loss_curves(tmp_path / "bad.csv", tmp_path / "loss.png")
