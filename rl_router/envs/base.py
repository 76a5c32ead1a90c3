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

from rl_router.aio import run_sync
from rl_router.protocol import check_format
from rl_router.tasks import Task

#: the `info` keys an episode record carries for reward functions and metrics (the rollout
#: engine's episodes and the tool-call adapter's `get_reward` read the same ones)
EPISODE_FIELDS = ("task_id", "cost", "n_routes", "answer", "quality", "over_budget", "invalid_actions", "pool_errors", "calls", "done_reason")


def fork_env(env: Any) -> Any:
    """A deep copy of an environment mid-episode that shares what is not episode state: the
    pool, tokenizers, models and the event loop (found on the env and on any env it wraps)."""
    import copy

    memo: dict[int, Any] = {}
    node, seen = env, 0
    while node is not None and seen < 8:
        for v in vars(node).values():
            if v is None or isinstance(v, (str, int, float, bool, list, dict, tuple)):
                continue
            if hasattr(v, "complete") or hasattr(v, "encode") or hasattr(v, "parameters") or callable(v):
                memo[id(v)] = v
        node, seen = getattr(node, "inner", None), seen + 1
    return copy.deepcopy(env, memo)


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
    #: how a well-formed episode ends: "answer" (Router-R1: routes, then one <answer>) or
    #: "route" (agentic: every turn routes; the task world ends the episode)
    final_action: str = "answer"
    #: the router's turns so far, as stepped
    turns: list[str]

    def _start_info(self, task: Task, **extra: Any) -> dict[str, Any]:
        """The info every routing episode starts with (envs add their own keys in `extra`)."""
        self.turns = []
        return {
            "task_id": task.task_id, **extra, "turn": 0, "cost": 0.0, "budget": getattr(self.config, "budget", None), "n_routes": 0,
            "calls": {name: 0 for name in self.pool.model_names},
            "invalid_actions": 0, "format_error": None, "over_budget": 0, "overcharged": 0, "pool_errors": 0,
            "answer": None, "quality": 0.0, "done_reason": None, "trace": [],
        }

    def _invalid(self, reason: str) -> None:
        """Record an action the env refused as malformed (an unknown model, adopting a model
        never called, a broken tag): the episode breaks the protocol."""
        self.info["invalid_actions"] += 1
        if self.info["format_error"] is None:
            self.info["format_error"] = f"turn {len(self.turns)}: {reason}"

    def format_error(self) -> str | None:
        """The one definition of a format error, used by the rollout, every reward and the
        metrics: why this episode's router turns break the protocol, or None. A trajectory
        breaks it when its text breaks the tag grammar (`protocol.check_format`) or when the
        env refused one of its actions as invalid."""
        return check_format(self.turns, final=self.final_action) or self.info["format_error"]

    def _record_turn(self, action: str) -> None:
        self._check_can_step()
        self.turns.append(action)
        self.info["turn"] += 1

    def _charge(self, cost: float, bound: float) -> bool:
        """Add a call's billed cost; True when the episode must end because a provider billed
        past the bound reserved for the call and the budget is now exceeded.

        The budget guarantee: a call is made only when its bound fits what is left, so the
        episode cost stays within the budget whenever providers bill within the bound (exact
        for recorded and simulated pools; prompt <= UTF-8 bytes + chat overhead and
        completion <= max_tokens for live ones). A provider that bills more is charged what
        it billed (counted in `overcharged`); if that breaks the budget the episode ends at
        once (done_reason "provider_overcharge"), and eval reports it in budget_exceeded_rate."""
        self.info["cost"] += cost
        if cost > bound + 1e-12:
            self.info["overcharged"] += 1
        b = self.info.get("budget")
        return b is not None and self.info["cost"] > b + 1e-12

    def _end(self, reason: str) -> None:
        """Close the episode: its reason, and its format verdict in `info`."""
        self.info["done_reason"] = reason
        self.info["format_error"] = self.format_error()

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
