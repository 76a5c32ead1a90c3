"""Training samples the name distribution evaluation decides by, and the loss uses its log-probs.

A route name is drawn token by token from the router's distribution renormalised over the
tokens that continue some pool name (`@NAME`: some called model); TRL's loss must see exactly
those log-probs (training/logprobs.py), not the whole vocabulary's, and elsewhere the same
numbers TRL's own pass computes.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from rl_router.rollout.names import STEMS, allowed_sets, continuation
from rl_router.tiny import build_tiny_router
from rl_router.training.logprobs import allowed_tensor
from rl_router.training.trainer import RouterGRPOTrainer


@pytest.mark.parametrize("names", [("gpt-4o", "gpt-4o-mini"), ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"), ("a", "b")])
def test_the_name_distribution_is_a_distribution_over_the_names(tokenizer, names):
    """exp(log p(name)) over the candidates sums to 1, for names that share a prefix too, and
    equals what sampling token by token within the allowed sets would give."""
    from rl_router.rollout.decoder import Session

    model, _ = build_tiny_router(seed=1, hidden_size=32, num_layers=1)
    model.eval()
    stem, tmpl, _ = STEMS[0]
    ctx = tokenizer.encode("<|im_start|>assistant\n<think>x</think>" + stem, add_special_tokens=False)
    conts = {n: continuation(tokenizer, stem, tmpl.format(name=n)) for n in names}
    within = allowed_sets(conts)
    assert all(within[n][k] for n in names for k in range(len(conts[n])))
    sess = Session(model, tokenizer.pad_token_id)
    sess.sync([0], [ctx])
    lp = sess.score_names([0], [conts])[0]
    assert sum(torch.tensor(list(lp.values())).exp().tolist()) == pytest.approx(1.0, abs=1e-5)
    # the vocabulary's own log-probs of the same continuations leave mass to other text
    full = []
    for n in names:
        ids = torch.tensor([ctx + list(conts[n])])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        full.append(float(sum(logp[len(ctx) + k - 1, t] for k, t in enumerate(conts[n]))))
    assert sum(torch.tensor(full).exp().tolist()) < 0.99 and all(lp[n] >= f - 1e-6 for n, f in zip(names, full))


def test_allowed_tensor_places_each_set_at_its_position():
    t = allowed_tensor([[(1, [5, 7]), (2, [9])], None, []], 4)
    assert t.shape == (3, 4, 2)
    assert t[0, 1].tolist() == [5, 7] and t[0, 2].tolist() == [9, -1] and (t[0, 0] == -1).all() and (t[1:] == -1).all()
    assert allowed_tensor([[], None], 3) is None


@pytest.mark.parametrize("share", [False, True], ids=["own-kv", "shared-prompt-kv"])
def test_training_samples_names_and_the_loss_log_probs_are_the_sampled_ones(tmp_path, gsm8k_run, share):
    """With the quickstart's trained router: a training rollout (RouterGRPOTrainer's own
    generation path, rollout.decisions: names) emits only pool names at the route tag and
    only called models at `@`; the per-token log-probs TRL's loss uses (our trainer's
    `_get_per_token_logps_and_entropies`, as `_compute_loss` calls it) equal the sampler's
    log-probs on every trained token, and summed over a decision's tokens equal the decoder's
    name log-prob. TRL's whole-vocabulary log-probs differ at those tokens (the check can fail).
    The same with `rollout.share_prompts` (a group's prompt KV held once: shared_kv.py)."""
    from rl_router.models import load_checkpoint
    from rl_router.recipe import recipe_from_dict
    from rl_router.rollout.engine import make_engine, make_rollout_func, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import HFPolicy
    from rl_router.task_sources import recipe_pool, recipe_tasks

    recipe = recipe_from_dict(json.loads((gsm8k_run.out / "recipe.json").read_text()))
    model, tok = load_checkpoint(gsm8k_run.out / "final", recipe)
    pool = recipe_pool(recipe)
    tasks = recipe_tasks(recipe, pool)[0][:8]
    T = 1.0
    weights = cost_weights(pool)
    rollout = make_rollout_func(make_engine(recipe, pool, tok), tasks, lambda tr: HFPolicy(tr.accelerator.unwrap_model(tr.model), tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=T,
                                                                                           stop_strings=stop_strings(recipe), names=pool.model_names, route_weights=weights,
                                                                                           share_prompts=share))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, num_generations=4, max_steps=1, learning_rate=1e-3, temperature=T, beta=0.0, bf16=False, use_cpu=True,
                      report_to="none", save_strategy="no", max_completion_length=recipe.rollout.max_completion_tokens, gradient_checkpointing=False)
    trainer = RouterGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [float(i % 2) for i in range(len(completions))]], args=args,
                                train_dataset=Dataset.from_list([{"prompt": t.question} for t in tasks]), processing_class=tok, rollout_func=rollout)
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    decisions = trainer._last_decisions
    assert "decision_allowed" in out
    allowed = out["decision_allowed"]
    pos = allowed[:, :, 0] >= 0
    assert int(pos.sum()) > 0
    comp = out["completion_ids"]
    assert all(int(comp[b, j]) in allowed[b, j].tolist() for b, j in pos.nonzero().tolist())
    names = set(pool.model_names)
    for turns in decisions:
        for d in (x for t in turns for x in t):
            assert d["choice"] in names and d["scores"] is None and d["logprob"] <= 0.0
    ids = torch.cat([out["prompt_ids"], comp], 1)
    att = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    C = comp.size(1)
    trained = (out["completion_mask"] * out["tool_mask"]).bool()
    with torch.no_grad():
        trainer._decision_allowed, trainer._logp_positions = allowed, trained  # what _compute_loss sets
        ours = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, C, compute_entropy=True)
        trainer._decision_allowed = trainer._logp_positions = None
        vocab = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, att, C)[0]  # TRL's own pass
    lp, ent = ours[0], ours[1]
    assert (lp[~trained] == 0).all()  # nothing computed where the loss reads nothing
    sampled = out["sampling_per_token_logps"]
    torch.testing.assert_close(lp[trained], sampled[trained], rtol=0, atol=1e-4)
    for b, turns in enumerate(decisions):
        want = sum(x["logprob"] for t in turns for x in t)
        assert float(lp[b][pos[b]].sum()) == pytest.approx(want, abs=1e-4)
    assert float((vocab[pos] - lp[pos]).abs().max()) > 1e-3  # TRL's own numbers are not the sampled distribution's at decisions ...
    free = trained & ~pos
    torch.testing.assert_close(lp[free], vocab[free], rtol=0, atol=1e-4)  # ... and equal to ours everywhere else
    assert (ent[pos] >= -1e-6).all()
    # the loss runs on these inputs (the decision tensor travels with TRL's micro-batches)
    trainer.current_gradient_accumulation_steps = 1  # what TRL's train loop sets before a loss
    loss = trainer._compute_loss(trainer.model, out)
    assert torch.isfinite(loss)


