"""One trained router minus another, paired over the same held-out tasks, from the episodes
both runs already recorded (metrics.json `heldout_<stage>.per_task`): no router is run again.

Why: two runs that differ in one setting (an advantage estimator, an entropy floor, longer RL)
are compared on the tasks both evaluated greedily at the end of training; `rl-router eval RUN
--against OTHER` gives the same figures by running OTHER again. The runs must share what the
held-out tasks and their scores depend on (pool, env, data, rewards, rollout length): the
script refuses two runs whose recipes differ there.

    python scripts/compare_runs.py RUN_A RUN_B [--stage-a after] [--stage-b after] [--json OUT]

Prints A minus B: reward, quality, cost and the distance above the single-model hull (the
baselines of RUN_A's folder), each a mean with its 95% bootstrap interval over tasks, and
whether the interval excludes 0. Stages: after (the trained router), after_sft (its warm start),
before (the untrained router; its eval may cover fewer tasks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: recipe sections the held-out tasks, their episodes' scores and the reward depend on
SAME = ("pool", "env", "data", "rewards", "rollout.max_completion_tokens")


def die(msg: str) -> None:
    """Bad input: one line naming what is wrong and the fix, exit 2."""
    print(msg, file=sys.stderr)
    raise SystemExit(2)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for k in dotted.split("."):
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d


def load(run: Path, stage: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    for f in ("metrics.json", "recipe.json"):
        if not (run / f).is_file():
            die(f"error {run}: no {f} -> give the output folder of a finished `rl-router train`")
    m = json.loads((run / "metrics.json").read_text())
    key = f"heldout_{stage}"
    if key not in m:
        die(f"error {run}/metrics.json: no {key} -> pick a stage the run evaluated (after, after_sft, before)")
    return m[key], m, json.loads((run / "recipe.json").read_text())


def compare(run_a: Path, run_b: Path, stage_a: str = "after", stage_b: str = "after") -> dict[str, Any]:
    from rl_router.evaluation.comparisons import baseline_references, one_minus_other
    from rl_router.stats import resample_index

    a, ma, ra = load(run_a, stage_a)
    b, _mb, rb = load(run_b, stage_b)
    differ = [f for f in SAME if _get(ra, f) != _get(rb, f)]
    if differ:
        die(f"error {run_b}/recipe.json: {', '.join(differ)} differ from {run_a}'s, so the held-out tasks or their scores are not the same -> compare runs of one recipe")
    n = len(a["per_task"]["reward"])
    if len(b["per_task"]["reward"]) != n:
        die(f"error {run_b}: {len(b['per_task']['reward'])} held-out episodes against {n} -> compare stages evaluated on all the held-out tasks")
    d = one_minus_other(a, b, baseline_references(ma["heldout_baselines"]), resample_index(n))  # what training records as rl_minus_warm_start
    return {"a": f"{run_a} ({stage_a})", "b": f"{run_b} ({stage_b})", "a_reward": a["reward"], "b_reward": b["reward"], **d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--stage-a", default="after")
    ap.add_argument("--stage-b", default="after")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    x = ap.parse_args()
    out = compare(x.run_a, x.run_b, x.stage_a, x.stage_b)
    print(f"{out['a']} minus {out['b']}, paired over {out['tasks']} held-out tasks (95% bootstrap):")
    print(f"  rewards: {out['a_reward']:.3f} vs {out['b_reward']:.3f}")
    for k, label, scale in (("reward", "reward", 1.0), ("quality", "quality", 1.0), ("cost", "$ / 1k tasks", 1000.0), ("above_hull", "above hull", 1.0)):
        v = out[k]
        mean, (lo, hi) = scale * v.get("mean", v.get("value")), (scale * v["ci95"][0], scale * v["ci95"][1])
        up, down = ("A dearer", "A cheaper") if k == "cost" else ("A ahead", "A behind")
        verdict = "the same" if max(abs(lo), abs(hi)) < 1e-9 else (up if lo > 0 else (down if hi < 0 else "not significant"))  # float rounding is not a difference
        print(f"  {label:>12}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]  {verdict}")
    if x.json:
        x.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
