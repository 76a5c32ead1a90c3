"""`model.autocast: bfloat16` and group-prompt prefill: what they change and what they must not.

bf16 autocast is one numeric policy for sampling and the loss: the log-probs a training rollout
records and the loss's log-probs are both bf16 forwards of the same weights, closer to each
other than either is to float32 (so importance ratios stay near 1). Group-prompt prefill
(`rollout.share_prompts`) runs a GRPO group's shared prompt once and copies its cache: the same
episodes, fewer tokens through the model.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from rl_router import precision
from rl_router.training.logprobs import policy_logps
from rl_router.training.trainer import RouterGRPOTrainer


def _trained(gsm8k_run):
    from rl_router.models import load_checkpoint
    from rl_router.recipe import recipe_from_dict
    from rl_router.task_sources import recipe_pool, recipe_tasks

    recipe = recipe_from_dict(json.loads((gsm8k_run.out / "recipe.json").read_text()))
    model, tok = load_checkpoint(gsm8k_run.out / "final", recipe)
    pool = recipe_pool(recipe)
    return recipe, model, tok, pool, recipe_tasks(recipe, pool)[0]


def test_the_autocast_knob_is_checked_and_sets_trl_bf16_only_where_native():
    from rl_router.errors import ConfigError
    from rl_router.recipe import recipe_from_dict, validate_combination
    from rl_router.training.pipeline import autocast_settings

    with pytest.raises(ConfigError) as e:
        validate_combination(recipe_from_dict({"model": {"autocast": "fp8"}}))
    assert "model.autocast" in str(e.value) and "bfloat16" in str(e.value)
    said: list[str] = []
    assert autocast_settings(recipe_from_dict({}), "cpu", said.append) == {}
    got = autocast_settings(recipe_from_dict({"model": {"autocast": "bf16"}}), "cpu", said.append)
    if precision.cpu_has_bf16():
        assert got == {"bf16": True} and "bfloat16" in said[0]
    else:
        assert got == {} and "float32" in said[0]
    assert autocast_settings(recipe_from_dict({"model": {"autocast": "bfloat16"}}), "cuda", said.append) == {"bf16": True}


def test_bf16_rollouts_and_the_bf16_loss_are_one_distribution(tmp_path, gsm8k_run):
    """A training rollout under model.autocast: bfloat16 samples in bf16 and the trainer's loss
    (TRL's bf16: true, accelerate's autocast) computes its log-probs in bf16, within bf16
    rounding of the sampler's (the KV-cached decoder and the full forward round differently);
    the gradients land on float32 weights. Where bf16 is not native the policy runs float32 and
    the log-probs are the float32 loss's."""
    from rl_router.rollout.engine import make_engine, make_rollout_func, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import HFPolicy

    recipe, model, tok, pool, tasks = _trained(gsm8k_run)
    fresh = _trained(gsm8k_run)[1]  # the same weights outside accelerate (whose bf16 wraps the model's forward): the float32 pass
    tasks = tasks[:8]
    native = precision.cpu_has_bf16()
    rollout = make_rollout_func(make_engine(recipe, pool, tok), tasks, lambda tr: HFPolicy(tr.accelerator.unwrap_model(tr.model), tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=1.0,
                                                                                           stop_strings=stop_strings(recipe), names=pool.model_names, route_weights=cost_weights(pool),
                                                                                           autocast="bfloat16", share_prompts=True))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, num_generations=4, max_steps=1, learning_rate=1e-3, temperature=1.0, beta=0.0, bf16=native, use_cpu=True,
                      report_to="none", save_strategy="no", max_completion_length=recipe.rollout.max_completion_tokens, gradient_checkpointing=False)
    trainer = RouterGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [float(i % 2) for i in range(len(completions))]], args=args,
                                train_dataset=Dataset.from_list([{"prompt": t.question} for t in tasks]), processing_class=tok, rollout_func=rollout)
    trainer.model.train()
    torch.manual_seed(0)
    precision.prepare_attention()
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    comp = out["completion_ids"]
    ids, att = torch.cat([out["prompt_ids"], comp], 1), torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    trained = (out["completion_mask"] * out["tool_mask"]).bool()
    trainer._decision_allowed, trainer._logp_positions = out["decision_allowed"], trained  # what _compute_loss sets
    with torch.no_grad():
        loss_lp = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, comp.size(1))[0]  # under the trainer's autocast
        fp32_lp = policy_logps(fresh, ids, att, comp.size(1), temperature=1.0, positions=trained, allowed=out["decision_allowed"])[0]
    sampled = out["sampling_per_token_logps"][trained]
    same, other = (loss_lp[trained] - sampled).abs(), (fp32_lp[trained] - sampled).abs()
    assert int(trained.sum()) > 100
    if native:
        assert float((loss_lp[trained] - fp32_lp[trained]).abs().max()) > 1e-3  # the loss ran in bf16 ...
        assert float(other.max()) > 1e-3  # ... and so did the sampler (a float32 sampler matches the float32 pass to 1e-4: tests/test_name_decisions.py)
        assert float(same.max()) < 0.05  # importance ratios of the bf16 loss to the bf16 sampler within e^0.05
    else:
        torch.testing.assert_close(fp32_lp[trained], sampled, rtol=0, atol=1e-4)
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, out)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad.dtype == torch.float32 for p in trainer.model.parameters() if p.grad is not None)  # float32 master weights
    # frozen weights (LoRA's base; here the first layer's MLP and the output layer) are cast to bf16 once for the run
    # (trainer._frozen_casts): no number of the loss or its gradient changes
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    for p in [*unwrapped.model.layers[0].mlp.parameters(), unwrapped.lm_head.weight]:  # and the (tied) output layer, which the loss applies in float32
        p.requires_grad_(False)
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, out)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    assert bool(getattr(trainer, "_kept_casts", {})) == native
    trainer.model.zero_grad()
    from contextlib import nullcontext

    trainer._frozen_casts = nullcontext  # autocast's own per-forward casts
    again = trainer._compute_loss(trainer.model, out)
    again.backward()
    assert torch.equal(loss.detach(), again.detach())
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, [p for p in trainer.model.parameters() if p.grad is not None]))


