"""`rl-router eval`: a router (or a baseline) on a recipe's held-out tasks, next to every baseline.

Per policy and per dataset: quality, mean / total cost, routes per task, call share,
format-error, budget-violation and pool-error rates, pool latency (measured, and modelled
from the cards), and the recipe's reward. Baselines, all on the same tasks and scored the
same way: always-<model> for every pool model, random, oracle (per task, the cheapest
model that solves it: an upper bound no router can pass) and a learned single-shot kNN
router over TF-IDF (`knn_router.py`), fitted on the train tasks' outcomes.
The router runs greedy and, if asked, sampled (the recipe's rollout temperature).

Outputs in the output dir: `eval.json`, `frontier.png` (every policy a point; the random
mixture line, the oracle frontier and the kNN threshold sweep drawn), `budget_sweep.png`
when budgets are swept, `checkpoints.png` when training checkpoints are evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

from .frontier import above, area_under, cost_to_reach, oracle_frontier, pgr, point, random_mixture
from .knn_router import TfidfKNN
from .metrics import summarize
from .policies import HFPolicy, ScriptedPolicy
from .recipe import Recipe
from .rewards import build_rewards
from .runner import make_engine
from .train import score_episodes

CPT_PGR = 0.5  # RouteLLM's CPT(50%): the cost at which half the cheap->strong quality gap is recovered


def resolve_checkpoint(target: str) -> Path | None:
    """A model folder, or a training output dir (its `final/`); None for baseline names."""
    p = Path(target)
    if (p / "config.json").exists():
        return p
    if (p / "final" / "config.json").exists():
        return p / "final"
    return None


def _latency(episodes: list[dict[str, Any]], pool: Any) -> dict[str, float]:
    n = max(1, len(episodes))
    measured = sum(sum(float(c.get("latency_s") or 0.0) for c in e.get("trace") or []) for e in episodes) / n
    modelled = sum(sum(pool.card(c["model"]).latency_ms / 1000.0 for c in e.get("trace") or [] if pool.has_model(c["model"]) and not c.get("error")) for e in episodes) / n
    return {"pool_latency_s": measured, "modelled_latency_s": modelled}


class Evaluator:
    """Runs policies on fixed tasks with one engine per budget and scores them alike."""

    def __init__(self, recipe: Recipe, pool: Any, tokenizer: Any, tasks: list[Any], *, batch_size: int = 32, progress: Callable[[str, int], None] | None = None):
        self.recipe, self.pool, self.tok, self.tasks = recipe, pool, tokenizer, tasks
        self.reward_funcs, self.weights = build_rewards(recipe.rewards)
        self.batch_size = batch_size
        self.progress = progress

    def run(self, name: str, policy: Any, *, budget: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        on_batch = (lambda k: self.progress(name, k)) if self.progress else None
        eps = make_engine(self.recipe, self.pool, self.tok, budget=budget).run_batched(self.tasks, policy, batch_size=self.batch_size, on_batch=on_batch)
        return self.summarize(eps), eps

    def summarize(self, eps: list[dict[str, Any]], tasks: list[Any] | None = None) -> dict[str, Any]:
        tasks = tasks or self.tasks
        s = summarize(eps)
        rewards = score_episodes(eps, tasks, self.reward_funcs, self.weights)
        s["reward"] = sum(rewards) / len(rewards)
        s.update(_latency(eps, self.pool))
        by_ds: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            by_ds.setdefault(t.dataset, []).append(i)
        if len(by_ds) > 1:
            s["per_dataset"] = {d: self.summarize([eps[i] for i in idx], [tasks[i] for i in idx]) for d, idx in by_ds.items()}
        return s


def evaluate(
    recipe: Recipe,
    target: str,
    *,
    n: int | None = None,
    sampled: bool = True,
    budgets: list[float] | None = None,
    checkpoints: bool = False,
    knn_thresholds: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    from .recipe import validate_against_pool
    from .tiny import load_router, load_tiny_tokenizer, load_tokenizer
    from .train import load_model

    pool = recipe.build_pool()
    train_tasks, held = recipe.tasks(pool)
    held = held[:n] if n else held
    cheap, strong = validate_against_pool(recipe, pool, held)
    ckpt = resolve_checkpoint(target)
    model = tok = None
    if ckpt is not None:
        model, tok = load_router(str(ckpt))
    elif target == "initial":
        model, tok = load_model(recipe)
    else:  # baselines only: the tokenizer is enough
        tok = load_tiny_tokenizer() if recipe.model.name_or_path == "tiny" else load_tokenizer(recipe.model.name_or_path)
    ev = Evaluator(recipe, pool, tok, held, progress=progress)
    names = pool.model_names
    policies: dict[str, dict[str, Any]] = {}
    episodes: dict[str, list[dict[str, Any]]] = {}

    def short(choose: Callable[[Any], str], name: str) -> ScriptedPolicy:
        return ScriptedPolicy(tok, choose, name=name, query="short", adopt=True)

    for m in names:
        policies[f"always-{m}"], episodes[m] = ev.run(f"always-{m}", short(lambda _t, m=m: m, f"always-{m}"))
    policies["random"], _ = ev.run("random", ScriptedPolicy.random(tok, names, seed=recipe.data.seed, query="short", adopt=True))
    outcomes = {m: [((e.get("quality") or 0) > 0, float(e.get("cost") or 0.0)) for e in episodes[m]] for m in names}
    # oracle: per task, the cheapest model that solves it (else the cheapest model)
    by_cost = sorted(names, key=lambda m: sum(c for _, c in outcomes[m]))
    oracle_pick = {}
    for i, t in enumerate(held):
        ok = [m for m in by_cost if outcomes[m][i][0]]
        oracle_pick[t.task_id] = ok[0] if ok else by_cost[0]
    policies["oracle"], _ = ev.run("oracle", short(lambda t: oracle_pick[t.task_id], "oracle"))
    # learned single-shot baseline, fitted on the train tasks' cheap-model outcomes
    train_ev = Evaluator(recipe, pool, tok, train_tasks)
    _, train_cheap = train_ev.run("knn-fit", short(lambda _t: cheap, "fit"))
    knn = TfidfKNN(k=10).fit([t.question for t in train_tasks], [1.0 if (e.get("quality") or 0) > 0 else 0.0 for e in train_cheap])
    p_cheap = dict(zip([t.task_id for t in held], knn.predict_proba([t.question for t in held])))
    knn_curve = []
    for th in knn_thresholds:
        s, _ = ev.run(f"knn@{th}", short(lambda t, th=th: cheap if p_cheap[t.task_id] >= th else strong, f"knn@{th}"))
        knn_curve.append(point(s))
        if th == 0.5:
            policies["knn-tfidf"] = s

    router_names = []
    if model is not None:
        label = "router" if target != "initial" else "initial router"
        r = recipe.rollout
        policies[f"{label} (greedy)"], _ = ev.run("router greedy", HFPolicy(model, tok, max_new_tokens=r.max_new_tokens, temperature=0.0))
        router_names.append(f"{label} (greedy)")
        if sampled:
            temp = float(recipe.trainer.get("temperature", r.temperature))  # the temperature it was trained at
            policies[f"{label} (sampled)"], _ = ev.run("router sampled", HFPolicy(model, tok, max_new_tokens=r.max_new_tokens, temperature=temp, top_p=r.top_p))
            router_names.append(f"{label} (sampled)")

    q_cheap, q_strong = policies[f"always-{cheap}"]["quality"], policies[f"always-{strong}"]["quality"]
    curves = {
        "random mixture": random_mixture(point(policies[f"always-{cheap}"]), point(policies[f"always-{strong}"])),
        "oracle frontier": oracle_frontier({m: outcomes[m] for m in names}),
        "knn-tfidf sweep": sorted(knn_curve),
    }
    c_max = policies[f"always-{strong}"]["mean_cost"]
    target_q = q_cheap + CPT_PGR * (q_strong - q_cheap)
    for name, s in policies.items():
        s["pgr"] = pgr(s["quality"], q_cheap, q_strong)
        s["above_random_mixture"] = above(point(s), curves["random mixture"])
        s["cost_fraction_of_strongest"] = s["mean_cost"] / c_max if c_max > 0 else None

    sweep = []
    if budgets and model is not None:
        for b in budgets:
            s, _ = ev.run(f"budget {b}", HFPolicy(model, tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=0.0), budget=b)
            sweep.append({"budget": b, **{k: s[k] for k in ("quality", "mean_cost", "reward", "budget_violation_rate", "routes_per_task")}})
        curves["router budget sweep"] = sorted(point(x) for x in sweep)

    def apgr(c: list[tuple[float, float]]) -> float | None:  # mean PGR over costs [0, cost of always-strongest]
        a = area_under(c, c_max)
        return pgr(a, q_cheap, q_strong)

    cpt = f"cpt_{int(CPT_PGR * 100)}"
    curve_scores = {name: {"area_under_frontier": area_under(c, c_max), "apgr": apgr(c), cpt: cost_to_reach(c, target_q)} for name, c in curves.items()}
    for name in list(policies):  # a single point reaches the target at its own cost, or never
        curve_scores[name] = {cpt: cost_to_reach([point(policies[name])], target_q)}

    ck_rows = []
    if checkpoints and ckpt is not None:
        from transformers import AutoModelForCausalLM

        rl = ckpt.parent / "rl"
        for d in sorted(rl.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])):
            if not (d / "config.json").exists():
                continue
            m = AutoModelForCausalLM.from_pretrained(d)
            s, _ = ev.run(d.name, HFPolicy(m, tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=0.0))
            ck_rows.append({"step": int(d.name.split("-")[-1]), **{k: s[k] for k in ("reward", "quality", "mean_cost")}})

    return {
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
    }


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    from .plots import plot_budget_sweep, plot_checkpoints, plot_frontier

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
