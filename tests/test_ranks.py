"""Evaluation under two processes (gloo on CPU) against a live pool: the same numbers as one
process, and every pool call made once (counted at our OpenAI-compatible server), not once per
rank. The training pipeline's held-out evaluations and boundary runs go through the same
sharded path (`rollout.run_sharded`)."""

from __future__ import annotations

import json
import os

import torch.multiprocessing as mp

from rl_router.pools import PoolServer, RecordedPool
from conftest import free_port


def _recipe(url: str, task_file: str):
    from rl_router.recipe import load_recipe

    models = {m: {"base_url": url, "price_in": p_in, "price_out": p_out} for m, p_in, p_out in (("mixtral-8x7b", 0.6, 0.6), ("gpt-4-1106", 10.0, 30.0))}
    return load_recipe(None, [f"pool={json.dumps({'type': 'openai', 'models': models})}", f"data.source={task_file}", "data.max_heldout=12", "data.max_train=24", "env.budget=0.05"])


def _comparable(policies: dict) -> dict:
    """Everything but measured wall-clock latency."""
    return {k: {f: v for f, v in s.items() if f != "pool_latency_s"} for k, s in policies.items()}


def _rank(rank: int, port: int, url: str, task_file: str, out: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from rl_router.evaluation.report import evaluate

    res = evaluate(_recipe(url, task_file), "always-mixtral-8x7b", sampled=False, knn_lambdas=(0.5,))
    out[rank] = json.dumps(_comparable(res["policies"]), sort_keys=True)


def test_two_processes_evaluate_like_one_and_call_the_pool_once(tmp_path):
    from rl_router.evaluation.report import evaluate

    recorded = RecordedPool.packaged(["gsm8k"])
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text("".join(json.dumps(t.to_row()) + "\n" for t in recorded.tasks()[:200]))
    with PoolServer(recorded) as srv:
        one = evaluate(_recipe(srv.url, str(task_file)), "always-mixtral-8x7b", sampled=False, knn_lambdas=(0.5,))
        calls_one = srv.stats.requests
        assert calls_one > 12 * 4 and one["policies"]["always-gpt-4-1106"]["pool_error_rate"] == 0.0
        srv.stats.requests = 0
        port = free_port()
        out = mp.Manager().dict()
        mp.spawn(_rank, args=(port, srv.url, str(task_file), out), nprocs=2, join=True)
        calls_two = srv.stats.requests
    assert calls_two == calls_one  # each call once, however many ranks
    assert out[0] == out[1] == json.dumps(_comparable(one["policies"]), sort_keys=True)  # every rank reports the same, = 1 process


def _zero3_rank(rank: int, port: int, out: dict) -> None:
    """Rank 0 has episodes, rank 1 none: rank 1 must keep making (dummy) synced generate calls
    while rank 0 generates, as ZeRO-3 needs every rank in every forward pass."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    from rl_router.envs import MultiRoundRoutingEnv
    from rl_router.distributed import process_state
    from rl_router.rollout.policies import HFPolicy
    from rl_router.rollout.engine import RolloutEngine, lockstep
    from rl_router.tiny import build_tiny_router

    state = process_state()
    torch.manual_seed(0)
    model, tok = build_tiny_router(seed=0)
    pool = RecordedPool.packaged(["gsm8k"])
    engine = RolloutEngine(lambda: MultiRoundRoutingEnv(pool, tokenizer=tok, max_turns=3), tok)
    policy = HFPolicy(model, tok, max_new_tokens=16, temperature=1.0, synced_gpus=True)
    calls = []
    inner = policy.act
    policy.act = lambda states: calls.append(len(states)) or inner(states)
    eps = engine.run(pool.tasks()[:2] if rank == 0 else [], policy, keep_going=lockstep(state))
    out[rank] = (len(eps), calls, policy.dummy_calls)


def test_a_rank_without_episodes_keeps_generating_in_step_under_zero3():
    port = free_port()
    out = mp.Manager().dict()
    mp.spawn(_zero3_rank, args=(port, out), nprocs=2, join=True)
    (n0, calls0, dummy0), (n1, calls1, dummy1) = out[0], out[1]
    assert n0 == 2 and n1 == 0
    assert len(calls0) == len(calls1) >= 1  # the same number of generate rounds on both ranks
    assert all(c > 0 for c in calls0) and all(c == 0 for c in calls1) and dummy1 == len(calls1) and dummy0 == 0


def _leaving_rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import atexit

    import torch.distributed as dist

    from rl_router.distributed import process_state

    state = process_state()
    joined = dist.is_initialized() and state.num_processes == 2
    atexit._run_exitfuncs()  # what a normal exit runs
    out[rank] = (joined, dist.is_initialized())


def test_a_rank_leaves_its_process_group_when_it_exits():
    """Each rank destroys its gloo process group at exit (distributed._leave_group_at_exit), so
    a finished command does not abort in gloo's teardown."""
    port = free_port()
    out = mp.Manager().dict()
    mp.spawn(_leaving_rank, args=(port, out), nprocs=2, join=True)
    assert out[0] == out[1] == (True, False)