def test_a_groups_prompt_is_prefilled_once_and_its_episodes_are_unchanged(gsm8k_run):
    """rollout.share_prompts: four samples of a task start from one prefilled row copied four
    times; greedy episodes equal the per-row prefill's, their log-probs to float rounding, and
    the model reads fewer tokens."""
    from rl_router.rollout.engine import make_engine, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import HFPolicy

    recipe, model, tok, pool, tasks = _trained(gsm8k_run)
    group = [t for t in tasks[:6] for _ in range(4)]
    engine = make_engine(recipe, pool, tok)
    got = {}
    for share in (False, True):
        policy = HFPolicy(model, tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=0.0, stop_strings=stop_strings(recipe), names=pool.model_names, route_weights=cost_weights(pool),
                          logprobs=True, share_prompts=share)
        eps = engine.run_batched(group, policy, batch_size=len(group))
        got[share] = (eps, policy.session.forward_tokens)
    (a, tok_a), (b, tok_b) = got[False], got[True]
    assert [e["completion_ids"] for e in a] == [e["completion_ids"] for e in b]
    for x, y in zip(a, b):  # (inserted pool tokens carry NaN: no log-prob)
        torch.testing.assert_close(torch.tensor(x["logprobs"]), torch.tensor(y["logprobs"]), rtol=0, atol=1e-4, equal_nan=True)
    # saved: exactly the task part of each copy's prompt (the system prompt's KV was already shared by all rows)
    prompts = [e["prompt_ids"] for e in a]
    p = next(i for i in range(min(map(len, prompts))) if len({q[i] for q in prompts}) > 1)
    copies = [q for i, q in enumerate(prompts) if i % 4]
    assert tok_a - tok_b == sum(len(q) - p for q in copies) > 0, (tok_a, tok_b, p)


