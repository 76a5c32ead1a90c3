"""The one evaluation path: `train` (held-out before / after), `eval` and `rollout` all run here.

A policy (the router, greedy or sampled; a scripted baseline) runs on fixed tasks through the
recipe's environment, and its episodes are summarised (quality, mean / total cost, routes per
task, call share, format-error, budget-violation and pool-error rates, pool latency measured
and modelled from the cards) and scored with the recipe's reward functions. What may differ
between callers is explicit in `EvalOptions` (how baselines phrase their sub-query, the batch
size); greedy vs sampled is a property of the router policy being run.

Rewards are scored statelessly: fresh reward functions per summary, and Router-R1's
percentile cost reward normalised against one fixed reference, the always-<model> baselines'
costs on the same tasks. So a policy's numbers never depend on what was evaluated before it.

Under `accelerate launch` every rank calls the same methods; tasks are sharded across ranks
(rank r runs tasks r, r+N, ...) in lock-step batches, episodes are gathered back in task
order, so each pool call is made once however many processes run, and all ranks return
the same numbers.

`evaluate()` is `rl-router eval`: a router (or the baselines alone) next to every baseline,
all on the same tasks and scored the same way: always-<model> for every pool model, random
(a per-task hash, so the draw does not depend on order or sharding), oracle (per task the
cheapest model that solves it: an upper bound no router can pass) and a learned single-shot
kNN router over TF-IDF (`knn_router.py`), fitted on the train tasks' cheap-model outcomes
(reused from a training run's boundaries when there). Outputs: `eval.json`, `frontier.png`,
`budget_sweep.png`, `checkpoints.png`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .frontier import above, area_under, cost_to_reach, oracle_frontier, pgr, point, random_mixture
from .knn_router import TfidfKNN
from .metrics import summarize
from .policies import HFPolicy, ScriptedPolicy
from .recipe import Recipe
from .rewards import build_rewards
from .rollout import RolloutEngine, episodes_to_batch, run_sharded
from .tasks import Task, stable_hash

CPT_PGR = 0.5  # RouteLLM's CPT(50%): the cost at which half the cheap->strong quality gap is recovered


@dataclass
class EvalOptions:
    """How an evaluation runs, where callers may differ.

    `baseline_query`: "short" (the scripted baselines route "Solve the task above." and adopt
    the reply, the trajectory shape the router is warm-started on; the pool still receives
    the task) or "question" (they route the question verbatim and re-type the final answer).
    """

    baseline_query: str = "short"
    batch_size: int = 32


def score_episodes(episodes: list[dict[str, Any]], tasks: list[Task], reward_specs: list[dict[str, Any]], *, cost_reference: list[float] | None = None, split: str = "eval") -> list[float]:
    """The recipe's weighted reward for finished episodes, exactly as TRL would compute it,
    with reward functions built fresh for this call (stateless: see CostReward)."""
    funcs, weights = build_rewards(reward_specs, cost_reference=cost_reference)
    batch = episodes_to_batch(episodes)
    rows = [t.to_row() for t in tasks]
    extra = {k: v for k, v in batch.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}  # as TRL forwards them
    kw = {**{k: [r[k] for r in rows] for k in rows[0]}, **extra, "split": [split] * len(episodes)}
    totals = [0.0] * len(episodes)
    for f, w in zip(funcs, weights):
        for i, v in enumerate(f(prompts=[t.question for t in tasks], completions=[""] * len(tasks), completion_ids=batch["completion_ids"], **kw)):
            totals[i] += w * v
    return totals


def hashed_choice(models: list[str], seed: int) -> Callable[[Task], str]:
    """The random baseline's draw: a hash of (seed, task id), so it does not depend on the
    order tasks are run in or on how they are sharded across processes."""
    return lambda t: models[int(stable_hash(str(seed), "random", t.task_id)[:8], 16) % len(models)]


def policy_names(pool: Any) -> list[str]:
    """The names `rl-router rollout --policy` accepts."""
    return ["router"] + [f"always-{m}" for m in pool.model_names] + ["random"]


def baseline_policy(name: str, tokenizer: Any, models: list[str], *, seed: int = 0, query: str = "short", choose: Callable[[Task], str] | None = None) -> ScriptedPolicy:
    """A scripted baseline by name: `always-<model>`, `random`, or any `choose(task) -> model`."""
    adopt = query == "short"
    if name == "random":
        choose = hashed_choice(models, seed)
    elif name.startswith("always-") and choose is None:
        m = name.removeprefix("always-")
        if m not in models:
            raise ValueError(f"{name}: {m!r} is not in the pool {models}")
        choose = lambda _t, m=m: m  # noqa: E731
    if choose is None:
        raise ValueError(f"unknown baseline {name!r}; use always-<model> or random")
    return ScriptedPolicy(tokenizer, choose, name=name, query=query, adopt=adopt)


def router_policy(model: Any, tokenizer: Any, recipe: Recipe, *, greedy: bool = True) -> HFPolicy:
    """The router: greedy, or sampled at the temperature it was trained at."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    r = recipe.rollout
    temp = 0.0 if greedy else float(recipe.trainer.get("temperature", r.temperature))
    return HFPolicy(model, tokenizer, max_new_tokens=r.max_new_tokens, temperature=temp, top_p=r.top_p, synced_gpus=is_deepspeed_zero3_enabled())


