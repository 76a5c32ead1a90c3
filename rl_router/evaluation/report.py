"""`rl-router eval`: a router (or the baselines alone) next to every baseline, on one recipe's
held-out tasks, all scored the same way (`evaluator.Evaluator`).

`evaluate` is a list of named steps:
1. `prepare`: the pool, the splits, the router (or just a tokenizer for baselines alone);
2. `single_models`: always-<model> for every pool model (their costs become the cost
   reference) and random;
3. `train_outcomes`: every model's outcome on the train tasks, which the learned baselines
   are fitted on (read from a recorded pool's records, or a run's boundaries, else run);
4. `simple_baselines`: oracle, per-category best, the kNN router (both swept over lambda into
   curves) and, where replies are real text and there are three or more models, the
   agreement cascade (`baselines.py`);
5. `router_rows`: the router greedy (and sampled), another router to compare it with
   (`--against`, e.g. its warm start: RL's own contribution), its knob sweep (`--curve`),
   budget sweep (`--budgets`) and checkpoints (`--checkpoints`);
6. `compare`: PGR, distance above the single-model hull, against the best single model, APGR
   of every closed curve, paired differences (`comparisons.py`), all with 95% intervals.
Outputs: `eval.json`, `frontier.png`, `budget_sweep.png`, `checkpoints.png`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rl_router.evaluation.baselines import (
    LAMBDAS, AgreementCascadePolicy, OutcomeTable, fit_cascade, has_reply_text, knn_choices, knn_lambda, oracle_choice, per_category_choices, table_from_episodes,
    table_from_records,
)
from rl_router.evaluation.calibration import knob_point, knob_points, read_route_bias
from rl_router.evaluation.comparisons import References, paired_vs, references, score_curve, score_policy
from rl_router.evaluation.evaluator import EvalOptions, Evaluator, hashed_choice, router_policy
from rl_router.frontier import cost_to_reach, oracle_frontier, pgr, point
from rl_router.models import adapter_run, is_run_checkpoint, resolve_checkpoint
from rl_router.recipe import Recipe
from rl_router.stats import resample_index, statistic_ci
from rl_router.task_sources import recipe_pool, recipe_tasks

CPT_PGR = 0.5  # RouteLLM's CPT(50%): the cost at which half the cheapest->best quality gap is recovered


@dataclass
class EvalRun:
    """What the steps of one evaluation share."""

    recipe: Recipe
    pool: Any
    train: list[Any]
    held: list[Any]
    ev: Evaluator
    tok: Any
    model: Any = None
    ckpt: Path | None = None
    calibration: dict[str, Any] | None = None
    route_bias: float = 0.0
    target: str = ""
    progress: Callable[[str, int], None] | None = None
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> the summaries of its points
    routers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.pool.model_names


def prepare(recipe: Recipe, target: str, *, n: int | None, batch_size: int, route_bias: float | None, progress: Callable[[str, int], None] | None) -> EvalRun:
    """Step 1: pool, splits, and the router when the target is one."""
    from rl_router.errors import ConfigError
    from rl_router.models import load_checkpoint, router_from_recipe, tokenizer_from_recipe
    from rl_router.recipe import validate_against_pool

    pool = recipe_pool(recipe)
    if target.startswith("always-") and not pool.has_model(target.removeprefix("always-")):
        raise ConfigError("target", f"{target!r} names a model the pool does not have", f"use one of {[f'always-{m}' for m in pool.model_names]}, random, oracle or knn-tfidf")
    train, held = recipe_tasks(recipe, pool)
    held = held[:n] if n else held
    validate_against_pool(recipe, pool, held)
    ckpt = resolve_checkpoint(target)
    model = calibration = None
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
    run = EvalRun(recipe, pool, train, held, ev, tok, model, ckpt, calibration, route_bias, target, progress)
    run.notes += list(getattr(pool, "notes", []))
    return run


def single_models(run: EvalRun) -> References:
    """Step 2: always-<model> for every model and random; the references they define."""
    summaries, _ = run.ev.baselines()
    run.policies.update(summaries)
    return references({m: run.policies[f"always-{m}"] for m in run.names})


def train_outcomes(run: EvalRun) -> OutcomeTable:
    """Step 3: every model's outcome on the train tasks (what the learned baselines may see)."""
    if hasattr(run.pool, "recorded"):
        return table_from_records(run.pool, run.train)
    saved = run.ckpt.parent / "boundaries.json" if run.ckpt is not None and run.ckpt.name == "final" else None
    if saved is not None and saved.exists() and len(run.names) == 2:
        from rl_router.boundary_records import load_boundaries

        recs = load_boundaries(saved)
        if all(t.task_id in recs for t in run.train):
            r0 = recs[run.train[0].task_id]
            eps = {r0.cheap_model: [{"quality": float(recs[t.task_id].cheap_success), "cost": recs[t.task_id].cheap_cost} for t in run.train],
                   r0.strong_model: [{"quality": float(recs[t.task_id].strong_success), "cost": recs[t.task_id].strong_cost} for t in run.train]}
            if set(eps) == set(run.names):
                return table_from_episodes(run.train, {m: eps[m] for m in run.names})
    fit = Evaluator(run.recipe, run.pool, run.tok, run.train, options=run.ev.options, progress=run.progress)
    return table_from_episodes(run.train, {m: fit.episodes(f"fit always-{m}", fit.baseline(f"always-{m}")) for m in run.names})


