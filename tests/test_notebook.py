"""The conformity notebook runs top to bottom in the venv's kernel and shows its tables and
plots: once building its own tiny run, once opening that run through KNOWEVO_RUN_DIR."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "conformity.ipynb"
TABLE_MARKERS = ("accuracy_final", "time_to_consensus", "conformity_lo", "independence",
                 "confidence_before", "abandons", "unresolved")


def execute(env: dict, monkeypatch) -> nbformat.NotebookNode:
    for k in ("KNOWEVO_RUN_DIR", "KNOWEVO_TINY_RUN_OUT", "KNOWEVO_FIG_DIR"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" launched with this interpreter (jupyter_client swaps `python` for sys.executable)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def outputs(nb) -> tuple[str, int]:
    html, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            html.append(data.get("text/html", ""))
            images += "image/png" in data
            assert out.get("output_type") != "error", out
    return "\n".join(html), images


def test_notebook_builds_a_tiny_run_then_reopens_it(tmp_path, small_dir, monkeypatch):
    # small_dir: the 80-person default model the tiny run uses, trained once and cached
    run = tmp_path / "run"
    nb = execute({"KNOWEVO_TINY_RUN_OUT": run}, monkeypatch)
    html, images = outputs(nb)
    for marker in TABLE_MARKERS:
        assert marker in html, f"table with {marker!r} missing from the notebook's outputs"
    assert images == 4          # accuracy, conformity vs confederates, vs confidence, answer paths
    records = pd.read_parquet(run / "records.parquet")
    # 3 sweep points x 3 agents x 8 people x 2 relations x 2 rounds
    assert len(records) == 3 * 3 * 8 * 2 * 2
    assert sorted(records["n_confederates"].unique()) == [0, 2, 4]
    for png in ("accuracy_by_round", "conformity_vs_confederates", "conformity_vs_confidence", "answer_paths"):
        assert (run / "figures" / f"{png}.png").stat().st_size > 5000

    figs = tmp_path / "figs"
    again = execute({"KNOWEVO_RUN_DIR": run, "KNOWEVO_FIG_DIR": figs}, monkeypatch)
    html2, images2 = outputs(again)
    assert images2 == 4 and len(list(figs.glob("*.png"))) == 4
    # the same run opened from its dir shows the same summary table
    assert html2.split("<table")[1] == html.split("<table")[1]


def test_notebook_names_a_bad_run_dir(tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError
    with pytest.raises(CellExecutionError, match="has no records.parquet"):
        execute({"KNOWEVO_RUN_DIR": tmp_path / "nothing"}, monkeypatch)


def test_notebook_reads_a_generation_run_per_generation(tmp_path, small_dir, monkeypatch):
    from evolution.run import run_experiment
    from tests.test_generations import TINY
    run = tmp_path / "gen"
    run_experiment({**TINY, "sweep": {"graph": ["complete", "ring"]}}, run, progress=False)
    nb = execute({"KNOWEVO_RUN_DIR": run, "KNOWEVO_FIG_DIR": tmp_path / "figs"}, monkeypatch)
    html, _ = outputs(nb)
    for marker in ("accuracy_changed", "stale_changed", "holds_false_others", "forgetting", "majority_size"):
        assert marker in html, marker
    # the two sweep points stay apart: the conformity table has a row per point, not one pooled row
    conformity_html = next(t for t in html.split("<table")[1:] if "correction_hi" in t and "accuracy_final" not in t)
    assert "tiny/graph=complete" in conformity_html and "tiny/graph=ring" in conformity_html
