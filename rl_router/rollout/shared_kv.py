"""Shared prompt KV in the rollout: a prompt's keys and values held once and read by every row.

Why. A training rollout decodes a GRPO group's samples as separate rows of one KV cache. With
the prompt's KV copied into each row (what `Session` did before), a 128-row SmolLM2 rollout of
700-token prompts holds 128 copies of them (about 5.5 GB in float32), and every decoded token
reads all of it: decoding a router turn is bound by reading the cache, not by the weights.
Here a group's prompt lives once in a `SharedPrefixes` store (one entry per distinct prompt);
a row keeps only what is its own (its sampled tokens and the pool's replies) in the session's
cache, plus the index of the entry it continues. `prefix_attention` computes each row's
attention over [its entry's keys, its own keys] with one softmax, exactly the attention over
the concatenated context, so the episodes are the same up to float rounding.

How it plugs into transformers. The attention function is registered on transformers'
`AttentionInterface` under `SHARED_ATTENTION`; `shared_attention(model, store, groups)`
switches the model's config to it for the duration of a forward and says which entry each row
of that forward reads. The forward's own mask is a 4D boolean over the row's own slots
(transformers passes a 4D mask through unchanged); the entry's slots are always visible to
the rows that continue it. Positions are per row, so a row's own tokens carry positions after
its entry's length, as if its prompt were in its own cache.

The arithmetic runs in float32 with autocast off, like `precision.prepare_attention`'s sdpa
under CPU autocast, and returns bf16 where autocast is on: the same numeric policy as the
loss's attention, so the sampler's log-probs stay those of the distribution the loss scores.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

SHARED_ATTENTION = "rl_router_shared_prefix"


@dataclass
class SharedPrefixes:
    """Prompts' KV held once: per layer, keys and values of shape (entries, kv heads, P, head
    dim), with `valid` (entries x P) marking each entry's real slots (entries are right-padded
    to the longest)."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    valid: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0), dtype=torch.bool))

    @property
    def entries(self) -> int:
        return int(self.valid.shape[0])

    def add(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Store one prompt's KV (per layer (kv heads, n, head dim) keys and values); returns
        its entry index."""
        return self.add_all([kv])[0]

    def add_all(self, prompts: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[int]:
        """Store several prompts' KV at once (one copy of the store, not one per prompt);
        returns their entry indices."""
        if not prompts:
            return []
        lens = [int(kv[0][0].shape[1]) for kv in prompts]
        P = max(lens + [int(self.valid.shape[1])])
        first, had = self.entries, bool(self.keys)
        keys, values = [], []
        for li in range(len(prompts[0])):
            ks = ([_pad(self.keys[li], P)] if had else []) + [_pad(kv[li][0][None], P) for kv in prompts]
            vs = ([_pad(self.values[li], P)] if had else []) + [_pad(kv[li][1][None], P) for kv in prompts]
            keys.append(torch.cat(ks, 0))
            values.append(torch.cat(vs, 0))
        self.keys, self.values = keys, values
        rows = torch.zeros((len(prompts), P), dtype=torch.bool)
        for i, n in enumerate(lens):
            rows[i, :n] = True
        self.valid = torch.cat([torch.nn.functional.pad(self.valid, (0, P - self.valid.shape[1])), rows], 0)
        return list(range(first, first + len(prompts)))

    def keep(self, used: list[int]) -> dict[int, int]:
        """Keep only entries `used` (in that order); returns old index -> new index."""
        t = torch.tensor(used, dtype=torch.long)
        P = int(self.valid[t].sum(1).max()) if used else 0
        self.keys = [k.index_select(0, t.to(k.device))[:, :, :P] for k in self.keys]
        self.values = [v.index_select(0, t.to(v.device))[:, :, :P] for v in self.values]
        self.valid = self.valid.index_select(0, t)[:, :P]
        return {old: new for new, old in enumerate(used)}


def _pad(x: torch.Tensor, P: int) -> torch.Tensor:
    return x if x.shape[2] == P else torch.nn.functional.pad(x, (0, 0, 0, P - x.shape[2]))


@dataclass
class _Layout:
    """Rows that read an entry, laid out as (entry, slot): the rows, their entries, their slots
    within their entry, the most rows any entry has, and whether that layout is the rows
    themselves (`dense`: rows 0..R-1 in entry order, every entry read by the same number), where
    gathering queries by entry is a view, not a copy."""

    rows: torch.Tensor
    g: torch.Tensor
    slot: torch.Tensor
    S: int
    dense: bool


@dataclass
class _OwnMask:
    """A forward's own-slot mask as every layer's attention uses it, built at its first layer
    and reused by the rest (transformers hands each layer the same mask tensor): the boolean
    mask over (rows, 1, rep x T, L) in the query layout of `prefix_attention`, the additive
    float mask the fused kernel takes, and which queries see any slot of their own."""

    source: torch.Tensor
    rep: int
    m: torch.Tensor
    sees: torch.Tensor
    _bias: torch.Tensor | None = None

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        if self._bias is None or self._bias.dtype != dtype:
            self._bias = torch.zeros(self.m.shape, dtype=dtype, device=self.m.device).masked_fill_(~self.m, float("-inf"))
        return self._bias


@dataclass
class _Forward:
    """The forward in progress under `shared_attention`: its store, its rows' layout by entry
    (computed once per forward, not per layer) and its own-slot mask once built."""

    store: SharedPrefixes
    layout: _Layout
    own: _OwnMask | None = None

    def own_mask(self, attention_mask: torch.Tensor, rep: int, R: int, T: int, L: int) -> _OwnMask:
        """The own-slot mask of a forward's R rows x T queries x L own keys (`attention_mask`
        broadcast to R x 1 x T x L), with `rep` query heads per key head."""
        if self.own is None or self.own.source is not attention_mask or self.own.rep != rep:
            m = attention_mask.bool().expand(R, 1, T, L)[:, :, None].expand(R, 1, rep, T, L)
            m = m.reshape(R, 1, rep * T, L)  # query row (r, t) of kv head h is query head h * rep + r
            sees = m.any(-1)  # R x 1 x rep*T
            self.own = _OwnMask(attention_mask, rep, m, sees)
        return self.own


#: the forwards in progress (innermost last)
_ACTIVE: list[_Forward] = []


def _grouped(groups: torch.Tensor, entries: int) -> _Layout:
    """Rows that read an entry, laid out as (entry, slot) (`_Layout`)."""
    rows = (groups >= 0).nonzero(as_tuple=True)[0]
    g = groups[rows]
    order = torch.argsort(g * (len(groups) + 1) + rows)  # stable: by entry, then row
    rows, g = rows[order], g[order]
    counts = torch.bincount(g, minlength=entries)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(g)) - start[g]
    S = int(counts.max()) if len(g) else 0
    every_row_in_order = len(rows) == len(groups) and bool((rows == torch.arange(len(groups))).all())
    dense = bool(S) and every_row_in_order and bool((counts == S).all())
    return _Layout(rows, g, slot, S, dense)


def prefix_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None = None,
                     dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of each row over its entry's prompt KV and its own KV, one softmax over both.
    query: (rows, heads, T, d); key, value: (rows, kv heads, L, d), the rows' own cache
    (the forward's tokens included); attention_mask: (rows, 1, T, L) bool (True = attend).

    On CPU the two parts run in PyTorch's fused flash kernel, which also returns each query's
    log-sum-exp, and are merged by those (`_merged`): the softmax over the concatenation,
    without materialising rows x heads x (P + L) scores and copying them about (measured: this
    function was a third of a SmolLM2 rollout's time on 2 CPU cores). Elsewhere
    `_materialised` computes the same softmax directly."""
    if attention_mask is None or attention_mask.dim() != 4:  # transformers passes None for a 2D mask under a custom attention: no causal mask at all
        raise ValueError("prefix_attention needs the forward's 4D boolean mask (rows x 1 x T x L): pass one to the model under shared_attention")
    fw = _ACTIVE[-1]
    store = fw.store
    R, H, T, D = query.shape
    Hkv = key.shape[1]
    rep = H // Hkv
    scale = scaling if scaling is not None else D**-0.5
    cast = query.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    li = module.layer_idx
    own = fw.own_mask(attention_mask, rep, R, T, key.shape[2])
    with torch.autocast(query.device.type, enabled=False):
        q = query.float().reshape(R, Hkv, rep * T, D)  # query head h = kv head h // rep (transformers' repeat_kv)
        Kp, Vp = store.keys[li].float(), store.values[li].float()  # E x Hkv x P x d
        attend = _merged if q.device.type == "cpu" and _FLASH is not None else _materialised
        out = attend(q, key.float(), value.float(), own, Kp, Vp, store.valid.to(q.device), fw.layout, scale)
    out = out.view(R, Hkv, rep, T, D).reshape(R, H, T, D).transpose(1, 2).contiguous()
    return out.to(torch.bfloat16 if cast else query.dtype), None


