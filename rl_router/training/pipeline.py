"""`rl-router train`: recipe -> baselines -> boundary-guided SFT warm start -> GRPO / RLOO / BoPO -> report.

`train()` is a short sequence of named stages. Each writes its output into OUT and records the
recipe fields it depends on (`stages.py`); `--resume` reuses a finished stage only when those
fields are unchanged, so a killed run continues where it stopped and never mixes settings:

  baselines       OUT/eval_baselines.json   always-<model> and random on the held-out tasks
  eval_before     OUT/eval_before.json      the initial router, greedy
  boundaries      OUT/boundaries.json       the warm start's train trajectories; always-cheap / always-strong where needed (BoPO, stratified mixes)
  warm_start      OUT/sft/                  boundary-guided SFT (checkpoints in OUT/sft_run resume too)
  eval_after_sft  OUT/eval_after_sft.json
  rl              OUT/rl/checkpoint-N/      TRL checkpoints; OUT/final/ the trained router
  report          OUT/metrics.json, OUT/training_curves.png

Held-out evaluation runs through `evaluation.Evaluator` (the path `eval` and `rollout` use),
greedy, on tasks never seen in training. Under torchrun every rank runs every stage (rollouts
sharded, training data parallel); only rank 0 writes files, after a barrier where others read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rl_router.evaluation.evaluator import Evaluator, router_policy, tqdm_progress
from rl_router.models import lora_config, router_from_recipe
from rl_router import precision
from rl_router.pools.factory import max_error_rate
from rl_router.recipe import Recipe, validate_against_pool
from rl_router.rewards import build_rewards
from rl_router.rollout.engine import make_engine, make_rollout_func, stop_strings
from rl_router.rollout.policies import HFPolicy
from rl_router.stats import resample_index
from rl_router.task_sources import recipe_pool, recipe_splits
from rl_router.training.stages import RunFolder


def latest_checkpoint(d: Path, warn: Callable[[str], None] | None = None) -> str | None:
    """The newest *intact* checkpoint (`checkpoints.checkpoint_problem`): a save killed midway
    (no trainer_state.json, transformers writes it last), truncated weights or a damaged
    optimizer / RNG archive are skipped, with a warning, for the one before (losing one save
    interval, never loading a broken file)."""
    if not d.exists():
        return None
    from rl_router.checkpoints import checkpoint_problem

    for ck in sorted(d.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1, reverse=True):
        why = checkpoint_problem(ck)
        if why is None:
            return str(ck)
        if warn:
            warn(f"skipping {ck.name}: {why}")
    return None


_LOCKS: list[Any] = []  # open lock files of this process (the lock is held while the file stays open)


def lock_output_dir(out: Path) -> None:
    """One training per output folder: an exclusive lock on OUT/.rl-router.lock, held until this
    process exits (or dies: the kernel releases it), so a second `train` into the same folder
    stops at once instead of interleaving checkpoints with the first."""
    import fcntl

    from rl_router.errors import ConfigError

    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".rl-router.lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        other = fh.read().strip() or "?"
        fh.close()
        raise ConfigError("--output-dir", f"{out} is in use by another training (pid {other})", "wait for it to finish, or choose another --output-dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _LOCKS.append(fh)


def autocast_settings(recipe: Recipe, device_type: str, say: Callable[[str], None]) -> dict[str, Any]:
    """What `model.autocast` asks of TRL's configs: `bf16: true` for the warm start and the RL
    loss where bf16 is native (the rollouts and evaluations read the knob themselves, see
    precision.py), so all four run one numeric policy. A recipe's own `sft.bf16` /
    `trainer.bf16` still wins. Where bf16 is not native the run stays float32, and says so."""
    name = recipe.model.autocast
    if precision.normalize(name) is None:
        return {}
    if not precision.usable(name, device_type):
        say("model.autocast: this CPU has no native bf16 (avx512_bf16 / AMX): the run stays in float32")
        return {}
    say("model.autocast: bfloat16 for rollouts, evaluations, the warm start and the RL loss (float32 master weights)")
    return {"bf16": True}


@dataclass
class Run:
    """What the stages share: the recipe, the output folder, the pool and tasks, the router."""

    recipe: Recipe
    out: Path
    folder: RunFolder
    state: Any  # accelerate process state
    log: Callable[[str], None]
    pool: Any
    train_tasks: list[Any]
    held: list[Any]
    validation: list[Any]
    cheap: str
    strong: str
    model: Any
    tok: Any
    evaluator: Evaluator
    hw: dict[str, Any]  # device settings TRL's configs need on this machine
    metrics: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] | None = None
    boundary_episodes: dict[str, Any] | None = None

    @property
    def main(self) -> bool:
        return self.state.is_main_process

    def write(self, name: str, obj: Any) -> None:
        """Rank 0 writes JSON atomically (temp file then rename: a kill never leaves half a file)."""
        if self.main:
            from rl_router.owned import atomic_write

            atomic_write(self.out / name, json.dumps(obj, indent=1, default=str))

    def read(self, name: str) -> Any:
        from rl_router.parsing import read_json

        return read_json(self.out / name, "--resume", fix=f"the run's {name} is damaged: start a new --output-dir")

    def peak_memory(self, stage: str) -> None:
        """Log and record (metrics.json `peak_rss_mib`) this process's peak resident memory at the
        end of `stage`: a run's memory is then attributed to the stage that raised it."""
        import resource

        mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
        self.metrics.setdefault("peak_rss_mib", {})[stage] = mib
        self.log(f"peak RSS after {stage}: {mib / 1024:.1f} GiB")

    def evaluate_router(self, n: int | None = None) -> dict[str, Any]:
        tasks = self.held[:n] if n else self.held
        eps = self.evaluator.episodes("held-out eval", router_policy(self.model, self.tok, self.recipe, pool=self.pool), tasks=tasks)
        return self.evaluator.summarize(eps, tasks)


