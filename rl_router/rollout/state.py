"""The rollout engine's state: one episode in progress, and one policy turn.

`EpisodeState` is what a policy reads (context token ids, the task, the last observation)
and what the engine fills in (completion ids, env mask, sampler log-probs, turns); `Turn`
is what a policy returns for one episode; `Policy` is anything that maps active episodes to
turns (an LM, vLLM, a script).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from rl_router.tasks import Task


@dataclass
class Turn:
    ids: list[int]
    logprobs: list[float]
    text: str
    eos: bool = False  # the policy ended its output (EOS) in this turn


@dataclass
class EpisodeState:
    task: Task
    env: Any
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    policy_turns: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    last_obs: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    terminated: bool = False
    truncated: bool = False
    done_reason: str | None = None

    @property
    def context_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


class Policy(Protocol):
    def act(self, states: list[EpisodeState]) -> list[Turn]: ...
