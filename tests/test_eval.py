"""Evaluation: frontier math by hand, the kNN baseline, and `rl-router eval` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl_router.frontier import above, area_under, cost_to_reach, interp, oracle_frontier, pgr, random_mixture
from rl_router.evaluation.knn_router import TfidfKNN

BIN = str(Path(sys.executable).with_name("rl-router"))


def test_oracle_frontier_upgrades_cheapest_fix_first():
    # 4 tasks; cheap solves 0 and 1 at cost 1 each; strong solves 1, 2, 3 at cost 10, 12, 20, 10
    outcomes = {
        "cheap": [(True, 1.0), (True, 1.0), (False, 1.0), (False, 1.0)],
        "strong": [(False, 10.0), (True, 12.0), (True, 20.0), (True, 10.0)],
    }
    pts = oracle_frontier(outcomes)
    # start: all cheap (cost 4/4, quality 2/4); upgrade task 3 (+9) then task 2 (+19)
    assert pts == [(1.0, 0.5), (13 / 4, 0.75), (32 / 4, 1.0)]


def test_curve_measures_by_hand():
    line = random_mixture((0.0, 0.5), (10.0, 1.0), n=3)
    assert line == [(0.0, 0.5), (5.0, 0.75), (10.0, 1.0)]
    assert interp(line, 2.5) == pytest.approx(0.625) and interp(line, 20) == 1.0 and interp(line, -1) == 0.5
    assert above((5.0, 0.8), line) == pytest.approx(0.05) and above((5.0, 0.7), line) < 0
    assert pgr(0.75, 0.5, 1.0) == 0.5 and pgr(0.7, 0.7, 0.7) is None
    assert cost_to_reach(line, 0.75) == pytest.approx(5.0) and cost_to_reach(line, 1.1) is None
    assert cost_to_reach([(3.0, 0.9)], 0.8) == 3.0 and cost_to_reach([(3.0, 0.7)], 0.8) is None
    # mean of 0.5 + 0.05 c over [0, 10] = 0.75; a curve higher everywhere has more area
    assert area_under(line, 10.0) == pytest.approx(0.75, abs=1e-3)
    assert area_under([(0.0, 0.6), (10.0, 1.0)], 10.0) > area_under(line, 10.0)


def test_knn_baseline_learns_a_separable_split():
    texts = [f"add {i} and {i + 1}" for i in range(20)] + [f"prove the theorem about manifolds number {i}" for i in range(20)]
    labels = [1.0] * 20 + [0.0] * 20
    knn = TfidfKNN(k=5).fit(texts, labels)
    p = knn.predict_proba(["add 7 and 9", "prove the theorem about manifolds again"])
    assert p[0] > 0.8 and p[1] < 0.2


def test_eval_cli_writes_table_json_and_plots(tmp_path):
    from rl_router.tiny import build_tiny_router

    ck = tmp_path / "router"
    build_tiny_router(save_dir=ck, seed=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    out = tmp_path / "ev"
    p = subprocess.run([BIN, "eval", str(ck), "--n", "12", "--no-sampled", "--budgets", "0.00001,0.01", "--output-dir", str(out), "--set", "rollout.max_new_tokens=24"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((out / "eval.json").read_text())
    pol = res["policies"]
    assert set(pol) == {"always-mixtral-8x7b", "always-gpt-4-1106", "random", "oracle", "per-category", "knn-tfidf", "router (greedy)"}
    cheap, strong, oracle = pol["always-mixtral-8x7b"], pol["always-gpt-4-1106"], pol["oracle"]
    assert oracle["quality"] >= max(cheap["quality"], strong["quality"]) and oracle["mean_cost"] <= strong["mean_cost"]
    assert strong["call_share"]["gpt-4-1106"] == 1.0 and cheap["pgr"] == 0.0 and strong["pgr"] == 1.0
    assert abs(cheap["above_random_mixture"]) < 1e-6 and cheap["above_hull"] == cheap["above_random_mixture"]  # two models: the hull is the random line
    for s in pol.values():
        for k in ("quality", "mean_cost", "total_cost", "routes_per_task", "call_share", "format_error_rate", "budget_violation_rate", "pool_latency_s", "modelled_latency_s", "reward"):
            assert k in s, k
    assert strong["modelled_latency_s"] == pytest.approx(2.5)  # one GPT-4 call per task, 2500 ms on its card
    assert pol["router (greedy)"]["format_error_rate"] == 1.0  # an untrained router, scored honestly
    assert res["curves"]["oracle frontier"][0][1] == pytest.approx(cheap["quality"])
    assert [b["budget"] for b in res["budget_sweep"]] == [0.00001, 0.01]
    assert "cpt_50" in res["scores"]["oracle frontier"] and res["scores"]["oracle frontier"]["apgr"] > res["scores"]["single-model hull"]["apgr"] == pytest.approx(0.5)
    for png in ("frontier.png", "budget_sweep.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "oracle" in p.stdout and "CPT(50%)" in p.stdout


def test_eval_rejects_unknown_target(tmp_path):
    p = subprocess.run([BIN, "eval", str(tmp_path / "nope")], capture_output=True, text=True)
    assert p.returncode == 2 and "neither a model folder" in p.stdout
