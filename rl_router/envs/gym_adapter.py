"""A thin `gymnasium.Env` over any rl-router text env, for gymnasium tooling.

Observations and actions are strings. `reset(seed=..., options={"task": Task})` picks the
given task, else one drawn from the task list with gymnasium's seeded `np_random`, so
`check_env`'s determinism checks hold with recorded and simulated pools.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium import spaces

from rl_router.envs.base import TextEnv
from rl_router.tasks import Task


class AnyText(spaces.Text):
    """A Text space that accepts any unicode string up to `max_length` (pool replies are real text)."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


class GymRoutingEnv(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, env: TextEnv, tasks: list[Task], *, max_length: int = 100_000, render_mode: str | None = None):
        if not tasks:
            raise ValueError("GymRoutingEnv needs at least one task")
        self.env, self.tasks = env, tasks
        self.observation_space = AnyText(max_length=max_length, min_length=0)
        self.action_space = AnyText(max_length=max_length, min_length=0)
        self.render_mode = render_mode
        self._transcript: list[str] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task = (options or {}).get("task") or self.tasks[int(self.np_random.integers(len(self.tasks)))]
        obs, info = self.env.reset(task, seed=seed)
        self._transcript = [obs]
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._transcript += [action, obs]
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        return "".join(self._transcript) if self.render_mode == "ansi" else None