def test_signal_metrics_count_groups_without_reward_variance_and_decision_entropy():
    """`signal/zero_std_groups` is the share of groups whose rewards are all equal (no GRPO
    gradient whatever the scaling), per group, not per batch; decision entropies and the
    sampled route shares come from the rollout's decisions."""
    from collections import defaultdict
    from types import SimpleNamespace

    r = torch.tensor([[1.0], [1.0], [1.0], [1.0],   # constant group
                      [0.0], [1.0], [0.0], [0.0],   # varied
                      [0.5], [0.5], [0.5], [0.5]])  # constant
    route = lambda c, e: {"stem": '<route model="', "names": ["a", "b"], "choice": c, "entropy": e}  # noqa: E731
    adopt = {"stem": "<answer>@", "names": ["a"], "choice": "a", "entropy": 0.0}
    fake = SimpleNamespace(_last_rewards_per_func=r, reward_weights=torch.tensor([1.0]), num_generations=4, num_generations_eval=4,
                           _last_decisions=[[[route("a", 0.6)], [adopt]], [[route("b", 0.2)]], [[route("a", 0.4)]]])
    m = defaultdict(list)
    RouterGRPOTrainer._log_signal(fake, m, "train")
    assert m["signal/zero_std_groups"] == [pytest.approx(2 / 3)]
    assert m["decision/route_entropy"] == [pytest.approx(0.4)] and m["decision/adopt_entropy"] == [0.0]
    assert m["decision/route_share/a"] == [pytest.approx(2 / 3)] and m["decision/route_share/b"] == [pytest.approx(1 / 3)]


