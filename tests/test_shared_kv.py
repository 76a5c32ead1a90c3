"""Shared prompt KV in the rollout (rl_router/rollout/shared_kv.py): a prompt's keys and values
held once, read by every row that continues it, with exactly the attention of a row that holds
its whole context itself."""

from __future__ import annotations

import json

import pytest
import torch

from rl_router.rollout.shared_kv import SharedPrefixes, prefix_attention, shared_attention


class _Layer(torch.nn.Module):
    layer_idx = 0


def _reference(q, k, v, mask, scale):
    """Plain attention with grouped-query heads (transformers' repeat_kv): q R x H x T x d, k / v
    R x Hkv x L x d, mask R x T x L."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask[:, None], float("-inf"))
    return (torch.softmax(s, -1) @ v).transpose(1, 2)


@pytest.mark.parametrize("path", ["merged", "materialised"])
@pytest.mark.parametrize("layout", ["scattered", "dense", "dense, every query sees its own"])
def test_prefix_attention_equals_attention_over_the_concatenated_context(path, layout, monkeypatch):
    """Rows continuing three entries of different lengths (grouped-query heads), own slots with
    pads, a pad query that sees nothing of its own: each row's output equals plain attention
    over [its entry's valid keys, its own keys] with its own mask, whether the two parts run
    fused and are merged by their log-sum-exps (CPU) or as one materialised softmax
    (elsewhere); for rows scattered over the entries (2 rows of one entry, one row of none, out
    of order) and for the dense layout a group's samples have (every entry read by as many rows,
    in entry order), where the queries are regrouped by views, with and without a query that
    sees nothing of its own (the usual decode step has none). The forward's own-slot mask is
    built once and reused by its next layer."""
    from rl_router.rollout import shared_kv

    if path == "materialised":
        monkeypatch.setattr(shared_kv, "_FLASH", None)
    else:
        assert shared_kv._FLASH is not None  # this PyTorch has the fused CPU kernel the rollout uses
    g = torch.Generator().manual_seed(0)
    Hkv, rep, d, T, L = 2, 3, 8, 2, 5
    lens = [7, 3, 5]
    kv = [(torch.randn(Hkv, n, d, generator=g), torch.randn(Hkv, n, d, generator=g)) for n in lens]
    store = SharedPrefixes()
    for k, v in kv:
        store.add([(k, v)])
    assert store.entries == 3 and store.valid.sum(1).tolist() == lens
    groups = torch.tensor([2, 0, -1, 2, 1] if layout == "scattered" else [0, 0, 1, 1, 2, 2])
    R = len(groups)
    q = torch.randn(R, Hkv * rep, T, d, generator=g)
    k_own, v_own = torch.randn(R, Hkv, L, d, generator=g), torch.randn(R, Hkv, L, d, generator=g)
    mask = torch.ones(R, T, L, dtype=torch.bool).tril(L - T)  # causal over the forward's T tokens
    mask[1, :, :2] = False  # pads
    mask[2, :, 0] = False
    if layout != "dense, every query sees its own":
        mask[3, 0, :] = False  # a query that sees nothing of its own: only its entry
    if layout == "scattered":
        mask[2, 0, :] = False  # a query of a row without an entry that sees nothing at all: zeros
    mask4 = mask[:, None]
    with shared_attention(_Model(), store, groups):
        assert shared_kv._ACTIVE[-1].layout.dense == (layout != "scattered")
        out, _ = prefix_attention(_Layer(), q, k_own, v_own, mask4, scaling=d**-0.5)
        built = shared_kv._ACTIVE[-1].own
        assert bool(built.sees.all()) == (layout == "dense, every query sees its own")
        again, _ = prefix_attention(_Layer(), q, k_own, v_own, mask4, scaling=d**-0.5)
        assert shared_kv._ACTIVE[-1].own is built and built.source is mask4  # the next layer reuses it
        other = mask4.clone()
        other[0, 0, -1, 0] = ~other[0, 0, -1, 0]
        changed, _ = prefix_attention(_Layer(), q, k_own, v_own, other, scaling=d**-0.5)
        assert shared_kv._ACTIVE[-1].own is not built  # another mask tensor is built anew, not read from the first
        if layout != "scattered":  # the dense merge gives the scattered path's numbers bit for bit
            shared_kv._ACTIVE[-1].layout.dense = False
            scattered, _ = prefix_attention(_Layer(), q, k_own, v_own, mask4, scaling=d**-0.5)
            torch.testing.assert_close(scattered, out, rtol=0, atol=0)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    assert not torch.equal(changed[0], out[0])  # the changed mask's query saw another slot
    for r in range(R):
        e = int(groups[r])
        pk, pv = (kv[e][0], kv[e][1]) if e >= 0 else (torch.zeros(Hkv, 0, d), torch.zeros(Hkv, 0, d))
        k = torch.cat([pk, k_own[r]], 1)[None]
        v = torch.cat([pv, v_own[r]], 1)[None]
        m = torch.cat([torch.ones(T, pk.shape[1], dtype=torch.bool), mask[r]], 1)[None]
        torch.testing.assert_close(out[r : r + 1], _reference(q[r : r + 1], k, v, m, d**-0.5).nan_to_num(0.0), rtol=1e-5, atol=1e-6)
    if layout == "scattered":
        assert out[2, 0].abs().max() == 0


@pytest.mark.parametrize("groups, entries, dense", [
    ([], 2, False),  # no rows
    ([0, 0, 1, 1], 2, True),  # two entries, two rows each, in entry order
    ([0, 0, 1, 1, -1], 2, False),  # a row without an entry
    ([0, 0, 1], 2, False),  # unequal counts
    ([0, 1, 0, 1], 2, False),  # rows not in entry order
    ([1, 1, 2, 2], 3, False),  # entry 0 read by no row (its count 0, not 2)
])
def test_the_dense_layout_is_only_rows_in_entry_order_reading_each_entry_alike(groups, entries, dense):
    """`_grouped` calls a layout dense (queries regrouped by views) only where every row reads
    an entry, the rows are in entry order and every entry is read by as many rows."""
    from rl_router.rollout.shared_kv import _grouped

    assert _grouped(torch.tensor(groups, dtype=torch.long), entries).dense is dense


class _Model:
    """What shared_attention switches: the config's attention implementation."""

    def __init__(self):
        from transformers import PretrainedConfig

        self.config = PretrainedConfig()
        self.config._attn_implementation = "sdpa"