#: PyTorch's fused CPU attention that also returns the log-sum-exp (None where this build lacks it)
_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _merged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, own: _OwnMask, Kp: torch.Tensor, Vp: torch.Tensor, valid: torch.Tensor,
            layout: _Layout, scale: float) -> torch.Tensor:
    """Attention over [entry, own] as two fused attentions merged by their log-sum-exps:
    softmax over the union = each part's softmax weighted by exp(lse_part - lse_all). A part a
    query sees nothing of has lse -inf (weight 0); a query that sees nothing at all (a pad)
    gets zeros, as `_materialised` gives it. Where the layout is dense (every row reads an
    entry, rows in entry order, as a group's samples or an eval batch under one system prompt
    are laid out) the queries are regrouped by views and the output merged in place, with no
    gather or scatter."""
    R, Hkv, Q, D = q.shape
    E, P = Kp.shape[0], Kp.shape[2]
    neg = float("-inf")
    out, lse = _FLASH(q, k, v, 0.0, False, attn_mask=own.bias(q.dtype), scale=scale)
    # kept even when every query sees some of its own slots: merging into the kernel's output
    # tensor itself (not this copy) changed the last bit of about one element per 100 forwards
    out = torch.where(own.sees[..., None], out, 0.0)
    lse = lse.masked_fill(~own.sees, neg)  # R x Hkv x Q (the kernel reports 0 for a query that sees nothing)
    S = layout.S
    if not S:
        return out
    dev = q.device
    if layout.dense:
        qg = q.view(E, S, Hkv, Q, D)
    else:
        rows_d, g_d, slot_d = layout.rows.to(dev), layout.g.to(dev), layout.slot.to(dev)
        qg = q.new_zeros((E, S, Hkv, Q, D))
        qg[g_d, slot_d] = q[rows_d]
    pm = torch.zeros((E, 1, 1, P), dtype=q.dtype, device=dev).masked_fill_(~valid[:, None, None, :], neg).expand(E, 1, S * Q, P)
    og, lg = _FLASH(qg.permute(0, 2, 1, 3, 4).reshape(E, Hkv, S * Q, D), Kp, Vp, 0.0, False, attn_mask=pm, scale=scale)  # each entry's keys read once for all its rows
    op = og.view(E, Hkv, S, Q, D).permute(0, 2, 1, 3, 4)  # E x S x Hkv x Q x D
    lp = lg.view(E, Hkv, S, Q).permute(0, 2, 1, 3)
    if layout.dense:
        op, lp, lo = op.reshape(R, Hkv, Q, D), lp.reshape(R, Hkv, Q), lse
    else:
        op, lp, lo = op[g_d, slot_d], lp[g_d, slot_d], lse[rows_d]  # rows' order: len(rows) x Hkv x Q x D
    both = torch.logaddexp(lp, lo)
    w_entry, w_own = torch.exp(lp - both)[..., None], torch.exp(lo - both).nan_to_num(0.0)[..., None]
    if layout.dense:
        return out.mul_(w_own).add_(op * w_entry)
    out[rows_d] = op * w_entry + out[rows_d] * w_own
    return out


