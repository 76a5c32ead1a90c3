"""The pool interface: what every multi-LLM pool looks like to environments.

A pool is a set of callable models, each described by a `ModelCard` (what the router is
shown: price, latency, context, strengths, example scores) and answered through one
coroutine, `complete`. Pools never raise on a failed call: they return a `Completion`
with `error` set, because a flaky endpoint must become an observation the router sees,
not a crashed episode.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class ModelCard:
    """Descriptor of one pool model. Prices are USD per 1M tokens."""

    name: str
    price_in: float
    price_out: float
    latency_ms: float = 0.0
    context: int = 8192
    strengths: str = ""
    example_scores: dict[str, float] = field(default_factory=dict)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


@dataclass
class Completion:
    """One pool call's result. `cost` is USD and is 0 for failed calls (nothing billed)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    model: str = ""
    retries: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def approx_tokens(text: str) -> int:
    """The fixed chars/4 token rule used for pricing wherever a pool has no real usage.

    Why a fixed rule: recorded data carries no token counts, and pricing must not depend on
    which router tokenizer is being trained, or costs would change between recipes.
    """
    return max(1, math.ceil(len(text) / 4)) if text else 0


def messages_tokens(messages: list[Message]) -> int:
    """chars/4 over all message contents plus 4 tokens of chat overhead per message."""
    return sum(approx_tokens(m.get("content", "")) + 4 for m in messages)


#: chat-template overhead a provider may add: per message (role headers, separators) and per
#: request (generation prompt, a default system prompt some templates inject)
CHAT_TOKENS_PER_MESSAGE = 8
CHAT_TOKENS_PER_REQUEST = 64


def prompt_token_bound(messages: list[Message]) -> int:
    """An upper bound of the prompt tokens any provider can bill for `messages`.

    Why UTF-8 bytes: byte-level BPE (GPT, Llama 3, Qwen, SmolLM, ...) never yields more tokens
    than bytes, and SentencePiece with byte fallback at most one per byte plus a prefix; chars/4
    is only a typical rate, which digits, code and non-English text exceed several times."""
    return sum(len(str(m.get("content", "")).encode("utf-8")) + CHAT_TOKENS_PER_MESSAGE for m in messages) + CHAT_TOKENS_PER_REQUEST


def request_text(messages: list[Message]) -> str:
    """All message contents of a request, whitespace-folded and lower-cased."""
    return " ".join(" ".join(str(m.get("content", "")).split()).lower() for m in messages)


def shows_task(messages: list[Message], question: str) -> bool:
    """Does the request contain the task's question? A model cannot solve a task it was not
    shown, so a replaying pool refuses a request that does not (the rule every pool type
    shares; see prompts.pool_messages)."""
    return " ".join(question.split()).lower() in request_text(messages)


TASK_NOT_SHOWN = "the request does not contain the task (a model only answers what it is sent; put the task's question in the messages)"


def last_user_text(messages: list[Message]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content", "")
    return messages[-1].get("content", "") if messages else ""


class Pool(ABC):
    """Abstract multi-LLM pool.

    `context` carries what the environment knows about the current task (task_id, gold,
    topic). Live pools ignore it; recorded and simulated pools use it to resolve a router's
    free-form sub-query to the task whose answers they hold.
    """

    cards: list[ModelCard]

    @property
    def models(self) -> list[ModelCard]:
        return list(self.cards)

    @property
    def model_names(self) -> list[str]:
        return [c.name for c in self.cards]

    def card(self, name: str) -> ModelCard:
        for c in self.cards:
            if c.name == name:
                return c
        raise KeyError(f"unknown model {name!r}; the pool has {self.model_names}")

    def has_model(self, name: str) -> bool:
        return any(c.name == name for c in self.cards)

    @abstractmethod
    async def complete(
        self, model: str, messages: list[Message], *, context: dict[str, Any] | None = None, **sampling: Any
    ) -> Completion: ...

    def estimate_cost(
        self, model: str, messages: list[Message], *, max_tokens: int, context: dict[str, Any] | None = None
    ) -> float:
        """Upper bound of a call's cost, used to refuse calls that would break a hard budget.

        Default (live pools): `prompt_token_bound` of input plus `max_tokens` of output, which
        the request caps. Pools that know the answer in advance (recorded, simulated) override
        it with the exact cost. Envs reconcile with what the provider bills: a charge above
        this bound is a provider over-charge and ends the episode (see TextEnv._charge).
        """
        return self.card(model).cost(prompt_token_bound(messages), max_tokens)

    def typical_costs(self) -> dict[str, float]:
        """What a call to each model typically costs, for ordering models by price: here the
        list price (input + output per 1M tokens); pools that know their tasks (recorded) measure it."""
        return {c.name: c.price_in + c.price_out for c in self.cards}

    def cheapest(self) -> ModelCard:
        cost = self.typical_costs()
        return min(self.cards, key=lambda c: (cost[c.name], c.name))

    def strongest(self) -> ModelCard:
        """The model with the best mean example score (ties: the most expensive)."""

        def key(c: ModelCard) -> tuple[float, float]:
            s = list(c.example_scores.values())
            return (sum(s) / len(s) if s else 0.0, c.price_in + c.price_out)

        return max(self.cards, key=key)

    async def check(self) -> list[str]:
        """Problems that make the pool unusable, found cheaply before any training starts
        (an unreachable endpoint, a rejected key, a model the server does not serve). Default:
        none (in-process pools)."""
        return []

    async def aclose(self) -> None:
        """Release network clients or model memory; default: nothing to do."""
