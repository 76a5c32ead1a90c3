"""The text environment protocol every rl-router environment follows.

Gym-shaped but text in, text out: `reset(task, *, seed=None) -> (obs, info)` and
`step(action_text) -> (obs, reward, terminated, truncated, info)`, as in gymnasium.
Environments also offer `astep`, the same step as a coroutine, so a rollout engine can
run the pool calls of many episodes concurrently; `step` runs `astep` on the shared
background loop. Invalid actions never raise: they return an error observation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from .aio import run_sync
from .tasks import Task


class StepResult(NamedTuple):
    obs: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class TextEnv(ABC):
    """Base class for routing environments (compose a pool; do not subclass one)."""

    #: chat messages that open the episode; set by reset, read by the rollout engine
    messages: list[dict[str, str]]

    @abstractmethod
    def reset(self, task: Task, *, seed: int | None = None) -> tuple[str, dict[str, Any]]: ...

    @abstractmethod
    async def astep(self, action: str) -> StepResult: ...

    def step(self, action: str) -> StepResult:
        return run_sync(self.astep(action))

    def close(self) -> None:
        """Nothing by default; pools are shared and closed by their owner."""
