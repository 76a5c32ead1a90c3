"""The rollout engine's state: one episode in progress, and one policy turn.

`EpisodeState` is what a policy reads (context token ids, the task, the last observation)
and what the engine fills in (completion ids, env mask, sampler log-probs, turns); `Turn`
is what a policy returns for one episode; `Policy` is anything that maps active episodes to
turns (an LM, vLLM, a script).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

from rl_router.tasks import Task

_UIDS = itertools.count()


@dataclass
class Turn:
    ids: list[int]
    logprobs: list[float]
    text: str
    eos: bool = False  # the policy ended its output (EOS) in this turn
    decisions: list[dict[str, Any]] = field(default_factory=list)  # route decisions made by name (rollout/names.py)
    forks: list[tuple["EpisodeState", "Turn"]] = field(default_factory=list)  # episodes split off at a decision (several biases)
    allowed: list[list[int] | None] | None = None  # per token: the set a name decision renormalised over (None: the whole vocabulary)


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
    decisions: list[dict[str, Any]] = field(default_factory=list)
    decision_tokens: list[tuple[int, list[int]]] = field(default_factory=list)  # (completion position, the set its name decision renormalised over)
    biases: tuple[float, ...] | None = None  # the cost-knob settings this trajectory stands for
    uid: int = field(default_factory=lambda: next(_UIDS))  # identifies the episode's KV-cache row
    route_target: str | None = None  # the name its first route decision takes instead of drawing one (all-names groups), then None

    @property
    def context_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    def fork(self) -> "EpisodeState":
        """A copy that continues independently from here (its own env state, tokens, info)."""
        import copy

        from rl_router.envs.base import fork_env

        return EpisodeState(self.task, fork_env(self.env), self.prompt_ids, list(self.completion_ids), list(self.env_mask), list(self.logprobs), list(self.policy_turns),
                            list(self.observations), self.last_obs, copy.deepcopy(self.info), self.done, self.terminated, self.truncated, self.done_reason,
                            [list(d) for d in self.decisions], [(p, list(a)) for p, a in self.decision_tokens], self.biases)


class Policy(Protocol):
    def act(self, states: list[EpisodeState]) -> list[Turn]: ...
