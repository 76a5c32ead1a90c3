"""Multi-turn rollout overhead: RolloutEngine wall time / bare `generate` of the same token counts.

For T = 1, 3, 5 policy turns: run B episodes of the tiny router (greedy, fixed `max_new_tokens`
per turn, so every turn generates the same number of tokens) through the Router-R1 env over
a SimulatedPool with zero latency, then replay exactly the same generate calls (same batch,
same context lengths, same number of new tokens) with no environment at all. The ratio is
what our engine, env, parsing, tokenization of observations and pool plumbing add over
generation. Goal <= 1.10. Also prints peak RSS.

    python scripts/bench_rollout.py [--batch 16] [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import torch

    from rl_router.envs import make_env
    from rl_router.envs.router_r1 import RoutingEnvConfig
    from rl_router.rollout.policies import HFPolicy
    from rl_router.pools import SimModel, SimulatedPool
    from rl_router.task_sources import synthetic_tasks
    from rl_router.rollout.engine import RolloutEngine
    from rl_router.tiny import build_tiny_router

    torch.manual_seed(0)
    model, tok = build_tiny_router(seed=0)
    model.eval()
    pool = SimulatedPool([SimModel("cheap", 0.2, 0.2, skills={"easy": 0.9}), SimModel("strong", 5, 15, skills={"easy": 1.0})], latency_scale=0.0)
    tasks = synthetic_tasks(a.batch, ["easy"], 0)
    print(f"tiny router (hidden 64, 2 layers), batch {a.batch}, {a.new_tokens} new tokens per turn, CPU threads {torch.get_num_threads()}")
    print(f"{'turns':>5} {'rollout s':>10} {'bare generate s':>16} {'ratio':>7}")
    for turns in (1, 3, 5):
        cfg = RoutingEnvConfig(max_turns=turns, budget=1.0, max_obs_tokens=64)
        engine = RolloutEngine(lambda: make_env("router_r1", pool, config=cfg, tokenizer=tok), tok, max_completion_tokens=100_000)
        # no stop strings and a forced length: every turn generates exactly new_tokens tokens
        policy = HFPolicy(model, tok, max_new_tokens=a.new_tokens, temperature=0.0, stop_strings=())
        gen_kw = {"min_new_tokens": a.new_tokens, "max_new_tokens": a.new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id, "eos_token_id": None}
        orig = model.generate

        def forced(*args, **kw):
            kw.update(min_new_tokens=a.new_tokens, eos_token_id=None)
            return orig(*args, **kw)

        model.generate = forced
        best_roll, best_bare = float("inf"), float("inf")
        for _ in range(a.repeats):
            calls: list[tuple[int, list[int]]] = []
            inner = policy.act

            def recording(states, inner=inner, calls=calls):
                calls.append((len(states), [len(s.context_ids) for s in states]))
                return inner(states)

            policy.act = recording  # type: ignore[method-assign]
            t0 = time.perf_counter()
            eps = engine.run(tasks, policy)
            best_roll = min(best_roll, time.perf_counter() - t0)
            policy.act = inner  # type: ignore[method-assign]
            assert all(len(e["policy_turns"]) == turns for e in eps), "every episode should run all turns"
            # the same generate calls, bare: same batch, same (left-padded) context widths
            t0 = time.perf_counter()
            with torch.no_grad():
                for n, lens in calls:
                    width = max(lens)
                    ids = torch.full((n, width), tok.eos_token_id, dtype=torch.long)
                    attn = torch.zeros((n, width), dtype=torch.long)
                    for i, L in enumerate(lens):
                        attn[i, width - L :] = 1
                    orig(input_ids=ids, attention_mask=attn, return_dict_in_generate=True, output_logits=True, **gen_kw)
            best_bare = min(best_bare, time.perf_counter() - t0)
        model.generate = orig
        print(f"{turns:>5} {best_roll:>10.3f} {best_bare:>16.3f} {best_roll / best_bare:>7.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
