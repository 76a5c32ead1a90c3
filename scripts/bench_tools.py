"""Step time of the two ways to train a router on our envs, measured in one run on the same model:
the tag protocol through our rollout engine (`RouterGRPOTrainer(rollout_func=...)`) and native
tool calls through TRL's own loop (`trl.GRPOTrainer(environment_factory=...)`).

Both start from one warm start (boundary trajectories rendered as tool calls for the tool path,
as tags for the tag path, same SFT settings) and run the same GRPO settings; reported per path:
seconds per step, model-generated tokens per step (TRL's completions/mean_length x batch), and
seconds per 1k generated tokens, with the ratio tools / tags.

    python scripts/bench_tools.py [--steps 4] [--sft-steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def warm(protocol: str, sft_steps: int, out: Path):
    from datasets import Dataset
    from trl import SFTConfig

    from rl_router.evaluation.evaluator import baseline_policy
    from rl_router.models import router_from_recipe
    from rl_router.recipe import load_recipe
    from rl_router.rollout.engine import make_engine
    from rl_router.task_sources import recipe_pool, recipe_tasks
    from rl_router.training.boundary import sft_rows
    from rl_router.training.sft import PolicyTokenSFTTrainer

    r = load_recipe(None, ["data.max_train=32", "data.max_heldout=4", f"rollout.protocol={protocol}"])
    pool = recipe_pool(r)
    train, _ = recipe_tasks(r, pool)
    model, tok = router_from_recipe(r)
    eng = make_engine(r, pool, tok)
    eps = [e for m in pool.model_names for e in eng.run(train, baseline_policy(f"always-{m}", tok, pool.model_names))]
    args = SFTConfig(output_dir=str(out / f"sft-{protocol}"), max_steps=sft_steps, per_device_train_batch_size=8, learning_rate=1e-2, save_strategy="no", report_to="none",
                     bf16=False, use_cpu=True, gradient_checkpointing=False, disable_tqdm=True)
    PolicyTokenSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(sft_rows(eps, eos_id=tok.eos_token_id)), processing_class=tok).train()
    return r, pool, train, model, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--sft-steps", type=int, default=150)
    a = ap.parse_args()
    os.environ.setdefault("RL_ROUTER_NO_PROGRESS", "1")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rl_router.envs import make_env
    from rl_router.envs.tools import environment_factory, tools_prompt
    from rl_router.rewards import build_rewards
    from rl_router.rollout.engine import make_engine, make_rollout_func, stop_strings
    from rl_router.rollout.policies import HFPolicy
    from rl_router.training.trainer import RouterGRPOTrainer

    out = Path(tempfile.mkdtemp())
    res = {}
    for protocol in ("tags", "tools"):
        r, pool, train, model, tok = warm(protocol, a.sft_steps, out)
        reward = build_rewards(r.rewards)[0][0]
        cfg = GRPOConfig(output_dir=str(out / protocol), max_steps=a.steps, per_device_train_batch_size=8, num_generations=4, max_completion_length=512, learning_rate=1e-4,
                         temperature=0.2, beta=0.0, bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, gradient_checkpointing=False, max_tool_calling_iterations=3)
        if protocol == "tags":
            rows = [{"prompt": t.question, **t.to_row()} for t in train]
            rf = make_rollout_func(make_engine(r, pool, tok), train, lambda tr: HFPolicy(tr.model, tok, max_new_tokens=r.rollout.max_new_tokens, temperature=0.2, stop_strings=stop_strings(r)))
            trainer = RouterGRPOTrainer(model=model, reward_funcs=[reward], args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, rollout_func=rf)
        else:
            rows = [{"prompt": tools_prompt(t), **t.to_row()} for t in train]
            Env = environment_factory(lambda: make_env("router_r1", pool, config=r.env_config()), reward=reward)
            trainer = GRPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, environment_factory=Env)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        logs = [h for h in trainer.state.log_history if "step_time" in h]
        step = sum(float(h["step_time"]) for h in logs) / len(logs)
        toks = sum(float(h["completions/mean_length"]) for h in logs) / len(logs) * cfg.per_device_train_batch_size
        res[protocol] = {"s_per_step": step, "model_tokens_per_step": toks, "s_per_1k_model_tokens": 1000 * step / toks, "wall_s": wall, "reward": [h.get("reward") for h in logs]}
    res["ratio_tools_over_tags_per_token"] = res["tools"]["s_per_1k_model_tokens"] / res["tags"]["s_per_1k_model_tokens"]
    res["ratio_tools_over_tags_per_step"] = res["tools"]["s_per_step"] / res["tags"]["s_per_step"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
