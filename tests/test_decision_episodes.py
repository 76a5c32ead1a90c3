"""Scripted all-names episodes (`algorithm.all_names_episodes: scripted`, rollout/decision_episodes.py):
each group's episode k is the warm start's protocol to name k, scored by the environment and cut
after the name, so the loss trains the route decision only."""

from __future__ import annotations

import pytest
import torch

from rl_router.training.advantages import all_names_advantages
from rl_router.training.trainer import expected_reward, greedy_reward


def _tasks_and_pool(gsm8k_run):
    import json

    from rl_router.recipe import recipe_from_dict
    from rl_router.task_sources import recipe_pool, recipe_tasks

    recipe = recipe_from_dict(json.loads((gsm8k_run.out / "recipe.json").read_text()))
    pool = recipe_pool(recipe)
    return recipe, pool, recipe_tasks(recipe, pool)[0][:8]


@pytest.mark.parametrize("weights", ["policy", "mirror"])
def test_scripted_groups_score_every_name_by_its_call_and_train_its_tokens_only(gsm8k_trainer, gsm8k_run, weights):
    """On the GSM8K router (two models, groups of 4): each group takes the models in turn; an
    episode's completion is the route turn up to `<route model="` (masked) and the name's tokens
    (in the loss, with their allowed sets); its outcome is what the same scripted call earns in
    full; the names' log-probs the trainer weighs by are the greedy decoder's own scores of those
    names where the router writes the same prefix; and the advantages are all_names_advantages of
    the rewards, names and log-probs."""
    from rl_router.models import load_checkpoint
    from rl_router.rollout.engine import make_engine, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import HFPolicy, ScriptedPolicy

    recipe, pool, tasks = _tasks_and_pool(gsm8k_run)
    names = pool.model_names
    reward = lambda completions, quality, **kw: [float(q or 0.0) for q in quality]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights=weights, all_names_episodes="scripted",
                                    trim_padding=weights == "mirror")  # each group's weights at its own width, as its loss runs
    trainer.model.train()
    tok = trainer.processing_class
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    local = trainer._last_inputs
    targets = [inp["route_target"] for inp in local]
    assert targets == [names[k % 2] for k in range(16)]
    # the cut: prefix masked, the name's continuation in the loss with the allowed sets
    mask = (out["completion_mask"] * out["tool_mask"]).bool()
    allowed = out["decision_allowed"]
    for b, t in enumerate(targets):
        ids = out["completion_ids"][b][out["completion_mask"][b].bool()].tolist()
        assert tok.decode(ids).endswith(f'<route model="{t}">') and tok.decode(ids).startswith("<think>")
        in_loss = out["completion_ids"][b][mask[b]].tolist()
        assert tok.decode(in_loss) == f'{t}">'
        assert torch.equal(mask[b], allowed[b, :, 0] >= 0)
        assert all(int(tok_id) in allowed[b, j].tolist() for j, tok_id in zip(mask[b].nonzero().flatten().tolist(), in_loss))
    # the outcome is the scripted call's, in full
    engine = make_engine(recipe, pool, tok)
    for m in names:
        full = engine.run(tasks[:4], ScriptedPolicy.always(tok, m, query="short", adopt=True))
        got = [inp["quality"] for inp, t in zip(local, targets) if t == m]
        assert got == [q for ep in full for q in [ep["quality"]] * 2]
    # the weights' log-probs are the decoder's scores of the same names from the same prefix
    logps = trainer._scripted_name_logps(out)
    greedy = engine.run(tasks[:4], HFPolicy(trainer.model, tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=0.0, stop_strings=stop_strings(recipe), names=names, route_weights=cost_weights(pool)))
    compared = 0
    for i, ep in enumerate(greedy):
        d = next((x for turn in ep["decisions"] for x in turn if x["stem"] == '<route model="'), None)
        if d is None or not ep["policy_turns"][0].startswith('<think>Route.</think><route model="'):
            continue
        for k in range(4):
            b = 4 * i + k
            assert float(logps[b]) == pytest.approx(d["scores"][d["names"].index(targets[b])], abs=2e-4)
        compared += 1
    assert compared >= 3  # the warm start writes the scripted prefix
    rewards = torch.tensor([float(inp["quality"] or 0.0) for inp in local])
    want = all_names_advantages(rewards, 4, targets, logps, 2, scale=trainer.args.scale_rewards, weights=weights, temperature=trainer.all_names_temperature)
    torch.testing.assert_close(out["advantages"].float(), want.float(), rtol=1e-5, atol=1e-6)
    assert "decision/route_prob/" + names[0] in trainer._metrics["train"]
    assert trainer._metrics["train"]["decision/expected_reward"][-1] == pytest.approx(expected_reward(rewards.tolist(), targets, logps.tolist(), 4), abs=1e-6)
    assert trainer._metrics["train"]["decision/greedy_reward"][-1] == pytest.approx(greedy_reward(rewards.tolist(), targets, logps.tolist(), 4), abs=1e-6)