def setup(recipe: Recipe, output_dir: str | None, resume: bool, log: Callable[[str], None]) -> Run:
    """Pool, tasks and every check that needs them, before any model loads."""
    import torch
    from transformers import set_seed

    from rl_router.distributed import process_state

    state = process_state()  # first, so every rank joins the process group (see distributed.py)
    t0 = time.perf_counter()

    def say(msg: str) -> None:  # rank 0 speaks for the run, on a line of its own above any progress bar
        if state.is_main_process:
            from tqdm import tqdm

            with tqdm.external_write_mode():
                log(f"[{time.perf_counter() - t0:7.1f}s] {msg}")

    out = Path(output_dir if output_dir is not None else recipe.output_dir)
    if state.is_main_process:
        from rl_router.owned import claim_run

        claim_run(out)  # new, empty or ours: a folder holding a user's files is refused now
        lock_output_dir(out)
    folder = RunFolder(out, recipe.to_dict(), resume=resume, main=state.is_main_process)
    folder.check()  # stages already there: reusable under --resume with the same settings, or stop now
    if (out / "sft").exists() and not folder.has("warm_start"):
        from rl_router.errors import ConfigError

        raise ConfigError("--output-dir", f"{out / 'sft'} exists but is not a warm start of rl-router (no config.json)", "move it away or choose another --output-dir; rl-router never deletes what it did not write")
    pool = recipe_pool(recipe)
    train_tasks, validation, held = recipe_splits(recipe, pool)
    cheap, strong = validate_against_pool(recipe, pool, train_tasks or held)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(int(recipe.trainer.get("seed", 0)))
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    model, tok = router_from_recipe(recipe)
    # TRL's configs default to bf16, which a CPU-only machine refuses; a recipe may still set it
    hw = {} if torch.cuda.is_available() else {"bf16": False, "use_cpu": True}
    hw.update(autocast_settings(recipe, "cuda" if torch.cuda.is_available() else "cpu", say))
    from rl_router.evaluation.evaluator import EvalOptions

    run = Run(recipe, out, folder, state, say, pool, train_tasks, held, validation, cheap, strong, model, tok, Evaluator(recipe, pool, tok, held, options=EvalOptions(batch_size=recipe.rollout.batch_size), progress=tqdm_progress()), hw)
    from rl_router.redact import redact_obj

    run.write("recipe.json", redact_obj(recipe.to_dict()))  # recipes hold env var names, never keys (nor URL credentials)
    run.metrics.update(algorithm=recipe.algorithm.name, train_tasks=len(train_tasks), heldout_tasks=len(held), pool=pool.model_names)
    return run