def _sweep(run: EvalRun, name: str, choices: list[tuple[float, dict[str, str]]]) -> list[dict[str, Any]]:
    out = []
    for lam, pick in choices:
        s = run.ev.summarize(run.ev.assemble(pick))
        s["lambda"] = lam
        out.append(s)
    run.curves[name] = out
    return out


def simple_baselines(run: EvalRun, table: OutcomeTable | None, refs: References, lambdas: tuple[float, ...] = LAMBDAS) -> None:
    """Step 4: oracle, per-category best, kNN (with their lambda sweeps), agreement cascade."""
    held_table = table_from_episodes(run.held, run.ev.run_single_models())
    run.policies["oracle"] = run.ev.summarize(run.ev.assemble(oracle_choice(held_table)))
    if not run.train:  # e.g. a held-out file evaluated alone: nothing to fit the learned baselines on
        run.notes.append("no train tasks: the learned baselines (per-category, knn-tfidf, agreement cascade) need them and were skipped")
        return
    cat = _sweep(run, "per-category sweep", per_category_choices(table, run.held, lambdas))
    run.policies["per-category"] = next((s for s in cat if s["lambda"] == 0.0), cat[0])
    knn = _sweep(run, "knn-tfidf sweep", knn_choices(table, run.held, lambdas))
    lam = knn_lambda(table, lambdas)
    run.policies["knn-tfidf"] = next(s for s in knn if s["lambda"] == lam)
    run.extra["knn_lambda"] = lam
    if len(run.names) >= 3 and has_reply_text(run.pool, run.held) and run.recipe.env.get("name", "router_r1") == "router_r1":
        a, b, strong, fit = fit_cascade(table)
        name = "agreement cascade"
        eps = run.ev.episodes(name, AgreementCascadePolicy(run.tok, a, b, strong), max_turns=4)
        run.policies[name] = run.ev.summarize(eps)
        run.extra["cascade"] = {"cheap_pair": [a, b], "strong": strong, "fit_on_train": fit, "max_turns": max(4, run.recipe.env_config().max_turns)}