def tqdm_progress() -> Callable[[str, int], None] | None:
    """A progress callback drawing one tqdm bar per policy (None when RL_ROUTER_NO_PROGRESS=1)."""
    if os.environ.get("RL_ROUTER_NO_PROGRESS") == "1":
        return None
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def advance(name: str, k: int) -> None:
        if name not in bars:
            for b in bars.values():
                b.close()
            bars.clear()
            bars[name] = tqdm(desc=name, unit="task", leave=False)
        bars[name].update(k)

    return advance


def _latency(episodes: list[dict[str, Any]], pool: Any) -> dict[str, float]:
    n = max(1, len(episodes))
    measured = sum(sum(float(c.get("latency_s") or 0.0) for c in e.get("trace") or []) for e in episodes) / n
    modelled = sum(sum(pool.card(c["model"]).latency_ms / 1000.0 for c in e.get("trace") or [] if pool.has_model(c["model"]) and not c.get("error")) for e in episodes) / n
    return {"pool_latency_s": measured, "modelled_latency_s": modelled}


class Evaluator:
    """Runs policies on fixed tasks (one engine per budget) and scores them alike."""

    def __init__(self, recipe: Recipe, pool: Any, tokenizer: Any, tasks: list[Task], *, options: EvalOptions | None = None, progress: Callable[[str, int], None] | None = None):
        self.recipe, self.pool, self.tok, self.tasks = recipe, pool, tokenizer, tasks
        self.options = options or EvalOptions()
        self.progress = progress
        self.cost_reference: list[float] | None = None
        self._engines: dict[float | None, RolloutEngine] = {}

    def engine(self, budget: float | None = None) -> RolloutEngine:
        if budget not in self._engines:
            from .runner import make_engine

            self._engines[budget] = make_engine(self.recipe, self.pool, self.tok, budget=budget)
        return self._engines[budget]

    def set_cost_reference(self, costs: list[float]) -> None:
        """The fixed costs percentile cost rewards are normalised against (see CostReward)."""
        self.cost_reference = [float(c) for c in costs]

    def episodes(self, name: str, policy: Any, *, budget: float | None = None, tasks: list[Task] | None = None) -> list[dict[str, Any]]:
        """One episode per task, in task order; sharded across ranks when distributed."""
        tasks = self.tasks if tasks is None else tasks
        on_batch = (lambda k: self.progress(name, k)) if self.progress else None
        return run_sharded(self.engine(budget), tasks, policy, batch_size=self.options.batch_size, on_batch=on_batch)

    def summarize(self, eps: list[dict[str, Any]], tasks: list[Task] | None = None) -> dict[str, Any]:
        tasks = self.tasks if tasks is None else tasks
        s = summarize(eps)
        rewards = score_episodes(eps, tasks, self.recipe.rewards, cost_reference=self.cost_reference)
        s["reward"] = sum(rewards) / len(rewards)
        s.update(_latency(eps, self.pool))
        by_ds: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            by_ds.setdefault(t.dataset, []).append(i)
        if len(by_ds) > 1:
            s["per_dataset"] = {d: self.summarize([eps[i] for i in idx], [tasks[i] for i in idx]) for d, idx in by_ds.items()}
        return s

    def run(self, name: str, policy: Any, *, budget: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        eps = self.episodes(name, policy, budget=budget)
        return self.summarize(eps), eps

    def baseline(self, name: str, *, choose: Callable[[Task], str] | None = None) -> ScriptedPolicy:
        return baseline_policy(name, self.tok, self.pool.model_names, seed=self.recipe.data.seed, query=self.options.baseline_query, choose=choose)

    def baselines(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """always-<model> for every pool model and random. The always-<model> costs become
        the cost reference, so run this before scoring anything else."""
        eps = {f"always-{m}": self.episodes(f"always-{m}", self.baseline(f"always-{m}")) for m in self.pool.model_names}
        self.set_cost_reference([e["cost"] or 0.0 for es in eps.values() for e in es])
        eps["random"] = self.episodes("random", self.baseline("random"))
        return {k: self.summarize(v) for k, v in eps.items()}, eps


def resolve_checkpoint(target: str) -> Path | None:
    """A model folder, or a training output dir (its `final/`); None for baseline names."""
    p = Path(target)
    if (p / "config.json").exists():
        return p
    if (p / "final" / "config.json").exists():
        return p / "final"
    return None


def _cheap_outcomes_on_train(recipe: Recipe, ev_train: Evaluator, cheap: str, run_dir: Path | None) -> dict[str, bool]:
    """Did the cheapest model solve each train task? A training run's boundaries hold exactly
    that (the same compact always-cheap policy, env and budget); else run it."""
    from .boundary import load_boundaries

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
    knn_curve = []
    for th in knn_thresholds:
        s, _ = ev.run(f"knn@{th}", ev.baseline(f"knn@{th}", choose=lambda t, th=th: cheap if p_cheap[t.task_id] >= th else strong))
        knn_curve.append(point(s))
        if th == 0.5:
            policies["knn-tfidf"] = s

    router_names = []
    if model is not None:
        label = "router" if target != "initial" else "initial router"
        policies[f"{label} (greedy)"], _ = ev.run("router greedy", router_policy(model, tok, recipe, greedy=True))
        router_names.append(f"{label} (greedy)")
        if sampled:
            policies[f"{label} (sampled)"], _ = ev.run("router sampled", router_policy(model, tok, recipe, greedy=False))
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

    ck_rows = []
    if checkpoints and ckpt is not None:
        from transformers import AutoModelForCausalLM

        rl = ckpt.parent / "rl"
        for d in sorted(rl.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])):
            if not (d / "config.json").exists():
                continue
            m = AutoModelForCausalLM.from_pretrained(d)
            s, _ = ev.run(d.name, router_policy(m, tok, recipe, greedy=True))
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
