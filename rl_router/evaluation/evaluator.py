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

Under torchrun / accelerate every rank calls the same methods; tasks are sharded across ranks
(rank r runs tasks r, r+N, ...) in lock-step batches, episodes are gathered back in task
order, so each pool call is made once however many processes run, and all ranks return
the same numbers. `report.evaluate` builds `rl-router eval` on top of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from rl_router.errors import check_pool_errors
from rl_router.metrics import summarize
from rl_router.pools.factory import max_error_rate
from rl_router.recipe import Recipe
from rl_router.rewards import build_rewards
from rl_router.rollout.engine import RolloutEngine, episodes_to_batch, make_engine, run_sharded, stop_strings
from rl_router.rollout.policies import HFPolicy, ScriptedPolicy
from rl_router.stats import mean_ci, resample_index
from rl_router.tasks import Task, stable_hash


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


def router_policy(model: Any, tokenizer: Any, recipe: Recipe, *, greedy: bool = True, route_bias: float = 0.0, pool: Any = None, biases: list[float] | None = None, temperature: float | None = None) -> HFPolicy:
    """The router: greedy, or sampled at `temperature` (default `rollout.temperature`: the
    temperature episodes are sampled at outside training; eval's sampled row passes the one it
    was trained at, `trainer.temperature`). With the pool it
    decides route choices by name (rollout/names.py), and `route_bias` turns the cost knob;
    `biases` runs several knob settings in one pass (episodes fork where they disagree)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    r = recipe.rollout
    temp = 0.0 if greedy else float(r.temperature if temperature is None else temperature)
    weights = names = None
    if pool is not None:
        from rl_router.rollout.names import cost_weights

        weights, names = cost_weights(pool), pool.model_names
    elif route_bias or biases:
        raise ValueError("router_policy(route_bias=...) needs the pool")
    return HFPolicy(model, tokenizer, max_new_tokens=r.max_new_tokens, temperature=temp, top_p=r.top_p, stop_strings=stop_strings(recipe), synced_gpus=is_deepspeed_zero3_enabled(),
                    route_bias=route_bias, route_weights=weights, biases=tuple(biases) if biases else None, names=names, autocast=recipe.model.autocast,
                    share_system_prompt=True)  # distinct tasks: their common system prompt read once per token for all rows (decoder.Session.share_prefix)


def tqdm_progress() -> Callable[..., None] | None:
    """A progress callback drawing one tqdm bar per run of a policy (None when
    RL_ROUTER_NO_PROGRESS=1). The protocol every progress callback follows: `(name, 0,
    total=N)` starts a bar of N tasks (a new one each run, so two evaluations under one name
    never add up), `(name, k)` advances it by k."""
    if os.environ.get("RL_ROUTER_NO_PROGRESS") == "1":
        return None
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def advance(name: str, k: int, total: int | None = None) -> None:
        if k == 0 or name not in bars:
            for b in bars.values():
                b.close()
            bars.clear()
            bars[name] = tqdm(desc=name, unit="task", total=total, leave=False)
        if k:
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
        self._engines: dict[tuple[float | None, int | None], RolloutEngine] = {}
        self.single: dict[str, list[dict[str, Any]]] = {}  # always-<model> episodes, by model (run_baselines)

    def engine(self, budget: float | None = None, max_turns: int | None = None) -> RolloutEngine:
        if (budget, max_turns) not in self._engines:
            self._engines[(budget, max_turns)] = make_engine(self.recipe, self.pool, self.tok, budget=budget, max_turns=max_turns)
        return self._engines[(budget, max_turns)]

    def set_cost_reference(self, costs: list[float]) -> None:
        """The fixed costs percentile cost rewards are normalised against (see CostReward)."""
        self.cost_reference = [float(c) for c in costs]

    def episodes(self, name: str, policy: Any, *, budget: float | None = None, tasks: list[Task] | None = None, max_turns: int | None = None) -> list[dict[str, Any]]:
        """One episode per task, in task order; sharded across ranks when distributed."""
        tasks = self.tasks if tasks is None else tasks
        on_batch = (lambda k: self.progress(name, k)) if self.progress else None
        if self.progress:
            self.progress(name, 0, total=len(tasks))
        eps = run_sharded(self.engine(budget, max_turns), tasks, policy, batch_size=self.options.batch_size, on_batch=on_batch)
        check_pool_errors(eps, max_error_rate(self.recipe.pool), name)
        return eps

    def episodes_at_biases(self, name: str, policy: Any, biases: list[float]) -> dict[float, list[dict[str, Any]]]:
        """One episode per task at every cost-knob bias, from one pass (episodes fork where the
        biases disagree: rollout/engine.run_biases)."""
        from rl_router.rollout.engine import run_biases

        on_batch = (lambda k: self.progress(name, k)) if self.progress else None
        if self.progress:
            self.progress(name, 0, total=len(self.tasks))
        out = run_biases(self.engine(), self.tasks, policy, list(biases), batch_size=self.options.batch_size, on_batch=on_batch)
        for b, eps in out.items():
            check_pool_errors(eps, max_error_rate(self.recipe.pool), f"{name} at bias {b:+g}")
        return out

    def summarize(self, eps: list[dict[str, Any]], tasks: list[Task] | None = None) -> dict[str, Any]:
        """Means over the tasks, their 95% bootstrap intervals (`ci95`), and the per-task values
        (`per_task`) that paired comparisons between policies resample."""
        tasks = self.tasks if tasks is None else tasks
        s = summarize(eps)
        # the reference is a fixed cost distribution (every single model's held-out costs), the
        # same for any subset of the tasks (the untrained router's first-N evaluation included)
        rewards = score_episodes(eps, tasks, self.recipe.rewards, cost_reference=self.cost_reference)
        s["reward"] = sum(rewards) / len(rewards)
        s.update(_latency(eps, self.pool))
        per_task = {"quality": [float(e.get("quality") or 0.0) for e in eps], "cost": [float(e.get("cost") or 0.0) for e in eps], "reward": rewards}
        idx = resample_index(len(eps))
        s["ci95"] = {"quality": list(mean_ci(per_task["quality"], idx)), "mean_cost": list(mean_ci(per_task["cost"], idx)), "reward": list(mean_ci(rewards, idx))}
        s["per_task"] = per_task
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

    def run_single_models(self) -> dict[str, list[dict[str, Any]]]:
        """always-<model> on every task for every pool model, and their costs as the fixed
        cost reference (the one place that does both: run it before scoring anything else)."""
        if not self.single:
            self.single = {m: self.episodes(f"always-{m}", self.baseline(f"always-{m}")) for m in self.pool.model_names}
            self.set_cost_reference([e["cost"] or 0.0 for es in self.single.values() for e in es])
        return self.single

    def assemble(self, choice: dict[str, str] | Callable[[Task], str]) -> list[dict[str, Any]]:
        """The episodes of a single-shot policy that sends each task to one model: on every
        task, the always-<that model> episode (the same env, tokenizer and budget; no pool call
        made twice). `choice`: task id -> model, or a function of the task."""
        single = self.run_single_models()
        pick = choice if callable(choice) else (lambda t: choice[t.task_id])
        return [single[pick(t)][i] for i, t in enumerate(self.tasks)]

    def baselines(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """always-<model> for every pool model, and random (a model per task by a hash of
        (seed, task id), assembled from those episodes)."""
        eps = {f"always-{m}": es for m, es in self.run_single_models().items()}
        eps["random"] = self.assemble(hashed_choice(self.pool.model_names, self.recipe.data.seed))
        return {k: self.summarize(v) for k, v in eps.items()}, eps