def router_rows(run: EvalRun, *, sampled: bool, curve_biases: list[float] | None, budgets: list[float] | None, checkpoints: bool, knob_strong: str, against: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Step 5: the router greedy / sampled; another router (`--against`: its warm start, say);
    knob sweep, budget sweep, checkpoints."""
    from rl_router.models import load_checkpoint

    if run.model is None:
        return [], [], []
    model, tok, recipe = run.model, run.tok, run.recipe
    label = "router" if run.target != "initial" else "initial router"
    run.policies[f"{label} (greedy)"] = knob_point(run.ev, model, tok, recipe, run.route_bias, knob_strong, name="router greedy")
    run.routers.append(f"{label} (greedy)")
    if sampled:
        run.policies[f"{label} (sampled)"], _ = run.ev.run("router sampled", router_policy(model, tok, recipe, greedy=False, route_bias=run.route_bias, pool=run.pool, temperature=float(recipe.trainer.get("temperature", 1.0))))
        run.routers.append(f"{label} (sampled)")
    knob = []
    if curve_biases:  # one pass for every bias; the router row is the point at its own bias
        pts = knob_points(run.ev, model, tok, recipe, sorted(set(curve_biases) | {run.route_bias}), knob_strong)
        knob = [run.policies[run.routers[0]] if b == run.route_bias else p for b, p in pts.items()]
        run.curves["router knob sweep"] = knob
    sweep = []
    for b in budgets or []:
        s, _ = run.ev.run(f"budget {b}", router_policy(model, tok, recipe, greedy=True, pool=run.pool), budget=b)
        sweep.append({"budget": b, **{k: s[k] for k in ("quality", "mean_cost", "reward", "budget_violation_rate", "routes_per_task")}, "per_task": s["per_task"]})
    if sweep:
        run.curves["router budget sweep"] = sweep
    if against:  # another router on the same tasks (its warm start, another seed): the router minus it is paired in `compare`
        from rl_router.errors import ConfigError

        other = resolve_checkpoint(against)
        if other is None:
            raise ConfigError("--against", f"{against} is neither a model folder nor a training run with final/", "give a model folder (e.g. RUN/sft, the warm start) or a training output dir")
        m, _ = load_checkpoint(other, recipe)
        from rl_router.evaluation.calibration import read_route_bias

        own = read_route_bias(other)  # a knob setting is calibrated on one router's log-odds: the other's own, else none
        bias = float(own["route_bias"]) if own else 0.0
        run.policies[f"other router: {against} (greedy)"], _ = run.ev.run("other router", router_policy(m, tok, recipe, greedy=True, route_bias=bias, pool=run.pool))
    rows = []
    if checkpoints and run.ckpt is not None:
        sft = run.ckpt.parent / "sft"
        if (sft / "config.json").exists():  # step 0: where RL started
            m, _ = load_checkpoint(sft, recipe)
            s, _ = run.ev.run("warm start", router_policy(m, tok, recipe, greedy=True, pool=run.pool))
            rows.append({"step": 0, **{k: s[k] for k in ("reward", "quality", "mean_cost")}})
        steps = [d for d in (run.ckpt.parent / "rl").glob("checkpoint-*") if d.name.removeprefix("checkpoint-").isdigit()]
        for d in sorted(steps, key=lambda p: int(p.name.split("-")[-1])):
            if (d / "config.json").exists() or adapter_run(d) is not None:  # full weights, or a LoRA run's adapter (merged on load)
                m, _ = load_checkpoint(d, recipe)
                s, _ = run.ev.run(d.name, router_policy(m, tok, recipe, greedy=True, pool=run.pool))
                rows.append({"step": int(d.name.split("-")[-1]), **{k: s[k] for k in ("reward", "quality", "mean_cost")}})
    return knob, sweep, rows


def compare(run: EvalRun, refs: References) -> dict[str, Any]:
    """Step 6: every figure against the single models (comparisons.py), every curve's APGR
    and vs-best figures, and the routers' paired differences; returns the curve scores."""
    idx = resample_index(len(run.held))
    for s in run.policies.values():
        score_policy(s, refs, idx)
    for r in run.routers:  # router minus each baseline on the same tasks
        run.policies[r]["vs"] = paired_vs(run.policies[r], {b: s for b, s in run.policies.items() if b not in run.routers}, refs, idx)
    lo, hi = refs.summaries[refs.cheapest], refs.summaries[refs.best]
    target_q = lo["quality"] + CPT_PGR * (hi["quality"] - lo["quality"])
    cpt = f"cpt_{int(CPT_PGR * 100)}"
    scores: dict[str, dict[str, Any]] = {}
    hull_points = [refs.summaries[m] for m in refs.models]
    curve_sets = {"single-model hull": hull_points, **run.curves}
    outcomes = {m: [(q >= 1.0 or (q > 0 and q >= max(run.policies[f"always-{x}"]["per_task"]["quality"][i] for x in run.names)), c)
                    for i, (q, c) in enumerate(zip(run.policies[f"always-{m}"]["per_task"]["quality"], run.policies[f"always-{m}"]["per_task"]["cost"]))] for m in run.names}
    oracle_curve = oracle_frontier(outcomes)
    for name, pts in curve_sets.items():
        sc = score_curve(pts, refs, idx, envelope=name == "single-model hull")
        sc[cpt] = cost_to_reach([point(p) for p in pts] if name != "single-model hull" else refs.hull, target_q)
        scores[name] = sc
    scores["oracle frontier"] = {cpt: cost_to_reach(oracle_curve, target_q), "apgr": _apgr_of(oracle_curve, refs)}
    for name in run.policies:  # a single point reaches the target at its own cost, or never
        scores[name] = {cpt: cost_to_reach([point(run.policies[name])], target_q)}
    if "router knob sweep" in scores:
        v = scores["router knob sweep"]["_apgr_values"]
        scores["router knob sweep"]["apgr_minus"] = {other: statistic_ci(lambda _i, o=other: v - scores[o]["_apgr_values"], idx) for other in ("knn-tfidf sweep", "per-category sweep", "single-model hull") if other in scores}
    for sc in scores.values():
        sc.pop("_apgr_values", None)
    run.extra["cpt_target_quality"] = target_q
    run.extra["oracle_curve"] = oracle_curve
    return scores


def _apgr_of(curve: list[tuple[float, float]], refs: References) -> float | None:
    from rl_router.frontier import apgr

    return apgr(curve, refs.point(refs.cheapest), refs.point(refs.best))


def evaluate(
    recipe: Recipe,
    target: str,
    *,
    n: int | None = None,
    sampled: bool = True,
    budgets: list[float] | None = None,
    checkpoints: bool = False,
    knn_lambdas: tuple[float, ...] = LAMBDAS,
    curve_biases: list[float] | None = None,
    route_bias: float | None = None,
    batch_size: int = 32,
    progress: Callable[[str, int], None] | None = None,
    against: str | None = None,
) -> dict[str, Any]:
    """The steps of the module docstring. `curve_biases`: route biases (the cost knob) at
    which to run the router for its own curve; `route_bias`: the router rows' setting (None:
    the calibrated one kept beside the weights, else 0); `knn_lambdas`: the lambda grid of the
    learned baselines' sweeps."""
    run = prepare(recipe, target, n=n, batch_size=batch_size, route_bias=route_bias, progress=progress)
    refs = single_models(run)
    simple_baselines(run, train_outcomes(run) if run.train else None, refs, knn_lambdas)
    knob, sweep, ck_rows = router_rows(run, sampled=sampled, curve_biases=curve_biases, budgets=budgets, checkpoints=checkpoints, knob_strong=run.pool.strongest().name, against=against)
    scores = compare(run, refs)
    q_cheap = refs.summaries[refs.cheapest]["quality"]
    for row in sweep:  # where a tight budget leaves the router worse than the cheapest model alone
        if row["quality"] < q_cheap:
            run.notes.append(f"at a budget of ${row['budget']:g} per task the router's quality {row['quality']:.3f} is below always-{refs.cheapest}'s {q_cheap:.3f} (at the recipe's budget): it cannot afford the calls it was trained to make")
    failing = [k for k, s in run.policies.items() if (s.get("pool_error_rate") or 0) > 0]
    if failing:
        run.notes.append("pool errors in " + ", ".join(f"{k} ({run.policies[k]['pool_error_rate']:.0%})" for k in failing) + ": those rows are not real outcomes")
    curves = {name: [list(point(p)) for p in sorted(pts, key=point)] for name, pts in run.curves.items()}
    curves["single-model hull"] = [list(p) for p in refs.hull]
    curves["oracle frontier"] = [list(p) for p in run.extra["oracle_curve"]]
    return {
        "notes": run.notes,
        "target": str(run.ckpt or target),
        "tasks": len(run.held),
        "pool": [dataclasses.asdict(run.pool.card(m)) for m in run.names],
        "single_models": [{"model": m, "quality": refs.summaries[m]["quality"], "mean_cost": refs.summaries[m]["mean_cost"], "frontier": m in refs.frontier} for m in refs.models],
        "references": {"cheapest": refs.cheapest, "best": refs.best, "frontier": refs.frontier},
        "budget": recipe.env_config().budget,
        "routers": run.routers,
        "policies": run.policies,
        "curves": curves,
        "scores": scores,
        "cpt_target_quality": run.extra["cpt_target_quality"],
        "baselines": {k: run.extra[k] for k in ("knn_lambda", "cascade") if k in run.extra} | {"lambdas": list(knn_lambdas)},
        "definitions": {
            "pgr": "(quality - q_cheapest) / (q_best - q_cheapest), the cheapest and best single models on these tasks",
            "above_hull": "quality minus the single-model hull's quality at the same cost (the best random mixture of single models; two models: the random cheap/strong line)",
            "apgr": "mean PGR of a curve closed with the always-cheapest and always-best points, over costs from the cheapest's to the best's",
            f"cpt_{int(CPT_PGR * 100)}": f"least mean cost per task at which the policy/curve reaches PGR {CPT_PGR} (RouteLLM's CPT, in $ instead of % strong calls)",
            "vs_best": "against the best single model: quality (paired difference), cost; for curves the quality at its cost, the cost to reach its quality and the share of its cost saved",
        },
        "budget_sweep": [{k: v for k, v in row.items() if k != "per_task"} for row in sweep],
        "checkpoints": ck_rows,
        "route_bias": run.route_bias,
        "calibration": run.calibration,
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
    ev.run_single_models()  # the cost reference
    summaries = {}
    for name in names:
        policy = router_policy(model, tok, recipe, greedy=greedy, pool=pool) if name == "router" else baseline_policy(name, tok, pool.model_names, seed=recipe.data.seed, query=options.baseline_query)
        summaries[name], _ = ev.run(name, policy)
    return {"tasks": len(held), "budget": recipe.env_config().budget, "greedy": greedy, "baseline_query": options.baseline_query, "policies": summaries}


def default_eval_dir(ck: Path) -> Path:
    """Where `rl-router eval` writes for a model folder `ck` (and where export looks for its
    figures): RUN/eval for a run's final/, RUN/eval-rl-checkpoint-N for one of its checkpoints
    (beside the run's folders: inside rl/, transformers' checkpoint rotation would take
    checkpoint-N-eval for a checkpoint and delete it), else MODEL-eval beside the folder."""
    ck = Path(ck)
    if is_run_checkpoint(ck):
        return ck.parent.parent / f"eval-{ck.parent.name}-{ck.name}"
    return ck.parent / "eval" if ck.name == "final" else ck.parent / f"{ck.name}-eval"


def eval_target(target: str, recipe_path: str | None, sets: list[str], output_dir: str | None) -> tuple[Recipe, Path]:
    """What `rl-router eval TARGET` evaluates with and where it writes: the recipe (TARGET's own
    recipe.json unless --recipe), and the output folder, beside the target: RUN/eval for a
    training run, RUN/eval-rl-checkpoint-N for one of its checkpoints, MODEL-eval next to a model folder (never into a folder named by a recipe that
    was copied along with it), the recipe's output_dir/eval for the baselines alone."""
    from rl_router.errors import ConfigError
    from rl_router.models import resolve_checkpoint
    from rl_router.recipe import recipe_for_target

    from rl_router.models import unfinished_run

    ck = resolve_checkpoint(target)
    baseline = target in ("random", "oracle", "knn-tfidf", "per-category", "agreement-cascade") or target.startswith("always-")
    if ck is None and unfinished_run(target):
        raise ConfigError("target", unfinished_run(target))
    if ck is None and target != "initial" and not baseline:
        raise ConfigError("target", f"{target!r} is neither a model folder, a training output dir, 'initial', nor a baseline name", "e.g. rl-router eval outputs/quickstart, or eval always-<model> --recipe R")
    r = recipe_for_target(target, recipe_path, sets)
    if output_dir is not None:
        out = Path(output_dir)
    elif ck is not None:
        out = default_eval_dir(ck)
    else:
        out = Path(r.output_dir) / "eval"
    if out.exists() and not out.is_dir():
        raise ConfigError("--output-dir", f"{out} is a file", "give a folder")
    return r, out
