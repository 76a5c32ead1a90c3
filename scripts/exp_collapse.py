"""The BoPO ablation: GRPO and BoPO on the same reward, from the same warm start, task-blind router.

The pool (simulated): `cheap` solves every "easy" task and no "hard" one, `strong` solves both
at ~50x the price; 80% of the tasks are easy, so cheap solves 80% of the solvable tasks, more
than the 2/3 above which BoPO's reward itself prefers always-cheap for a router that cannot
tell tasks apart. The question text names no topic (`data.synthetic_template`), so the router
IS task-blind until it calls a model. Both runs train on BoPO's boundary-relative reward;
only the advantage differs (`algorithm.advantage: grpo` vs BoPO's reference-guided one). The
warm start (both boundary trajectories of every task: a coin flip) is run once and shared.
Reported per seed: the sampled policy's share of strong calls at the first RL step and over
the last 6 steps (`decision/route_share/strong`), and held-out success and cost after RL.
`tests/test_bopo.py` runs seed 0 and asserts the outcome.

    python scripts/exp_collapse.py [--steps 24] [--seeds 0,1,2] [--out outputs/exp_collapse]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def ablation_recipe(advantage: str, steps: int, seed: int = 0) -> dict[str, Any]:
    return {
        "model": {"name_or_path": "tiny", "hidden_size": 64, "num_layers": 2, "seed": seed},
        "pool": {"type": "simulated", "seed": 0, "latency_scale": 0.0, "models": {
            "cheap": {"price_in": 0.2, "price_out": 0.2, "skills": {"easy": 1.0, "hard": 0.0}, "answer_tokens": 12},
            "strong": {"price_in": 5.0, "price_out": 15.0, "skills": {"easy": 1.0, "hard": 1.0}, "answer_tokens": 12}}},
        "env": {"name": "router_r1", "max_turns": 2, "budget": 0.05, "max_obs_tokens": 16},
        "rollout": {"max_new_tokens": 40},
        "rewards": [{"name": "router_r1", "alpha": 0.3, "cost_mode": "linear", "cost_scale": 0.0003}],  # evaluation only: both train on BoPO's reward
        "algorithm": {"name": "bopo", "advantage": advantage, "sft_examples": 128, "neither_rate": 0.0, "sft_mix": "both"},
        "sft": {"max_steps": 300, "learning_rate": 3.0e-3, "logging_steps": 50, "seed": seed},
        "trainer": {"max_steps": steps, "per_device_train_batch_size": 32, "num_generations": 8, "learning_rate": 5e-4, "temperature": 0.7, "save_steps": 1000, "logging_steps": 1,
                    "lr_scheduler_type": "constant", "seed": seed},
        "data": {"source": "synthetic", "synthetic_n": 120, "synthetic_topics": ["easy", "easy", "easy", "easy", "hard"], "synthetic_template": "Synthetic task #{i}",
                 "heldout_fraction": 0.3, "seed": 0},
    }


def run(advantage: str, steps: int, out: Path, *, seed: int = 0, warm: Path | None = None, log: Any = None) -> dict[str, Any]:
    """One run; with `warm` (another run's folder) it starts from that run's warm start."""
    from rl_router.recipe import recipe_from_dict
    from rl_router.training.pipeline import train

    raw = ablation_recipe(advantage, steps, seed)
    if warm is not None:
        raw["model"] = {"name_or_path": str(warm / "sft")}
    r = recipe_from_dict(raw)
    if warm is not None:
        r.algorithm.sft_warmstart = False
    return train(r, output_dir=str(out), log=log or (lambda _: None))


def strong_share(metrics: dict[str, Any], last: int | None = None) -> float:
    """The sampled policy's share of strong calls: at the first RL step, or over the last steps."""
    xs = [h["decision/route_share/strong"] for h in metrics["log_history"] if "decision/route_share/strong" in h]
    part = xs[-last:] if last else xs[:1]
    return sum(part) / len(part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="outputs/exp_collapse")
    a = ap.parse_args()
    import os

    os.environ.setdefault("RL_ROUTER_NO_PROGRESS", "1")
    rows = []
    for s in [int(x) for x in a.seeds.split(",")]:
        base = Path(a.out) / f"seed{s}"
        g = run("grpo", a.steps, base / "grpo", seed=s)
        b = run("bopo", a.steps, base / "bopo", seed=s, warm=base / "grpo")
        row = {"seed": s, "strong_share_first_step": strong_share(g)}
        for name, m in (("grpo", g), ("bopo", b)):
            row[name] = {"strong_share_last6": strong_share(m, 6), "heldout_quality": m["heldout_after"]["quality"], "heldout_cost": m["heldout_after"]["mean_cost"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (Path(a.out) / "ablation.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
