"""The per-task budget is hard on live pools too, where the charge is the provider's `usage`.

The pool behind our OpenAI-compatible server here bills like a real provider: prompt tokens
counted by a real tokenizer over the chat template, completion tokens of the reply. Text
that tokenizes densely (digits, code, non-English) makes that charge far exceed a chars/4
estimate; the env must still never spend past the budget, whatever the router writes.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_router.envs import AgenticEnvConfig, MultiRoundRoutingEnv, make_env
from rl_router.envs.worlds import get_world
from rl_router.aio import run_sync
from rl_router.pools import Completion, Endpoint, ModelCard, OpenAIPool, Pool, PoolServer, RetryPolicy
from rl_router.prompts import encode_chat
from rl_router.tasks import Task


class TokenizerBilledPool(Pool):
    """Answers `reply` (cut to max_tokens tokens) and bills real token counts: the prompt
    through the tokenizer's chat template, the reply's own tokens."""

    def __init__(self, tok, reply: str, names=("cheap", "strong")):
        self.tok, self.reply = tok, reply
        self.cards = [ModelCard(names[0], 1.0, 2.0), ModelCard(names[1], 10.0, 30.0)]

    async def complete(self, model, messages, *, context=None, **sampling):
        ids = self.tok.encode(self.reply, add_special_tokens=False)[: int(sampling.get("max_tokens") or 64)]
        p, c = len(encode_chat(self.tok, messages)), len(ids)
        return Completion(self.tok.decode(ids), p, c, self.card(model).cost(p, c), model=model)


DENSE = st.sampled_from([
    "3141592653 5897932384 6264338327",
    "def f(x):\n    return [i**2 for i in range(x) if i % 3]",
    "请计算这个数学问题的答案并解释每一步",
    "Пожалуйста, решите задачу шаг за шагом",
    "∑∫∂√∞≈≠≤≥ 🙂🚀",
])
QUERY = st.one_of(DENSE, st.text(min_size=1, max_size=60).filter(lambda s: s.strip() and "<" not in s and ">" not in s))


def _action(model, query):
    return f'<think>t</think><route model="{model}">{query}</route>'


@pytest.fixture(scope="module")
def live(tokenizer):
    servers = {}

    def get(reply):
        if reply not in servers:
            srv = PoolServer(TokenizerBilledPool(tokenizer, reply)).start()
            servers[reply] = (srv, OpenAIPool([Endpoint(c, srv.url, c.name) for c in srv.pool.models], retry=RetryPolicy(max_retries=0)))
        return servers[reply][1]

    yield get
    for srv, op in servers.values():
        run_sync(op.aclose())
        srv.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=DENSE, reply=DENSE, queries=st.lists(st.tuples(st.sampled_from(["cheap", "strong"]), QUERY), min_size=1, max_size=4), budget=st.floats(2e-5, 4e-3), max_tokens=st.integers(4, 64))
def test_router_r1_budget_holds_against_provider_usage(live, tokenizer, question, reply, queries, budget, max_tokens):
    pool = live(reply)
    env = MultiRoundRoutingEnv(pool, tokenizer=tokenizer, budget=budget, max_turns=len(queries) + 1, pool_max_tokens=max_tokens)
    env.reset(Task(question=question, gold="1"))
    for model, q in queries:
        *_, info = env.step(_action(model, q))
        assert info["cost"] <= budget + 1e-12, (info["cost"], budget, info["trace"])
        assert info["cost"] == pytest.approx(sum(t["cost"] for t in info["trace"] if not t["error"]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reply=DENSE, tiers=st.lists(st.sampled_from(["cheap", "strong"]), min_size=1, max_size=6), budget=st.floats(1e-4, 6e-3), mode=st.sampled_from(["refuse", "end"]))
def test_agentic_budget_holds_against_provider_usage(live, tokenizer, reply, tiers, budget, mode):
    pool = live(reply)
    task = get_world("arithmetic").make_tasks(2, seed=4)[0]
    env = make_env("agentic", pool, config=AgenticEnvConfig(budget=budget, max_turns=8, on_over_budget=mode, pool_max_tokens=32), tokenizer=tokenizer)
    env.reset(task)
    for m in tiers:
        *_, term, trunc, info = env.step(_action(m, "go"))
        assert info["cost"] <= budget + 1e-12, (info["cost"], budget)
        if term or trunc:
            break


def test_a_provider_that_bills_past_the_reserved_bound_is_charged_and_ends_the_episode(tokenizer):
    """The guarantee covers providers that bill within the reserved bound (prompt <= UTF-8
    bytes + chat overhead, completion <= max_tokens). One that bills more (hidden reasoning
    tokens, a large server-side system prompt) is charged what it billed, the episode ends
    at once, and the over-charge is visible in info and in the eval metrics."""
    from rl_router.metrics import summarize

    class Overbilling(TokenizerBilledPool):
        async def complete(self, model, messages, *, context=None, **sampling):
            c = await super().complete(model, messages, context=context, **sampling)
            c.completion_tokens += 10_000  # e.g. reasoning tokens the reply does not show
            c.cost = self.card(model).cost(c.prompt_tokens, c.completion_tokens)
            return c

    env = MultiRoundRoutingEnv(Overbilling(tokenizer, "ok"), budget=0.01, max_turns=4, pool_max_tokens=16)
    env.reset(Task(question="What is 2+2?", gold="4"))
    obs, _, term, trunc, info = env.step(_action("strong", "go"))
    assert info["cost"] > 0.01 and info["overcharged"] == 1 and trunc and info["done_reason"] == "provider_overcharge"
    assert summarize([{**info, "format_error": None}])["budget_exceeded_rate"] == 1.0
