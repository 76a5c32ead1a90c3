"""How much training data the simple learned routers need: per-category and TF-IDF kNN fitted on
n random training tasks of a recipe, scored on its held-out tasks under the recipe's reward.

Why: an RL router that has seen N distinct training tasks is compared with baselines fitted on
the whole training split. This says what those baselines reach from N tasks too, so "RL is
behind kNN" can be read as a matter of data (the baseline also needs more than N) or of the
learner (the baseline is already there at N). Recorded pools only: each fit reads the recorded
outcome of every model on the n tasks (full information, as the eval's baselines do), no model
runs and no router.

Same fits as `rl-router eval`'s rows (rl_router/evaluation/report.py `simple_baselines`):
per-category at lambda 0 (each category's most accurate model on the fitted tasks), kNN at the
lambda nearest the fitted tasks' hull slope (`baselines.knn_lambda`). Each size is fitted on
`--repeats` random subsets (seeded); the table gives the held-out reward's mean over subsets
with a 95% t-interval over them (the subsets' spread, not the held-out tasks' sampling error).

    python scripts/baseline_data_curve.py --recipe recipes/dcrouter_smollm2_scripted.yaml --sizes 100,200,400,800,1600 --repeats 5
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): a 95% t-interval over the values (stats.seed_spread; the mean alone when there is one)."""
    from rl_router.stats import seed_spread

    s = seed_spread(xs)
    lo, hi = s.get("ci95", [s["mean"], s["mean"]])
    return s["mean"], lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="a recipe over a recorded pool (its split and reward are used)")
    ap.add_argument("--sizes", default="100,200,400,800,1600", help="comma-separated numbers of training tasks to fit on (the whole split is always added)")
    ap.add_argument("--repeats", type=int, default=5, help="random subsets per size")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file (a new file, or one rl-router wrote)")
    args = ap.parse_args(argv)

    from rl_router.errors import ConfigError
    from rl_router.evaluation.baselines import knn_choices, knn_lambda, per_category_choices, reward_table, table_from_records
    from rl_router.owned import output_file
    from rl_router.recipe import load_recipe
    from rl_router.task_sources import recipe_pool, recipe_splits

    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        print(f"error: --sizes: {args.sizes!r} is not a comma-separated list of integers; e.g. --sizes 100,200,400", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(args.recipe, [])
        pool = recipe_pool(recipe)
        if not hasattr(pool, "recorded"):
            raise ConfigError("pool.type", f"{recipe.pool.get('type')} is not a recorded pool (the fits read every model's recorded outcome)", "use a recipe with pool.type: recorded")
        train, _, held = recipe_splits(recipe, pool)
        out = output_file(args.json, "--json") if args.json else None  # before the work: a file rl-router did not write is never replaced
    except ConfigError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    held_table = table_from_records(pool, held)
    held_reward = reward_table(held_table, recipe.rewards)  # [task, model]: the recipe's reward of calling that model once
    where = {t.task_id: i for i, t in enumerate(held)}

    def reward_of(pick: dict[str, str]) -> float:
        return float(np.mean([held_reward[where[t], held_table.models.index(m)] for t, m in pick.items()]))

    rng = np.random.default_rng(args.seed)
    rows = []
    for n in [s for s in sizes if s < len(train)] + [len(train)]:
        cat, knn = [], []
        for _ in range(args.repeats if n < len(train) else 1):
            sub = [train[i] for i in sorted(rng.choice(len(train), size=n, replace=False))]
            table = table_from_records(pool, sub)
            cat.append(reward_of(per_category_choices(table, held, [0.0])[0][1]))
            lam = knn_lambda(table)
            knn.append(reward_of(knn_choices(table, held, [lam])[0][1]))
        rows.append({"n": n, "subsets": len(cat), "per_category": t_interval(cat), "knn": t_interval(knn)})
    singles = {m: float(held_reward[:, j].mean()) for j, m in enumerate(held_table.models)}
    best = max(singles, key=singles.get)  # type: ignore[arg-type]
    print(f"{args.recipe}: {len(train)} training tasks, {len(held)} held-out; reward on the held-out tasks "
          f"(best single model {best} {singles[best]:.3f}; oracle {float(held_reward.max(axis=1).mean()):.3f})\n")
    print("| training tasks fitted on | subsets | per-category reward [95% t over subsets] | kNN reward [95% t over subsets] |")
    print("|---|---|---|---|")
    for r in rows:
        c, k = r["per_category"], r["knn"]
        print(f"| {r['n']} | {r['subsets']} | {c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}] | {k[0]:.3f} [{k[1]:.3f}, {k[2]:.3f}] |")
    if out is not None:
        folder, name = out
        folder.write_json(name, {"recipe": args.recipe, "train": len(train), "held": len(held), "singles": singles, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
