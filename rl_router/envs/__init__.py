"""Routing environments (gymnasium-style, text in / text out) and their registry.

`make_env(name, pool, **config)` builds one by name; a recipe's `env.name` picks it and its
`env:` section fills the environment's config dataclass. Built in: `router_r1` (multi-round QA
routing), `agentic` (step-level routing of an agent, BoPO's setting). Your own environment:
subclass `TextEnv` (or write any class with `reset` / `astep` / `format_error`), then
`register_env("mine", MyEnv, MyEnvConfig)`; see `envs/custom_env.py` at the repository root.
"""

from __future__ import annotations

from typing import Any

from rl_router.envs.agentic import AgenticEnvConfig, AgenticRoutingEnv
from rl_router.envs.base import StepResult, TextEnv
from rl_router.envs.router_r1 import MultiRoundRoutingEnv, RoutingEnvConfig

ENVS: dict[str, type] = {"router_r1": MultiRoundRoutingEnv, "agentic": AgenticRoutingEnv}
#: each environment's config dataclass: the fields a recipe's `env:` section may set
ENV_CONFIGS: dict[str, type] = {"router_r1": RoutingEnvConfig, "agentic": AgenticEnvConfig}


def register_env(name: str, env_cls: type, config_cls: type) -> None:
    """Make `env.name: <name>` build `env_cls(pool, config=config_cls(**env section), tokenizer=...)`."""
    if not name or not isinstance(name, str):
        raise ValueError("register_env: the name must be a non-empty string")
    ENVS[name] = env_cls
    ENV_CONFIGS[name] = config_cls


def make_env(name: str, pool: Any, **kwargs: Any) -> Any:
    if name not in ENVS:
        raise KeyError(f"env.name: unknown environment {name!r}; available: {sorted(ENVS)}")
    return ENVS[name](pool, **kwargs)


__all__ = [
    "ENVS", "ENV_CONFIGS", "make_env", "register_env", "StepResult", "TextEnv",
    "AgenticEnvConfig", "AgenticRoutingEnv", "MultiRoundRoutingEnv", "RoutingEnvConfig",
]
