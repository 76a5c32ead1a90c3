"""The recipe's environment over a pool, in a rollout engine."""

from __future__ import annotations

from typing import Any

from envs import make_env
from .recipe import Recipe
from .rollout import RolloutEngine


def make_engine(recipe: Recipe, pool: Any, tokenizer: Any, *, budget: float | None = None) -> RolloutEngine:
    """The recipe's environment over `pool` in a rollout engine (optionally at another budget)."""
    import dataclasses

    cfg = recipe.env_config()
    if budget is not None:
        cfg = dataclasses.replace(cfg, budget=budget)
    name = recipe.env.get("name", "router_r1")
    return RolloutEngine(lambda: make_env(name, pool, config=cfg, tokenizer=tokenizer), tokenizer, max_completion_tokens=recipe.rollout.max_completion_tokens)
