"""RL throughput at the recipe's step size: episodes per second of a whole GRPO step, and where it goes.

Builds the recipe's trainer (RouterGRPOTrainer, our rollout hook, the recipe's trainer section)
on a warm-started router (a training run's `sft/`), runs `--steps` GRPO steps and reports the
median over steps 2..N of: the whole step (TRL's `step_time`), the rollout inside it, and the
loss (forward + backward of the micro-batches). Beside them, a reference for the loss: a bare
forward + backward of the same model over the same sequences, every row's full sequence (what a
trainer without shared prompts pays at least). One run, medians of repeats; the figures go to
docs/benchmarks.md.

    python scripts/bench_rl.py --run outputs/mmlu_pro [--recipe recipes/mmlu_pro.yaml] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a training run whose sft/ (the warm start) is benchmarked")
    ap.add_argument("--recipe", default="recipes/mmlu_pro.yaml")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    from rl_router.recipe import load_recipe
    from rl_router.rewards import build_rewards
    from rl_router.rollout.engine import make_engine, make_rollout_func, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.precision import autocast_for, usable
    from rl_router.rollout.policies import HFPolicy
    from rl_router.task_sources import recipe_pool, recipe_tasks
    from rl_router.models import tokenizer_from_recipe
    from rl_router.training.trainer import RouterGRPOTrainer

    r = load_recipe(a.recipe, [*a.sets, f"trainer.max_steps={a.steps}"])
    pool = recipe_pool(r)
    train, _ = recipe_tasks(r, pool)
    tok = tokenizer_from_recipe(r)
    model = AutoModelForCausalLM.from_pretrained(Path(a.run) / "sft")
    rf, weights = build_rewards(r.rewards)
    out = tempfile.mkdtemp(prefix="bench_rl_")
    args = GRPOConfig(output_dir=out, **{**r.trainer, "bf16": usable(r.model.autocast, "cpu"), "use_cpu": True, "reward_weights": weights, "save_strategy": "no", "logging_steps": 1})
    names = {"names": pool.model_names, "route_weights": cost_weights(pool)}
    roll_s: list[float] = []
    batches: list[dict] = []
    inner = make_rollout_func(make_engine(r, pool, tok), train, lambda tr: HFPolicy(tr.accelerator.unwrap_model(tr.model), tok, max_new_tokens=r.rollout.max_new_tokens,
                                                                                    temperature=args.temperature, stop_strings=stop_strings(r), autocast=r.model.autocast, share_prompts=r.rollout.share_prompts, **names))

    def rollout(prompts, trainer):
        t0 = time.perf_counter()
        b = inner(prompts, trainer)
        roll_s.append(time.perf_counter() - t0)
        batches.append(b)
        return b

    trainer = RouterGRPOTrainer(model=model, reward_funcs=rf, args=args, processing_class=tok, train_dataset=Dataset.from_list([{"prompt": t.question, **t.to_row()} for t in train]), rollout_func=rollout)
    trainer.train()
    steps = [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]
    rolls = roll_s[1:]
    episodes = args.per_device_train_batch_size * args.gradient_accumulation_steps
    step, roll = statistics.median(steps), statistics.median(rolls)
    # the machine's limit for the loss: forward + backward over the last step's sequences
    b = batches[-1]
    seqs = [list(p) + list(c) for p, c in zip(b["prompt_ids"], b["completion_ids"])]
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), tok.pad_token_id, dtype=torch.long)
    for i, s_ in enumerate(seqs):
        ids[i, : len(s_)] = torch.tensor(s_)
    mb = args.per_device_train_batch_size

    def bare(rows: list[int]) -> float:
        t0 = time.perf_counter()
        for s in range(0, len(rows), mb):
            chunk = ids[rows[s : s + mb]]
            with autocast_for(model, r.model.autocast):  # the numerics the step ran in
                loss = model(input_ids=chunk, logits_to_keep=1).logits.float().sum()
            loss.backward()
        model.zero_grad()
        return time.perf_counter() - t0

    full = statistics.median(bare(list(range(len(seqs)))) for _ in range(2))
    distinct_prompts = len({tuple(p) for p in b["prompt_ids"]})
    tokens = sum(map(len, seqs))
    print(f"recipe {a.recipe}: {episodes} episodes per step ({distinct_prompts} distinct prompts), {tokens} tokens in the last step's episodes")
    print(f"GRPO step (median of steps 2..{a.steps}): {step:.2f} s = {episodes / step:.1f} episodes/s; rollout {roll:.2f} s ({episodes / roll:.1f} episodes/s), the rest (loss, TRL) {step - roll:.2f} s")
    print(f"bare forward + backward over the step's sequences, every row in full (micro-batches of {mb}): {full:.2f} s; our loss part / that: {(step - roll) / full:.2f}")


if __name__ == "__main__":
    main()