def stage_baselines(run: Run) -> None:
    """always-<model> and random on the held-out tasks; their costs become the fixed reference
    percentile cost rewards are scored against, so this stage comes first."""
    if run.folder.reuse("baselines"):
        saved = run.read("eval_baselines.json")
        run.metrics["heldout_baselines"] = saved["policies"]
        run.evaluator.set_cost_reference(saved["cost_reference"])
        return
    run.log(f"running the baselines on {len(run.held)} held-out tasks")
    run.metrics["heldout_baselines"], _ = run.evaluator.baselines()
    run.write("eval_baselines.json", {"policies": run.metrics["heldout_baselines"], "cost_reference": run.evaluator.cost_reference})
    run.folder.finished("baselines")


def stage_eval(run: Run, stage: str, key: str, file: str, what: str, n: int | None = None) -> None:
    """The router as it stands, greedy, on the held-out tasks (the first `n`)."""
    if run.folder.reuse(stage):
        run.metrics[key] = run.read(file)
        return
    n = min(n, len(run.held)) if n else len(run.held)
    run.log(f"evaluating {what} on {n} held-out tasks")
    run.metrics[key] = run.evaluate_router(n)
    run.write(file, run.metrics[key])
    run.folder.finished(stage)


def needs_boundary_runs(a: Any) -> bool:
    """Whether always-cheapest / always-strongest must run on every train task: BoPO's reward is
    relative to them, and the stratified warm starts sample their trajectories. A warm start
    that takes one trajectory per task of its own (format, per_topic, agreement) under GRPO or
    RLOO needs neither: skipping them saves two pool calls per train task (paid ones on a live
    pool) and a quarter of the quickstart's set-up."""
    from rl_router.training.boundary import ONE_PER_TASK

    return a.name == "bopo" or a.sft_mix not in ONE_PER_TASK


def stage_boundaries(run: Run) -> None:
    """The train-task trajectories the warm start imitates (and, where needed, always-cheapest
    and always-strongest: task classes and BoPO's reference)."""
    from rl_router.boundary_records import class_counts, load_boundaries, load_boundary_episodes, save_boundaries
    from rl_router.training.boundary import run_boundaries

    a, path = run.recipe.algorithm, run.out / "boundaries.json"
    need = needs_boundary_runs(a)
    saved = load_boundaries(path) if run.folder.reuse("boundaries") else None
    if saved is not None and (saved or not need):  # a folder written without the boundary runs serves only recipes that skip them
        run.log(f"boundary outcomes found in {path}; reusing them (no pool calls)")
        run.records, run.boundary_episodes = saved, load_boundary_episodes(path)
    else:
        run.log("running boundary policies (always-cheapest, always-strongest) on the train tasks" if need
                else f"running the warm start's trajectories (sft_mix: {a.sft_mix}) on the train tasks; always-cheapest / always-strongest are not needed under {a.name}")
        engine = make_engine(run.recipe, run.pool, run.tok)
        cascade = per_topic = None
        if a.sft_mix == "agreement":
            cascade = cascade_models(run)
            run.log(f"agreement cascade for the warm start: {cascade[0]} + {cascade[1]}, else {cascade[2]}")
            run.metrics["cascade"] = list(cascade)
        if a.sft_mix == "per_topic":
            per_topic, models = topic_models(run)
            run.log("per-topic models for the warm start: " + ", ".join(f"{k} -> {v}" for k, v in sorted(models.items())))
            run.metrics["per_topic"] = models
        run.records, run.boundary_episodes = run_boundaries(engine, run.pool, run.train_tasks, run.tok, cheap=run.cheap, strong=run.strong, style=a.sft_style,
                                                            stepwise=a.sft_mix == "stepwise", max_error_rate=max_error_rate(run.recipe.pool), cascade=cascade, per_topic=per_topic,
                                                            batch_size=max(64, run.recipe.rollout.batch_size),
                                                            format_calls=max(1, int(run.recipe.env.get("max_turns", 3)) - 1) if a.sft_mix == "format" else None, seed=run.recipe.data.seed,
                                                            boundaries=need)
        if run.main:
            save_boundaries(path, run.records, run.boundary_episodes)
        run.state.wait_for_everyone()
        run.folder.finished("boundaries")
    run.metrics["boundary_classes"] = class_counts(run.records) if run.records else None  # None: the boundary runs were not needed