def test_expected_reward_is_the_routers_probability_weighted_reward_per_task():
    """sum_m pi(m) rbar_m per group (pi renormalised over the group's names), averaged over
    groups; episodes with no name or no reward are left out."""
    import math

    lp = [math.log(0.6), math.log(0.2), math.log(0.6), math.log(0.2), math.log(0.5), math.log(0.5), math.log(0.5), float("nan")]
    got = expected_reward([1.0, 0.0, 0.5, 1.0, 0.2, 0.4, float("nan"), 0.9], ["a", "b", "a", "b", "a", "b", "a", None], lp, 4)
    g1 = 0.75 * 0.75 + 0.25 * 0.5  # a: mean(1.0, 0.5), b: mean(0.0, 1.0)
    g2 = 0.5 * 0.2 + 0.5 * 0.4  # the NaN reward and the unnamed episode drop out
    assert got == pytest.approx((g1 + g2) / 2)
    assert expected_reward([1.0, 0.0], [None, None], [float("nan")] * 2, 2) is None


def test_greedy_reward_is_the_reward_of_the_routers_most_likely_name_per_task():
    """rbar of the name of highest probability per group, averaged over groups: a router whose
    likelier name earns less scores below its expected reward."""
    import math

    lp = [math.log(0.7), math.log(0.3), math.log(0.7), math.log(0.3), math.log(0.2), math.log(0.8), math.log(0.2), float("nan")]
    rewards = [0.0, 1.0, 0.5, 1.0, 1.0, 0.4, float("nan"), 0.9]
    got = greedy_reward(rewards, ["a", "b", "a", "b", "a", "b", "a", None], lp, 4)
    assert got == pytest.approx((0.25 + 0.4) / 2)  # group 1 takes a: mean(0.0, 0.5); group 2 takes b: 0.4
    assert got < expected_reward(rewards, ["a", "b", "a", "b", "a", "b", "a", None], lp, 4)
    assert greedy_reward([1.0, 0.0], [None, None], [float("nan")] * 2, 2) is None


@pytest.mark.parametrize("prompt_gradient, in_loss", [(True, False), (False, False), (False, True)])
def test_scripted_all_names_training_moves_the_router_toward_the_rewarded_model(gsm8k_trainer, prompt_gradient, in_loss):
    """Learning: rewarding only the model this router rarely calls, three AdamW steps on scripted
    batches raise its log-probability on the tasks (read from fresh scripted batches), while
    the loss reads no token but the names'; also with the prompts run without gradient
    (`prompt_gradient: false`, the truncated gradient), and with the mirror weights read from
    the loss's own forward (`all_names_weights_in_loss`)."""
    target = "gpt-4-1106"
    reward = lambda completions, route_target, **kw: [float(t == target) for t in route_target]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights="mirror", all_names_episodes="scripted",
                                   prompt_gradient=prompt_gradient, all_names_weights_in_loss=in_loss)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    prompts = [{"prompt": t.question} for t in tasks[:4] for _ in range(4)]

    out = trainer._generate_and_score_completions(prompts)
    assert ("names_target" in out) == in_loss  # the advantages are the loss's to compute
    before = _name_logp(trainer, out, target)
    assert before < -1.0  # rarely called
    out = _adamw_steps(trainer, out, prompts, lr=1e-3)
    after = _name_logp(trainer, out, target)
    assert after > before + 0.5, (before, after)


def _name_logp(trainer, out, target: str) -> float:
    """The mean log-prob of `target` over the scripted batch's episodes that name it, under the
    router's current weights (the names pass the trainer weighs by)."""
    lps = trainer._scripted_name_logps(out).tolist()
    mine = [lp for lp, inp in zip(lps, trainer._last_inputs) if inp["route_target"] == target]
    return float(sum(mine) / len(mine))


