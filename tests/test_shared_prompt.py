"""Shared-prompt log-probs: each distinct prompt runs once, forward and backward, its KV cache
shared by the rows that have it; values and gradients equal the per-row computation."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from rl_router.tiny import build_tiny_router
from rl_router.training.logprobs import policy_logps


def llama_like(seed: int = 0):
    """A small Llama with SmolLM2's shape choices (grouped-query attention, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=256, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def batch(vocab: int, groups: int = 3, per: int = 4, P: int = 14, C: int = 9, seed: int = 0, prefix: int = 0):
    """TRL's layout: prompts left-padded to P, completions right-padded to C; rows of a group
    share their prompt (and its padding), completions differ in tokens and length (after
    `prefix` leading tokens the group's rows share, as scripted episodes before the name)."""
    g = torch.Generator().manual_seed(seed)
    ids, att = [], []
    for k in range(groups):
        plen = P - 2 * k
        prompt = torch.randint(3, vocab, (plen,), generator=g)
        head = torch.randint(3, vocab, (prefix,), generator=g)
        for i in range(per):
            clen = C - (i % 3)
            comp = torch.cat([head, torch.randint(3, vocab, (clen - prefix,), generator=g)])
            ids.append(torch.cat([torch.zeros(P - plen, dtype=torch.long), prompt, comp, torch.zeros(C - clen, dtype=torch.long)]))
            att.append(torch.cat([torch.zeros(P - plen), torch.ones(plen), torch.ones(clen), torch.zeros(C - clen)]).long())
    ids, att = torch.stack(ids), torch.stack(att)
    positions = att[:, P:].bool() & (torch.rand(ids.shape[0], C, generator=g) < 0.7)  # the loss reads some completion tokens
    return ids, att, C, positions


@contextmanager
def forward_shapes(model):
    """The input_ids shape of every forward of `model` inside the block, in order."""
    seen = []
    orig = model.forward

    def spy(*a, **kw):
        seen.append(tuple(kw["input_ids"].shape))
        return orig(*a, **kw)

    model.forward = spy
    try:
        yield seen
    finally:
        model.forward = orig


