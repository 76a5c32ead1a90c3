"""A real router's speed against the machine's limit: SmolLM2-135M on held-out MMLU, one run.

Every ratio is measured in this one run, each timing the median of `--repeats`:
(a) the limit: a bare `model(...)` forward over the eval episodes' full token sequences
    (prompt + every turn + pool replies), batched as eval batches them, no cache, last-position
    logits only: tokens/s;
(b) held-out eval through our engine (the router greedy, single-shot routing, decisions by
    name), tasks/s, before (`GeneratePolicy`: model.generate re-prefilling every turn) and
    after (`HFPolicy`: the KV-cached decoder), and after / (a) for the same tokens; the
    11-point knob curve in one pass / one eval; with --autocast, bf16 in task order and as
    the evaluator runs it (tasks batched by length, the system prompt read once);
(c) SFT: PolicyTokenSFTTrainer (TRL's SFTTrainer, our policy-token loss) tokens/s vs a bare
    forward + backward + AdamW step on the same rows;
(d) a multi-turn GRPO step (RouterGRPOTrainer + our rollout hook) vs TRL's own single-turn
    GRPOTrainer step generating the same number of tokens;
(e) peak RSS.

    python scripts/bench_router.py [--n 64] [--batch 32] [--repeats 3] [--router PATH] [--threads 2] [--skip sft,grpo]

`--router` takes a trained checkpoint (default: SmolLM2-135M-Instruct as fetched, which does
not stop early: every turn runs to max_new_tokens, the same for before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import tempfile
import time


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn, repeats: int) -> tuple[float, object]:
    out, ts = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return med(ts), out


def bare_forward(model, tok, seqs: list[list[int]], batch: int) -> float:
    """Seconds for one forward over every sequence, `batch` at a time (left-padded), no cache."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            chunk = seqs[i : i + batch]
            W = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), W), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(chunk):
                ids[r, W - len(s):] = torch.tensor(s)
                mask[r, W - len(s):] = 1
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="held-out tasks")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--router", default="smollm2-135m")
    ap.add_argument("--recipe", default="recipes/smollm2_135m.yaml")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--autocast", action="store_true", help="also run the eval under bf16 autocast (model.autocast: bfloat16) and compare")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: eval, fp32 (the float32 eval and its bare forward; --autocast still runs), before (the model.generate eval), oldbf16 (--autocast: the stop-38 bf16 path), curve, sft, grpo")
    a = ap.parse_args()
    os.environ.setdefault("RL_ROUTER_NO_PROGRESS", "1")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    skip = set(filter(None, a.skip.split(",")))
    from rl_router.models import load_checkpoint, router_from_recipe
    from rl_router.recipe import load_recipe
    from rl_router.rollout.engine import make_engine, run_biases, run_sharded, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import GeneratePolicy, HFPolicy
    from rl_router.task_sources import recipe_pool, recipe_tasks

    r = load_recipe(a.recipe, [f"data.max_heldout={a.n}", f"model.dtype={a.dtype}"] + ([] if a.router == "smollm2-135m" else []))
    pool = recipe_pool(r)
    train, held = recipe_tasks(r, pool)
    if a.router == "smollm2-135m":
        model, tok = router_from_recipe(r)
    else:
        model, tok = load_checkpoint(a.router, r)
    model.eval()
    engine = make_engine(r, pool, tok)
    kw = {"max_new_tokens": r.rollout.max_new_tokens, "temperature": 0.0, "stop_strings": stop_strings(r)}
    names = {"route_weights": cost_weights(pool), "names": pool.model_names}
    print(f"router {a.router} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {a.dtype}), {len(held)} held-out MMLU tasks, batch {a.batch}, "
          f"max {r.rollout.max_new_tokens} new tokens per turn, {r.env_config().max_turns} turns, torch threads {torch.get_num_threads()}")
    res: dict[str, float] = {}
    if "eval" not in skip:
        fp32 = "fp32" not in skip  # --skip fp32: only the bf16 evals (--autocast) and their bare bf16 forward
        t_after, eps_after = timed(lambda: engine.run_batched(held, HFPolicy(model, tok, **kw, **names), batch_size=a.batch), a.repeats) if fp32 else (float("nan"), None)
        if "before" in skip or not fp32:
            t_before, same = float("nan"), "-"
        else:
            t_before, eps_before = timed(lambda: engine.run_batched(held, GeneratePolicy(model, tok, **kw), batch_size=a.batch), a.repeats)
            same = sum(x["completion_ids"] == y["completion_ids"] for x, y in zip(eps_before, eps_after))
        seqs = [e["prompt_ids"] + e["completion_ids"] for e in eps_after] if fp32 else []
        n_tok = sum(len(s) for s in seqs)
        t_bare, _ = timed(lambda: bare_forward(model, tok, seqs, a.batch), a.repeats) if fp32 else (float("nan"), None)
        res.update(before_tasks_s=len(held) / t_before, after_tasks_s=len(held) / t_after, bare_tokens_s=n_tok / t_bare)
        print(f"(a) bare forward over the eval episodes' {n_tok} tokens: {t_bare:.2f} s, {n_tok / t_bare:.0f} tokens/s (the limit)")
        print(f"(b) eval before (generate, re-prefill): {t_before:.2f} s = {len(held) / t_before:.3f} tasks/s")
        print(f"    eval after (cached decoder, by name): {t_after:.2f} s = {len(held) / t_after:.3f} tasks/s: x{t_before / t_after:.1f} faster; "
              f"after / bare forward of the same tokens: {t_after / t_bare:.2f}; greedy episodes identical to before: {same}/{len(held)}")
        if a.autocast:  # the same episodes' eval with model.autocast: bfloat16, against float32
            from rl_router import precision
            from rl_router.rollout import decoder

            t_bf, eps_bf = timed(lambda: engine.run_batched(held, HFPolicy(model, tok, **kw, **names, autocast="bfloat16"), batch_size=a.batch), a.repeats)
            same_bf = sum(x["completion_ids"] == y["completion_ids"] for x, y in zip(eps_after, eps_bf)) if fp32 else "-"
            # bf16 as the evaluator runs it: tasks batched by length, the system prompt read once by every row
            t_ev, eps_ev = timed(lambda: run_sharded(engine, held, HFPolicy(model, tok, **kw, **names, autocast="bfloat16", share_system_prompt=True), batch_size=a.batch), a.repeats)
            same_ev = sum(x["completion_ids"] == y["completion_ids"] for x, y in zip(eps_ev, eps_bf))
            print(f"    eval, bf16 as the evaluator runs it (by length, system prompt once): {t_ev:.2f} s = {len(held) / t_ev:.3f} tasks/s: x{t_bf / t_ev:.2f} the task-order bf16 eval; "
                  f"greedy episodes identical to it: {same_ev}/{len(held)}")
            res.update(bf16_eval_tasks_s=len(held) / t_ev)
            # the bf16 path before frozen weights were cast once per decode and the cache kept float32: plain autocast
            # (every frozen weight recast at every forward), the cache in the dtype the layers emit
            if "oldbf16" in skip:
                t_bf_old, eps_bf_old = float("nan"), eps_bf
            cast, keep = precision.frozen_weights_cast, decoder.cache_dtype
            precision.frozen_weights_cast, decoder.cache_dtype = (lambda model, dtype: contextlib.nullcontext()), (lambda dtype: dtype)
            try:
                if "oldbf16" not in skip:
                    t_bf_old, eps_bf_old = timed(lambda: engine.run_batched(held, HFPolicy(model, tok, **kw, **names, autocast="bfloat16"), batch_size=a.batch), a.repeats)
            finally:
                precision.frozen_weights_cast, decoder.cache_dtype = cast, keep
            same_old = sum(x["completion_ids"] == y["completion_ids"] for x, y in zip(eps_bf_old, eps_bf))
            print(f"    eval, bf16 autocast as stop 38 ran it (weights recast every forward, cache as emitted): {t_bf_old:.2f} s = {len(held) / t_bf_old:.3f} tasks/s; "
                  f"now x{t_bf_old / t_bf:.2f} faster; greedy episodes identical: {same_old}/{len(held)}")
            seqs_bf = [e["prompt_ids"] + e["completion_ids"] for e in eps_bf]
            n_bf = sum(len(s) for s in seqs_bf)
            with precision.autocast_for(model, "bfloat16"):
                t_bare_bf, _ = timed(lambda: bare_forward(model, tok, seqs_bf, a.batch), a.repeats)
            res.update(bf16_tasks_s=len(held) / t_bf)
            print(f"    eval, bf16 autocast: {t_bf:.2f} s = {len(held) / t_bf:.3f} tasks/s: x{t_after / t_bf:.2f} the float32 eval, x{t_before / t_bf:.2f} the generate path; "
                  f"bare bf16 forward of its {n_bf} tokens {t_bare_bf:.2f} s ({n_bf / t_bare_bf:.0f} tokens/s), eval / that {t_bf / t_bare_bf:.2f}; greedy episodes identical to float32: {same_bf}/{len(held)}")
        if "curve" not in skip:
            biases = [-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
            t_curve, _ = timed(lambda: run_biases(engine, held, HFPolicy(model, tok, biases=tuple(biases), **kw, **names), biases, batch_size=a.batch), a.repeats)
            print(f"    the 11-point knob curve in one pass: {t_curve:.2f} s = {t_curve / t_after:.2f} x one eval")
    if "sft" not in skip:
        bench_sft(r, pool, train, model, tok, a)
    if "grpo" not in skip:
        bench_grpo(r, pool, train, a)
    print(f"(e) peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def sft_rows_for(r, pool, train, tok, n: int):
    """Warm-start rows as training writes them: compact boundary trajectories (always-cheap and
    always-strong episodes), policy tokens labelled."""
    from rl_router.rollout.engine import make_engine
    from rl_router.rollout.policies import ScriptedPolicy
    from rl_router.training.boundary import sft_rows

    engine = make_engine(r, pool, tok)
    eps = []
    for m in pool.model_names:
        eps += engine.run_batched(train[: n // 2], ScriptedPolicy.always(tok, m, query="short", adopt=True), batch_size=64)
    return sft_rows(eps[:n], eos_id=tok.eos_token_id)


def bench_sft(r, pool, train, model, tok, a) -> None:
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    from rl_router.models import lora_config
    from rl_router.training.sft import PolicyTokenSFTTrainer, policy_token_loss

    steps, bs = 4, int(r.sft.get("per_device_train_batch_size", 8))
    rows = sft_rows_for(r, pool, train, tok, steps * bs)
    n_tok = sum(len(x["input_ids"]) for x in rows)
    from peft import get_peft_model

    def fresh():
        from rl_router.models import router_from_recipe

        return router_from_recipe(r)[0]

    def trainer_run() -> float:
        with tempfile.TemporaryDirectory() as d:
            cfg = SFTConfig(output_dir=d, **{**r.sft, "max_steps": steps, "save_strategy": "no", "logging_steps": 100, "report_to": "none", "disable_tqdm": True}, use_cpu=True, bf16=False)
            t = PolicyTokenSFTTrainer(model=fresh(), args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=lora_config(r))
            t0 = time.perf_counter()
            t.train()
            return time.perf_counter() - t0

    def bare_run() -> float:
        m = fresh()
        m = get_peft_model(m, lora_config(r)) if lora_config(r) else m
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        m.train()
        t0 = time.perf_counter()
        for i in range(0, len(rows), bs):
            chunk = rows[i : i + bs]
            W = max(len(x["input_ids"]) for x in chunk)
            ids = torch.full((len(chunk), W), tok.pad_token_id, dtype=torch.long)
            lab = torch.full((len(chunk), W), -100, dtype=torch.long)
            att = torch.zeros_like(ids)
            for k, x in enumerate(chunk):  # right padding, as TRL's collator pads
                ids[k, : len(x["input_ids"])] = torch.tensor(x["input_ids"])
                lab[k, : len(x["labels"])] = torch.tensor(x["labels"])
                att[k, : len(x["input_ids"])] = 1
            loss, _ = policy_token_loss(m, ids, lab, att)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - t0

    t_tr = med([trainer_run() for _ in range(a.repeats)])
    t_bare = med([bare_run() for _ in range(a.repeats)])
    print(f"(c) SFT, {steps} steps x {bs} rows ({n_tok} tokens): trainer {t_tr:.2f} s = {n_tok / t_tr:.0f} tokens/s; bare forward+backward+AdamW {t_bare:.2f} s: ratio {t_tr / t_bare:.2f}")


def bench_grpo(r, pool, train, a) -> None:
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_step", Path(__file__).with_name("bench_step.py"))
    bs = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = bs
    spec.loader.exec_module(bs)
    m, s_gen = bs.step_ratio(a.recipe, steps=4, router=a.router)
    print(f"(d) GRPO step: multi-turn {m:.2f} s vs TRL's single-turn step with the same generated tokens {s_gen:.2f} s: ratio {m / s_gen:.2f}")


if __name__ == "__main__":
    main()