def _adamw_steps(trainer, out, prompts, *, lr: float, steps: int = 3):
    """`steps` AdamW steps of the trainer's loss, each on a fresh scripted batch of `prompts`;
    returns the batch scored after the last step."""
    opt = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        trainer._compute_loss(trainer.model, out).backward()
        opt.step()
        opt.zero_grad()
        out = trainer._generate_and_score_completions(prompts)
    return out


def test_the_recipe_reaches_the_trainer_with_scripted_episodes():
    """`algorithm.all_names_episodes` reaches RouterGRPOTrainer and the rollout's policy; without
    all-names groups, unknown, with an env that routes at every step, or with TRL masking
    truncated completions, it is refused with the field."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import load_recipe
    from rl_router.rollout.decision_episodes import TargetPolicy
    from rl_router.training.pipeline import scripted_targets, trainer_options

    sets = ["algorithm.advantage=all_names", "trainer.num_generations=9", "trainer.per_device_train_batch_size=9"]
    r = load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_episodes=scripted"])
    assert trainer_options(r)["all_names_episodes"] == "scripted"
    pol = scripted_targets(r, None)
    assert isinstance(pol, TargetPolicy) and (pol.query, pol.adopt) == ("short", True)
    assert trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", sets))["all_names_episodes"] == "sampled"
    assert scripted_targets(load_recipe("recipes/dcrouter_smollm2.yaml", sets), None) is None
    with pytest.raises(ConfigError, match="algorithm.all_names_episodes"):
        load_recipe("recipes/dcrouter_smollm2.yaml", ["algorithm.all_names_episodes=scripted"])
    with pytest.raises(ConfigError, match="unknown 'greedy'"):
        load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_episodes=greedy"])
    with pytest.raises(ConfigError, match="env 'agentic' routes at every step"):
        load_recipe("recipes/bopo_agentic.yaml", ["algorithm.name=grpo", "algorithm.advantage=all_names", "rollout.decisions=names", "algorithm.all_names_episodes=scripted"])
    with pytest.raises(ConfigError, match="trainer.mask_truncated_completions"):  # a cut episode has no EOS: TRL would mask them all
        load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_episodes=scripted", "trainer.mask_truncated_completions=true"])


def test_prompts_without_gradient_give_the_same_log_probs_and_a_truncated_gradient(gsm8k_run):
    """`prompt_gradient: false`: the loss's log-probs are the same numbers; the gradient is not
    the full one but that of a plain per-row forward whose prompt, but its last token, ran
    without gradient (its keys and values constants): so the first completion token, predicted
    at the prompt's last token, is trained too."""
    import json

    from transformers import DynamicCache

    from rl_router.models import load_checkpoint
    from rl_router.recipe import recipe_from_dict
    from rl_router.training.logprobs import policy_logps

    recipe = recipe_from_dict(json.loads((gsm8k_run.out / "recipe.json").read_text()))
    model, tok = load_checkpoint(gsm8k_run.out / "final", recipe)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    # two rows share a prompt; a third has a shorter one, left-padded as TRL pads
    prompts = [tok.encode("Route this: what is 17 times 3?", add_special_tokens=False)] * 2 + [tok.encode("Route: 2+2?", add_special_tokens=False)]
    a, bb = (tok.encode(f'<think>Route.</think><route model="{n}', add_special_tokens=False) for n in ("a", "bb"))
    comps = [a, bb, a]
    P, C = max(len(q) for q in prompts), max(len(c) for c in comps)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (P - len(q)) + q + c + [pad] * (C - len(c)) for q, c in zip(prompts, comps)])
    att = torch.tensor([[0] * (P - len(q)) + [1] * len(q) + [1] * len(c) + [0] * (C - len(c)) for q, c in zip(prompts, comps)])
    assert P > len(prompts[2])
    grads, values = {}, {}
    for full in (True, False):
        model.zero_grad()
        lp, _ = policy_logps(model, ids, att, C, temperature=1.0, positions=att[:, P:].bool(), prompt_grad=full)
        lp.sum().backward()
        values[full] = lp.detach()
        grads[full] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(values[True], values[False], rtol=1e-5, atol=1e-5)
    assert float(grads[False].abs().sum()) > 0 and bool(torch.isfinite(grads[False]).all())
    assert not torch.allclose(grads[True], grads[False])
    # the reference: each row on its own, its prompt but the last token under no_grad, the rest with gradient
    model.zero_grad()
    for r in range(ids.size(0)):
        with torch.no_grad():
            past = model(input_ids=ids[r : r + 1, : P - 1], attention_mask=att[r : r + 1, : P - 1], use_cache=True, past_key_values=DynamicCache()).past_key_values
        logits = model(input_ids=ids[r : r + 1, P - 1 :], attention_mask=att[r : r + 1], past_key_values=past, use_cache=True).logits[0, :-1].float()
        real = att[r, P:].bool()
        torch.log_softmax(logits, -1).gather(-1, ids[r, P:, None])[real].sum().backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads[False], reference, rtol=1e-4, atol=1e-5)
    # the first completion token alone trains the layers (it is predicted at the prompt's last
    # token; the LM head's gradient alone would be there without it)
    model.zero_grad()
    lp, _ = policy_logps(model, ids, att, C, temperature=1.0, positions=att[:, P:].bool(), prompt_grad=False)
    lp[:, 0].sum().backward()
    layers = [p for n, p in model.named_parameters() if ".layers." in n]
    assert layers and float(sum(p.grad.abs().sum() for p in layers if p.grad is not None)) > 0


