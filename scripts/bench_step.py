"""One multi-turn GRPO training step / TRL's plain single-turn GRPO step, same token counts.

Multi-turn: RouterGRPOTrainer with our rollout hook (Router-R1 env over the recorded GSM8K
pool, 3 turns, pool replies inserted and masked). Single-turn: TRL's own GRPOTrainer
generating one completion per prompt with its built-in HF path, forced to the mean
completion length the multi-turn episodes had (policy + inserted tokens), from prompts of
the same length. Both: the tiny router, batch 8, 4 generations, CPU. Reports the median
step time of steps 2..N and the ratio (goal <= 1.15), plus peak RSS. `--recipe` takes another
router and pool (scripts/bench_router.py runs it on SmolLM2-135M).

    python scripts/bench_step.py [--steps 6] [--recipe R]

`--shared 16x8` measures instead one GRPO step of 16 tasks x 8 samples on a real router
(default recipes/dcrouter_smollm2.yaml; `--router RUN/sft` for a warm start that writes the
protocol): ours (cached decoder, bf16 autocast, shared prompts) against TRL's GRPOTrainer path
(model.generate, its own loss, float32) and a bare forward + backward over the step's distinct
tokens, with peak RSS; each path's rollout is timed after an untimed warm-up rollout of the same
batch (what a process pays once: the decoder's thread-count measurements). Each path runs in its own process (`--paths ours,trl`), so each peak RSS
is its own; `--set K=V` overrides the recipe (e.g. `algorithm.trim_padding=true`);
`--set algorithm.all_names_episodes=scripted` (with all-names groups, samples = the pool's size)
measures the scripted step; `algorithm.prompt_gradient=false` its truncated gradient, against the
same full-gradient bare pass; `algorithm.microbatch_tokens=N` the loss as one micro-batch of the
whole generation, cut into pieces of at most N tokens (instead of one group per micro-batch). `--rollout-only` times the rollout and its peak RSS alone (e.g. the prompt KV copied per row,
`--set rollout.share_prompts=false`, against held once).

    python scripts/bench_step.py --shared 16x8 --recipe recipes/mmlu_pro_single_smollm2.yaml --router RUN/sft
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


def shared_step(recipe: str, path: str, *, tasks_n: int = 16, samples: int = 8, router: str | None = None, sets: list[str] | None = None, rollout_only: bool = False,
                row_split_ab: int = 0) -> dict:
    """One GRPO step of `tasks_n` tasks x `samples` samples on the recipe's router, on the same
    tasks, by one `path` (one repeat: a SmolLM2 step is minutes). Each path runs in its own
    process (`main` starts them), so each peak RSS is its own and two models never share memory:
    ours: the rollout (cached decoder, the recipe's model.autocast and rollout.share_prompts)
      + the loss (RouterGRPOTrainer: shared-prompt log-probs at the loss's positions only) and
      backward, one group per micro-batch; then, in the same process on the same episodes,
      bare: one forward + backward over the step's distinct tokens (each prompt once, each
      completion once, logits only at the completions), in the recipe's precision: the
      machine's limit for the loss. No sampling is in it: the step's rollout is extra work;
    trl: episodes of the same prompts generated by `model.generate` (TRL's HF generation:
      float32, the context re-prefilled every turn) + TRL's own `GRPOTrainer._compute_loss` (its per-token
      log-probs over every row's full sequence) and backward, float32 (TRL's CPU default),
      the same micro-batches."""
    import types

    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rl_router.models import load_checkpoint, lora_config, router_from_recipe
    from rl_router.precision import autocast_for, prepare_attention, usable
    from rl_router.recipe import load_recipe
    from rl_router.rewards import build_rewards
    from rl_router.rollout.engine import make_engine, make_rollout_func, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import GeneratePolicy, HFPolicy
    from rl_router.training import microbatch
    from rl_router.training.pipeline import scripted_targets, trainer_options
    from rl_router.training.trainer import RouterGRPOTrainer

    r = load_recipe(recipe, sets or [])
    pool = recipe_pool(r)
    tasks = recipe_tasks(r, pool)[0][:tasks_n]
    funcs, weights = build_rewards(r.rewards)
    bf16 = path == "ours" and usable(r.model.autocast, "cpu")
    if bf16:
        prepare_attention()
    model, tok = load_checkpoint(router, r) if router else router_from_recipe(r)
    scratch = tempfile.TemporaryDirectory(prefix="bench_step_")  # the trainer's output_dir (nothing is saved), removed at exit
    if path == "ours":
        names = {"names": pool.model_names, "route_weights": cost_weights(pool)}
        policy = lambda tr: HFPolicy(tr.accelerator.unwrap_model(tr.model), tok, max_new_tokens=r.rollout.max_new_tokens, temperature=1.0,  # noqa: E731
                                     stop_strings=stop_strings(r), autocast=r.model.autocast, share_prompts=r.rollout.share_prompts, **names)
    else:
        policy = lambda tr: GeneratePolicy(tr.accelerator.unwrap_model(tr.model), tok, max_new_tokens=r.rollout.max_new_tokens, temperature=1.0, stop_strings=stop_strings(r))  # noqa: E731
    # ours: the recipe's algorithm settings (all-names groups, scripted episodes, prompt_gradient, trim_padding); TRL's path: its own GRPO
    opts = trainer_options(r) if path == "ours" else {}
    enum = pool.model_names if opts.get("advantage") == "all_names" else None
    # algorithm.microbatch_tokens: the whole generation is one micro-batch, cut into pieces by tokens (as a recipe with
    # per_device_train_batch_size = the generation does); else one group per micro-batch
    by_tokens = path == "ours" and opts.get("microbatch_tokens") is not None
    mb, accumulate = (tasks_n * samples, 1) if by_tokens else (samples, tasks_n)
    args = GRPOConfig(output_dir=scratch.name, per_device_train_batch_size=mb, gradient_accumulation_steps=accumulate, num_generations=samples, max_steps=1, learning_rate=1e-5, beta=0.0,
                      bf16=bf16, use_cpu=True, report_to="none", save_strategy="no", temperature=1.0, scale_rewards="batch", max_completion_length=r.rollout.max_completion_tokens,
                      gradient_checkpointing=False, disable_tqdm=True, seed=0, reward_weights=weights)
    tr = RouterGRPOTrainer(model=model, reward_funcs=funcs, args=args, processing_class=tok, train_dataset=Dataset.from_list([{"prompt": t.question, **t.to_row()} for t in tasks]),
                           rollout_func=make_rollout_func(make_engine(r, pool, tok), tasks, policy, enumerate_names=enum, scripted=scripted_targets(r, tok) if enum else None), peft_config=lora_config(r), **opts)
    compute = RouterGRPOTrainer._compute_loss
    if path == "trl":
        tr._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, tr)
        compute = GRPOTrainer._compute_loss
    tr.model.train()
    prompts = [{"prompt": t.question, **t.to_row()} for t in tasks for _ in range(samples)]  # the task's columns: the rewards read its gold
    n = len(prompts)
    # a warm-up rollout of the same batch, untimed: what a process pays once, not every step (the
    # decoder's thread-count measurement per batch size, `decoder.decode_threads`, which one step
    # of this batch ran 2-3 times; the allocator's first growth); then the same seed again, so the
    # timed rollout makes the same episodes (the peak RSS after the rollout covers both: the same batch)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    tr._generate_and_score_completions(prompts)
    warmup_s = time.perf_counter() - t0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = tr._generate_and_score_completions(prompts)
    rollout_s = time.perf_counter() - t0
    rss_rollout = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if rollout_only:
        pm, cm = out["prompt_mask"], out["completion_mask"]
        return dict(path=path, tasks=tasks_n, samples=samples, distinct_tokens=int(pm[::samples].sum()) + int(cm.sum()), all_tokens=int(pm.sum() + cm.sum()), rollout_s=rollout_s,
                    warmup_rollout_s=warmup_s, rss_rollout_mib=rss_rollout, bf16=bf16, completion_tokens=int(cm.sum()))
    def loss_and_backward() -> float:
        t0 = time.perf_counter()
        tr.current_gradient_accumulation_steps = accumulate
        if by_tokens:  # the trainer's own pieces: each but the last backwarded inside compute_loss
            tr.compute_loss(tr.model, out).backward()
        else:
            for s in range(0, n, samples):
                compute(tr, tr.model, microbatch.rows(out, s, s + samples)).backward()
        tr.model.zero_grad()
        return time.perf_counter() - t0

    loss_s = loss_and_backward()
    ab = {}
    if row_split_ab:  # the same batch's loss with the packed attention row by row and as one masked call, alternately
        from rl_router.training import logprobs

        share = logprobs.SPLIT_SHARE
        times: dict[str, list[float]] = {"row_split": [], "packed_mask": []}
        try:
            for i in range(row_split_ab):
                for mode in (("row_split", "packed_mask") if i % 2 else ("packed_mask", "row_split")):
                    logprobs.SPLIT_SHARE = share if mode == "row_split" else 0.0
                    times[mode].append(loss_and_backward())
        finally:
            logprobs.SPLIT_SHARE = share
        ab = {"ab_" + k: v for k, v in times.items()}
    pm, cm = out["prompt_mask"], out["completion_mask"]
    res = dict(path=path, tasks=tasks_n, samples=samples, prompt_width=out["prompt_ids"].size(1), completion_width=out["completion_ids"].size(1),
               distinct_tokens=int(pm[::samples].sum()) + int(cm.sum()), all_tokens=int(pm.sum() + cm.sum()), rollout_s=rollout_s, warmup_rollout_s=warmup_s, loss_s=loss_s, step_s=rollout_s + loss_s,
               rss_rollout_mib=rss_rollout, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, bf16=bf16,
               microbatch_tokens=opts.get("microbatch_tokens"), loss_pieces=tr._metrics["train"].get("loss/pieces", [None])[-1], **ab)
    if path != "ours":
        return res
    # bare forward + backward over the distinct tokens: per group, the first row whole (its prompt and
    # completion), then the other rows' completions alone, as one batch padded to its own longest
    base = tr.accelerator.unwrap_model(tr.model)
    longest = int(cm.sum(1).max())  # the longest completion, computed once, outside the timed loop

    def fb(seqs: list) -> None:
        L = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), L), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, x in enumerate(seqs):
            ids[i, : len(x)], att[i, : len(x)] = x, 1
        keep = min(L, longest)  # logits only where log-probs are read: the completions
        with autocast_for(base, r.model.autocast):
            loss = base(input_ids=ids, attention_mask=att, use_cache=False, logits_to_keep=keep).logits.float().mean()
        loss.backward()

    t0 = time.perf_counter()
    for g in range(0, n, samples):
        fb([torch.cat([out["prompt_ids"][g][pm[g].bool()], out["completion_ids"][g][cm[g].bool()]])])
        fb([out["completion_ids"][i][cm[i].bool()] for i in range(g + 1, g + samples)])
    base.zero_grad()
    res["bare_fb_s"] = time.perf_counter() - t0
    return res


def run_shared(recipe: str, *, tasks_n: int, samples: int, router: str | None, paths: list[str], sets: list[str] | None = None, rollout_only: bool = False,
               row_split_ab: int = 0) -> dict[str, dict]:
    """Each path in a fresh Python process, one after the other (never two models at once)."""
    import json
    import subprocess
    import sys

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for p in paths:
            f = os.path.join(d, f"{p}.json")
            cmd = [sys.executable, __file__, "--recipe", recipe, "--shared", f"{tasks_n}x{samples}", "--path", p, "--json", f] + (["--router", router] if router else []) + [a for x in sets or [] for a in ("--set", x)] + (["--rollout-only"] if rollout_only else []) + (["--row-split-ab", str(row_split_ab)] if row_split_ab and p == "ours" else [])
            subprocess.run(cmd, check=True)
            out[p] = json.loads(open(f).read())
            print(f"{p}: {json.dumps(out[p])}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--recipe", default=None, help="recipe YAML (default: the quickstart's tiny router)")
    ap.add_argument("--shared", default=None, metavar="TASKSxSAMPLES", help="instead: one GRPO step of TASKS x SAMPLES on the recipe's router, ours vs TRL's GRPOTrainer path vs a bare forward + backward over the distinct tokens (e.g. 16x8)")
    ap.add_argument("--router", default=None, help="--shared: a checkpoint (e.g. RUN/sft, a warm start that writes the protocol) instead of the recipe's model")
    ap.add_argument("--path", choices=["ours", "trl"], default=None, help="--shared: run this path alone in this process (used by --paths, which starts one process per path)")
    ap.add_argument("--json", default=None, help="--shared --path: write the result here")
    ap.add_argument("--paths", default="ours,trl", help="--shared: the paths to run, each in its own process (e.g. ours: only ours and the bare pass)")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="--shared: a recipe override (repeatable), e.g. algorithm.trim_padding=true")
    ap.add_argument("--rollout-only", action="store_true", help="--shared: time the rollout and its peak RSS only (e.g. with --set rollout.share_prompts=false, the unshared cache)")
    ap.add_argument("--row-split-ab", type=int, default=0, metavar="N", help="--shared, ours: after the timed step, the same batch's loss and backward N times each with the packed "
                    "completions' attention row by row and as one masked call (training/logprobs.py SPLIT_SHARE), alternately, in this process: medians and the per-pair ratio")
    a = ap.parse_args()
    if a.shared:
        t, s_ = (int(x) for x in a.shared.lower().split("x"))
        recipe = a.recipe or "recipes/dcrouter_smollm2.yaml"
        if a.path:
            import json

            res = shared_step(recipe, a.path, tasks_n=t, samples=s_, router=a.router, sets=a.set, rollout_only=a.rollout_only, row_split_ab=a.row_split_ab)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(res, f)
            return
        res = run_shared(recipe, tasks_n=t, samples=s_, router=a.router, paths=a.paths.split(","), sets=a.set, rollout_only=a.rollout_only, row_split_ab=a.row_split_ab)
        if a.rollout_only:
            for p, o in res.items():
                print(f"{p}: rollout of {t} tasks x {s_} samples {o['rollout_s']:.1f} s, {o['completion_tokens']} completion tokens; peak RSS {o['rss_rollout_mib']:.0f} MiB")
            return
        o, x = res.get("ours"), res.get("trl")
        if o:
            print(f"{t} tasks x {s_} samples; {o['distinct_tokens']} distinct tokens ({o['all_tokens']} with every row's prompt); bf16 autocast: {o['bf16']}")
            print(f"ours: rollout {o['rollout_s']:.1f} s (the warm-up rollout of the same batch before it: {o['warmup_rollout_s']:.1f} s) + loss and backward {o['loss_s']:.1f} s = {o['step_s']:.1f} s; peak RSS {o['rss_mib']:.0f} MiB (before the bare pass; {o['rss_rollout_mib']:.0f} after the rollout)")
            print(f"bare forward + backward over the distinct tokens: {o['bare_fb_s']:.1f} s")
            print(f"step ours / bare F+B {o['step_s'] / o['bare_fb_s']:.2f} (goal <= 1.3); loss ours / bare F+B {o['loss_s'] / o['bare_fb_s']:.2f}; peak RSS ours {o['rss_mib']:.0f} MiB (goal <= 6144)")
        if o and o.get("ab_row_split"):
            import statistics

            rs, pm = o["ab_row_split"], o["ab_packed_mask"]
            print(f"the same loss and backward, alternately ({len(rs)} each): attention row by row median {statistics.median(rs):.1f} s, as one masked call {statistics.median(pm):.1f} s; "
                  f"per-pair ratios {', '.join(f'{a / b:.2f}' for a, b in zip(rs, pm))}")
        if x:
            print(f"TRL (model.generate + GRPOTrainer._compute_loss, float32): rollout {x['rollout_s']:.1f} s + loss and backward {x['loss_s']:.1f} s = {x['step_s']:.1f} s; peak RSS {x['rss_mib']:.0f} MiB ({x['rss_rollout_mib']:.0f} after the rollout)")
        if o and x:
            print(f"TRL step / ours {x['step_s'] / o['step_s']:.2f} (goal >= 4); TRL loss / ours {x['loss_s'] / o['loss_s']:.2f}")
        return
    m, s = step_ratio(a.recipe, steps=a.steps, verbose=True)
    print(f"multi-turn GRPO step {m:.3f} s; TRL single-turn step with the same generated tokens {s:.3f} s -> ratio {m / s:.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