def grads(model, **kw):
    model.zero_grad()
    lp, ent = policy_logps(model, **kw)
    (lp.sum() + 0.1 * ent.sum()).backward()
    return lp.detach(), ent.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_pass(a, b):
    """Two `grads` results agree: log-probs and entropies to 1e-5, every gradient to 1e-4 / 1e-6."""
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = a, b
    torch.testing.assert_close(lp_a, lp_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent_a, ent_b, rtol=1e-5, atol=1e-5)
    assert g_a.keys() == g_b.keys() and g_a
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("arch", ["qwen2 (tiny router)", "llama (GQA, tied embeddings)"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("prefix", [0, 3])
def test_shared_prompt_log_probs_and_gradients_equal_the_per_row_computation(arch, lora, prefix):
    model = build_tiny_router(seed=2, hidden_size=32, num_layers=2)[0] if arch.startswith("qwen2") else llama_like()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    model.train()
    vocab = model.get_input_embeddings().weight.shape[0]
    ids, att, C, positions = batch(vocab, prefix=prefix)
    kw = dict(input_ids=ids, attention_mask=att, logits_to_keep=C, temperature=0.7, positions=positions, compute_entropy=True)
    lp_s, ent_s, g_s = grads(model, share_prompts=True, **kw)
    lp_r, ent_r, g_r = grads(model, share_prompts=False, **kw)
    assert (lp_s[~positions] == 0).all() and (lp_s[positions] < 0).all()
    assert_same_pass((lp_s, ent_s, g_s), (lp_r, ent_r, g_r))
    # and in micro-batches (gradient accumulation): the same sums
    lp_b, _, g_b = grads(model, share_prompts=True, batch_size=5, **kw)
    torch.testing.assert_close(lp_b, lp_r, rtol=1e-5, atol=1e-5)
    for n in g_b:
        torch.testing.assert_close(g_b[n], g_r[n], rtol=1e-4, atol=1e-6, msg=n)


def packed_width(att, C: int, skip: int = 0, per: int = 4) -> int:
    """The longest group's real completion tokens after its first `skip`: one packed row each."""
    real = att[:, att.shape[1] - C + skip :].sum(1)
    return int(real.view(-1, per).sum(1).max())


def test_a_prompt_is_run_once_per_group():
    """The prompt forward sees one row per distinct prompt (what makes it cheaper), and the
    completions one packed row per group of its rows' real tokens (the prompt's cache read once
    per group); with the packing off (an attention that takes no 4D mask), one row per sample."""
    model = build_tiny_router(seed=2, hidden_size=32, num_layers=1)[0]
    ids, att, C, positions = batch(model.get_input_embeddings().weight.shape[0], groups=3, per=4)
    with forward_shapes(model) as seen, torch.no_grad():
        lp_packed, _ = policy_logps(model, ids, att, C, temperature=1.0, positions=positions)
    assert seen == [(3, ids.shape[1] - C), (3, packed_width(att, C))]
    from unittest import mock

    with mock.patch("rl_router.training.logprobs.packs", lambda m: False), forward_shapes(model) as seen, torch.no_grad():
        lp_rows, _ = policy_logps(model, ids, att, C, temperature=1.0, positions=positions)
    assert seen == [(3, ids.shape[1] - C), (12, C)]
    torch.testing.assert_close(lp_packed, lp_rows, rtol=1e-5, atol=1e-5)
    # every prompt distinct: nothing to share, one plain forward over the whole rows
    ids, att, C, positions = batch(model.get_input_embeddings().weight.shape[0], groups=3, per=1)
    with forward_shapes(model) as seen, torch.no_grad():
        policy_logps(model, ids, att, C, temperature=1.0, positions=positions)
    assert seen == [(3, ids.shape[1])]


def test_a_groups_shared_completion_prefix_runs_once_and_changes_nothing():
    """Rows of a group that begin their completions alike (scripted episodes: the protocol before
    the name) run those tokens once, after their prompt; the log-probs and gradients equal those
    of running them per row, with and without the prompt's gradient."""
    model = llama_like()
    model.train()
    ids, att, C, positions = batch(300, groups=3, per=4, prefix=4)
    with forward_shapes(model) as seen, torch.no_grad():
        policy_logps(model, ids, att, C, temperature=1.0, positions=positions)
    assert seen == [(3, ids.shape[1] - C), (3, 4), (3, packed_width(att, C, skip=4))]
    for prompt_grad in (True, False):
        kw = dict(input_ids=ids, attention_mask=att, logits_to_keep=C, temperature=0.7, positions=positions, compute_entropy=True, prompt_grad=prompt_grad)
        assert_same_pass(grads(model, share_prefix=True, **kw), grads(model, share_prefix=False, **kw))


def test_only_full_attention_sdpa_models_pack():
    """The packed mask is a plain block-diagonal causal one: models whose layers attend through a
    sliding window, or whose attention does not take a 4D mask as it is, run one row per sample."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rl_router.training.logprobs import packs

    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    assert packs(Qwen2ForCausalLM(Qwen2Config(**small, attn_implementation="sdpa")))
    assert not packs(Qwen2ForCausalLM(Qwen2Config(**small, use_sliding_window=True, sliding_window=8, max_window_layers=0, attn_implementation="sdpa")))
    assert not packs(Qwen2ForCausalLM(Qwen2Config(**small, attn_implementation="eager")))


@pytest.mark.parametrize("arch", ["qwen2 (tiny router)", "llama (GQA, tied embeddings)"])
def test_row_by_row_attention_equals_the_packed_mask_and_scores_fewer_pairs(arch):
    """A packed group's attention runs each row against its prompt and its own tokens only
    (`install_row_split_attention`) where that scores fewer (query, key) pairs than the packed
    block-diagonal mask: the log-probs, entropies and gradients equal the packed pass's, with
    and without the prompt's gradient, and with LoRA."""
    from unittest import mock

    from peft import LoraConfig, get_peft_model

    from rl_router.training import logprobs

    model = build_tiny_router(seed=2, hidden_size=32, num_layers=2)[0] if arch.startswith("qwen2") else llama_like()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    model.train()
    ids, att, C, positions = batch(model.get_input_embeddings().weight.shape[0], groups=3, per=4, C=12)
    decided = []
    pays = logprobs._split_pays

    def spy(K, Q, spans, share=None):
        decided.append((K, Q, [len(r) for r in spans], pays(K, Q, spans, share)))
        return decided[-1][-1]

    for prompt_grad in (True, False):
        kw = dict(input_ids=ids, attention_mask=att, logits_to_keep=C, temperature=0.7, positions=positions, compute_entropy=True, prompt_grad=prompt_grad)
        decided.clear()
        sdpa = torch.nn.functional.scaled_dot_product_attention
        queries = []

        def seen_sdpa(q, *a, **k):
            queries.append(tuple(q.shape[:1]) + tuple(q.shape[2:3]))
            return sdpa(q, *a, **k)

        with mock.patch.object(logprobs, "_split_pays", spy), mock.patch("torch.nn.functional.scaled_dot_product_attention", seen_sdpa):
            split = grads(model, **kw)
        # one pass, one decision: 3 packs of 4 rows, and splitting pays for these rows
        assert len(decided) == 1 and decided[0][2] == [4, 4, 4] and decided[0][3] is True
        Q = decided[0][1]
        # the completions' attention ran one row at a time (batch 1, a row's tokens), never the packed width
        per_row = [q for q in queries if q[0] == 1 and q[1] <= C]
        assert len(per_row) == 12 * 2 and not any(q == (3, Q) for q in queries)  # 12 rows x 2 layers
        with mock.patch.object(logprobs, "_split_pays", lambda *a, **k: False):
            packed = grads(model, **kw)
        assert_same_pass(split, packed)


def test_the_row_split_is_chosen_only_where_it_scores_fewer_pairs():
    from rl_router.training.logprobs import _split_pays

    # sampled GRPO: 8 rows of 100 tokens after a 470-token prompt: 456k pairs against 1.02M packed
    assert _split_pays(470, 800, [[(i * 100, (i + 1) * 100) for i in range(8)]])
    # scripted names: 9 rows of 5 tokens after the prompt: 21k against 23k, one call a pack is cheaper
    assert not _split_pays(470, 45, [[(i * 5, (i + 1) * 5) for i in range(9)]])
    # one row a pack: nothing to split
    assert not _split_pays(10, 50, [[(0, 50)], [(0, 40)]])
