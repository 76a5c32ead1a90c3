"""scripts/baseline_data_curve.py: per-category and kNN fitted on n training tasks of a recorded
recipe; fitted on the whole split they are the eval's own rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "baseline_data_curve.py"


def test_fitted_on_the_whole_split_the_baselines_score_what_the_eval_reports(gsm8k_run, tmp_path):
    out = tmp_path / "curve.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--recipe", str(ROOT / "recipes" / "gsm8k.yaml"), "--sizes", "20,40", "--repeats", "3", "--json", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [r["n"] for r in res["rows"]] == [20, 40, res["train"]] and [r["subsets"] for r in res["rows"]] == [3, 3, 1]
    pol = gsm8k_run.eval["policies"]
    assert res["held"] == pol["oracle"]["episodes"]
    full = res["rows"][-1]
    assert full["per_category"][0] == pytest.approx(pol["per-category"]["reward"], abs=1e-9)
    assert full["knn"][0] == pytest.approx(pol["knn-tfidf"]["reward"], abs=1e-9)
    for r in res["rows"][:2]:  # a t-interval around the subsets' mean
        for k in ("per_category", "knn"):
            m, lo, hi = r[k]
            assert lo <= m <= hi and 0.0 <= m <= 1.0
    assert "| 20 | 3 |" in p.stdout


def test_a_json_file_rl_router_did_not_write_is_never_replaced(tmp_path):
    theirs = tmp_path / "theirs.json"
    theirs.write_text("{}")
    p = subprocess.run([sys.executable, str(SCRIPT), "--recipe", str(ROOT / "recipes" / "gsm8k.yaml"), "--sizes", "20", "--repeats", "1", "--json", str(theirs)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: --json") and theirs.read_text() == "{}", p.stderr


def test_a_pool_that_is_not_recorded_or_bad_sizes_are_refused_in_one_line():
    for args, field in ((["--recipe", str(ROOT / "recipes" / "bopo_agentic.yaml")], "pool.type"), (["--recipe", str(ROOT / "recipes" / "gsm8k.yaml"), "--sizes", "10,x"], "--sizes")):
        p = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and p.stderr.startswith(f"error: {field}"), p.stderr
