"""One multi-turn GRPO training step / TRL's plain single-turn GRPO step, same token counts.

Multi-turn: RouterGRPOTrainer with our rollout hook (Router-R1 env over the recorded GSM8K
pool, 3 turns, pool replies inserted and masked). Single-turn: TRL's own GRPOTrainer
generating one completion per prompt with its built-in HF path, forced to the mean
completion length the multi-turn episodes had (policy + inserted tokens), from prompts of
the same length. Both: the tiny router, batch 8, 4 generations, CPU. Reports the median
step time of steps 2..N and the ratio (goal <= 1.15), plus peak RSS. `--recipe` takes another
router and pool (scripts/bench_router.py runs it on SmolLM2-135M).

    python scripts/bench_step.py [--steps 6] [--recipe R]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from rl_router.task_sources import recipe_pool, recipe_tasks


def step_ratio(recipe: str | None = None, *, steps: int = 6, router: str | None = None, verbose: bool = False) -> tuple[float, float]:
    """(multi-turn step s, TRL single-turn step s with the same generated tokens), medians of
    steps 2..N, for the recipe's router (default: the tiny one) and pool."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl_router.envs import make_env
    from rl_router.models import lora_config, router_from_recipe
    from rl_router.prompts import encode_chat, initial_messages
    from rl_router.recipe import load_recipe
    from rl_router.rewards import build_rewards
    from rl_router.rollout.engine import RolloutEngine, make_rollout_func
    from rl_router.rollout.policies import HFPolicy
    from rl_router.training.trainer import RouterGRPOTrainer

    class Timer(TrainerCallback):
        def __init__(self):
            self.t, self.times = 0.0, []

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    r = load_recipe(recipe, ["data.max_train=64"])
    pool = recipe_pool(r)
    tasks, _ = recipe_tasks(r, pool)
    funcs, weights = build_rewards(r.rewards)
    mnt = r.rollout.max_new_tokens
    common = dict(per_device_train_batch_size=8, num_generations=4, max_steps=steps, learning_rate=1e-4, beta=0.0, bf16=False, use_cpu=True,
                  report_to="none", save_strategy="no", logging_steps=1, gradient_checkpointing=False, disable_tqdm=True, seed=0)

    def fresh():
        return router_from_recipe(r)

    # multi-turn
    model, tok = fresh()
    engine = RolloutEngine(lambda: make_env("router_r1", pool, config=r.env_config(), tokenizer=tok), tok)
    rf = make_rollout_func(engine, tasks, lambda tr: HFPolicy(tr.accelerator.unwrap_model(tr.model), tok, max_new_tokens=mnt, temperature=1.0))
    timer_m = Timer()
    with tempfile.TemporaryDirectory() as d:
        args = GRPOConfig(output_dir=d, max_completion_length=r.rollout.max_completion_tokens, temperature=1.0, **common)
        tr = RouterGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list([{"prompt": t.question, **t.to_row()} for t in tasks]),
                               processing_class=tok, rollout_func=rf, callbacks=[timer_m], peft_config=lora_config(r))
        tr.train()
        lens = [h["completions/mean_length"] for h in tr.state.log_history if "completions/mean_length" in h]
    policy_len = int(round(statistics.mean(lens)))
    prompt_tokens = len(encode_chat(tok, initial_messages(tasks[0], pool.models, r.env_config().budget)))
    # single-turn, TRL's own generation, the same prompt text, forced to the same number of generated tokens
    prompts = [{"prompt": initial_messages(t, pool.models, r.env_config().budget)[0]["content"] + "\n" + t.question, **t.to_row()} for t in tasks]
    model2, tok2 = fresh()
    timer = Timer()
    with tempfile.TemporaryDirectory() as d:
        args = GRPOConfig(output_dir=d, max_completion_length=policy_len, temperature=1.0, generation_kwargs={"min_new_tokens": policy_len}, **common)
        GRPOTrainer(model=model2, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(prompts), processing_class=tok2, callbacks=[timer], peft_config=lora_config(r)).train()
    med = lambda xs: statistics.median(xs[1:]) if len(xs) > 1 else xs[0]  # noqa: E731
    if verbose:
        print(f"router {r.model.name_or_path}, batch 8 x 4 generations, ~{policy_len} policy tokens per episode, prompt {prompt_tokens} tokens")
    return med(timer_m.times), med(timer.times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--recipe", default=None, help="recipe YAML (default: the quickstart's tiny router)")
    a = ap.parse_args()
    m, s = step_ratio(a.recipe, steps=a.steps, verbose=True)
    print(f"multi-turn GRPO step {m:.3f} s; TRL single-turn step with the same generated tokens {s:.3f} s -> ratio {m / s:.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
