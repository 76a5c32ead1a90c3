"""Benchmark: pool time of a lock-step rollout vs the ideal and vs a sequential loop.

64 episodes x 3 routes each against a SimulatedPool at 200 ms latency per call. The router
is scripted (routes the question 3 times, then answers) so only pool/env time is measured.
Ideal pool wall time is 3 x 200 ms (every turn's calls fully overlapped); the sequential
loop steps one episode at a time with the same envs. Prints ratios measured in this run;
the last line is `pool wall / ideal: X.XX` (goal <= 1.3).

Usage: python scripts/bench_pool.py [--episodes 64] [--routes 3] [--latency-ms 200] [--sequential-episodes 64]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

from rl_router.envs import MultiRoundRoutingEnv
from rl_router.rollout.policies import ScriptedPolicy
from rl_router.pools import SimModel, SimulatedPool
from rl_router.rollout.engine import RolloutEngine
from rl_router.tasks import Task
from rl_router.tiny import load_tiny_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--routes", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--sequential-episodes", type=int, default=64, help="episodes for the sequential baseline (0 skips it)")
    args = ap.parse_args()

    tok = load_tiny_tokenizer()
    pool = SimulatedPool([SimModel("small", 0.5, 1.0, args.latency_ms, {"easy": 0.8}), SimModel("large", 10, 30, args.latency_ms, {"easy": 0.95})])
    tasks = [Task(f"benchmark task {i}", gold="g", topic="easy") for i in range(args.episodes)]
    policy = ScriptedPolicy.always(tok, "small", routes=args.routes)
    engine = RolloutEngine(lambda: MultiRoundRoutingEnv(pool, max_turns=args.routes + 1), tok)

    engine.run(tasks[:2], policy)  # warm-up: loop thread, tokenizer caches
    engine.stats.env_s = engine.stats.generate_s = 0.0
    t0 = time.perf_counter()
    eps = engine.run(tasks, policy)
    wall = time.perf_counter() - t0
    assert all(e["n_routes"] == args.routes for e in eps), "every episode must route exactly --routes times"
    pool_wall = engine.stats.env_s
    ideal = args.routes * args.latency_ms / 1000.0

    seq = None
    if args.sequential_episodes:
        t1 = time.perf_counter()
        for t in tasks[: args.sequential_episodes]:
            env = MultiRoundRoutingEnv(pool, max_turns=args.routes + 1)
            env.reset(t)
            for _ in range(args.routes):
                env.step(f'<think>x</think><route model="small">{t.question}</route>')
            env.step("<think>x</think><answer>g</answer>")
        seq = (time.perf_counter() - t1) * args.episodes / args.sequential_episodes

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cpus, python {platform.python_version()}")
    print(f"episodes={args.episodes} routes={args.routes} latency={args.latency_ms:.0f}ms calls={args.episodes * args.routes}")
    print(f"rollout wall: {wall:.3f}s  (policy {engine.stats.generate_s:.3f}s, pool/env {pool_wall:.3f}s)")
    if seq is not None:
        print(f"sequential loop: {seq:.2f}s  -> lock-step speed-up x{seq / wall:.1f}")
    print(f"peak RSS: {rss_mb:.0f} MiB")
    print(f"pool wall / ideal: {pool_wall / ideal:.2f}")


if __name__ == "__main__":
    main()