def cascade_models(run: Run) -> tuple[str, str, str]:
    """The agreement cascade's (cheap a, cheap b, strong): `algorithm.cascade_models`, else fitted
    on the train tasks (evaluation/baselines.fit_cascade: the pair whose cascade lies furthest
    above the train single-model hull)."""
    from rl_router.errors import ConfigError
    from rl_router.evaluation.baselines import fit_cascade, table_from_records

    a = run.recipe.algorithm
    if a.cascade_models:
        return tuple(a.cascade_models)  # type: ignore[return-value]
    if not hasattr(run.pool, "recorded"):
        raise ConfigError("algorithm.cascade_models", "sft_mix: agreement fits the cascade on a recorded pool's train outcomes; this pool has none", "name them: cascade_models: [CHEAP_A, CHEAP_B, STRONG]")
    return fit_cascade(table_from_records(run.pool, run.train_tasks))[:3]


def topic_models(run: Run) -> tuple[dict[str, str], dict[str, str]]:
    """(train task id -> model, topic -> model): per topic, the model with the highest mean
    recipe reward on the train tasks of that topic, had the router called it once and adopted
    its answer (evaluation/baselines.reward_table): the warm start imitates the trade-off the
    recipe's reward sets, which RL then trains. For sft_mix: per_topic."""
    from rl_router.errors import ConfigError
    from rl_router.evaluation.baselines import per_topic_choices, reward_table, table_from_records

    if not hasattr(run.pool, "recorded"):
        raise ConfigError("algorithm.sft_mix", "per_topic fits each topic's model on a recorded pool's train outcomes; this pool has none", "use efficient or stepwise")
    table = table_from_records(run.pool, run.train_tasks)
    pick = per_topic_choices(table, reward_table(table, run.recipe.rewards), run.train_tasks)
    return pick, {t.topic: pick[t.task_id] for t in run.train_tasks}


