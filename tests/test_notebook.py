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


def _code_cells() -> list[str]:
    return [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]


def test_without_repo_the_notebook_stops_with_one_line(monkeypatch):
    """REPO is the user's to fill: unset (and icapnet not installed) -> one line, no pip."""
    import importlib.util
    import subprocess

    parameters, setup = _code_cells()[:2]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "icapnet" else real(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    monkeypatch.delenv("ICAPNET_REPO", raising=False)
    namespace: dict = {}
    exec(parameters, namespace)
    assert namespace["REPO"] == ""
    with pytest.raises(Exception, match="set REPO") as stopped:
        exec(setup, namespace)
    rendered = stopped.value._render_traceback_()  # what IPython prints instead of a traceback
    assert len(rendered) == 1 and rendered[0].startswith("stopped: set REPO")


def test_the_time_estimate_adds_up_to_the_stage_times_it_quotes():
    import re

    intro = nbformat.read(NOTEBOOK, as_version=4).cells[0].source.replace("\n", " ")
    hours, minutes = map(int, re.search(r"about (\d+) h (\d+) min", intro).groups())
    epochs, per_epoch, training = map(int, re.search(
        r"training (\d+) epochs × ~(\d+) min = ~(\d+) min", intro).groups())
    stages = [int(m) for m in re.findall(r"~(\d+) min", intro)]
    assert epochs * per_epoch == training
    assert f"EPOCHS = {epochs}" in _code_cells()[0]  # the estimate is for the default epochs
    total = sum(stages) - per_epoch  # every stage once (the per-epoch time is inside training)
    assert abs(total - (60 * hours + minutes)) <= 5, (stages, hours, minutes)


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
    assert f"not in Colab: the results stay in {work}" in text  # the keep-results cell
    assert "web page: model model is ok on port" in text  # the optional page, served
    assert (work / "icapnet-model.zip").is_file() and (work / "icapnet-model.zip.sha256").is_file()
