"""scripts/compare_runs.py: one finished run minus another, paired over the held-out tasks both
recorded, without running either router again."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_runs.py"
spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def test_a_run_minus_its_own_warm_start_is_the_rl_contribution_training_recorded(gsm8k_run):
    d = compare_runs.compare(gsm8k_run.out, gsm8k_run.out, "after", "after_sft")
    rec = gsm8k_run.metrics["rl_minus_warm_start"]
    assert d["tasks"] == rec["tasks"] == gsm8k_run.metrics["heldout_after"]["episodes"]
    for k in ("reward", "quality", "cost", "above_hull"):
        got, want = d[k], rec[k]
        assert got.get("mean", got.get("value")) == pytest.approx(want.get("mean", want.get("value")), abs=1e-12), k
        assert got["ci95"] == pytest.approx(want["ci95"], abs=1e-12), k
    same = compare_runs.compare(gsm8k_run.out, gsm8k_run.out)
    assert same["reward"]["ci95"] == [0.0, 0.0]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_runs_of_different_recipes_or_unfinished_runs_are_refused_in_one_line(gsm8k_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(gsm8k_run.out / "metrics.json", other / "metrics.json")
    recipe = json.loads((gsm8k_run.out / "recipe.json").read_text())
    recipe["env"]["budget"] = 12.5
    (other / "recipe.json").write_text(json.dumps(recipe))
    p = _cli(str(gsm8k_run.out), str(other))
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "env differ" in p.stderr and "-> compare runs of one recipe" in p.stderr
    p = _cli(str(gsm8k_run.out), str(tmp_path / "missing"))
    assert p.returncode == 2 and "no metrics.json" in p.stderr, p.stderr
    p = _cli(str(gsm8k_run.out), str(gsm8k_run.out), "--stage-b", "later")
    assert p.returncode == 2 and "no heldout_later" in p.stderr, p.stderr
    p = _cli(str(gsm8k_run.out), str(gsm8k_run.out), "--stage-b", "after_sft", "--json", str(tmp_path / "d.json"))
    assert p.returncode == 0 and "reward" in p.stdout
    p = _cli(str(gsm8k_run.out), str(gsm8k_run.out))
    assert p.returncode == 0 and p.stdout.count("the same") == 4, p.stdout  # a run against itself: no difference anywhere
    assert json.loads((tmp_path / "d.json").read_text())["tasks"] == gsm8k_run.metrics["heldout_after"]["episodes"]
