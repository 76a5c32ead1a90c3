"""`rl-router eval`: a router (or the baselines alone) next to every baseline, on one recipe's
held-out tasks, all scored the same way (`evaluator.Evaluator`): always-<model> for every pool
model, random (a per-task hash, so the draw does not depend on order or sharding), oracle
(per task the cheapest model that solves it: an upper bound no router can pass) and a learned
single-shot kNN router over TF-IDF (`knn_router.py`), fitted on the train tasks' cheap-model
outcomes (reused from a training run's boundaries when there). Outputs: `eval.json`,
`frontier.png`, `budget_sweep.png`, `checkpoints.png`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

from rl_router.evaluation.calibration import knob_point, read_route_bias
from rl_router.evaluation.evaluator import EvalOptions, Evaluator, router_policy
from rl_router.evaluation.knn_router import TfidfKNN
from rl_router.frontier import above, area_under, cost_to_reach, oracle_frontier, pgr, point, random_mixture
from rl_router.models import resolve_checkpoint
from rl_router.recipe import Recipe
from rl_router.stats import above_line_values, curve_apgr_values, interval, paired_difference, pgr_values, resample_index, statistic_ci
from rl_router.task_sources import recipe_pool, recipe_tasks

CPT_PGR = 0.5  # RouteLLM's CPT(50%): the cost at which half the cheap->strong quality gap is recovered


def _cheap_outcomes_on_train(recipe: Recipe, ev_train: Evaluator, cheap: str, run_dir: Path | None) -> dict[str, bool]:
    """Did the cheapest model solve each train task? A training run's boundaries hold exactly
    that (the same compact always-cheap policy, env and budget); else run it."""
    from rl_router.boundary_records import load_boundaries

    saved = run_dir / "boundaries.json" if run_dir is not None else None
    if saved is not None and saved.exists():
        recs = load_boundaries(saved)
        if all(t.task_id in recs and recs[t.task_id].cheap_model == cheap for t in ev_train.tasks):
            return {tid: r.cheap_success for tid, r in recs.items()}
    eps = ev_train.episodes("knn-fit", ev_train.baseline(f"always-{cheap}"))
    return {t.task_id: (e.get("quality") or 0) > 0 for t, e in zip(ev_train.tasks, eps)}


def evaluate(
    recipe: Recipe,
    target: str,
    *,
    n: int | None = None,
    sampled: bool = True,
    budgets: list[float] | None = None,
    checkpoints: bool = False,
    knn_thresholds: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01),
    curve_biases: list[float] | None = None,
    route_bias: float | None = None,
    batch_size: int = 32,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """`curve_biases`: route biases (the cost knob) at which to run the router for its own
    cost-quality curve. `route_bias`: the router rows' setting (None: the calibrated one kept
    beside the weights, else 0). kNN thresholds span all-cheap (0) to all-strong (1.01), so
    its sweep and the router's cover the same costs."""
    from rl_router.models import load_checkpoint, router_from_recipe, tokenizer_from_recipe
    from rl_router.recipe import validate_against_pool

    from rl_router.errors import ConfigError

    pool = recipe_pool(recipe)
    if target.startswith("always-") and not pool.has_model(target.removeprefix("always-")):
        raise ConfigError("target", f"{target!r} names a model the pool does not have", f"use one of {[f'always-{m}' for m in pool.model_names]}, random, oracle or knn-tfidf")
    train_tasks, held = recipe_tasks(recipe, pool)
    held = held[:n] if n else held
    cheap, strong = validate_against_pool(recipe, pool, held)
    ckpt = resolve_checkpoint(target)
    model = tok = None
    calibration = None
    if ckpt is not None:
        model, tok = load_checkpoint(ckpt, recipe)
        calibration = read_route_bias(ckpt)
    elif target == "initial":
        model, tok = router_from_recipe(recipe)
    else:  # baselines only: the tokenizer is enough
        tok = tokenizer_from_recipe(recipe)
    if route_bias is None:
        route_bias = float(calibration["route_bias"]) if calibration else 0.0
    ev = Evaluator(recipe, pool, tok, held, options=EvalOptions(batch_size=batch_size), progress=progress)
    names = pool.model_names
    policies, episodes = ev.baselines()
    outcomes = {m: [((e.get("quality") or 0) > 0, float(e.get("cost") or 0.0)) for e in episodes[f"always-{m}"]] for m in names}
    # oracle: per task, the cheapest model that solves it (else the cheapest model)
    by_cost = sorted(names, key=lambda m: sum(c for _, c in outcomes[m]))
    oracle_pick = {}
    for i, t in enumerate(held):
        ok = [m for m in by_cost if outcomes[m][i][0]]
        oracle_pick[t.task_id] = ok[0] if ok else by_cost[0]
    policies["oracle"], _ = ev.run("oracle", ev.baseline("oracle", choose=lambda t: oracle_pick[t.task_id]))
    # learned single-shot baseline, fitted on the train tasks' cheap-model outcomes
    run_dir = ckpt.parent if ckpt is not None and ckpt.name == "final" else None
    solved = _cheap_outcomes_on_train(recipe, Evaluator(recipe, pool, tok, train_tasks, progress=progress), cheap, run_dir)
    knn = TfidfKNN(k=10).fit([t.question for t in train_tasks], [1.0 if solved.get(t.task_id) else 0.0 for t in train_tasks])
    p_cheap = dict(zip([t.task_id for t in held], knn.predict_proba([t.question for t in held])))
    knn_curve, knn_tasks = [], []
    for th in knn_thresholds:
        s, _ = ev.run(f"knn@{th}", ev.baseline(f"knn@{th}", choose=lambda t, th=th: cheap if p_cheap[t.task_id] >= th else strong))
        knn_curve.append(point(s))
        knn_tasks.append(s["per_task"])
        if th == 0.5:
            policies["knn-tfidf"] = s

    router_names = []
    if model is not None:
        label = "router" if target != "initial" else "initial router"
        policies[f"{label} (greedy)"] = knob_point(ev, model, tok, recipe, route_bias, strong, name="router greedy")
        router_names.append(f"{label} (greedy)")
        if sampled:
            policies[f"{label} (sampled)"], _ = ev.run("router sampled", router_policy(model, tok, recipe, greedy=False, route_bias=route_bias, pool=pool))
            router_names.append(f"{label} (sampled)")

    q_cheap, q_strong = policies[f"always-{cheap}"]["quality"], policies[f"always-{strong}"]["quality"]
    curves = {
        "random mixture": random_mixture(point(policies[f"always-{cheap}"]), point(policies[f"always-{strong}"])),
        "oracle frontier": oracle_frontier({m: outcomes[m] for m in names}),
        "knn-tfidf sweep": sorted(knn_curve),
    }
    c_max = policies[f"always-{strong}"]["mean_cost"]
    target_q = q_cheap + CPT_PGR * (q_strong - q_cheap)
    idx = resample_index(len(held))
    lo_t, hi_t = policies[f"always-{cheap}"]["per_task"], policies[f"always-{strong}"]["per_task"]
    for name, s in policies.items():
        s["pgr"] = pgr(s["quality"], q_cheap, q_strong)
        s["above_random_mixture"] = above(point(s), curves["random mixture"])
        s["cost_fraction_of_strongest"] = s["mean_cost"] / c_max if c_max > 0 else None
        # paired bootstrap over tasks: the policy and the two boundaries resampled together
        s["ci95"]["above_random_mixture"] = statistic_ci(lambda i, p=s["per_task"]: above_line_values(p, lo_t, hi_t, i), idx)["ci95"]
        s["ci95"]["pgr"] = statistic_ci(lambda i, p=s["per_task"]: pgr_values(p, lo_t, hi_t, i), idx)["ci95"]
    for r in router_names:  # router minus each baseline on the same tasks
        rt = policies[r]["per_task"]
        policies[r]["vs"] = {
            b: {"quality": paired_difference(rt["quality"], policies[b]["per_task"]["quality"], idx), "cost": paired_difference(rt["cost"], policies[b]["per_task"]["cost"], idx),
                "above_random_mixture": statistic_ci(lambda i, b=b: above_line_values(rt, lo_t, hi_t, i) - above_line_values(policies[b]["per_task"], lo_t, hi_t, i), idx)}
            for b in policies if b not in router_names
        }

    knob: list[dict[str, Any]] = []
    if curve_biases and model is not None:
        for b in sorted(set(curve_biases) | {route_bias}):  # the router row is the point at its own bias
            knob.append(policies[router_names[0]] if b == route_bias else knob_point(ev, model, tok, recipe, b, strong))
        curves["router knob sweep"] = sorted(point(k) for k in knob)

    sweep = []
    if budgets and model is not None:
        for b in budgets:
            s, _ = ev.run(f"budget {b}", router_policy(model, tok, recipe, greedy=True), budget=b)
            sweep.append({"budget": b, **{k: s[k] for k in ("quality", "mean_cost", "reward", "budget_violation_rate", "routes_per_task")}})
        curves["router budget sweep"] = sorted(point(x) for x in sweep)

    def apgr(c: list[tuple[float, float]]) -> float | None:  # mean PGR over costs [0, cost of always-strongest]
        a = area_under(c, c_max)
        return pgr(a, q_cheap, q_strong)

    cpt = f"cpt_{int(CPT_PGR * 100)}"
    curve_scores = {name: {"area_under_frontier": area_under(c, c_max), "apgr": apgr(c), cpt: cost_to_reach(c, target_q)} for name, c in curves.items()}
    for name in list(policies):  # a single point reaches the target at its own cost, or never
        curve_scores[name] = {cpt: cost_to_reach([point(policies[name])], target_q)}
    # APGR with 95% intervals, and paired differences between curves (all resampled together)
    per_curve = {"random mixture": [lo_t, hi_t], "knn-tfidf sweep": knn_tasks}
    if knob:
        per_curve["router knob sweep"] = [k["per_task"] for k in knob]
    apgr_v = {name: curve_apgr_values(pts, lo_t, hi_t, idx) for name, pts in per_curve.items()}
    for name, v in apgr_v.items():
        curve_scores[name]["apgr_ci95"] = list(interval(v))
    if knob:
        curve_scores["router knob sweep"]["apgr_minus"] = {
            other: statistic_ci(lambda _i, o=other: apgr_v["router knob sweep"] - apgr_v[o], idx) for other in ("knn-tfidf sweep", "random mixture")
        }

    ck_rows = []
    if checkpoints and ckpt is not None:
        sft = ckpt.parent / "sft"
        if (sft / "config.json").exists():  # step 0: where RL started
            m, _ = load_checkpoint(sft, recipe)
            s, _ = ev.run("warm start", router_policy(m, tok, recipe, greedy=True))
            ck_rows.append({"step": 0, **{k: s[k] for k in ("reward", "quality", "mean_cost")}})
        rl = ckpt.parent / "rl"
        for d in sorted(rl.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])):
            if not (d / "config.json").exists():
                continue
            m, _ = load_checkpoint(d, recipe)
            s, _ = ev.run(d.name, router_policy(m, tok, recipe, greedy=True))
            ck_rows.append({"step": int(d.name.split("-")[-1]), **{k: s[k] for k in ("reward", "quality", "mean_cost")}})

    notes = []
    for row in sweep:  # where a tight budget leaves the router worse than the cheapest model alone
        if row["quality"] < q_cheap:
            notes.append(f"at a budget of ${row['budget']:g} per task the router's quality {row['quality']:.3f} is below always-{cheap}'s {q_cheap:.3f} (at the recipe's budget): it cannot afford the calls it was trained to make")
    failing = [k for k, s in policies.items() if (s.get("pool_error_rate") or 0) > 0]
    if failing:
        shares = ", ".join(f"{k} ({policies[k]['pool_error_rate']:.0%})" for k in failing)
        notes.append(f"pool errors in {shares}: those rows are not real outcomes")
    return {
        "notes": notes,
        "target": str(ckpt or target),
        "tasks": len(held),
        "pool": [dataclasses.asdict(pool.card(m)) for m in names],
        "budget": recipe.env_config().budget,
        "routers": router_names,
        "policies": policies,
        "curves": {k: [list(p) for p in v] for k, v in curves.items()},
        "scores": curve_scores,
        "cpt_target_quality": target_q,
        "definitions": {
            "pgr": "(quality - q_cheapest) / (q_strongest - q_cheapest)",
            "apgr": "mean PGR of a curve over costs [0, cost of always-strongest], curve flat beyond its ends",
            cpt: f"least mean cost per task at which the policy/curve reaches PGR {CPT_PGR} (RouteLLM's CPT, in $ instead of % strong calls)",
            "above_random_mixture": "quality minus the random cheap/strong mixture's quality at the same cost",
        },
        "budget_sweep": sweep,
        "checkpoints": ck_rows,
        "route_bias": route_bias,
        "calibration": calibration,
        "knob_sweep": [{k: x[k] for k in ("route_bias", "quality", "mean_cost", "strong_share", "ci95")} for x in knob],
    }


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    from rl_router.plots import plot_budget_sweep, plot_checkpoints, plot_frontier

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, out / "eval.json")
    files = [out / "eval.json", plot_frontier(result, out / "frontier.png")]
    if result["budget_sweep"]:
        files.append(plot_budget_sweep(result["budget_sweep"], out / "budget_sweep.png"))
    if result["checkpoints"]:
        files.append(plot_checkpoints(result["checkpoints"], out / "checkpoints.png"))
    return files


