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
    #: the episode's running info (set by reset); `done_reason` is None while it runs
    info: dict[str, Any]
    task: Task | None = None

    @abstractmethod
    def reset(self, task: Task, *, seed: int | None = None) -> tuple[str, dict[str, Any]]: ...

    @abstractmethod
    async def astep(self, action: str) -> StepResult: ...

    def _check_can_step(self) -> None:
        """Stepping before reset, or after the episode ended, is a caller bug: raise."""
        if self.task is None:
            raise RuntimeError("call reset(task) before step()")
        if self.info["done_reason"] is not None:
            raise RuntimeError("episode is over; call reset(task) to start a new one")

    def _public_info(self) -> dict[str, Any]:
        """A copy of `info` whose containers (calls, trace, steps) a caller may keep or
        mutate without touching the running episode."""
        return {k: dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v for k, v in self.info.items()}

    def step(self, action: str) -> StepResult:
        return run_sync(self.astep(action))

    def close(self) -> None:
        """Nothing by default; pools are shared and closed by their owner."""