def test_the_recipe_reaches_the_trainer_with_its_prompt_gradient():
    """`algorithm.prompt_gradient` reaches RouterGRPOTrainer; false under gradient checkpointing (which drops the prompt's cache) is refused with the field."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import trainer_options

    assert trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", []))["prompt_gradient"] is True
    assert trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", ["algorithm.prompt_gradient=false"]))["prompt_gradient"] is False
    with pytest.raises(ConfigError, match="algorithm.prompt_gradient"):
        load_recipe("recipes/dcrouter_smollm2.yaml", ["algorithm.prompt_gradient=false", "trainer.gradient_checkpointing=true"])


def test_the_loss_reuses_the_names_pass_prompts_only_under_the_same_weights(gsm8k_trainer):
    """Scripted episodes without the prompt's gradient: the names' log-prob pass keeps each
    group's prompt forward (logprobs.PromptCache) and the loss of the same optimizer step runs
    only the completions; its loss and gradients equal those of running the prompts again. After
    an optimizer step (another tag) the loss runs the prompts itself. (And the step's log says
    the completions were cut after the name, not clipped by max_completion_length.)"""
    from rl_router.training.logprobs import causal_lm

    reward = lambda completions, quality, **kw: [float(q or 0.0) for q in quality]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights="mirror", all_names_episodes="scripted", prompt_gradient=False)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    cache = trainer._prompt_cache
    assert cache is not None and cache.tag == trainer.state.global_step and len(cache.rows) == 4  # one per group's prompt
    m = trainer._metrics["train"]
    assert m["completions/clipped_ratio"][-1] == 0.0 and m["completions/cut_after_name_ratio"][-1] == 1.0
    assert m["completions/mean_terminated_length"][-1] == m["completions/mean_length"][-1] > 0
    backbone = causal_lm(trainer.model).base_model
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def loss_and_grads():
        calls = []
        h = backbone.register_forward_hook(lambda *a: calls.append(1))
        try:
            trainer.model.zero_grad()
            loss = trainer._compute_loss(trainer.model, out)
            loss.backward()
        finally:
            h.remove()
        return float(loss.detach()), torch.cat([p.grad.flatten().clone() for p in params]), len(calls)

    hits = cache.hits
    kept_loss, kept_grads, kept_forwards = loss_and_grads()
    assert cache.hits == hits + 1
    trainer._prompt_cache = None
    run_loss, run_grads, run_forwards = loss_and_grads()
    assert run_forwards == kept_forwards + 1  # the prompts, then the same forwards of the completions (their shared prefix, then the names)
    assert kept_loss == pytest.approx(run_loss, rel=1e-5, abs=1e-6)
    assert float(run_grads.abs().sum()) > 0
    torch.testing.assert_close(kept_grads, run_grads, rtol=1e-4, atol=1e-6)
    trainer._prompt_cache = cache
    trainer.state.global_step += 1  # the weights the rows were kept under are gone
    _, _, later_forwards = loss_and_grads()
    assert later_forwards == run_forwards and cache.hits == hits + 1


@pytest.mark.parametrize("scripted, sampled, k", [("dcrouter_smollm2_scripted", "dcrouter_smollm2", 9), ("mmlu_pro_single_smollm2_scripted", "mmlu_pro_single_smollm2", 10)])
def test_the_scripted_recipe_is_the_smollm2_recipe_with_the_readme_sets(scripted, sampled, k):
    """recipes/dcrouter_smollm2_scripted.yaml is recipes/dcrouter_smollm2.yaml with the README's
    `--set`s of its scripted run, nothing else (so its table row is that recipe's); MMLU-Pro's is
    its single-shot recipe with the same sets, k = the pool's ten models."""
    from rl_router.recipe import load_recipe

    sets = ["algorithm.advantage=all_names", "algorithm.all_names_weights=mirror", "algorithm.all_names_episodes=scripted", "algorithm.prompt_gradient=false",
            "algorithm.all_names_weights_in_loss=true", f"trainer.num_generations={k}", f"trainer.per_device_train_batch_size={8 * k}", "trainer.gradient_accumulation_steps=1", "algorithm.trim_padding=true",
            "algorithm.microbatch_tokens=2048", "algorithm.protocol_anchor=1.0", "algorithm.rl_minutes=60", "trainer.max_steps=300", "trainer.lr_scheduler_type=cosine",
            "trainer.save_steps=50", "trainer.save_total_limit=2",
            f"output_dir=outputs/{scripted}"]
    assert load_recipe(f"recipes/{scripted}.yaml", []).to_dict() == load_recipe(f"recipes/{sampled}.yaml", sets).to_dict()


def test_a_truncated_gradient_is_refused_where_trls_log_prob_pass_would_run(gsm8k_trainer, monkeypatch):
    """`prompt_gradient: false` is our pass's: a model whose logits TRL's pass must compute (rescaled
    or soft-capped logits, an MoE aux loss, multimodal inputs) would silently train the full
    gradient, so it is refused with the field, at the trainer's start and at the pass."""
    from rl_router.errors import ConfigError
    from rl_router.training import trainer as trainer_module

    reward = lambda completions, quality, **kw: [float(q or 0.0) for q in quality]  # noqa: E731
    trainer, _ = gsm8k_trainer(reward, prompt_gradient=False)
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ConfigError, match="algorithm.prompt_gradient"):
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), 2, compute_aux_loss=True)
    monkeypatch.setattr(trainer_module, "rescales_logits", lambda model: True)
    with pytest.raises(ConfigError, match="algorithm.prompt_gradient.*set algorithm.prompt_gradient: true"):
        gsm8k_trainer(reward, prompt_gradient=False)
    trainer, _ = gsm8k_trainer(reward, prompt_gradient=True)  # the full gradient: TRL's pass is that


