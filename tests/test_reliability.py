"""Pool faults end to end: 500 episodes through a real HTTP server that injects every fault
kind at a 20% rate; and the per-endpoint circuit breaker against a dead endpoint."""

from __future__ import annotations

import time

from rl_router.envs import make_env
from rl_router.envs.router_r1 import RoutingEnvConfig
from rl_router.aio import run_sync
from rl_router.metrics import summarize
from rl_router.rollout.policies import ScriptedPolicy
from rl_router.pools import Endpoint, OpenAIPool, RecordedPool, RetryPolicy
from rl_router.pools.server import FaultConfig, PoolServer
from rl_router.rollout.engine import RolloutEngine
from rl_router.tiny import load_tiny_tokenizer
from conftest import free_port

KINDS = ("429", "timeout", "reset", "truncated", "nonjson", "slow")


def test_500_episodes_at_20_percent_faults_never_crash(tmp_path):
    recorded = RecordedPool.packaged(["gsm8k"])
    tasks = recorded.tasks()[:500]
    faults = FaultConfig(rate_429=0.04, rate_5xx=0.04, rate_timeout=0.02, rate_reset=0.03, rate_truncated=0.03, rate_nonjson=0.02, rate_slow=0.02,
                         timeout_delay_s=0.8, slow_s=0.8, retry_after_s=0.01, seed=7)
    tok = load_tiny_tokenizer()
    with PoolServer(recorded, faults=faults) as srv:
        pool = OpenAIPool([Endpoint(c, srv.url, c.name) for c in recorded.models], timeout_s=0.4, max_concurrency=32, forward_context=True,
                          retry=RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05), breaker_threshold=10_000, seed=0)
        cfg = RoutingEnvConfig(budget=0.05, max_turns=3)
        engine = RolloutEngine(lambda: make_env("router_r1", pool, config=cfg, tokenizer=tok), tok)
        policy = ScriptedPolicy.random(tok, pool.model_names, seed=0, query="short", adopt=True)
        t0 = time.perf_counter()
        eps = []
        for i in range(0, len(tasks), 100):
            eps += engine.run(tasks[i : i + 100], policy)
        wall = time.perf_counter() - t0
        run_sync(pool.aclose())
    assert len(eps) == 500  # zero crashed episodes
    for kind in KINDS:
        assert srv.stats.faults.get(kind, 0) > 0, kind
    assert any(k in srv.stats.faults for k in ("500", "502", "503"))
    injected = sum(srv.stats.faults.values())
    assert 0.12 < injected / srv.stats.requests < 0.28
    calls = [c for e in eps for c in e["trace"]]
    failed = [c for c in calls if c["error"]]
    retried_ok = [c for c in calls if not c["error"] and c["retries"] > 0]
    assert retried_ok and pool.stats.retries == sum(c["retries"] for c in calls)
    assert all(c["cost"] == 0.0 for c in failed)  # no cost counted for failed calls
    for e in eps:  # a failure the router saw as an error observation, and the env counted it
        if any(c["error"] for c in e["trace"]):
            assert e["pool_errors"] >= 1 and any("error" in o for o in e["observations"])
    s = summarize(eps)
    assert s["pool_error_rate"] == sum(1 for e in eps if e["pool_errors"]) / 500
    assert pool.stats.failures == len(failed)
    print(f"\n500 episodes: {srv.stats.requests} requests, {injected} faults {dict(srv.stats.faults)}, {pool.stats.retries} retries, "
          f"{len(retried_ok)} calls retried to success, {len(failed)} calls failed after retries, pool_error_rate {s['pool_error_rate']:.3f}, "
          f"quality {s['quality']:.3f}, wall {wall:.1f}s")


def _dead_port() -> int:
    return free_port()  # nothing listens there


def test_circuit_breaker_stops_hammering_a_dead_endpoint():
    recorded = RecordedPool.packaged(["gsm8k"])
    card = recorded.card("mixtral-8x7b")
    pool = OpenAIPool([Endpoint(card, f"http://127.0.0.1:{_dead_port()}/v1", card.name)], timeout_s=0.5,
                      retry=RetryPolicy(max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02), breaker_threshold=3, breaker_cooldown_s=0.3)
    msg = [{"role": "user", "content": "hi"}]
    for _ in range(3):
        c = run_sync(pool.complete(card.name, msg))
        assert not c.ok and "transport error" in c.error
    sent = pool.stats.requests
    assert sent == 6  # 3 calls x (1 try + 1 retry)
    for _ in range(20):
        c = run_sync(pool.complete(card.name, msg))
        assert not c.ok and c.error.startswith("circuit open") and c.cost == 0.0
    assert pool.stats.requests == sent and pool.stats.circuit_rejections == 20  # not one request more
    time.sleep(0.35)
    c = run_sync(pool.complete(card.name, msg))  # half-open: one trial goes out, fails, reopens
    assert "transport error" in c.error and pool.stats.requests == sent + 2
    assert run_sync(pool.complete(card.name, msg)).error.startswith("circuit open")
    run_sync(pool.aclose())
