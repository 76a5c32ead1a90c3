"""How an evaluation's batching changes its speed: the same held-out tasks, the same router
(greedy, bf16 where the recipe asks), three ways, in one process, alternating repeats:

- task order: `engine.run_batched` in the tasks' order, the system prompt copied into each row
  (the evaluation before this version);
- by length: `run_sharded` (tasks batched shortest question first, episodes back in task order);
- by length + system prompt once: as the evaluator runs it now (`HFPolicy(share_system_prompt=True)`).

Prints seconds per run, the median tasks/s of each, each one's mean quality, and how many of its
greedy episodes are token-identical to task order's (bf16 rounding depends on the batch).

    python scripts/bench_eval_batching.py --recipe recipes/dcrouter_smollm2.yaml --router RUN/final --n 128 --batch 64 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="recipe YAML (its pool, held-out split, rollout settings and model.autocast)")
    ap.add_argument("--router", required=True, help="a model folder (e.g. RUN/final)")
    ap.add_argument("--n", type=int, default=128, help="held-out tasks (the first N)")
    ap.add_argument("--batch", type=int, default=64, help="episodes per lock-step batch")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of the two by-length modes (task order runs once)")
    a = ap.parse_args()
    os.environ.setdefault("RL_ROUTER_NO_PROGRESS", "1")
    from rl_router.models import load_checkpoint
    from rl_router.recipe import load_recipe
    from rl_router.rollout.engine import make_engine, run_sharded, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import HFPolicy
    from rl_router.task_sources import recipe_pool, recipe_tasks

    r = load_recipe(a.recipe, [f"data.max_heldout={a.n}"])
    pool = recipe_pool(r)
    held = recipe_tasks(r, pool)[1][: a.n]
    model, tok = load_checkpoint(a.router, r)
    model.eval()
    engine = make_engine(r, pool, tok)
    kw = dict(max_new_tokens=r.rollout.max_new_tokens, temperature=0.0, stop_strings=stop_strings(r), route_weights=cost_weights(pool), names=pool.model_names, autocast=r.model.autocast)
    modes = [("task order", False), ("by length", False), ("by length + system prompt once", True)]
    times: dict[str, list[float]] = {m: [] for m, _ in modes}
    eps: dict[str, list] = {}
    for i in range(a.repeats):
        for m, share in modes:
            if m == "task order" and i:
                continue
            policy = HFPolicy(model, tok, share_system_prompt=share, **kw)
            t0 = time.perf_counter()
            eps[m] = engine.run_batched(held, policy, batch_size=a.batch) if m == "task order" else run_sharded(engine, held, policy, batch_size=a.batch)
            times[m].append(time.perf_counter() - t0)
            print(f"{m}: {times[m][-1]:.2f} s, quality {sum(float(e.get('quality') or 0) for e in eps[m]) / len(held):.4f}", flush=True)
    for m, _ in modes:
        same = sum(x["completion_ids"] == y["completion_ids"] for x, y in zip(eps["task order"], eps[m]))
        med = statistics.median(times[m])
        print(f"{m}: median {med:.2f} s = {len(held) / med:.3f} tasks/s; greedy episodes identical to task order: {same}/{len(held)}")


if __name__ == "__main__":
    main()
