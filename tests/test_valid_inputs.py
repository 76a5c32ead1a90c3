"""Valid inputs that used to crash (issue 33's "broken features on valid input"), each run
through the CLI as a user would: `steps-replay` on the file `steps-label` just wrote, `eval --n 1`
(a one-task evaluation has no intervals to plot), and `eval` of a held-out file alone (no train
tasks: the learned baselines are skipped with a note, the rest is measured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RL_ROUTER_NO_PROGRESS": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rl_router.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from rl_router.tiny import build_tiny_router

    d = tmp_path_factory.mktemp("model") / "m"
    build_tiny_router(save_dir=d, seed=0)
    return d


def test_steps_replay_reads_what_steps_label_wrote(tmp_path, model):
    steps = tmp_path / "steps.jsonl"
    p = cli("steps-label", "recipes/bopo_agentic.yaml", "--n", "2", "--out", str(steps))
    assert p.returncode == 0 and "step records from 2 tasks" in p.stdout, p.stdout + p.stderr[-2000:]
    p = cli("steps-replay", str(steps), str(model), "--out", str(tmp_path / "replay.json"))
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    res = json.loads((tmp_path / "replay.json").read_text())
    n = sum(1 for line in steps.read_text().splitlines() if line.strip())
    assert res["labels"]["tier_accuracy"] == 1.0 and res["policy"]["decisions"] == n > 0
    assert sorted(json.loads((tmp_path / ".rl-router-owned.json").read_text())["files"]) == ["replay.json", "steps.jsonl"]
    # and again: our own files are replaced, not refused
    assert cli("steps-replay", str(steps), str(model), "--out", str(tmp_path / "replay.json")).returncode == 0


def test_eval_of_one_task_writes_its_plot(tmp_path, model):
    p = cli("eval", str(model), "--n", "1", "--no-sampled", "--output-dir", str(tmp_path / "ev"))
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"] == 1 and (tmp_path / "ev" / "frontier.png").stat().st_size > 0


def test_eval_of_a_held_out_file_alone_skips_the_learned_baselines(tmp_path):
    f = tmp_path / "held.csv"
    f.write_text("prompt,a,a_cost,b,b_cost\nWhat is 1+1?,True,0.001,True,0.01\nWhat is 2+3?,False,0.001,True,0.01\nWhat is 7*6?,True,0.001,False,0.01\n")
    pool = f"{{type: recorded, files: [{f}], models: {{a: {{price_in: 1, price_out: 1}}, b: {{price_in: 2, price_out: 2}}}}}}"
    p = cli("eval", "always-a", "--set", f"pool={pool}", "--set", "data.datasets=[custom]", "--set", "data.heldout_by=files", "--output-dir", str(tmp_path / "ev"))
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert "no train tasks: the learned baselines (per-category, knn-tfidf, agreement cascade) need them and were skipped" in p.stdout.replace("\n", " ")
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["tasks"] == 3 and {"always-a", "always-b", "random", "oracle"} <= set(res["policies"]) and "knn-tfidf" not in res["policies"]
