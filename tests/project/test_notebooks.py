"""The notebooks run top to bottom, headless, with the quick switch (DIAGNOSTICS_NOTEBOOK_QUICK=1)."""

from __future__ import annotations

import os

import pytest
from helpers import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = ROOT / "notebooks"

#: notebook -> (PNG images it must display, texts its outputs must contain)
EXPECTED = {
    "01_quickstart.ipynb": (1, ["Alignment condition D1 (Q ∈ Col J) on a probe of", "A1 (f = J R): holds", "d = ",
                                "samples given: not established"]),
    "02_alignment_dynamics.ipynb": (1, ["(I2) loss ≥ floor on", "(I3) largest bound ratio"]),
    "03_width_scaling.ipynb": (3, ["S1 (counting)", "S4 (lazy versus rich)", "S2 embedding: holds",
                                   "rank J ="]),
    "04_aligned_training.ipynb": (2, ["THEOREM", "Switch at iteration",
                                      "| penultimate/rank-one |"]),
    "05_training_frameworks.ipynb": (1, ["(3 full, 18 cheap)", "history file:", "I4 ", "alignment/grad_norm"]),
}


def _outputs_text(nb) -> tuple[int, str]:
    images, texts = 0, []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            images += "image/png" in data
            texts.append(out.get("text", ""))
            texts.append(data.get("text/plain", ""))
            texts.append(data.get("text/markdown", ""))
    return images, "\n".join(texts)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_headless(name, monkeypatch, tmp_path):
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") for cell in code_cells), "notebooks are committed without outputs"
    monkeypatch.setenv("DIAGNOSTICS_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    images, text = _outputs_text(nb)
    n_images, snippets = EXPECTED[name]
    assert images >= n_images, f"{name} displayed {images} PNG figures, expected at least {n_images}"
    for snippet in snippets:
        assert snippet in text, f"{name}: {snippet!r} not in the outputs"
