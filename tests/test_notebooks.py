"""The notebooks in notebooks/ run end to end (nbclient, tiny settings) and compute what they say.

Each notebook reads `ALIGNMENT_NOTEBOOK_TINY` and `ALIGNMENT_NOTEBOOK_WORKDIR` in its settings cell
and writes WORKDIR/summary.json, which these tests check. A failing cell fails the test with the
cell's traceback (nbclient's CellExecutionError).
"""

import json
import math
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str, workdir: pathlib.Path, monkeypatch) -> dict:
    """Executes notebooks/<name>.ipynb in a fresh kernel (this interpreter: jupyter_client maps the
    kernel spec's `python` to sys.executable) from the notebooks folder, as a user would."""
    monkeypatch.setenv("ALIGNMENT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("ALIGNMENT_NOTEBOOK_WORKDIR", str(workdir))
    # the kernel is a subprocess: one CPU device there compiles faster than the suite's 8 fake ones
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    with open(workdir / "summary.json") as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["new_objective", "frontier"])
def test_committed_notebooks_are_valid_with_outputs_cleared(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), (
        f"notebooks/{name}.ipynb is committed with outputs: clear them (jupyter nbconvert --clear-output --inplace)"
    )
    assert "ALIGNMENT_NOTEBOOK_TINY" in code[0].source, (
        "the first code cell must be the settings cell"
    )


def test_new_objective_notebook(tmp_path, monkeypatch):
    s = _run("new_objective", tmp_path / "new_objective", monkeypatch)
    assert math.isfinite(s["objective_loss"]) and math.isfinite(s["dpo_loss"])
    assert (
        s["objective_loss"] > s["dpo_loss"]
    )  # one hand-made pair's chosen fell below the reference
    assert s["lam0_loss"] == pytest.approx(s["dpo_loss"], rel=1e-6)  # lam = 0 is DPO
    assert set(s["train_final_loss"]) == {"dpo", "dpo_positive"}
    assert all(math.isfinite(v) for v in s["train_final_loss"].values())
    for loss in ("dpo", "dpo_positive"):
        assert (tmp_path / "new_objective" / loss / "hf" / "config.json").is_file()
        ev = s["eval"][loss]
        assert all(math.isfinite(v) for v in ev.values()), ev
        assert 0.0 <= ev["win_rate"] <= 1.0


def test_frontier_notebook(tmp_path, monkeypatch):
    s = _run("frontier", tmp_path / "frontier", monkeypatch)
    assert os.path.getsize(s["plot"]) > 0 and s["plot"].endswith("frontier.png")
    betas = s["settings"]["sweep"]["dpo"]
    points = [p for p in s["points"] if p["series"] == "dpo"]
    assert len(points) == 1 + len(betas)  # the start and one run per beta
    assert points[0]["label"] == "start" and points[0]["kl"] == 0.0
    assert sorted(p["label"] for p in points[1:]) == sorted(f"b={b:g}" for b in betas)
    for p in points:
        assert math.isfinite(p["kl"]) and math.isfinite(p["gold_reward"]), p