def test_entries_no_row_reads_are_freed_and_the_rest_keep_their_keys():
    store = SharedPrefixes()
    kv = [[(torch.full((1, n, 2), float(i + li)), torch.full((1, n, 2), -float(i + li))) for li in range(2)] for i, n in enumerate([4, 6, 2])]  # two layers
    for x in kv:
        store.add(x)
    new = store.keep([2, 0])
    assert new == {2: 0, 0: 1} and store.entries == 2 and store.keys[0].shape[2] == 4  # padded to the longest kept
    assert torch.equal(store.keys[0][0, :, :2], kv[2][0][0]) and torch.equal(store.values[0][1, :, :4], kv[0][0][1])
    assert store.valid.sum(1).tolist() == [2, 4]
    both = SharedPrefixes()
    assert both.add_all([kv[0], kv[1]]) == [0, 1] and both.add_all([kv[2]]) == [2]  # several at once: the same entries as one by one
    one = SharedPrefixes()
    for x in kv:
        one.add(x)
    assert all(torch.equal(x, y) for x, y in zip(both.keys + both.values, one.keys + one.values)) and len(both.keys) == 2 and torch.equal(both.valid, one.valid)


def test_prefix_attention_refuses_a_forward_without_its_4d_mask():
    """transformers hands a custom attention None for a 2D mask: attending without any mask
    would silently drop causality and padding, so it stops with what to pass instead."""
    import pytest

    store = SharedPrefixes()
    store.add([(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))])
    with shared_attention(_Model(), store, torch.tensor([0])), pytest.raises(ValueError, match="4D boolean mask"):
        prefix_attention(_Layer(), torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), None)