def _materialised(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, own: _OwnMask, Kp: torch.Tensor, Vp: torch.Tensor, valid: torch.Tensor,
                  layout: _Layout, scale: float) -> torch.Tensor:
    """Attention over [entry, own] with the scores of both parts in one tensor and one softmax."""
    rows, g, slot, S, m = layout.rows, layout.g, layout.slot, layout.S, own.m
    R, Hkv, Q, D = q.shape
    E, P = Kp.shape[0], Kp.shape[2]
    s_own = torch.matmul(q, k.transpose(-1, -2)) * scale  # R x Hkv x Q x L
    s_own = s_own.masked_fill(~m, float("-inf"))
    pre = s_own.new_full((R, Hkv, Q, P), float("-inf"))
    if S:
        dev = q.device
        rows_d, g_d, slot_d = rows.to(dev), g.to(dev), slot.to(dev)
        qg = q.new_zeros((E, S, Hkv, Q, D))
        qg[g_d, slot_d] = q[rows_d]
        sg = torch.matmul(qg.permute(0, 2, 1, 3, 4).reshape(E, Hkv, S * Q, D), Kp.transpose(-1, -2)) * scale  # each entry's keys read once for all its rows
        sg = sg.view(E, Hkv, S, Q, P).permute(0, 2, 1, 3, 4)
        sg = sg.masked_fill(~valid[:, None, None, None, :], float("-inf"))
        pre[rows_d] = sg[g_d, slot_d]
    probs = torch.softmax(torch.cat([pre, s_own], -1), -1).nan_to_num(0.0)  # a query that sees nothing (a pad) gets zeros, not NaN
    pp, po = probs[..., :P], probs[..., P:]
    out = torch.matmul(po, v)  # R x Hkv x Q x d
    if S:
        pg = pp.new_zeros((E, S, Hkv, Q, P))
        pg[g_d, slot_d] = pp[rows_d]
        og = torch.matmul(pg.permute(0, 2, 1, 3, 4).reshape(E, Hkv, S * Q, P), Vp)
        og = og.view(E, Hkv, S, Q, D).permute(0, 2, 1, 3, 4)
        out[rows_d] += og[g_d, slot_d]
    return out


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(SHARED_ATTENTION, prefix_attention)
        _REGISTERED = True


@contextmanager
def shared_attention(model: Any, store: SharedPrefixes, groups: torch.Tensor) -> Iterator[None]:
    """Within the block, the model's attention reads `store`: row r of a forward also attends
    to entry groups[r] (-1: none). The model's forwards must pass 4D boolean masks."""
    _register()
    cfg = model.config
    was = cfg._attn_implementation
    cfg._attn_implementation = SHARED_ATTENTION
    _ACTIVE.append(_Forward(store, _grouped(groups.to(torch.long).cpu(), store.entries)))
    try:
        yield
    finally:
        _ACTIVE.pop()
        cfg._attn_implementation = was