def stage_warm_start(run: Run) -> None:
    """Boundary-guided SFT (TRL's SFTTrainer, loss on policy tokens only). Checkpoints in
    OUT/sft_run (`sft.save_steps`) let an interrupted warm start resume."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from rl_router.training.boundary import sft_rows, synthesize_sft
    from rl_router.training.sft import PolicyTokenSFTTrainer

    sft_dir = run.out / "sft"
    if run.folder.reuse("warm_start"):
        from rl_router.checkpoints import model_problem
        from rl_router.errors import CheckpointError

        why = model_problem(sft_dir)
        if why:
            raise CheckpointError(f"{why} -> delete {sft_dir} and --resume again to redo the warm start (its checkpoints in {run.out / 'sft_run'} resume it)")
        run.log(f"warm start found in {sft_dir}; loading it")
        run.model = AutoModelForCausalLM.from_pretrained(sft_dir)
        return
    a, seed = run.recipe.algorithm, int(run.recipe.trainer.get("seed", 0))
    rows = sft_rows(synthesize_sft(run.records, run.boundary_episodes, a.sft_examples, seed=seed, neither_rate=a.neither_rate, strong_only_share=a.strong_only_share, mix=a.sft_mix), eos_id=run.tok.eos_token_id)
    run_dir = run.out / "sft_run"
    ckpt = latest_checkpoint(run_dir, warn=run.log) if run.folder.resume and run.folder.done.get("warm_start_started") == run.folder.fields_of("warm_start") else None
    run.log(f"boundary-guided SFT on {len(rows)} stratified trajectories" + (f", resuming from {ckpt}" if ckpt else ""))
    run.folder.started("warm_start")
    sft_kw = {**run.hw, **run.recipe.sft}
    if sft_kw.get("bf16") and sft_kw.get("use_cpu") and not precision.cpu_has_bf16():
        run.log("sft.bf16: this CPU has no native bf16 (avx512_bf16 / AMX): the warm start runs in float32 instead")
        sft_kw["bf16"] = False
    args = SFTConfig(output_dir=str(run_dir), **sft_kw)
    sft = PolicyTokenSFTTrainer(model=run.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=run.tok, peft_config=lora_config(run.recipe))
    if args.bf16 and args.use_cpu:
        precision.prepare_attention()  # bf16 autocast on an AVX2-pinned CPU: attention in float32
    sft.train(resume_from_checkpoint=ckpt)
    model = sft.accelerator.unwrap_model(sft.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # RL then starts a fresh adapter on the warm-started weights
    run.model = model
    if run.main:
        tmp = run.out / f".sft.tmp-{os.getpid()}"
        model.save_pretrained(tmp)
        run.tok.save_pretrained(tmp)
        os.replace(tmp, sft_dir)  # the stage counts as done only once fully written (setup refused a foreign sft/)
    run.state.wait_for_everyone()
    run.folder.finished("warm_start")
    run.metrics["sft_loss_last"] = next((h["loss"] for h in reversed(sft.state.log_history) if "loss" in h), None)
    a_ = sft.args
    run.metrics["sft_steps"] = sft.state.global_step
    run.metrics["sft_examples"] = sft.state.global_step * a_.per_device_train_batch_size * a_.gradient_accumulation_steps * max(1, run.state.num_processes)
    run.metrics["sft_distinct_trajectories"] = len({tuple(r["input_ids"]) for r in rows})


def trainer_options(recipe: Recipe) -> dict[str, Any]:
    """The algorithm section's settings RouterGRPOTrainer takes (the rest are TRL's GRPOConfig)."""
    a = recipe.algorithm
    return {"advantage": a.advantage or a.name, "all_names_weights": a.all_names_weights, "all_names_temperature": a.all_names_temperature, "all_names_credit": a.all_names_credit, "all_names_episodes": a.all_names_episodes, "bopo_beta": a.bopo_beta,
            "decision_entropy_floor": a.decision_entropy_floor, "decision_entropy_coef": a.decision_entropy_coef, "trim_padding": a.trim_padding, "prompt_gradient": a.prompt_gradient, "protocol_anchor": a.protocol_anchor, "all_names_weights_in_loss": a.all_names_weights_in_loss,
            "microbatch_tokens": a.microbatch_tokens}


def scripted_targets(recipe: Recipe, tok: Any) -> Any:
    """`algorithm.all_names_episodes: scripted`: the policy that writes each all-names episode
    (`target_policy`); None when episodes are sampled."""
    return target_policy(recipe, tok) if recipe.algorithm.all_names_episodes == "scripted" else None


def target_policy(recipe: Recipe, tok: Any) -> Any:
    """All-names episodes in the warm start's shape (its `sft_style`: compact routes a short
    sub-query and adopts by name, verbatim routes the question and types the answer)."""
    from rl_router.rollout.decision_episodes import TargetPolicy

    compact = recipe.algorithm.sft_style == "compact"
    return TargetPolicy(tok, query="short" if compact else "question", adopt=compact)


def stage_rl(run: Run, callbacks: list[Any] | None) -> Any:
    """GRPO / RLOO / BoPO on TRL's GRPOTrainer with our multi-turn rollout hook."""
    from datasets import Dataset
    from transformers.integrations import is_deepspeed_zero3_enabled
    from trl import GRPOConfig

    from rl_router.training.boundary import BoPOReward
    from rl_router.training.trainer import RouterGRPOTrainer

    a, rl_dir = run.recipe.algorithm, run.out / "rl"
    ckpt = latest_checkpoint(rl_dir, warn=run.log) if run.folder.reuse("rl") else None
    max_steps = int(run.recipe.trainer.get("max_steps", 0))
    if ckpt is not None and int(Path(ckpt).name.split("-")[-1]) >= max_steps:
        from rl_router.errors import ConfigError

        raise ConfigError("trainer.max_steps", f"{max_steps} is not above the step the run is at ({Path(ckpt).name})",
                          f"raise trainer.max_steps to train on, or evaluate what is there: rl-router eval {ckpt}")
    bopo = BoPOReward(run.records, lam=a.bopo_lam, mu=a.bopo_mu) if a.name == "bopo" else None
    reward_funcs, weights = ([bopo], [1.0]) if bopo else build_rewards(run.recipe.rewards)  # training's percentile window is shared by all ranks
    args = GRPOConfig(output_dir=str(rl_dir), **{**run.hw, **run.recipe.trainer, "reward_weights": weights})
    mnt, zero3, tok, stops = run.recipe.rollout.max_new_tokens, is_deepspeed_zero3_enabled(), run.tok, stop_strings(run.recipe)
    names = None
    if run.recipe.rollout.decisions == "names" and zero3:
        from rl_router.errors import ConfigError

        raise ConfigError("rollout.decisions", "names is sampled by rl-router's cached decoder, which DeepSpeed ZeRO-3 replaces by model.generate (every token free)", "set rollout.decisions: free under ZeRO-3")
    from rl_router.training.logprobs import check_trainable

    check_trainable(run.model, run.recipe.rollout.decisions == "names")
    if run.recipe.rollout.decisions == "names":  # sample the name distribution evaluation decides by (rollout/names.py)
        from rl_router.rollout.names import cost_weights

        names = {"names": run.pool.model_names, "route_weights": cost_weights(run.pool)}

    def rollout_policy(trainer: Any) -> Any:
        """The policy that generates router turns with the trainer's current weights: vLLM
        (TRL's engine, weights synced by TRL before each rollout) when `trainer.use_vllm`,
        else our cached decoder on the unwrapped model, deciding routes by name (`rollout.decisions`)."""
        if args.use_vllm:
            from rl_router.rollout.vllm import VLLMPolicy, backend_from_trainer

            return VLLMPolicy(backend_from_trainer(trainer), tok, max_new_tokens=mnt, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0, stop_strings=stops)
        return HFPolicy(trainer.accelerator.unwrap_model(trainer.model), tok, max_new_tokens=mnt, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0, stop_strings=stops, synced_gpus=zero3, autocast=run.recipe.model.autocast, share_prompts=run.recipe.rollout.share_prompts, **(names or {}))

    peft_config = lora_config(run.recipe)
    c = run.recipe.curve
    curve = None
    if c.every_steps or a.rl_minutes:
        from rl_router.training.curve import LearningCurve

        curve = LearningCurve(run, every=c.every_steps, heldout_n=c.heldout_n, validation=run.validation[: c.validation_n], keep_best=c.keep_best, minutes=a.rl_minutes)
    trainer = RouterGRPOTrainer(
        model=run.model, reward_funcs=reward_funcs, args=args, callbacks=[*(callbacks or []), *([curve] if curve else [])], processing_class=tok,
        train_dataset=Dataset.from_list([{"prompt": t.question, **t.to_row()} for t in run.train_tasks]),
        rollout_func=make_rollout_func(make_engine(run.recipe, run.pool, tok), run.train_tasks, rollout_policy, enumerate_names=run.pool.model_names if a.advantage == "all_names" else None,
                                       scripted=scripted_targets(run.recipe, tok), anchor_episode=a.protocol_anchor > 0),
        peft_config=peft_config, bopo_reward=bopo, **trainer_options(run.recipe),
    )
    run.log(f"{a.name.upper()}" + (f" ({a.advantage} advantages)" if a.advantage and a.advantage != a.name else "") + f" for {args.max_steps} steps" + (f", resuming from {ckpt}" if ckpt else ""))
    run.folder.finished("rl")  # recorded before the first checkpoint: a killed run resumes with the same settings
    if args.bf16 and args.use_cpu:
        precision.prepare_attention()
    trainer.train(resume_from_checkpoint=ckpt)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if curve is not None:
        run.metrics["curve"] = curve.points
        kept = curve.restore_best(model)
        run.metrics["kept_step"] = kept if kept is not None else trainer.state.global_step
        if kept is not None:
            run.log(f"keeping the router of step {kept} (highest validation reward {curve.best['reward']:.4f}) as final")
    run.model = model.merge_and_unload() if peft_config is not None else model
    if run.main:  # staged, then renamed: final/ is whole or absent, and carries the recipe that made it
        tmp = run.out / f".final.tmp-{os.getpid()}"
        run.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        from rl_router.redact import redact_obj

        (tmp / "recipe.json").write_text(json.dumps(redact_obj(run.recipe.to_dict()), indent=1, default=str))
        (tmp / "training.json").write_text(json.dumps({"algorithm": run.recipe.algorithm.name, "steps": trainer.state.global_step, "kept_step": run.metrics.get("kept_step", trainer.state.global_step),
                                                       "episodes": trainer.episodes_seen, "distinct_tasks": len(trainer.tasks_seen)}, indent=1))
        if (run.out / "final").exists():
            import shutil

            shutil.rmtree(run.out / "final")
        os.replace(tmp, run.out / "final")
    run.state.wait_for_everyone()
    return trainer