def _protocol_nll_reference(model, out, script: list[list[int]]) -> float:
    """The mean -log p of the script's tokens (`script`: each episode's `script_mask`) of one
    row per distinct prompt, the one with the most of them, by a plain full forward of the row
    (no cache, no sharing, whole vocabulary)."""
    best: dict[tuple, int] = {}
    for b in range(out["prompt_ids"].size(0)):
        key = tuple(out["prompt_ids"][b][out["prompt_mask"][b].bool()].tolist())
        count = sum(script[b])
        if key not in best or count > best[key][1]:
            best[key] = (b, count)
    nll, n = 0.0, 0
    for b, _ in best.values():
        p = out["prompt_ids"][b][out["prompt_mask"][b].bool()]
        c = out["completion_ids"][b][out["completion_mask"][b].bool()]
        scripted = torch.tensor(script[b], dtype=torch.bool)
        assert scripted.numel() == c.numel()
        ids = torch.cat([p, c])[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, p.numel() - 1 : -1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, c[:, None])[:, 0]
        nll -= float(lp[scripted].sum())
        n += int(scripted.sum())
    return nll / n


def test_the_protocol_anchor_adds_the_scripts_nll_whole_or_in_pieces(gsm8k_trainer, monkeypatch):
    """`algorithm.protocol_anchor` (training/anchor.py): each group's first episode is kept
    whole (the route turn, the pool's reply, the adoption), its script's tokens anchored and
    the reply's not; the loss with the anchor is the loss without it plus coef x the mean NLL
    of that episode's script tokens, before and after the name (checked against a plain
    per-row forward), with or without the prompt's gradient and through TRL's own log-prob pass,
    and run in pieces by tokens the loss and gradients equal the whole micro-batch's."""
    reward = lambda completions, quality, **kw: [float(q or 0.0) for q in quality]  # noqa: E731
    for prompt_gradient in (True, False):
        trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights="mirror", all_names_episodes="scripted",
                                       prompt_gradient=prompt_gradient, protocol_anchor=0.5)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
        tok, anchored = trainer.processing_class, out["anchor_mask"]
        for g in range(4):  # each group's first episode keeps the whole episode, its script's tokens anchored; the rest end at the name, unanchored
            row = out["completion_ids"][4 * g]
            first = tok.decode(row[out["completion_mask"][4 * g].bool()])
            assert "</route><information>" in first.replace("\n", "") and "<answer>" in first, first
            script = tok.decode(row[anchored[4 * g]])
            assert script.startswith("<think>") and "</route>" in script and "</answer>" in script, script  # before the name, after it, and the adoption
            assert "<information>" not in script and "information>" not in script, script  # the pool's reply is not the script's
            assert not anchored[4 * g + 1 : 4 * g + 4].any()
            assert tok.decode(out["completion_ids"][4 * g + 1][out["completion_mask"][4 * g + 1].bool()]).endswith('">')
        ref = _protocol_nll_reference(trainer.model, out, [inp["script_mask"] for inp in trainer._last_inputs])
        assert ref > 0
        trainer._prompt_cache = None  # both losses run their prompts
        params = [p for p in trainer.model.parameters() if p.requires_grad]

        def loss_and_grads(coef, budget=None):
            trainer.protocol_anchor, trainer.microbatch_tokens = coef, budget
            trainer.model.zero_grad()
            loss = trainer.compute_loss(trainer.model, out)
            loss.backward()
            return float(loss.detach()), torch.cat([p.grad.flatten().clone() for p in params])

        off, g_off = loss_and_grads(0.0)
        on, g_on = loss_and_grads(0.5)
        assert on - off == pytest.approx(0.5 * ref, rel=1e-3, abs=1e-5), prompt_gradient
        assert float((g_on - g_off).abs().max()) > 0  # the anchor has a gradient
        assert trainer._metrics["train"]["protocol/nll"][-1] == pytest.approx(ref, rel=1e-3)
        pieced, g_pieced = loss_and_grads(0.5, budget=200)
        assert trainer._metrics["train"]["loss/pieces"][-1] > 1
        assert pieced == pytest.approx(on, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(g_pieced, g_on, rtol=1e-4, atol=1e-6)
        if prompt_gradient:  # where TRL's own log-prob pass runs (rescaled logits), the anchor reads its log-probs
            from rl_router.training import trainer as trainer_module

            with monkeypatch.context() as mp:
                mp.setattr(trainer_module, "rescales_logits", lambda model: True)
                trl_off, _ = loss_and_grads(0.0)
                trl_on, _ = loss_and_grads(0.5)
            assert trl_on - trl_off == pytest.approx(0.5 * ref, rel=1e-3, abs=1e-5)


def test_the_protocol_anchor_holds_the_protocol_while_the_names_train(gsm8k_trainer):
    """Learning: at a learning rate that moves the names fast, three AdamW steps on scripted
    batches rewarding the rarely called model raise its probability with the anchor on as
    without, while the script's protocol (the route turn and the adoption: what the router must
    write itself at evaluation) loses less likelihood with the anchor than without."""
    target = "gpt-4-1106"
    reward = lambda completions, route_target, **kw: [float(t == target) for t in route_target]  # noqa: E731
    result = {}
    for coef in (0.0, 1.0):
        trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights="mirror", all_names_episodes="scripted",
                                       protocol_anchor=1.0)
        trainer.protocol_anchor = coef  # the same episodes (each group's first kept whole), the term on or off
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        prompts = [{"prompt": t.question} for t in tasks[:4] for _ in range(4)]
        out = trainer._generate_and_score_completions(prompts)
        script = [inp["script_mask"] for inp in trainer._last_inputs]
        nll0, lp0 = _protocol_nll_reference(trainer.model, out, script), _name_logp(trainer, out, target)
        out = _adamw_steps(trainer, out, prompts, lr=3e-2)
        result[coef] = (_name_logp(trainer, out, target) - lp0, _protocol_nll_reference(trainer.model, out, [inp["script_mask"] for inp in trainer._last_inputs]) - nll0)
    assert result[0.0][0] > 0.5 and result[1.0][0] > 0.5, result  # the names learn either way
    assert result[0.0][1] > 0, result  # without the anchor the protocol drifts
    assert result[1.0][1] < 0.5 * result[0.0][1], result  # measured: +4.8 against +12.5 nats a token (the whole episode's script)


