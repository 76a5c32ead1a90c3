"""What a pool model receives contains the task it is asked to solve, for every pool type.

The decisive check runs over real HTTP: our OpenAI-compatible server holds the recorded pool
and answers from the request text alone (forward_context off, so no task id travels beside
the messages). Every policy the toolkit scripts (baselines, boundary policies, the cascade
warm start) must get the same answers there as from the in-process pool.
"""

from __future__ import annotations

import pytest

from rl_router.envs import MultiRoundRoutingEnv
from rl_router.aio import run_sync
from rl_router.training.boundary import run_boundaries
from rl_router.pools import Endpoint, OpenAIPool, PoolServer
from rl_router.rollout.policies import ScriptedPolicy
from rl_router.rollout.engine import RolloutEngine

from conftest import make_sim_pool


def _engine(pool, tok):
    return RolloutEngine(lambda: MultiRoundRoutingEnv(pool, tokenizer=tok, max_turns=3, budget=0.05), tok)


@pytest.mark.parametrize("query", ["short", "question"])
def test_live_server_answering_from_text_alone_gets_every_task(recorded_pool, tokenizer, query):
    tasks = recorded_pool.tasks()[:24]
    with PoolServer(recorded_pool) as srv:
        live = OpenAIPool([Endpoint(c, srv.url, c.name) for c in recorded_pool.models], forward_context=False)
        for model in recorded_pool.model_names:
            pol = ScriptedPolicy.always(tokenizer, model, query=query, adopt=query == "short")
            got = _engine(live, tokenizer).run(tasks, pol)
            want = _engine(recorded_pool, tokenizer).run(tasks, pol)
            assert [e["pool_errors"] for e in got] == [0] * len(tasks), got[0]["observations"]
            assert [e["quality"] for e in got] == [e["quality"] for e in want]
            assert [e["cost"] for e in got] == pytest.approx([e["cost"] for e in want])
        # the boundary runs and the cascade warm start (both in the short, compact style)
        recs, eps = run_boundaries(_engine(live, tokenizer), live, tasks, tokenizer, style="compact", stepwise=True)
        ref, _ = run_boundaries(_engine(recorded_pool, tokenizer), recorded_pool, tasks, tokenizer, style="compact", stepwise=True)
        assert recs == ref
        assert all(not e["stepwise"]["pool_errors"] for e in eps.values())
        run_sync(live.aclose())


def test_recorded_pool_refuses_a_request_that_does_not_contain_its_task(recorded_pool):
    """A real model cannot solve a task it was not shown; neither may the replay, even when the
    task id travels beside the messages."""
    t = recorded_pool.tasks()[3]
    c = run_sync(recorded_pool.complete("gpt-4-1106", [{"role": "user", "content": "Solve the task above."}], context=t.context()))
    assert not c.ok and "does not contain the task" in c.error and c.cost == 0.0
    assert recorded_pool.estimate_cost("gpt-4-1106", [{"role": "user", "content": "Solve the task above."}], max_tokens=8, context=t.context()) == 0.0
    shown = run_sync(recorded_pool.complete("gpt-4-1106", [{"role": "user", "content": t.question + "\n\nSolve the task above."}]))
    assert shown.ok and shown.text == recorded_pool.recorded(t.task_id).answers["gpt-4-1106"].response


def test_simulated_pool_refuses_a_request_that_does_not_contain_its_task():
    from rl_router.tasks import Task

    pool = make_sim_pool()
    t = Task("Synthetic easy task #7", gold="123456", topic="easy")
    bad = run_sync(pool.complete("large", [{"role": "user", "content": "Do it."}], context=t.context()))
    assert not bad.ok and "does not contain the task" in bad.error
    good = run_sync(pool.complete("large", [{"role": "user", "content": f"{t.question}\n\nDo it."}], context=t.context()))
    assert good.ok


def test_every_route_sends_the_task_to_the_pool(recorded_pool, tokenizer):
    """The env builds what the pool model receives: the task, then the router's sub-query."""
    seen = []

    class Capture:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, k):
            return getattr(self.inner, k)

        async def complete(self, model, messages, **kw):
            seen.append(messages)
            return await self.inner.complete(model, messages, **kw)

    t = recorded_pool.tasks()[0]
    env = MultiRoundRoutingEnv(Capture(recorded_pool), max_turns=3)
    env.reset(t)
    env.step('<think>x</think><route model="mixtral-8x7b">What is asked?</route>')
    env.step(f'<think>x</think><route model="gpt-4-1106">{t.question}</route>')
    assert len(seen) == 2
    assert seen[0][-1]["content"] == f"{t.question}\n\nWhat is asked?"
    assert seen[1] == [{"role": "user", "content": t.question}]  # the task verbatim is sent once
