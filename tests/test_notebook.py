"""The research quickstart notebook runs end to end on CPU and computes sensible values."""

import itertools
import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
# Nearly all of the time is XLA compiles: one model init, train step and predict step, shared
# by every training run through the compile cache. The target is < 2 minutes on 2 idle CPU
# cores; the limit leaves room for a machine shared with other jobs.
TIME_LIMIT_S = 240


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], "clear the notebook's outputs before committing"
            assert cell.execution_count is None


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    # A python3 kernelspec pointing at this interpreter (the project's .venv), found first.
    kernelspec.install(prefix=str(tmp_path / "jupyter"), kernel_name="python3")
    jupyter_path = tmp_path / "jupyter" / "share" / "jupyter"
    spec = json.loads((jupyter_path / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(jupyter_path)]))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # One CPU device, as a user's kernel has (not the test session's 8 simulated devices).
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    workdir = tmp_path / "work"
    workdir.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIME_LIMIT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT_S, f"notebook took {elapsed:.0f}s"

    last = nb.cells[-1]
    text = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    results = json.loads(text.strip().splitlines()[-1])
    assert 0 < results["oracle_ne"] < 1
    assert results["eval_oracle_ne"] <= results["eval_ne"] < 1
    assert results["eval_auc"] > 0.6
    # The data's NE ceilings: nested fits never worse; all planted terms beat a 40-step model,
    # whose item table has not learned the world's item geometry.
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(results["ceilings"]))
    assert results["ceilings"][-1] < results["eval_ne"]
    assert abs(results["item_geometry"]) < 0.3
    assert results["gdpa_max_abs_diff"] < 1e-4
    assert [s["steps"] for s in results["scaling"]] == [10, 20, 40]
    compute = [s["train_compute"] for s in results["scaling"]]
    assert compute[1] == pytest.approx(2 * compute[0])
    assert compute[2] == pytest.approx(4 * compute[0])
    assert all(0 < s["ne"] < 1.5 for s in results["scaling"])
    assert results["scaling"][2]["ne"] == pytest.approx(results["eval_ne"])  # run reused
    assert list(workdir.iterdir()) == [], "the notebook must not write to its working directory"
