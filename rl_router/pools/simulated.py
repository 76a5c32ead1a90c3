"""SimulatedPool: deterministic synthetic models with per-topic skill, price and latency.

For fast tests and benchmarks: whether model M answers task T correctly is a pure function
of (seed, M, T) and M's skill on T's topic, so runs are reproducible across processes, and
latency is a real `asyncio.sleep`, so concurrency can be measured. Agent worlds pass
`context["wrong"]`, a plausible wrong action (an off-by-one operand, a classic bug), which a
model that gets the step wrong answers instead of noise, so its mistake is executed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from rl_router.tasks import stable_hash
from rl_router.pools.base import TASK_NOT_SHOWN, Completion, Message, ModelCard, Pool, approx_tokens, last_user_text, messages_tokens, shows_task


@dataclass
class SimModel:
    name: str
    price_in: float
    price_out: float
    latency_ms: float = 0.0
    skills: dict[str, float] = field(default_factory=dict)  # topic -> P(correct)
    default_skill: float = 0.5
    answer_tokens: int = 40
    strengths: str = ""

    def skill(self, topic: str) -> float:
        return self.skills.get(topic, self.default_skill)


def wrong_like(gold: str, *salt: str) -> str:
    """A wrong answer shaped like `gold`: every digit replaced by a digit, every letter by a
    letter of the same case, everything else kept, drawn from a hash of `salt`, and never
    equal to gold. Why: a wrong reply must not be recognisable by its form (a "w" prefix,
    another length or alphabet), or a router could read the verdict off the text."""
    out = []
    for i, ch in enumerate(gold):
        u = int(stable_hash(*salt, gold, str(i))[:12], 16)  # wide enough that u % 10 is unbiased
        if ch.isdigit():
            out.append("0123456789"[u % 10])
        elif ch.isalpha() and ch.isascii():
            abc = "abcdefghijklmnopqrstuvwxyz"
            out.append((abc[u % 26]).upper() if ch.isupper() else abc[u % 26])
        else:
            out.append(ch)
    w = "".join(out)
    if w == gold:  # change the first digit/letter to its successor
        for i, ch in enumerate(gold):
            if ch.isdigit():
                return gold[:i] + str((int(ch) + 1) % 10) + gold[i + 1 :]
            if ch.isalpha() and ch.isascii():
                nxt = chr((ord(ch.lower()) - 97 + 1) % 26 + 97)
                return gold[:i] + (nxt.upper() if ch.isupper() else nxt) + gold[i + 1 :]
        return gold + "?"
    return w


class SimulatedPool(Pool):
    def __init__(self, models: list[SimModel], *, seed: int = 0, latency_scale: float = 1.0):
        if not models:
            raise ValueError("pool.models: a simulated pool needs at least one model")
        self.sim = {m.name: m for m in models}
        self.seed = seed
        self.latency_scale = latency_scale
        self.cards = [
            ModelCard(
                name=m.name,
                price_in=m.price_in,
                price_out=m.price_out,
                latency_ms=m.latency_ms,
                context=8192,
                strengths=m.strengths or ", ".join(f"{k}: {v:.0%}" for k, v in m.skills.items()),
                example_scores={k: round(v, 3) for k, v in m.skills.items()},
            )
            for m in models
        ]
        self.calls = 0
        self.inflight = 0  # calls now waiting on their latency
        self.max_inflight = 0  # the most that ever waited at once: how concurrent the callers were

    def is_correct(self, model: str, task_id: str, topic: str) -> bool:
        u = int(stable_hash(str(self.seed), model, task_id)[:8], 16) / 0xFFFFFFFF
        return u < self.sim[model].skill(topic)

    def _answer(self, model: str, messages: list[Message], context: dict[str, Any] | None) -> str:
        ctx = context or {}
        tid = ctx.get("task_id") or stable_hash(last_user_text(messages))[:16]
        gold = ctx.get("gold")
        if isinstance(gold, list):
            gold = gold[0] if gold else None
        if gold is not None and self.is_correct(model, tid, ctx.get("topic", "general")):
            ans = str(gold)
        elif ctx.get("wrong") is not None:  # agent worlds give a plausible wrong action
            ans = str(ctx["wrong"])
        else:  # wrong: an answer of the gold's own form (same length and character classes)
            ans = wrong_like(str(gold) if gold is not None else "000000", str(self.seed), model, tid)
        filler = " ".join(["step"] * max(0, self.sim[model].answer_tokens - 6))
        return f"{filler} The answer is {ans}.".strip()

    def _usage(self, model: str, messages: list[Message], context: dict[str, Any] | None) -> tuple[str, int, int, float]:
        text = self._answer(model, messages, context)
        p, c = messages_tokens(messages), approx_tokens(text)
        return text, p, c, self.card(model).cost(p, c)

    def estimate_cost(self, model: str, messages: list[Message], *, max_tokens: int, context: dict[str, Any] | None = None) -> float:
        if not self.has_model(model):
            return 0.0
        return self._usage(model, messages, context)[3]

    async def complete(self, model: str, messages: list[Message], *, context: dict[str, Any] | None = None, **sampling: Any) -> Completion:
        t0 = time.perf_counter()
        self.calls += 1
        if model not in self.sim:
            return Completion("", error=f"unknown model {model!r}", model=model)
        question = (context or {}).get("question")
        if question and not shows_task(messages, question):
            return Completion("", error=TASK_NOT_SHOWN, model=model)
        text, p, c, cost = self._usage(model, messages, context)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.latency_scale > 0 and self.sim[model].latency_ms > 0:
                await asyncio.sleep(self.sim[model].latency_ms / 1000.0 * self.latency_scale)
        finally:
            self.inflight -= 1
        return Completion(text, p, c, cost, time.perf_counter() - t0, model=model)