def test_the_names_pass_runs_only_up_to_the_names_and_gives_the_whole_rows_log_probs(gsm8k_trainer):
    """With the protocol anchor each group's first row runs on past its name (sub-query, reply,
    adoption). The names pass cuts every row after the last name column (`name_columns`) and
    gets the same log p(name) as the log-prob pass over the whole rows."""
    from rl_router.training.logprobs import policy_logps
    from rl_router.training.trainer import name_columns

    reward = lambda completions, quality, **kw: [float(q or 0.0) for q in quality]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights="mirror", all_names_episodes="scripted",
                                   prompt_gradient=False, protocol_anchor=1.0)
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    mask = out["completion_mask"] * out["tool_mask"]
    comp, _, _ = name_columns(out["completion_ids"], out["completion_mask"], mask, out["decision_allowed"])
    assert comp.size(1) < out["completion_mask"][0].sum() <= out["completion_ids"].size(1)  # the anchored rows run past the cut
    trainer._prompt_cache = None
    cut = trainer._scripted_name_logps(out)
    with torch.no_grad():
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
        att = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
        whole, _ = policy_logps(trainer.model, ids, att, out["completion_ids"].size(1), temperature=trainer.temperature, positions=mask.bool(), allowed=out["decision_allowed"], prompt_grad=False)
    torch.testing.assert_close(cut, whole.sum(1), rtol=1e-5, atol=1e-5)
    assert float(cut.max()) < 0