def test_the_warm_start_loss_runs_under_trls_bf16(tmp_path):
    """sft.bf16 (which model.autocast sets): our policy-token loss runs the decoder itself, past
    the forward accelerate wraps in autocast, so it enters the trainer's autocast on its own;
    the linear layers then compute in bf16 (where native) and the weights stay float32."""
    from trl import SFTConfig

    from rl_router.tiny import build_tiny_router
    from rl_router.training.sft import PolicyTokenSFTTrainer

    model, tok = build_tiny_router(seed=0)
    native = precision.cpu_has_bf16()
    rows = [{"input_ids": list(range(5, 45)), "labels": [-100] * 30 + list(range(35, 45))} for _ in range(2)]
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, bf16=native, use_cpu=True, report_to="none", save_strategy="no", gradient_checkpointing=False)
    trainer = PolicyTokenSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    seen: list[torch.dtype] = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.train()
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16 if native else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_frozen_weights_are_cast_once_per_context_with_the_same_numbers():
    """autocast_for casts the frozen linear weights (LoRA's base layers, the tied output layer)
    to bf16 once on entry, because autocast itself recasts a weight that needs no grad at every
    forward. Inside, the logits equal plain autocast's bit for bit; the trainable LoRA weights
    and the tied embedding stay float32; on exit every layer holds its own Parameter again."""
    from peft import LoraConfig, get_peft_model

    from rl_router.tiny import build_tiny_router

    model, _ = build_tiny_router(seed=0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    for n, p in model.named_parameters():  # a non-zero adapter, so the LoRA path counts in the logits
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    native = precision.cpu_has_bf16()
    precision.prepare_attention()  # the attention autocast_for runs, so that only the weight casts differ
    ids = torch.randint(5, 200, (3, 17), generator=torch.Generator().manual_seed(0))
    before = {n: p for n, p in model.named_parameters()}
    base = model.base_model.model
    q = base.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=native):
            plain = model(input_ids=ids).logits
        with precision.autocast_for(model, "bfloat16"):
            inside = {"q": q.base_layer.weight.dtype, "lora": q.lora_A["default"].weight.dtype, "head": base.lm_head.weight.dtype, "embed": base.model.embed_tokens.weight.dtype}
            cast = model(input_ids=ids).logits
    assert torch.equal(plain, cast)
    assert inside == {"q": torch.bfloat16 if native else torch.float32, "lora": torch.float32, "head": torch.bfloat16 if native else torch.float32, "embed": torch.float32}
    after = {n: p for n, p in model.named_parameters()}
    assert after.keys() == before.keys() and all(after[n] is before[n] and p.dtype == torch.float32 for n, p in before.items())
    assert base.lm_head.weight is base.model.embed_tokens.weight  # still tied


def test_kept_casts_are_reused_until_their_weight_changes():
    """`frozen_weights_cast(keep=...)`: a second entry reuses the first entry's copies (the trainer
    casts LoRA's frozen base once per run); a weight changed in place is cast again, with its new values."""
    from rl_router.tiny import build_tiny_router

    model, _ = build_tiny_router(seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    q = model.model.layers[0].self_attn.q_proj
    keep: dict = {}
    with precision.frozen_weights_cast(model, torch.bfloat16, keep=keep):
        first = q.weight
    with precision.frozen_weights_cast(model, torch.bfloat16, keep=keep):
        assert q.weight is first and q.weight.dtype == torch.bfloat16
    with torch.no_grad():
        q.weight.add_(1.0)
    with precision.frozen_weights_cast(model, torch.bfloat16, keep=keep):
        changed = q.weight
    assert changed is not first
    assert q.weight.dtype == torch.float32 and torch.equal(changed, q.weight.detach().to(torch.bfloat16))


def test_the_kv_cache_keeps_float32_under_cpu_autocast_and_decodes_the_same(gsm8k_run, monkeypatch):
    """Under CPU autocast the attention reads float32 (prepare_attention), so the decoder's cache
    keeps keys and values in float32 (the bf16-rounded values, exactly) instead of a bf16 cache
    copied to float32 at every token: the same greedy episodes and the same log-probs, bit for
    bit, as a bf16 cache."""
    from rl_router.rollout import decoder
    from rl_router.rollout.engine import make_engine, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import HFPolicy

    recipe, model, tok, pool, tasks = _trained(gsm8k_run)
    engine = make_engine(recipe, pool, tok)
    native = precision.cpu_has_bf16()
    seen: list = []
    feed = decoder.Session.feed

    def recording_feed(self, *a, **kw):  # the cache's dtypes while episodes decode (a finished batch drops its cache)
        out = feed(self, *a, **kw)
        seen.extend(layer._vb.dtype for layer in self.cache.layers if layer._vb is not None)  # values: keys leave RoPE in float32 already
        return out

    monkeypatch.setattr(decoder.Session, "feed", recording_feed)
    got = {}
    for keep in ("float32", "computed"):
        seen.clear()
        if keep == "computed":
            monkeypatch.setattr(decoder, "cache_dtype", lambda dtype: dtype)
        policy = HFPolicy(model, tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=0.0, stop_strings=stop_strings(recipe), names=pool.model_names,
                          route_weights=cost_weights(pool), logprobs=True, autocast="bfloat16")
        eps = engine.run_batched(tasks[:12], policy, batch_size=12)
        got[keep] = ([e["completion_ids"] for e in eps], [e["logprobs"] for e in eps], set(seen))
    assert got["float32"][2] == {torch.float32}
    assert got["computed"][2] == ({torch.bfloat16} if native else {torch.float32})  # (keys leave RoPE in float32; values leave v_proj in bf16)
    assert got["float32"][0] == got["computed"][0]
    assert all(torch.equal(torch.tensor(a).nan_to_num(7.0), torch.tensor(b).nan_to_num(7.0)) for a, b in zip(got["float32"][1], got["computed"][1]))
