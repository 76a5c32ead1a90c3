"""Run named policies (the recipe's router, always-<model>, random) on a recipe's held-out tasks."""

from __future__ import annotations

from typing import Any, Callable

from envs import make_env
from .metrics import summarize
from .policies import HFPolicy, Policy, ScriptedPolicy
from .recipe import Recipe
from .rollout import RolloutEngine


def policy_names(pool: Any) -> list[str]:
    return ["router"] + [f"always-{m}" for m in pool.model_names] + ["random"]


def make_policy(name: str, recipe: Recipe, pool: Any, model: Any, tokenizer: Any, *, greedy: bool = False) -> Policy:
    if name == "router":
        r = recipe.rollout
        return HFPolicy(model, tokenizer, max_new_tokens=r.max_new_tokens, temperature=0.0 if greedy else r.temperature, top_p=r.top_p)
    if name == "random":
        return ScriptedPolicy.random(tokenizer, pool.model_names, seed=recipe.data.seed)
    if name.startswith("always-"):
        m = name.removeprefix("always-")
        if not pool.has_model(m):
            raise ValueError(f"--policy {name}: {m!r} is not in the pool {pool.model_names}")
        return ScriptedPolicy.always(tokenizer, m)
    raise ValueError(f"--policy {name!r}: use one of {policy_names(pool)}")


def make_engine(recipe: Recipe, pool: Any, tokenizer: Any, *, budget: float | None = None) -> RolloutEngine:
    """The recipe's environment over `pool` in a rollout engine (optionally at another budget)."""
    import dataclasses

    cfg = recipe.env_config()
    if budget is not None:
        cfg = dataclasses.replace(cfg, budget=budget)
    name = recipe.env.get("name", "router_r1")
    return RolloutEngine(lambda: make_env(name, pool, config=cfg, tokenizer=tokenizer), tokenizer, max_completion_tokens=recipe.rollout.max_completion_tokens)


def run_policy(
    recipe: Recipe,
    pool: Any,
    policy: Policy,
    tokenizer: Any,
    tasks: list[Any],
    *,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    episodes = make_engine(recipe, pool, tokenizer).run_batched(tasks, policy, batch_size=batch_size, on_batch=on_batch)
    return episodes, summarize(episodes)
