"""A learning claim tested as learning: on a SimulatedPool where the cheap model fails every
hard task, GRPO with a strong cost weight collapses toward cheap failures while BoPO keeps
the success rate. Both start from one warm start (scripts/exp_collapse.py, fewer steps)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("exp_collapse", ROOT / "scripts" / "exp_collapse.py")
exp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exp)


def test_grpo_with_cost_weight_collapses_to_cheap_while_bopo_keeps_success(tmp_path):
    os.environ["RL_ROUTER_NO_PROGRESS"] = "1"
    g = exp.run("grpo", 16, tmp_path / "grpo")
    b = exp.run("bopo", 16, tmp_path / "bopo", warm=tmp_path / "grpo")
    warm = g["heldout_after_sft"]
    def strip(s):  # the two recipes score with different rewards; latency is wall clock
        out = {k: v for k, v in s.items() if k not in ("reward", "pool_latency_s")}
        out["ci95"] = {k: v for k, v in s["ci95"].items() if k != "reward"}
        out["per_task"] = {k: v for k, v in s["per_task"].items() if k != "reward"}
        return out

    assert strip(b["heldout_before"]) == strip(warm)  # one warm start for both (BoPO starts from GRPO's sft/)
    assert warm["quality"] > 0.9 and warm["format_error_rate"] == 0
    # GRPO: the cost weight makes a cheap failure outscore a strong success -> it learns to fail cheaply
    assert g["heldout_after"]["call_share"]["cheap"] > 0.7
    assert g["heldout_after"]["quality"] < warm["quality"] - 0.25
    assert g["heldout_after"]["mean_cost"] < 0.5 * warm["mean_cost"]
    # BoPO: every success outranks every failure and failing a solvable task is never pushed up
    assert b["heldout_after"]["quality"] >= warm["quality"] - 0.05
    assert b["heldout_after"]["quality"] > g["heldout_after"]["quality"] + 0.25
