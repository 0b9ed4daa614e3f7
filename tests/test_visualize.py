"""Attention figures and loss curves, checked on pixels of a scene whose attention is known.

The scene is a 14 x 14 grid of 20 px cells: green background, a red block around cell (3, 10)
and a blue block around cell (11, 3). The "attention" is one-hot on a cell, so we know which
pixels must change colour (the attended cell) and which must keep the photo's own colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icapnet import plots, visualize
from icapnet.plots import animation
from icapnet.plots.attention import attention_figure
from icapnet.plots.render import figure_pixels, save_figure

G, CELL = 14, 20
GREEN, RED, BLUE = (40, 160, 60), (220, 30, 30), (30, 60, 220)
RED_CELL, BLUE_CELL, EMPTY_CELL = (3, 10), (11, 3), (7, 7)


def _scene(rows: int = G, cols: int = G) -> np.ndarray:
    image = np.empty((rows * CELL, cols * CELL, 3), np.uint8)
    image[:] = GREEN
    image[2 * CELL:5 * CELL, 9 * CELL:12 * CELL] = RED  # cells (2..4, 9..11)
    image[10 * CELL:13 * CELL, 2 * CELL:5 * CELL] = BLUE  # cells (10..12, 2..4)
    return image


def _one_hot(*cells_and_weights) -> np.ndarray:
    grid = np.zeros((G, G), np.float32)
    for (row, col), weight in cells_and_weights:
        grid[row, col] = weight
    return grid


WORDS = ["red", "square", "blue"]
ATTENTION = np.stack([
    _one_hot((RED_CELL, 1.0)),
    _one_hot((RED_CELL, 0.5), (BLUE_CELL, 0.5)),  # half the weight: weaker on the shared scale
    _one_hot((BLUE_CELL, 1.0)),
])
END = np.full((G, G), 1.0 / G**2, np.float32)  # spread evenly: looked nowhere in particular


def _render(tmp_path: Path, image: np.ndarray | None = None):
    image = _scene() if image is None else image
    fig = attention_figure(image, WORDS, ATTENTION, caption="a red square", end_attention=END)
    png = save_figure(fig, tmp_path / "figure.png")
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    panels = {ax.get_gid(): ax for ax in fig.axes}
    return fig, pixels, panels


def _at(pixels: np.ndarray, ax, cell: tuple[int, int]) -> np.ndarray:
    """Median colour of a 3x3 patch at the centre of ``cell`` inside panel ``ax``."""
    box = ax.get_window_extent()
    height = pixels.shape[0]
    x = round(box.x0 + (cell[1] + 0.5) * box.width / G)
    y = round((height - box.y1) + (cell[0] + 0.5) * box.height / G)
    return np.median(pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3), axis=0)


def _distance(a, b) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max())


def test_panels_caption_and_shared_colour_bar(tmp_path: Path) -> None:
    fig, _, panels = _render(tmp_path)
    assert list(panels) == ["photo", "step-0", "step-1", "step-2", "step-3", "colorbar"]
    titles = [panels[g].get_title() for g in ("photo", "step-0", "step-1", "step-2", "step-3")]
    assert titles == ["photo", "red", "square", "blue", "<end>"]
    assert "a red square" in [t.get_text() for t in fig.texts]  # the caption is the title
    bar = panels["colorbar"]
    assert bar.get_ylim() == pytest.approx((0.0, 1.0))  # one scale: 0 .. the largest weight


def test_photo_colours_survive_where_the_model_did_not_look(tmp_path: Path) -> None:
    _, pixels, panels = _render(tmp_path)
    photo, red = panels["photo"], panels["step-0"]
    for cell, colour in ((RED_CELL, RED), (BLUE_CELL, BLUE), (EMPTY_CELL, GREEN)):
        assert _distance(_at(pixels, photo, cell), colour) <= 6  # the plain photo panel
    # Word "red" looked at one cell: everywhere else its panel is the photo, colour for
    # colour, including the rest of the red block (a diagonal neighbour of the attended cell).
    for cell, colour in ((BLUE_CELL, BLUE), (EMPTY_CELL, GREEN), ((0, 0), GREEN),
                         ((2, 9), RED), ((4, 11), RED)):
        assert _distance(_at(pixels, red, cell), colour) <= 6, cell
    # <end> spread its attention evenly: nothing is marked, the photo shows unchanged.
    end = panels["step-3"]
    for cell, colour in ((RED_CELL, RED), (BLUE_CELL, BLUE), (EMPTY_CELL, GREEN)):
        assert _distance(_at(pixels, end, cell), colour) <= 6


def test_the_attended_cell_is_marked_on_one_scale(tmp_path: Path) -> None:
    _, pixels, panels = _render(tmp_path)
    marked = _at(pixels, panels["step-0"], RED_CELL)
    assert _distance(marked, RED) > 100  # clearly not the photo's red any more
    assert marked[1] > 150  # plasma's top end is yellow: green channel far above red's 30
    assert _distance(_at(pixels, panels["step-2"], BLUE_CELL), BLUE) > 100
    # Half the weight -> a weaker mark than the full weight on the same cell (shared scale).
    half = _distance(_at(pixels, panels["step-1"], RED_CELL), RED)
    assert 30 < half < _distance(marked, RED)


def test_non_square_photos_keep_their_aspect_and_grid(tmp_path: Path) -> None:
    """A 280 x 840 photo: panels are 3:1 and the attended cell still lands on the red block."""
    wide = np.repeat(_scene(), 3, axis=1)  # every cell 20 px tall, 60 px wide
    _, pixels, panels = _render(tmp_path, wide)
    box = panels["step-0"].get_window_extent()
    assert box.width / box.height == pytest.approx(3.0, rel=0.02)
    assert _distance(_at(pixels, panels["step-0"], RED_CELL), RED) > 100
    assert _distance(_at(pixels, panels["step-0"], (2, 9)), RED) <= 6


def test_huge_photos_are_drawn_from_a_capped_copy() -> None:
    view = plots.attention_view(np.zeros((300, 3000, 3), np.uint8), ["x"], np.ones((1, 4, 4)),
                                max_side=600)
    assert view.photo.shape == (60, 600, 3) and view.overlay(0).shape == (60, 600, 3)


def test_upsample_keeps_real_size_aspect_and_location() -> None:
    grid = np.zeros((14, 14), np.float32)
    grid[0, 13] = 1.0  # top-right region
    heat = plots.upsample_map(grid, 90, 240)
    assert heat.shape == (90, 240)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert row < 10 and col > 220  # still top-right, not wrapped around like np.resize
    assert heat[45, 120] == pytest.approx(0.0, abs=1e-6)
    # smooth: neighbouring pixels interpolate instead of jumping between blocks
    assert 0 < heat[0, 215] < heat[0, 235]


def test_attention_grid_png_metadata_and_npz(tmp_path: Path) -> None:
    png = plots.attention_grid(_scene(), WORDS, ATTENTION, tmp_path / "out" / "grid.png",
                               caption="a red square", end_attention=END)
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.info["Panels"] == "5"  # photo, three words, <end>
        assert im.info["Words"] == "red square blue" and im.info["Caption"] == "a red square"
    assert plots.attention_png(_scene(), WORDS, ATTENTION, "a red square", END) == png.read_bytes()
    npz = plots.save_attention_npz(tmp_path / "grid.npz", WORDS, ATTENTION, "a red square",
                                   "img.png", (280, 280), -1.5, end_attention=END)
    data = np.load(npz)
    assert data["words"].tolist() == WORDS
    np.testing.assert_array_equal(data["attention"], ATTENTION)
    np.testing.assert_array_equal(data["end_attention"], END)
    assert str(data["caption"]) == "a red square" and str(data["image_path"]) == "img.png"
    assert data["image_size"].tolist() == [280, 280]
    no_end = np.load(plots.save_attention_npz(tmp_path / "cut.npz", WORDS, ATTENTION, "x"))
    assert np.isnan(no_end["end_attention"]).all()
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temp files


def test_old_import_path_still_works() -> None:
    assert visualize.attention_figure is plots.attention_figure
    assert visualize.plot_loss_curves is plots.plot_loss_curves


def test_gif_steps_through_the_words(tmp_path: Path) -> None:
    data = plots.attention_gif(_scene(), WORDS, ATTENTION, tmp_path / "steps.gif",
                               caption="red square blue", end_attention=END)
    assert (tmp_path / "steps.gif").read_bytes() == data
    with Image.open(tmp_path / "steps.gif") as gif:
        assert gif.n_frames == 5 and gif.info["loop"] == 0  # photo, 3 words, <end>; loops
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")).astype(int))
    # Where frame "red" differs from the plain photo frame: the attended cell, and the
    # highlighted word in the caption above the photo, nothing else.
    view = plots.attention_view(_scene(), WORDS, ATTENTION, "red square blue", END)
    fig = animation.frame_figure(view, 0)
    assert figure_pixels(fig).shape == frames[1].shape
    panel = next(ax for ax in fig.axes if ax.get_gid() == "step-0")
    box = panel.get_window_extent()
    top = frames[1].shape[0] - int(box.y1)
    inside = (slice(top + 2, top + int(box.height) - 2), slice(int(box.x0) + 2, int(box.x1) - 2))
    changed = np.abs(frames[1] - frames[0]).max(axis=-1)[inside] > 60
    rows, cols = np.nonzero(changed)
    assert 0 < changed.mean() < 0.03
    cell = (rows.mean() / changed.shape[0] * G, cols.mean() / changed.shape[1] * G)
    assert abs(cell[0] - (RED_CELL[0] + 0.5)) < 1 and abs(cell[1] - (RED_CELL[1] + 0.5)) < 1
    header = np.abs(frames[1] - frames[0]).max(axis=-1)[: top - 2] > 60
    assert header.any(), "the current word is highlighted in the caption"
    # <end> (uniform attention) leaves the photo as it is.
    assert (np.abs(frames[4] - frames[0]).max(axis=-1)[inside] > 60).mean() == 0


def test_attention_shape_errors() -> None:
    with pytest.raises(ValueError, match="only 1 attention maps"):
        attention_figure(_scene(), ["a", "b"], np.ones((1, 196)))
    with pytest.raises(ValueError, match="square"):
        attention_figure(_scene(), ["a"], np.ones((1, 195)))
    with pytest.raises(ValueError, match="at least one word"):
        attention_figure(_scene(), [], np.ones((0, 196)))


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
