"""The Colab notebook runs top to bottom (smoke mode: synthetic scenes, tiny model, CPU)."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "train_on_colab.ipynb"

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _outputs(cell) -> tuple[str, list[str]]:
    """(all text the cell printed, MIME types of its rich outputs)."""
    text, kinds = [], []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            text.append(out["text"])
        elif out["output_type"] in {"execute_result", "display_data"}:
            kinds += list(out["data"])
            text.append(out["data"].get("text/plain", ""))
    return "".join(text), kinds


def test_notebook_is_generated_from_its_script():
    """The committed .ipynb is exactly what notebooks/build_notebook.py writes."""
    build = runpy.run_path(str(ROOT / "notebooks" / "build_notebook.py"))["build"]
    built = json.loads(nbformat.writes(build()))
    assert built == json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_notebook_has_a_parameters_cell_and_no_empty_cells():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "SMOKE_TEST" in tagged[0].source
    assert all(c.source.strip() for c in nb.cells)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= kinds.count("code") - 1  # narrated between cells


@pytest.mark.slow
def test_notebook_runs_in_smoke_mode(tmp_path, monkeypatch):
    work = tmp_path / "run"
    monkeypatch.setenv("ICAPNET_SMOKE_TEST", "1")
    monkeypatch.setenv("ICAPNET_WORK_DIR", str(work))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) on failure

    printed = {i: _outputs(c) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = "\n".join(t for t, _ in printed.values())
    kinds = [k for _, ks in printed.values() for k in ks]
    assert "smoke_test=True" in text
    assert "BLEU-4" in text  # the metrics table
    assert kinds.count("image/png") >= 2  # loss curve + at least one attention heatmap
    assert "SavedModel caption for" in text
    caption = text.split("SavedModel caption for", 1)[1].split(":", 1)[1].splitlines()[0]
    assert caption.strip()  # the exported model captioned the image
    metrics = json.loads((work / "model" / "metrics.json").read_text())
    assert {"beam1", "beam3"} <= set(metrics["test"])
    assert list((work / "attention").glob("*.png"))
    assert (work / "export" / "saved_model.pb").is_file()
    assert "model package: " in text and "--model icapnet-model.zip" in text
    assert (work / "icapnet-model.zip").is_file() and (work / "icapnet-model.zip.sha256").is_file()
