"""Concrete rl-router environments. `make_env(name, pool, **config)` builds one by name."""

from __future__ import annotations

from typing import Any

from .agentic import AgenticEnvConfig, AgenticRoutingEnv
from .router_r1 import MultiRoundRoutingEnv, RoutingEnvConfig

ENVS = {"router_r1": MultiRoundRoutingEnv, "agentic": AgenticRoutingEnv}
#: each environment's config dataclass: the fields a recipe's `env:` section may set
ENV_CONFIGS = {"router_r1": RoutingEnvConfig, "agentic": AgenticEnvConfig}


def make_env(name: str, pool: Any, **kwargs: Any) -> Any:
    if name not in ENVS:
        raise KeyError(f"env.name: unknown environment {name!r}; available: {sorted(ENVS)}")
    return ENVS[name](pool, **kwargs)


__all__ = ["ENVS", "ENV_CONFIGS", "make_env", "AgenticEnvConfig", "AgenticRoutingEnv", "MultiRoundRoutingEnv", "RoutingEnvConfig"]