def test_names_scored_under_eager_attention_equal_the_direct_computation(tokenizer):
    """The tree mask means the same under eager attention (added to the scores) as under sdpa."""
    from rl_router.rollout.decoder import Session

    names = ("llama-3.1-8b", "llama-3.1-70b", "gpt-4o")
    stem, tmpl, _ = STEMS[0]
    ctx = tokenizer.encode("<|im_start|>assistant\n<think>x</think>" + stem, add_special_tokens=False)
    conts = {n: continuation(tokenizer, stem, tmpl.format(name=n)) for n in names}
    got = {}
    for impl in ("sdpa", "eager"):
        model, _ = build_tiny_router(seed=4, hidden_size=32, num_layers=2)
        model.config._attn_implementation = impl
        model.eval()
        sess = Session(model, tokenizer.pad_token_id)
        sess.sync([0, 1], [ctx, ctx[:-3] + ctx[-1:]])  # two rows of different lengths: the mask and positions per row
        got[impl] = sess.score_names([0, 1], [conts, conts])
    for a, b in zip(got["sdpa"], got["eager"]):
        assert a.keys() == b.keys() and all(abs(a[n] - b[n]) < 1e-4 for n in a)


def test_a_micro_batch_with_no_trained_token_gives_a_zero_loss_that_backpropagates():
    from rl_router.training.logprobs import policy_logps

    model, _ = build_tiny_router(seed=2, hidden_size=32, num_layers=1)
    ids = torch.randint(3, 100, (4, 12))
    att = torch.ones_like(ids)
    lp, ent = policy_logps(model, ids, att, 5, temperature=1.0, positions=torch.zeros((4, 5), dtype=torch.bool), compute_entropy=True)
    assert (lp == 0).all() and (ent == 0).all() and lp.requires_grad
    lp.sum().backward()  # connected to the graph: backward (and DDP's reducer) sees every parameter


@pytest.mark.parametrize("bias", [False, True])
def test_the_loss_head_scores_allowed_sets_from_their_own_logits_as_from_the_masked_vocabulary(bias):
    """`logprobs.head_logps` computes a row with an allowed set from its set's logits only: the
    same log-probs, entropies and gradients (to the hidden states and the output layer) as
    masking the whole vocabulary's logits, for rows that all have sets and mixed with rows over
    the whole vocabulary; a token outside its set gets -inf."""
    from rl_router.training.logprobs import head_logps

    torch.manual_seed(0)
    V, H, N = 50, 8, 7
    head = torch.nn.Linear(H, V, bias=bias)
    hidden = torch.randn(N, H, requires_grad=True)
    tokens = torch.tensor([3, 7, 7, 11, 2, 40, 5])
    allowed = torch.full((N, 3), -1, dtype=torch.long)
    allowed[0, :2] = torch.tensor([3, 9])
    allowed[1] = torch.tensor([7, 8, 1])
    allowed[2, :1] = torch.tensor([7])  # a one-token set: log-prob 0
    allowed[4, :2] = torch.tensor([2, 40])
    allowed[6, :2] = torch.tensor([4, 6])  # the token is not in its set
    T = 0.7

    def masked(rows):  # the whole vocabulary's logits with everything outside each row's set at -inf
        z = head(hidden[rows]).float() / T
        a = allowed[rows]
        keep = torch.zeros_like(z, dtype=torch.bool)
        for i in range(len(rows)):
            if a[i, 0] < 0:
                keep[i] = True
            else:
                keep[i, a[i][a[i] >= 0]] = True
        lp = torch.log_softmax(z.masked_fill(~keep, float("-inf")), -1)
        ent = -(lp.exp() * lp.masked_fill(torch.isinf(lp), 0.0)).sum(-1)
        return lp.gather(1, tokens[rows][:, None]).squeeze(1), ent

    for rows in ([0, 1, 2, 4], list(range(N))):  # all with sets; mixed with whole-vocabulary rows
        r = torch.tensor(rows)
        got, got_ent = head_logps(head, hidden[r], tokens[r], T, allowed[r], True)
        want, want_ent = masked(r)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_ent, want_ent)
        finite = torch.isfinite(want)
        g1 = torch.autograd.grad((got[finite] * torch.arange(1.0, 1 + int(finite.sum()))).sum() + got_ent.sum(), [hidden, head.weight])
        g2 = torch.autograd.grad((want[finite] * torch.arange(1.0, 1 + int(finite.sum()))).sum() + want_ent.sum(), [hidden, head.weight])
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)
    assert float(head_logps(head, hidden[:3], tokens[:3], T, allowed[:3], False)[0][2]) == pytest.approx(0.0, abs=1e-6)
    assert head_logps(head, hidden[6:], tokens[6:], T, allowed[6:], False)[0].isneginf().all()
