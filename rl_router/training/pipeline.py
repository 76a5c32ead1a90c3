"""`rl-router train`: recipe -> (boundary-guided SFT warm start) -> GRPO / RLOO / BoPO -> metrics.

Stages, each in its own output folder so a killed run resumes where it stopped:
  OUT/boundaries.json   always-cheap / always-strong outcomes and costs per train task
  OUT/sft/              warm-started weights (renamed into place when complete; reused when there)
  OUT/sft_run/          SFTTrainer's own output (logs, checkpoints if sft.save_strategy asks)
  OUT/rl/checkpoint-N/  TRL checkpoints (resume with --resume)
  OUT/final/            the trained router (weights + tokenizer + chat template)
  OUT/metrics.json      held-out reward / quality / cost before and after, per stage
  OUT/training_curves.png
Held-out evaluation is greedy, on tasks never seen in training, scored with the recipe's
own reward functions (eval split state).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from rl_router.evaluation.evaluator import Evaluator, router_policy, tqdm_progress
from rl_router.frontier import above, point, random_mixture
from rl_router.models import lora_config, router_from_recipe
from rl_router.recipe import Recipe, validate_against_pool
from rl_router.rewards import build_rewards
from rl_router.rollout.engine import make_engine, make_rollout_func
from rl_router.rollout.policies import HFPolicy
from rl_router.task_sources import recipe_pool, recipe_tasks


def _latest_checkpoint(d: Path) -> str | None:
    """The newest *complete* checkpoint. transformers writes trainer_state.json last (after
    weights, optimizer, scheduler and RNG), so a folder without a readable one is a save that
    was killed midway: skip it and resume from the one before (losing one save interval)."""
    if not d.exists():
        return None
    for ck in sorted(d.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1, reverse=True):
        try:
            state = json.loads((ck / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if "global_step" in state and any(ck.glob("*.safetensors")):
            return str(ck)
    return None


def train(recipe: Recipe, *, output_dir: str | None = None, resume: bool = False, log: Callable[[str], None] = print, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run the pipeline (module docstring). `callbacks`: transformers `TrainerCallback`s added
    to the RL trainer (as with any HF trainer: custom logging, early stopping, ...)."""
    import time

    import torch

    t_start = time.perf_counter()
    _log = log
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOConfig, SFTConfig

    from rl_router.boundary_records import class_counts, episodes_path, load_boundaries, load_boundary_episodes, save_boundaries
    from rl_router.training.boundary import BoPOReward, run_boundaries, sft_rows, synthesize_sft
    from rl_router.training.sft import PolicyTokenSFTTrainer
    from rl_router.training.trainer import RouterGRPOTrainer

    # TRL's configs default to bf16, which a CPU-only machine refuses; a recipe may still set it
    hw = {} if torch.cuda.is_available() else {"bf16": False, "use_cpu": True}
    from rl_router.distributed import process_state

    state = process_state()  # under torchrun / accelerate launch: every rank runs this; only rank 0 writes files
    main = state.is_main_process

    def log(msg: str) -> None:  # rank 0 speaks for the run
        if main:
            _log(f"[{time.perf_counter() - t_start:7.1f}s] {msg}")

    def write(path: Path, obj: Any) -> None:
        if main:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(obj, indent=1, default=str))
            os.replace(tmp, path)  # atomic: a kill never leaves half a file

    out = Path(output_dir or recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "recipe.json", recipe.to_dict())  # recipes hold env var names, never keys
    seed = int(recipe.trainer.get("seed", 0))
    set_seed(seed)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    pool = recipe_pool(recipe)
    train_tasks, held = recipe_tasks(recipe, pool)
    cheap, strong = validate_against_pool(recipe, pool, train_tasks or held)  # before any model loads
    model, tok = router_from_recipe(recipe)
    engine = make_engine(recipe, pool, tok)
    reward_funcs, weights = build_rewards(recipe.rewards)  # training's: percentile cost keeps a running window shared by all ranks
    algo = recipe.algorithm
    metrics: dict[str, Any] = {"algorithm": algo.name, "train_tasks": len(train_tasks), "heldout_tasks": len(held), "pool": pool.model_names}
    mnt = recipe.rollout.max_new_tokens

    rl_dir = out / "rl"
    ckpt = _latest_checkpoint(rl_dir) if resume else None
    # held-out evaluation: one Evaluator for every stage, baselines first (their costs are the
    # fixed reference percentile cost rewards are scored against)
    ev = Evaluator(recipe, pool, tok, held, progress=tqdm_progress())
    base_path = out / "eval_baselines.json"
    if resume and base_path.exists():
        saved = json.loads(base_path.read_text())
        baselines = saved["policies"]
        ev.set_cost_reference(saved["cost_reference"])
    else:
        log(f"running the baselines on {len(held)} held-out tasks")
        baselines, _ = ev.baselines()
        write(base_path, {"policies": baselines, "cost_reference": ev.cost_reference})
    before_path = out / "eval_before.json"
    if ckpt is not None and before_path.exists():
        before = json.loads(before_path.read_text())
    else:
        log(f"evaluating the initial router on {len(held)} held-out tasks")
        before = ev.summarize(ev.episodes("held-out eval", router_policy(model, tok, recipe)))
        write(before_path, before)

    # ---- boundaries and warm start ------------------------------------------------------
    bopo_reward = None
    if algo.sft_warmstart or algo.name == "bopo":
        bpath = out / "boundaries.json"
        if resume and bpath.exists() and episodes_path(bpath).exists():
            log(f"boundary outcomes found in {bpath}; reusing them (no pool calls)")
            records, bepisodes = load_boundaries(bpath), load_boundary_episodes(bpath)
        else:
            log("running boundary policies (always-cheapest, always-strongest) on the train tasks")
            records, bepisodes = run_boundaries(engine, pool, train_tasks, tok, cheap=cheap, strong=strong, style=algo.sft_style, stepwise=algo.sft_mix == "stepwise")
            if main:
                save_boundaries(bpath, records, bepisodes)
            state.wait_for_everyone()
        metrics["boundary_classes"] = class_counts(records)
        if algo.name == "bopo":
            bopo_reward = BoPOReward(records, lam=algo.bopo_lam, mu=algo.bopo_mu)
    sft_dir = out / "sft"
    if algo.sft_warmstart:
        if (sft_dir / "config.json").exists():
            log(f"warm start found in {sft_dir}; loading it")
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(sft_dir)
        else:
            rows = sft_rows(synthesize_sft(records, bepisodes, algo.sft_examples, seed=seed, neither_rate=algo.neither_rate, strong_only_share=algo.strong_only_share, mix=algo.sft_mix))
            log(f"boundary-guided SFT on {len(rows)} stratified trajectories")
            sft_args = SFTConfig(output_dir=str(out / "sft_run"), **{**hw, **recipe.sft})
            sft = PolicyTokenSFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=lora_config(recipe))
            sft.train()
            model = sft.accelerator.unwrap_model(sft.model)
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()  # RL then starts a fresh adapter on the warm-started weights
            if main:
                tmp = out / "sft.tmp"
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                if sft_dir.exists():
                    shutil.rmtree(sft_dir)  # a partial folder from a killed run
                os.replace(tmp, sft_dir)  # the stage counts as done only once fully written
            state.wait_for_everyone()
            metrics["sft_loss_last"] = next((h["loss"] for h in reversed(sft.state.log_history) if "loss" in h), None)
        after_sft_path = out / "eval_after_sft.json"
        if after_sft_path.exists():
            metrics["heldout_after_sft"] = json.loads(after_sft_path.read_text())
        else:
            metrics["heldout_after_sft"] = ev.summarize(ev.episodes("held-out eval", router_policy(model, tok, recipe)))
            write(after_sft_path, metrics["heldout_after_sft"])

    # ---- RL -------------------------------------------------------------------------------
    funcs = [bopo_reward] if algo.name == "bopo" else reward_funcs
    w = [1.0] if algo.name == "bopo" else weights
    rows = [{"prompt": t.question, **t.to_row()} for t in train_tasks]
    targs = {**hw, **recipe.trainer, "reward_weights": w}
    args = GRPOConfig(output_dir=str(rl_dir), **targs)
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero3 = is_deepspeed_zero3_enabled()
    def rollout_policy(trainer: Any) -> Any:
        """The policy that generates router turns with the trainer's current weights: vLLM
        (TRL's engine, weights synced by TRL before each rollout) when `trainer.use_vllm`,
        else HF generate on the unwrapped model."""
        if args.use_vllm:
            from rl_router.rollout.vllm import VLLMPolicy, backend_from_trainer

            return VLLMPolicy(backend_from_trainer(trainer), tok, max_new_tokens=mnt, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0)
        return HFPolicy(trainer.accelerator.unwrap_model(trainer.model), tok, max_new_tokens=mnt, temperature=args.temperature, top_p=args.top_p, synced_gpus=zero3)

    rollout_func = make_rollout_func(engine, train_tasks, rollout_policy)
    peft_config = lora_config(recipe)
    trainer = RouterGRPOTrainer(
        callbacks=callbacks,
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        rollout_func=rollout_func,
        peft_config=peft_config,
        advantage=algo.name,
        bopo_reward=bopo_reward,
        bopo_beta=algo.bopo_beta,
    )
    log(f"{algo.name.upper()} for {args.max_steps} steps" + (f", resuming from {ckpt}" if ckpt else ""))
    trainer.train(resume_from_checkpoint=ckpt)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if peft_config is not None:
        model = model.merge_and_unload()
    final = out / "final"
    if trainer.accelerator.is_main_process:
        model.save_pretrained(final)
        tok.save_pretrained(final)

    after = ev.summarize(ev.episodes("held-out eval", router_policy(model, tok, recipe)))
    for key in ("reward", "quality", "mean_cost"):
        name = key.replace("mean_", "")
        metrics[f"heldout_{name}_before"] = before[key]
        metrics[f"heldout_{name}_after"] = after[key]
    qpd = lambda s: (s["quality"] / s["mean_cost"]) if s["mean_cost"] > 0 else 0.0  # noqa: E731
    metrics["heldout_quality_per_dollar_before"] = qpd(before)
    metrics["heldout_quality_per_dollar_after"] = qpd(after)
    metrics["heldout_before"], metrics["heldout_after"] = before, after
    metrics["heldout_baselines"] = baselines
    # the one-number frontier check: quality minus the random cheap/strong mixture's at the same cost
    line = random_mixture(point(metrics["heldout_baselines"][f"always-{cheap}"]), point(metrics["heldout_baselines"][f"always-{strong}"]))
    for stage in ("before", "after_sft", "after"):
        if f"heldout_{stage}" in metrics:
            metrics[f"heldout_above_random_mixture_{stage}"] = above(point(metrics[f"heldout_{stage}"]), line)
    metrics["global_step"] = trainer.state.global_step
    metrics["is_main_process"] = trainer.accelerator.is_main_process
    metrics["log_history"] = trainer.state.log_history
    if trainer.accelerator.is_main_process:
        write(out / "metrics.json", metrics)
        from rl_router.plots import plot_training

        plot_training(trainer.state.log_history, out / "training_curves.png", title=f"{algo.name.upper()} on {', '.join(pool.model_names)}")
    return metrics
