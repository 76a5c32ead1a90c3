"""GRPO with a strong cost weight vs BoPO on a SimulatedPool where the cheap model fails hard tasks.

The pool: `cheap` solves every "easy" task and no "hard" one; `strong` solves both at
~50x the price. Both runs start from the same SFT warm start on *both* boundary
trajectories of every task (`sft_mix: both`: the protocol, no routing preference, so
the routing decision is left to RL) and then train with:
  grpo: reward = accuracy + format + 2 * (1 - cost/scale)   (a strong cost weight: a cheap
        failure earns more than a strong success), GRPO advantages;
  bopo: BoPO's boundary-relative reward and reference-guided advantage.
It prints held-out success rate, cost and the hard tasks' share routed to `strong` after
the warm start and after each RL run. `tests/test_collapse.py` runs it with the same settings
(16 steps) and asserts the outcome.

    python scripts/exp_collapse.py [--steps 16] [--seeds 0,1,2,3] [--out outputs/exp_collapse]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def collapse_recipe(algorithm: str, steps: int, *, n_tasks: int = 96, sft_steps: int = 300, lr: float = 5e-4) -> dict[str, Any]:
    rewards: list[dict[str, Any]]
    if algorithm == "grpo":
        rewards = [
            {"name": "accuracy"},
            {"name": "format"},
            {"name": "cost", "mode": "linear", "scale": 0.0003, "weight": 2.0},
        ]
    else:
        rewards = [{"name": "router_r1", "alpha": 0.3, "cost_mode": "linear", "cost_scale": 0.0003}]  # eval only; BoPO trains on its own reward
    return {
        "model": {"name_or_path": "tiny", "hidden_size": 64, "num_layers": 2, "seed": 0},
        "pool": {
            "type": "simulated",
            "seed": 0,
            "latency_scale": 0.0,
            "models": {
                "cheap": {"price_in": 0.2, "price_out": 0.2, "skills": {"easy": 1.0, "hard": 0.0}, "answer_tokens": 12},
                "strong": {"price_in": 5.0, "price_out": 15.0, "skills": {"easy": 1.0, "hard": 1.0}, "answer_tokens": 12},
            },
        },
        "env": {"name": "router_r1", "max_turns": 2, "budget": 0.05, "max_obs_tokens": 32},
        "rollout": {"max_new_tokens": 48},
        "rewards": rewards,
        "algorithm": {"name": algorithm, "sft_examples": 128, "neither_rate": 0.0, "sft_mix": "both"},
        "sft": {"max_steps": sft_steps, "learning_rate": 3.0e-3, "logging_steps": 40},
        "trainer": {
            "max_steps": steps,
            "per_device_train_batch_size": 16,
            "num_generations": 4,
            "learning_rate": lr,
            "temperature": 0.7,
            "save_steps": 1000,
            "logging_steps": 1,
        },
        "data": {"source": "synthetic", "synthetic_n": n_tasks, "synthetic_topics": ["easy", "hard"], "heldout_fraction": 0.25, "max_heldout": 24, "seed": 0},
    }



def run(algorithm: str, steps: int, out: Path, warm: Path | None = None, **kw: Any) -> dict[str, Any]:
    from rl_router.recipe import recipe_from_dict
    from rl_router.training.pipeline import train

    seed = kw.pop("seed", None)
    raw = collapse_recipe(algorithm, steps, **kw)
    if seed is not None:
        raw["trainer"]["seed"] = seed
    if warm is not None:  # the same warm start for both algorithms: the other run's SFT weights as the initial model
        raw["model"] = {"name_or_path": str(warm / "sft")}
        raw["algorithm"]["sft_warmstart"] = False
    return train(recipe_from_dict(raw), output_dir=str(out), log=lambda m: print(m, flush=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seeds", default="0", help="RL seeds, comma-separated (one warm start, trained once, for all)")
    ap.add_argument("--out", default="outputs/exp_collapse")
    a = ap.parse_args()
    root = Path(a.out)
    warm = run("grpo", a.steps, root / "warm")  # the warm start (and GRPO at seed 0 from it, in-pipeline)
    w = warm["heldout_after_sft"]
    print(f"\nwarm start: success {w['quality']:.3f}, ${1000 * w['mean_cost']:.3f}/1k, strong share {w['call_share'].get('strong', 0):.2f}")
    print(f"{'seed':>4} {'algorithm':>9} {'success':>8} {'$/1k':>8} {'strong share':>13}")
    for seed in [int(x) for x in a.seeds.split(",")]:
        for algo in ("grpo", "bopo"):
            m = run(algo, a.steps, root / f"{algo}-seed{seed}", warm=root / "warm", seed=seed)
            s = m["heldout_after"]
            print(f"{seed:>4} {algo:>9} {s['quality']:8.3f} {1000 * s['mean_cost']:8.3f} {s['call_share'].get('strong', 0):13.2f}", flush=True)


if __name__ == "__main__":
    main()
