"""Concrete rl-router environments. `make_env(name, pool, **config)` builds one by name."""

from __future__ import annotations

from typing import Any

from .router_r1 import MultiRoundRoutingEnv, RoutingEnvConfig

ENVS = {"router_r1": MultiRoundRoutingEnv}


def make_env(name: str, pool: Any, **kwargs: Any) -> Any:
    if name not in ENVS:
        raise KeyError(f"env.name: unknown environment {name!r}; available: {sorted(ENVS)}")
    return ENVS[name](pool, **kwargs)


__all__ = ["ENVS", "make_env", "MultiRoundRoutingEnv", "RoutingEnvConfig"]