def test_an_anchored_training_batch_without_script_mask_is_refused(gsm8k_trainer):
    """A custom rollout function whose scripted episodes carry no `script_mask` leaves the
    anchor nothing to anchor: the trainer refuses the batch, naming the field and what makes it,
    rather than training without the term the recipe asked for."""
    reward = lambda completions, quality, **kw: [float(q or 0.0) for q in quality]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights="mirror", all_names_episodes="scripted",
                                   protocol_anchor=1.0)
    ours = trainer.rollout_func

    def without_script_mask(prompts, tr):
        out = ours(prompts, tr)
        assert out.pop("script_mask") is not None  # ours carries it
        return out

    trainer.rollout_func = without_script_mask
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    with pytest.raises(ValueError, match="protocol_anchor: this batch's episodes carry no script_mask"):
        trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])


def test_the_recipe_reaches_the_trainer_with_its_protocol_anchor():
    """`algorithm.protocol_anchor` reaches RouterGRPOTrainer; negative, or set where episodes
    are sampled (the loss already trains what the router writes), it is refused with the field."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import trainer_options

    assert trainer_options(load_recipe("recipes/dcrouter_smollm2_scripted.yaml", []))["protocol_anchor"] == 1.0  # on in the shipped recipe
    assert trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", []))["protocol_anchor"] == 0.0
    assert trainer_options(load_recipe("recipes/dcrouter_smollm2_scripted.yaml", ["algorithm.protocol_anchor=0.2"]))["protocol_anchor"] == 0.2
    with pytest.raises(ConfigError, match="algorithm.protocol_anchor: must be >= 0"):
        load_recipe("recipes/dcrouter_smollm2_scripted.yaml", ["algorithm.protocol_anchor=-1"])
    with pytest.raises(ConfigError, match="algorithm.protocol_anchor.*set algorithm.all_names_episodes: scripted"):
        load_recipe("recipes/dcrouter_smollm2.yaml", ["algorithm.protocol_anchor=0.2"])


@pytest.mark.parametrize("pieces", [None, 600])
def test_weights_read_from_the_loss_give_the_names_pass_loss_and_gradient_with_one_forward_fewer(gsm8k_trainer, pieces):
    """`algorithm.all_names_weights_in_loss` (training/names_in_loss.py): the generation hands the
    loss rewards and route targets instead of advantages (NaN until the loss fills them), runs no
    names pass (fewer forwards), and the loss forward's own log-probs give the same advantages,
    loss and gradient as the names pass does; in one micro-batch and in loss pieces of whole groups
    (`microbatch_tokens`). A step whose pieces would split a group runs the names pass."""
    from rl_router.training.logprobs import causal_lm

    reward = lambda completions, quality, **kw: [float(q or 0.0) for q in quality]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, scripted=True, advantage="all_names", all_names_weights="mirror", all_names_episodes="scripted",
                                   prompt_gradient=False, trim_padding=True, microbatch_tokens=pieces)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    prompts = [{"prompt": t.question} for t in tasks[:4] for _ in range(4)]
    backbone = causal_lm(trainer.model).base_model
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def generate(in_loss):
        trainer.all_names_weights_in_loss = in_loss
        calls = []
        h = backbone.register_forward_hook(lambda *a: calls.append(1))
        try:
            out = trainer._generate_and_score_completions(prompts)
        finally:
            h.remove()
        return out, len(calls)

    def loss_and_grads(out):
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, out)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten().clone() for p in params])

    two, two_calls = generate(False)
    if pieces:
        assert trainer._pieces(two) == [(0, 4), (4, 8), (8, 12), (12, 16)]  # the loss runs in pieces, each a whole group
    two_loss, two_grads = loss_and_grads(two)
    one, one_calls = generate(True)
    assert one_calls < two_calls  # no names pass
    assert torch.isnan(one["advantages"]).all() and one["names_target"].tolist() == [trainer._route_names.index(inp["route_target"]) for inp in trainer._last_inputs]
    assert all(a != a for a in list(trainer._logs["advantages"])[-16:])  # the log's too, until the loss computes them
    assert trainer._metrics["train"]["advantage/deferred_to_loss"][-1] == 1.0
    trainer._metrics["train"].clear()  # what follows is logged by the loss
    one_loss, one_grads = loss_and_grads(one)
    used = torch.tensor(list(trainer._logs["advantages"])[-16:])  # what the loss computed, logged per row
    torch.testing.assert_close(used, two["advantages"].float(), rtol=1e-4, atol=1e-5)
    assert float(two["advantages"].abs().sum()) > 0
    assert one_loss == pytest.approx(two_loss, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(one_grads, two_grads, rtol=1e-3, atol=1e-6)
    m = trainer._metrics["train"]
    assert m["decision/expected_reward"] and m["advantage/all_names_mean_abs"] and any(k.startswith("decision/route_prob/") for k in m)  # logged by the loss
    if pieces:  # pieces of one row split every group: the names pass runs and the advantages come with the generation
        trainer.microbatch_tokens = 100
        split, _ = generate(True)
        assert "names_target" not in split and not torch.isnan(split["advantages"]).any()
        assert trainer._metrics["train"]["advantage/deferred_to_loss"][-1] == 0.0
        trainer.microbatch_tokens = pieces
    # a loss whose log-probs did not come from rl-router's pass (here: the advantages left unfilled) raises, before any optimizer step
    one, _ = generate(True)
    assert "names_target" in one
    trainer._weigh_names = lambda inputs, logps: None
    with pytest.raises(RuntimeError, match="all_names_weights_in_loss"):
        trainer.compute_loss(trainer.model, one)


def test_weights_in_the_loss_are_refused_where_they_would_change_the_objective(tmp_path):
    """One line naming the field: policy / uniform weights (scaled over the whole batch) and
    sampled episodes cannot take their weights from one loss forward, nor can a generation reused
    for several optimizer steps (num_iterations, steps_per_generation)."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import load_recipe

    base = ["algorithm.all_names_weights_in_loss=true"]
    assert load_recipe("recipes/dcrouter_smollm2_scripted.yaml", base).algorithm.all_names_weights_in_loss
    for extra, field in ((["algorithm.all_names_weights=policy"], "algorithm.all_names_weights_in_loss"), (["trainer.num_iterations=2"], "trainer.num_iterations"),
                         (["trainer.steps_per_generation=2"], "trainer.steps_per_generation"), (["algorithm.all_names_episodes=sampled", "algorithm.protocol_anchor=0"], "algorithm.all_names_weights_in_loss")):
        with pytest.raises(ConfigError) as e:
            load_recipe("recipes/dcrouter_smollm2_scripted.yaml", base + extra)
        assert e.value.field == field