def stage_report(run: Run, trainer: Any) -> dict[str, Any]:
    """The trained router on the held-out tasks, every stage next to the baselines and the
    random cheap/strong line; metrics.json and training_curves.png."""
    m = run.metrics
    m["heldout_after"] = run.evaluate_router()
    before, after = m["heldout_before"], m["heldout_after"]
    for key in ("reward", "quality", "mean_cost"):
        name = key.replace("mean_", "")
        m[f"heldout_{name}_before"], m[f"heldout_{name}_after"] = before[key], after[key]
    for when, s in (("before", before), ("after", after)):
        m[f"heldout_quality_per_dollar_{when}"] = s["quality"] / s["mean_cost"] if s["mean_cost"] > 0 else 0.0
    # the one-number frontier check: quality minus the single-model hull's at the same cost
    # (two models: the random cheap/strong line), with a 95% interval paired over the tasks
    from rl_router.evaluation.comparisons import baseline_references, one_minus_other, score_policy

    refs = baseline_references(m["heldout_baselines"])
    idx = resample_index(len(run.held))
    for stage in ("before", "after_sft", "after"):
        if f"heldout_{stage}" in m and m[f"heldout_{stage}"]["episodes"] == len(run.held):  # paired over the same tasks only
            s = m[f"heldout_{stage}"]
            score_policy(s, refs, idx)
            m[f"heldout_above_hull_{stage}"], m[f"heldout_above_hull_{stage}_ci95"] = s["above_hull"], s["ci95"]["above_hull"]
            if len(refs.models) == 2:
                m[f"heldout_above_random_mixture_{stage}"], m[f"heldout_above_random_mixture_{stage}_ci95"] = s["above_hull"], s["ci95"]["above_hull"]
    m["references"] = {"cheapest": refs.cheapest, "best": refs.best, "frontier": refs.frontier}
    if "heldout_after_sft" in m and m["heldout_after_sft"]["episodes"] == m["heldout_after"]["episodes"] == len(run.held):
        m["rl_minus_warm_start"] = one_minus_other(m["heldout_after"], m["heldout_after_sft"], refs, idx)  # RL's own contribution
    m["global_step"] = trainer.state.global_step
    logged = [h for h in trainer.state.log_history if "episodes/seen" in h]  # a resumed run counted before too
    m["rl_episodes"] = int(max([trainer.episodes_seen] + [h["episodes/seen"] for h in logged]))
    m["rl_distinct_tasks"] = int(max([len(trainer.tasks_seen)] + [h["episodes/distinct_tasks"] for h in logged]))
    m["is_main_process"] = run.main
    m["log_history"] = trainer.state.log_history
    if run.main:
        run.write("metrics.json", m)
        from rl_router.plots import plot_training

        plot_training(trainer.state.log_history, run.out / "training_curves.png", title=f"{run.recipe.algorithm.name.upper()} on {', '.join(run.pool.model_names)}", heldout=m)
    return m


def train(recipe: Recipe, *, output_dir: str | None = None, resume: bool = False, log: Callable[[str], None] = print, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run the stages (module docstring) and return the metrics. `callbacks`: transformers
    `TrainerCallback`s for the RL trainer (as with any HF trainer: logging, early stopping)."""
    run = setup(recipe, output_dir, resume, log)
    a = recipe.algorithm
    stage_baselines(run)
    stage_eval(run, "eval_before", "heldout_before", "eval_before.json", "the initial router", recipe.data.max_heldout_initial)
    run.peak_memory("the baselines and the initial eval")
    if a.sft_warmstart or a.name == "bopo":
        stage_boundaries(run)
    if a.sft_warmstart:
        stage_warm_start(run)
        run.peak_memory("the warm start")
        stage_eval(run, "eval_after_sft", "heldout_after_sft", "eval_after_sft.json", "the warm-started router")
        run.peak_memory("the warm start's eval")
    trainer = stage_rl(run, callbacks)
    run.peak_memory("RL")
    return stage_report(run, trainer)