def test_a_groups_rows_hold_their_prompt_once(gsm8k_run):
    """With share_prompts, after the prompts are fed the session's own cache holds nothing of
    four copies of six prompts: the store holds each prompt once, and the next forward reads
    them through the store with the numbers of rows that hold their whole context."""
    from rl_router.rollout.decoder import Session

    model, tok, contexts = _router_and_contexts(gsm8k_run, 6)
    shared, alone = Session(model, tok.eos_token_id, share_contexts=True), Session(model, tok.eos_token_id)
    keys = [(i, j) for i in range(6) for j in range(4)]
    for s in (shared, alone):
        s.sync(keys, [contexts[i] for i, _ in keys])
    assert shared.store.entries == 6 and sorted(shared.store.valid.sum(1).tolist()) == sorted(map(len, contexts))
    assert shared.group.tolist() == [i for i in range(6) for _ in range(4)]
    assert shared.mask.shape[1] == 0  # nothing of a row's own yet
    assert alone.mask.sum(1).tolist() == [len(contexts[i]) for i, _ in keys]
    torch.testing.assert_close(shared.logits, alone.logits, rtol=0, atol=1e-4)
    nxt = [[int(t)] for t in alone.logits.argmax(-1)]
    torch.testing.assert_close(shared.feed(nxt)[:, -1], alone.feed(nxt)[:, -1], rtol=0, atol=1e-4)


def test_distinct_tasks_read_their_system_prompt_from_the_store(gsm8k_run):
    """`share_prefix` (an evaluation's distinct tasks): the common system prompt's KV lives once
    in the store, each row holds only its task's tokens, and the logits, the next forward and a
    name decision's scores are those of rows that hold their whole context."""
    from rl_router.rollout.decoder import Session

    model, tok, contexts = _router_and_contexts(gsm8k_run, 5)
    shared, alone = Session(model, tok.eos_token_id, share_prefix=True), Session(model, tok.eos_token_id)
    for s in (shared, alone):
        s.sync(list(range(5)), contexts)
    p = len(shared.prefix[0])
    assert shared.store.entries == 1 and int(shared.store.valid.sum()) == p and shared.group.tolist() == [0] * 5
    assert shared.mask.sum(1).tolist() == [len(c) - p for c in contexts]  # each row's own slots: its task, not the system prompt
    torch.testing.assert_close(shared.logits, alone.logits, rtol=0, atol=1e-4)
    nxt = [[int(t)] for t in alone.logits.argmax(-1)]
    torch.testing.assert_close(shared.feed(nxt)[:, -1], alone.feed(nxt)[:, -1], rtol=0, atol=1e-4)
    conts = [{"a": [5, 6], "b": [5, 7], "c": [9]}] * 2
    for x, y in zip(shared.score_names([1, 3], conts), alone.score_names([1, 3], conts)):
        assert x.keys() == y.keys() and all(abs(x[n] - y[n]) < 1e-3 for n in x)
    shared.select([4])  # rows leave: the entry stays while a row reads it, and goes with the last
    assert shared.store.entries == 1 and shared.group.tolist() == [0]
    shared.select([])
    assert shared.store.entries == 0 and shared._prefix_entry is None


def _router_and_contexts(run, n):
    """The trained GSM8K router of `run` and the first `n` training tasks' opening contexts (token ids)."""
    from rl_router.models import load_checkpoint
    from rl_router.recipe import recipe_from_dict
    from rl_router.rollout.engine import make_engine
    from rl_router.task_sources import recipe_pool, recipe_tasks

    recipe = recipe_from_dict(json.loads((run.out / "recipe.json").read_text()))
    model, tok = load_checkpoint(run.out / "final", recipe)
    pool = recipe_pool(recipe)
    engine = make_engine(recipe, pool, tok)
    return model, tok, [engine._start(t, None).context_ids for t in recipe_tasks(recipe, pool)[0][:n]]
