"""Task worlds for agentic routing: small environments an *agent* model acts in, step by step.

A world turns one `Task` (its `meta` holds the world's spec) into a `WorldState` that the
agentic routing env (`envs/agentic.py`) drives: at each step the router picks which pool
model acts, the env sends that model `agent_messages()`, and `apply(reply)` executes the
model's action for real (a calculator, a Python subprocess running unit tests) and says
whether the step was right. Success is checked by program, never by a judge model.

`step_context()` is what a simulated pool needs to play an agent: the correct action
(`gold`), a plausible wrong one (`wrong`) and the step's difficulty (`topic`); live pools
ignore it and answer the messages.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from rl_router.tasks import Task


@dataclass
class StepOutcome:
    text: str  # what the router sees about the step (the action and its result)
    correct: bool | None  # did the action do what the step asked (None: the world cannot tell)
    advanced: bool  # did the episode move on to the next step


class WorldState(ABC):
    """One episode's state inside a world."""

    done: bool = False
    success: bool = False

    @abstractmethod
    def describe(self) -> str:
        """Router-visible: where the episode stands and what the next step asks."""

    @abstractmethod
    def agent_messages(self, hint: str = "") -> list[dict[str, str]]:
        """Chat messages for the model that acts this step."""

    @abstractmethod
    def step_context(self) -> dict[str, Any]:
        """For simulated / recorded pools: {'gold', 'wrong', 'topic', 'step'}."""

    @abstractmethod
    def apply(self, reply: str) -> StepOutcome:
        """Execute the acting model's reply; advance the state."""

    @property
    def step_index(self) -> int:
        return getattr(self, "i", 0)

    @property
    def final_answer(self) -> str | None:
        return None

    def clone(self) -> "WorldState":
        """An independent copy (used to probe every tier at one prefix without committing)."""
        return copy.deepcopy(self)


class World(ABC):
    name: str

    @abstractmethod
    def start(self, task: Task) -> WorldState: ...

    @abstractmethod
    def make_tasks(self, n: int, seed: int = 0, **kwargs: Any) -> list[Task]: ...


def last_answer(reply: str) -> str:
    """The action in an agent reply: the text after the last 'The answer is', without a final
    full stop; else the last non-empty line."""
    low = reply.lower()
    k = low.rfind("the answer is")
    if k >= 0:
        s = reply[k + len("the answer is"):].strip().strip(":").strip()
        return s[:-1].strip() if s.endswith(".") else s
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _registry() -> dict[str, World]:
    from rl_router.envs.worlds.arithmetic import ArithmeticWorld
    from rl_router.envs.worlds.code import CodeWorld

    return {"arithmetic": ArithmeticWorld(), "code": CodeWorld()}


WORLDS: dict[str, World] = {}


def get_world(name: str) -> World:
    if not WORLDS:
        WORLDS.update(_registry())
    if name not in WORLDS:
        raise KeyError(f"unknown world {name!r}; available: {sorted(WORLDS)}")
    return WORLDS[name]


__all__ = ["StepOutcome", "World", "WorldState", "WORLDS", "get_world", "last_answer"]