def compare_policies(recipe: Recipe, names: list[str] | None, *, n: int | None = None, options: Any = None, greedy: bool = True, progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """`rl-router rollout`: named policies (the recipe's router, always-<model>, random) on the
    recipe's held-out tasks, through the evaluator eval and train use (same numbers for the
    same options)."""
    from rl_router.errors import ConfigError
    from rl_router.evaluation.evaluator import EvalOptions, baseline_policy, policy_names
    from rl_router.models import router_from_recipe
    from rl_router.recipe import validate_against_pool
    from rl_router.task_sources import recipe_pool, recipe_tasks

    options = options or EvalOptions()
    pool = recipe_pool(recipe)
    _train, held = recipe_tasks(recipe, pool)
    held = held[:n] if n else held
    validate_against_pool(recipe, pool, held)
    names = names or policy_names(pool)
    for name in names:
        if name not in policy_names(pool):
            raise ConfigError("--policy", f"unknown policy {name!r}", f"use one of {policy_names(pool)}")
    model, tok = router_from_recipe(recipe) if "router" in names else (None, None)
    if tok is None:
        from rl_router.models import tokenizer_from_recipe

        tok = tokenizer_from_recipe(recipe)
    ev = Evaluator(recipe, pool, tok, held, options=options, progress=progress)
    ev.set_cost_reference([e["cost"] or 0.0 for m in pool.model_names for e in ev.episodes(f"always-{m}", ev.baseline(f"always-{m}"))])
    summaries = {}
    for name in names:
        policy = router_policy(model, tok, recipe, greedy=greedy) if name == "router" else baseline_policy(name, tok, pool.model_names, seed=recipe.data.seed, query=options.baseline_query)
        summaries[name], _ = ev.run(name, policy)
    return {"tasks": len(held), "budget": recipe.env_config().budget, "greedy": greedy, "baseline_query": options.baseline_query, "policies": summaries}


def eval_target(target: str, recipe_path: str | None, sets: list[str], output_dir: str | None) -> tuple[Recipe, Path]:
    """What `rl-router eval TARGET` evaluates with and where it writes: the recipe (TARGET's own
    recipe.json unless --recipe), and the output folder, beside the target: RUN/eval for a
    training run, MODEL-eval next to a model folder (never into a folder named by a recipe that
    was copied along with it), the recipe's output_dir/eval for the baselines alone."""
    from rl_router.errors import ConfigError
    from rl_router.models import resolve_checkpoint
    from rl_router.recipe import recipe_for_target

    ck = resolve_checkpoint(target)
    baseline = target in ("random", "oracle", "knn-tfidf") or target.startswith("always-")
    if ck is None and target != "initial" and not baseline:
        raise ConfigError("target", f"{target!r} is neither a model folder, a training output dir, 'initial', nor a baseline name", "e.g. rl-router eval outputs/quickstart, or eval always-<model> --recipe R")
    r = recipe_for_target(target, recipe_path, sets)
    if output_dir is not None:
        out = Path(output_dir)
    elif ck is not None:
        out = ck.parent / "eval" if ck.name == "final" else ck.parent / f"{ck.name}-eval"
    else:
        out = Path(r.output_dir) / "eval"
    if out.exists() and not out.is_dir():
        raise ConfigError("--output-dir", f"{out} is a file", "give a folder")
    return r, out
