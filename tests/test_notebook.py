"""examples/quickstart.ipynb runs from top to bottom (nbclient, the notebook's own kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # the kernel imports this checkout's fedmm (a worktree may not be the installed one)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the per-modality curves
    tables = [o["data"]["text/plain"] for o in outputs if "weak-modality" in o.get("data", {}).get("text/plain", "")]
    assert tables and "ogm-ge" in tables[0]  # the compare table: the objective is what differs
    for run in ("ce", "ogm-ge"):
        assert (tmp_path / "quickstart-runs" / run / "summary.json").is_file()
