"""Batched, KV-cached decoding of router turns: the work per token a router really needs.

Why not `model.generate` once per turn: it re-prefills every episode's whole context each turn
(prompt, earlier turns, pool replies), left-pads a batch to its longest context, and (with
`output_logits`) stacks B x T x V float logits only to read one log-prob per token. Here a
`Session` keeps one KV-cache row per episode across turns, so a turn feeds only what is new
(the pool's reply); the system prompt's KV is computed once and shared by every episode whose
context starts with it; only the last position's logits are computed, and a log-softmax is
taken only where a log-prob is read.

Layout. The cache's time axis is shared by all rows, but a row's tokens need not be
contiguous in it: every row has its own attention mask over the axis and its own position ids,
so a chunk of new tokens is written right-aligned (pads first, masked) and rows can be added,
dropped, reordered and duplicated (`Session.select`). Positions are per row, so a row attends
exactly to its own tokens at their own positions, as if decoded alone.

Decisions. A route decision is made once, by name (`names.py`): where a turn reaches a point at
which it names a pool model (`<route model="`, a tool call's `"model": "`, `<answer>@`), every
allowed name is scored as a teacher-forced continuation in one batched forward, the choice is
argmax log p(name) + B x w(name) (B the cost knob, w the model's price position), and its
tokens are forced; the same choice is reused at the tag, and `@NAME` is held to the models the
episode called. With several biases (`eval --curve`), a row whose biases disagree about the
choice is forked into one row per distinct choice (`Fork`), so one pass gives the decision at
every bias and shares all work before it. Sampling (training) draws the name from the same
distribution token by token (`NameDraw`), each token from the router's logits renormalised over
the tokens that continue some candidate, and records that set per token (`RowTurn.allowed`) so
the loss can recompute exactly the log-probs that were sampled.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from rl_router.precision import cache_dtype
from rl_router.rollout.shared_kv import SharedPrefixes, shared_attention


@dataclass
class RowTurn:
    """One row's turn in progress."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    done: bool = False
    eos: bool = False
    forced: list[int] = field(default_factory=list)  # tokens to emit next (a decided name)
    forced_allowed: list[list[int] | None] = field(default_factory=list)  # per forced token: what `allowed` records for it
    decisions: list[dict[str, Any]] = field(default_factory=list)
    choice: str | None = None  # the model this turn decided on (reused at later stems)
    # per emitted token: the token set its distribution was renormalised over (a name
    # decision, names.allowed_sets), or None (the whole vocabulary): what the loss recomputes
    allowed: list[list[int] | None] = field(default_factory=list)
    trie: "NameDraw | None" = None  # a name being sampled token by token

    def copy(self) -> "RowTurn":
        return RowTurn(list(self.ids), list(self.logprobs), self.text, self.done, self.eos, list(self.forced), list(self.forced_allowed), [dict(d) for d in self.decisions], self.choice,
                       list(self.allowed), self.trie.copy() if self.trie is not None else None)


@dataclass
class NameDraw:
    """A name decision sampled token by token from the renormalised distribution
    (names.allowed_sets): the candidates still consistent with the tokens drawn so far.
    With a `target` (training's all-names groups: `algorithm.advantage: all_names`) the
    target's tokens are taken instead of drawn, over the same allowed sets, and `logprob` is
    the target's log-probability under the distribution that would have been sampled."""

    stem: str
    kind: str
    names: list[str]
    conts: dict[str, list[int]]
    k: int = 0
    logprob: float = 0.0
    entropy: float = 0.0
    target: str | None = None

    def copy(self) -> "NameDraw":
        return NameDraw(self.stem, self.kind, list(self.names), dict(self.conts), self.k, self.logprob, self.entropy, self.target)

    def allowed(self) -> list[int]:
        return sorted({c[self.k] for c in self.conts.values()})

    def forced_token(self) -> int | None:
        """The target's next token (None when the name is drawn)."""
        return self.conts[self.target][self.k] if self.target is not None else None

    def advance(self, tok: int, lp: float, ent: float) -> str | None:
        """Take token `tok`; the chosen name once its continuation is complete, else None."""
        self.conts = {n: c for n, c in self.conts.items() if c[self.k] == tok}
        self.k += 1
        self.logprob += lp
        self.entropy += ent
        done = [n for n, c in self.conts.items() if len(c) == self.k]
        return done[0] if done else None


@dataclass
class TriePlan:
    """A candidate set's trie as tensors, built once per set (`_trie_plan`): the inner nodes to
    feed (token, depth below the stem, ancestor-or-self matrix), each prefix's continuation
    tokens (prefix 0 is the empty one), and per name its (prefix, token) pairs."""

    names: list[str]
    nodes: int
    tokens: torch.Tensor  # nodes
    depth: torch.Tensor  # nodes
    tree: torch.Tensor  # nodes x nodes, bool
    kids: torch.Tensor  # (1 + nodes) x width token ids
    kid_ok: torch.Tensor  # (1 + nodes) x width, bool
    zi: torch.Tensor  # names x max length: prefix index of each position
    tk: torch.Tensor  # names x max length: the token at it
    ok: torch.Tensor  # names x max length, bool


_PLANS: dict[tuple[tuple[str, tuple[int, ...]], ...], TriePlan] = {}


def tree_mask(model: Any, attend: torch.Tensor) -> torch.Tensor:
    """A 4D attention mask (True = attend) in the form the model's attention reads: transformers
    passes a 4D mask through unchanged, and sdpa takes booleans, while eager attention adds the
    mask to the scores (so it needs 0 / a large negative). Flash attention takes no 4D mask."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") or "sdpa"
    if impl == "sdpa":
        return attend
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(attend.shape, dtype=dtype).masked_fill(~attend, torch.finfo(dtype).min)
    raise ValueError(f"scoring route names needs sdpa or eager attention (a 4D tree mask); this router uses {impl!r}: load it with attn_implementation='sdpa'")


def _trie_plan(conts: Mapping[str, Sequence[int]]) -> TriePlan:
    key = tuple((n, tuple(c)) for n, c in conts.items())
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    index: dict[tuple[int, ...], int] = {}
    nodes: list[tuple[int, ...]] = []
    for c in conts.values():
        for k in range(1, len(c)):
            pre = tuple(c[:k])
            if pre not in index:
                index[pre] = len(nodes)
                nodes.append(pre)
    n = len(nodes)
    tree = torch.zeros((n, n), dtype=torch.bool)
    for j, pre in enumerate(nodes):
        for k in range(1, len(pre) + 1):
            tree[j, index[pre[:k]]] = True
    kids: dict[int, set[int]] = {}
    for c in conts.values():
        for k in range(len(c)):
            kids.setdefault(0 if k == 0 else 1 + index[tuple(c[:k])], set()).add(c[k])
    width = max(len(v) for v in kids.values())
    kid_t = torch.zeros((1 + n, width), dtype=torch.long)
    kid_ok = torch.zeros((1 + n, width), dtype=torch.bool)
    for z, toks in kids.items():
        t = sorted(toks)
        kid_t[z, : len(t)] = torch.tensor(t)
        kid_ok[z, : len(t)] = True
    names = list(conts)
    L = max(len(c) for c in conts.values())
    zi = torch.zeros((len(names), L), dtype=torch.long)
    tk = torch.zeros((len(names), L), dtype=torch.long)
    ok = torch.zeros((len(names), L), dtype=torch.bool)
    for a, nm in enumerate(names):
        c = conts[nm]
        for k in range(len(c)):
            zi[a, k] = 0 if k == 0 else 1 + index[tuple(c[:k])]
            tk[a, k] = c[k]
            ok[a, k] = True
    plan = TriePlan(names, n, torch.tensor([p[-1] for p in nodes], dtype=torch.long), torch.tensor([len(p) - 1 for p in nodes], dtype=torch.long), tree, kid_t, kid_ok, zi, tk, ok)
    if len(_PLANS) > 4096:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


_GROWING: list[type] = []  # the growing layer and cache classes, built once (transformers is imported lazily)


def grown_capacity(needed: int) -> int:
    """Positions a full cache buffer grows to: a quarter more than needed, at least 64 more (a
    turn's tokens fit, and the copy a growth makes is amortised over many tokens)."""
    return max(needed + 64, needed * 5 // 4)


def _growing_layer() -> type:
    """A transformers DynamicLayer whose keys and values live in buffers with spare room along
    time. Why: DynamicLayer appends each decoded token with torch.cat, which copies the whole
    cache every step (decoding becomes quadratic in the context: measured, a quarter of a
    multi-turn rollout's time on 2 CPU cores); here a step writes in place. A full buffer grows
    by a quarter (at least 64 positions), not by doubling: a 64-row SmolLM2 cache of a
    700-token prompt is gigabytes, and doubling it at the first decoded token left half idle."""
    from transformers.cache_utils import DynamicLayer

    class _Growing(DynamicLayer):
        def __init__(self, **kw: Any):
            self._kb: torch.Tensor | None = None
            self._vb: torch.Tensor | None = None
            self._n = 0
            super().__init__(**kw)

        def _get_k(self) -> torch.Tensor | None:
            return None if self._kb is None else self._kb[:, :, : self._n]

        def _set_k(self, x: torch.Tensor | None) -> None:
            self._kb = x
            self._n = 0 if x is None or x.dim() < 4 else x.shape[2]

        def _get_v(self) -> torch.Tensor | None:
            return None if self._vb is None else self._vb[:, :, : self._n]

        def _set_v(self, x: torch.Tensor | None) -> None:
            self._vb = x

        keys = property(_get_k, _set_k)
        values = property(_get_v, _set_v)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            # float32 while CPU attention reads float32 under autocast (precision.cache_dtype);
            # an existing buffer keeps its dtype
            grown = self._kb is not None and self._kb.dim() == 4 and self._n > 0
            key_states = key_states.to(self._kb.dtype if grown else cache_dtype(key_states.dtype))
            value_states = value_states.to(self._vb.dtype if grown else cache_dtype(value_states.dtype))
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            if self._kb is None or self._kb.dim() < 4 or self._n == 0:
                self._kb, self._vb, self._n = key_states, value_states, key_states.shape[2]
                return self.keys, self.values
            t, n = key_states.shape[2], self._n
            if n + t > self._kb.shape[2] or self._kb.shape[0] != key_states.shape[0]:
                cap = grown_capacity(n + t)
                kb = self._kb.new_empty((key_states.shape[0], self._kb.shape[1], cap, self._kb.shape[3]))
                vb = self._vb.new_empty((value_states.shape[0], self._vb.shape[1], cap, self._vb.shape[3]))
                kb[:, :, :n] = self._kb[:, :, :n]
                vb[:, :, :n] = self._vb[:, :, :n]
                self._kb, self._vb = kb, vb
            self._kb[:, :, n : n + t] = key_states
            self._vb[:, :, n : n + t] = value_states
            self._n = n + t
            return self.keys, self.values

    return _Growing


def new_cache() -> Any:
    """An empty KV cache whose layers grow in place (`_growing_layer`)."""
    if not _GROWING:
        from transformers.cache_utils import Cache, DynamicCache

        layer = _growing_layer()

        class GrowingCache(DynamicCache):
            def __init__(self) -> None:
                Cache.__init__(self, layer_class_to_replicate=layer)

        _GROWING.append(GrowingCache)
    return _GROWING[0]()


class Session:
    """The KV cache of the active episodes, one row each, kept across turns.

    `keys[r]` identifies row r's episode; `fed[r]` how many of its context tokens are in the
    cache; `mask` (rows x cache length) which cache slots each row attends to; `pos[r]` the
    position id its next token gets; `logits[r]` its next-token logits (raw, float32)."""

    def __init__(self, model: Any, pad_id: int, *, share_contexts: bool = False, share_prefix: bool = False):
        self.model, self.pad_id = model, pad_id
        # new rows with one context (a GRPO group's samples) are prefilled once; that context's
        # KV then lives once in `store` and each row keeps only its own tokens (shared_kv.py)
        self.share_contexts = share_contexts
        # rows of distinct contexts (an evaluation) read their shared system prompt from `store`
        # instead of a copy each: every decoded token then reads it once for all rows
        self.share_prefix = share_prefix and not share_contexts
        self.store: SharedPrefixes | None = SharedPrefixes() if share_contexts or self.share_prefix else None
        self._prefix_entry: tuple[tuple[int, ...], int] | None = None  # (tokens, entry) of the system prompt in `store` (share_prefix)
        self.group = torch.zeros((0,), dtype=torch.long)  # per row: the store entry it continues (-1: none)
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.keys: list[Any] = []
        self.fed: list[int] = []
        self.pos: list[int] = []
        self.logits: torch.Tensor | None = None
        self.prefix: tuple[tuple[int, ...], Any] | None = None  # (tokens, cache) of the shared system prompt
        self.forward_tokens = 0  # tokens fed to the model (for benchmarks)
        self.forward_calls = 0

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- rows -------------------------------------------------------------------------------
    def select(self, idx: Sequence[int]) -> None:
        """Keep rows `idx` in that order (drop, reorder, duplicate)."""
        idx = list(idx)
        if idx == list(range(self.rows)):
            return
        if not idx:
            self.cache, self.mask, self.keys, self.fed, self.pos, self.logits = None, torch.zeros((0, 0), dtype=torch.long), [], [], [], None
            self.group = torch.zeros((0,), dtype=torch.long)
            self._drop_unused_entries()
            return
        t = torch.tensor(idx, dtype=torch.long)
        if self.cache is not None:
            for layer in self.cache.layers:
                layer.keys = layer.keys.index_select(0, t.to(layer.keys.device))
                layer.values = layer.values.index_select(0, t.to(layer.values.device))
        self.mask = self.mask.index_select(0, t)
        self.keys = [self.keys[i] for i in idx]
        self.fed = [self.fed[i] for i in idx]
        self.pos = [self.pos[i] for i in idx]
        self.logits = self.logits.index_select(0, t.to(self.logits.device)) if self.logits is not None else None
        self.group = self.group.index_select(0, t)
        self._drop_unused_entries()

    def _drop_unused_entries(self) -> None:
        """Free the store's entries no row continues any more (a finished group's prompt)."""
        if self.store is None or self.store.entries == 0:
            return
        used = sorted(set(self.group.tolist()) - {-1})
        if len(used) == self.store.entries:
            return
        if not used:
            self.store, self._prefix_entry = SharedPrefixes(), None
            return
        new = self.store.keep(used)
        self.group = torch.tensor([new.get(g, -1) for g in self.group.tolist()], dtype=torch.long)
        if self._prefix_entry is not None:
            e = new.get(self._prefix_entry[1])
            self._prefix_entry = None if e is None else (self._prefix_entry[0], e)

    @property
    def shares(self) -> bool:
        """Whether forwards read the store (some row continues an entry)."""
        return self.store is not None and self.store.entries > 0

    def _hoist(self, rows: Sequence[int]) -> None:
        """Move each of `rows`' whole context (new rows: all of it is in their own slots) into
        a new store entry, leaving the row nothing of its own: the rows its copies will read from."""
        assert self.store is not None and all(int(self.group[r]) < 0 for r in rows)
        prompts = []
        for r in rows:
            own = self.mask[r].nonzero(as_tuple=True)[0]
            prompts.append([(layer.keys[r].index_select(1, own.to(layer.keys.device)), layer.values[r].index_select(1, own.to(layer.values.device))) for layer in self.cache.layers])
        for r, e in zip(rows, self.store.add_all(prompts)):  # one copy of the store for all of them
            self.group[r] = e
            self.mask[r] = 0

    def sync(self, keys: Sequence[Any], contexts: Sequence[Sequence[int]]) -> None:
        """Make the rows exactly `keys` (in order) and feed every row the tokens of its context
        it has not seen; new rows are prefilled (sharing the system prompt's KV)."""
        where = {k: i for i, k in enumerate(self.keys)}
        old = [k for k in keys if k in where]
        self.select([where[k] for k in old])
        new = [(k, c) for k, c in zip(keys, contexts) if k not in where]
        copy_of: dict[Any, Any] = {}  # a new row's key -> the key of the row holding its context
        if new and self.share_contexts:
            first: dict[tuple[int, ...], Any] = {}
            for k, c in new:
                copy_of[k] = first.setdefault(tuple(c), k)
            new = [(k, c) for k, c in new if copy_of[k] == k]
        if new:
            self._add_rows([k for k, _ in new], [list(c) for _, c in new])
        fed_keys = [k for k in keys if copy_of.get(k, k) == k]
        order = {k: i for i, k in enumerate(self.keys)}
        self.select([order[k] for k in fed_keys])
        self.compact()
        ctx = dict(zip(keys, contexts))
        chunks = [list(ctx[k][self.fed[i]:]) for i, k in enumerate(self.keys)]
        if any(chunks):
            self.feed(chunks)
        if len(fed_keys) < len(keys):  # each copy takes its context's row: cache, mask, position and next-token logits
            order = {k: i for i, k in enumerate(self.keys)}
            if self.store is not None:  # the context's KV once, in the store; the copies then share it
                self._hoist(sorted({order[copy_of[k]] for k in keys if copy_of.get(k, k) != k}))
                self._drop_unused_entries()
                self.compact()
            self.select([order[copy_of.get(k, k)] for k in keys])
            self.keys = list(keys)

    def compact(self, slack: float = 0.25) -> None:
        """Drop the masked slots of the cache (pads and the tails of rows that stopped early)
        when they are more than `slack` of it: each row's tokens are gathered to the right end,
        in order. Keys already carry their rotary positions, so attention is unchanged; every
        later token reads fewer slots (decoding is bound by reading the cache)."""
        if self.cache is None or self.rows == 0 or self.mask.numel() == 0:
            return
        valid = self.mask.sum(dim=1)
        L, Lc = self.mask.shape[1], int(valid.max())
        if Lc >= (1 - slack) * L:
            return
        R = self.rows
        idx = torch.zeros((R, Lc), dtype=torch.long)
        new_mask = torch.zeros((R, Lc), dtype=torch.long)
        for r in range(R):
            pos = self.mask[r].nonzero(as_tuple=True)[0]
            n = len(pos)
            if n:
                idx[r, Lc - n:] = pos
                new_mask[r, Lc - n:] = 1
        for layer in self.cache.layers:
            k, v = layer.keys, layer.values
            g = idx.to(k.device)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            layer.keys, layer.values = torch.gather(k, 2, g), torch.gather(v, 2, g.expand(-1, v.shape[1], -1, v.shape[3]))
        self.mask = new_mask

    def _prefix_for(self, contexts: list[list[int]]) -> tuple[int, Any]:
        """The longest token prefix all new contexts share (the chat template and system
        prompt), with its KV computed once (and kept for later batches of the same prompt)."""
        n = min(len(c) for c in contexts)
        first = contexts[0]
        p = 0
        while p < n - 1 and all(c[p] == first[p] for c in contexts):
            p += 1
        if p == 0:
            return 0, None
        key = tuple(first[:p])
        if self.prefix is not None and self.prefix[0] == key:
            return p, self.prefix[1]
        cache = new_cache()
        ids = torch.tensor([first[:p]], device=self.device)
        with torch.no_grad():
            self.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(p, device=self.device)[None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.forward_tokens += p
        self.forward_calls += 1
        self.prefix = (key, cache)
        return p, cache

    def _add_rows(self, keys: list[Any], contexts: list[list[int]]) -> None:
        """Append rows for new episodes: the shared prefix's KV repeated, then (by `feed`) the rest.
        The copies stay per row even when contexts are shared: the new rows' prefill then runs
        the fused attention (through the store's attention it took twice as long, measured on
        an eval), and `sync` moves each context into the store once it is fed."""
        p, pcache = self._prefix_for(contexts)
        n = len(keys)
        if self.share_prefix and pcache is not None:  # the system prompt's KV once, in the store; the rows feed the rest through it
            assert self.store is not None and self.prefix is not None
            if self._prefix_entry is None or self._prefix_entry[0] != self.prefix[0]:
                self._prefix_entry = (self.prefix[0], self.store.add([(layer.keys[0], layer.values[0]) for layer in pcache.layers]))
            first = self.rows
            self._concat(None, torch.zeros((n, 0), dtype=torch.long), keys, [p] * n, [p] * n)
            self.group[first:] = self._prefix_entry[1]
            return
        cache = new_cache()
        if pcache is not None:
            for layer in pcache.layers:
                cache.update(layer.keys.expand(n, -1, -1, -1).contiguous(), layer.values.expand(n, -1, -1, -1).contiguous(), len(cache.layers))
        mask = torch.ones((n, p), dtype=torch.long)
        self._concat(cache if pcache is not None else None, mask, keys, [p] * n, [p] * n)

    def _concat(self, cache: Any, mask: torch.Tensor, keys: list[Any], fed: list[int], pos: list[int]) -> None:
        """Stack new rows under the existing ones, padding the shorter time axis (masked)."""
        L0, L1 = self.mask.shape[1], mask.shape[1]
        L = max(L0, L1)
        if self.rows == 0:
            self.cache, self.mask = cache, torch.nn.functional.pad(mask, (0, L - L1))
        elif self.cache is None and cache is None:  # rows with nothing of their own yet (they continue store entries)
            self.mask = torch.cat([torch.nn.functional.pad(self.mask, (0, L - L0)), torch.nn.functional.pad(mask, (0, L - L1))], 0)
        else:
            if self.cache is None:
                self.cache = _zero_cache(cache, self.rows, L0)
            if cache is None:
                cache = _zero_cache(self.cache, len(keys), L1)
            for a, b in zip(self.cache.layers, cache.layers):
                ka, va, kb, vb = a.keys, a.values, b.keys, b.values
                ka, va = _pad_time(ka, L), _pad_time(va, L)
                kb, vb = _pad_time(kb, L), _pad_time(vb, L)
                a.keys, a.values = torch.cat([ka, kb], 0), torch.cat([va, vb], 0)
            self.mask = torch.cat([torch.nn.functional.pad(self.mask, (0, L - L0)), torch.nn.functional.pad(mask, (0, L - L1))], 0)
        self.keys += keys
        self.fed += fed
        self.pos += pos
        self.group = torch.cat([self.group, torch.full((len(keys),), -1, dtype=torch.long)])  # new rows hold their whole context
        V = self.logits.shape[1] if self.logits is not None else None
        add = torch.zeros((len(keys), V or 1))
        self.logits = add if self.logits is None else torch.cat([self.logits, add.to(self.logits.device)], 0)

    # ---- forward ----------------------------------------------------------------------------
    def feed(self, chunks: Sequence[Sequence[int]], *, keep: int = 1) -> torch.Tensor:
        """Feed each row its chunk of tokens (right-aligned, pads masked), in one forward; the
        last position's logits become each row's next-token logits. Returns the logits of the
        last `keep` positions (rows x keep x V)."""
        R = self.rows
        W = max(len(c) for c in chunks)
        if W == 0:
            return self.logits[:, None, :]
        ids = torch.full((R, W), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((R, W), dtype=torch.long)
        pos = torch.zeros((R, W), dtype=torch.long)
        for r, c in enumerate(chunks):
            k = len(c)
            if k:
                ids[r, W - k:] = torch.tensor(c, dtype=torch.long)
                new_mask[r, W - k:] = 1
                pos[r, W - k:] = torch.arange(self.pos[r], self.pos[r] + k)
                # pads take the position of the row's first new token: harmless (masked) and in range
                pos[r, : W - k] = self.pos[r]
            else:
                pos[r, :] = max(self.pos[r] - 1, 0)
        if self.cache is None:
            self.cache = new_cache()
        mask = torch.cat([self.mask, new_mask], 1) if self.mask.numel() or self.mask.shape[0] else new_mask
        dev = self.device
        if self.shares:  # a 4D mask over the rows' own slots; their entries are visible to them (shared_kv.py)
            L0 = mask.shape[1] - W
            att = mask.bool()[:, None, None, :].expand(R, 1, W, L0 + W).clone()
            att[..., L0:] &= torch.ones((W, W), dtype=torch.bool).tril()
            with torch.no_grad(), shared_attention(self.model, self.store, self.group):
                out = self.model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos.to(dev), past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
        else:
            with torch.no_grad():
                out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
        self.forward_tokens += int(new_mask.sum())
        self.forward_calls += 1
        self.cache = out.past_key_values
        self.mask = mask
        logits = out.logits.float()
        last = logits[:, -1, :]
        for r, c in enumerate(chunks):
            if c:
                self.fed[r] += len(c)
                self.pos[r] += len(c)
                self.logits = last if self.logits is None or self.logits.shape[1] != last.shape[1] else self.logits
        had = torch.tensor([bool(c) for c in chunks])
        if self.logits is None or self.logits.shape != last.shape:
            self.logits = last.clone()
        else:
            self.logits[had.to(self.logits.device)] = last[had.to(last.device)]
        return logits

    def score_names(self, rows: Sequence[int], conts: Sequence[Mapping[str, Sequence[int]]]) -> list[dict[str, float]]:
        """log p(name) under the name distribution (names.allowed_sets) for every candidate of
        every row, in ONE forward: each row's candidates form a trie whose inner nodes are fed
        as one short sequence with a tree attention mask (a node attends to the row's context
        and its own ancestors, at the positions it would have), so no cache row is copied per
        name and a router that spreads its mass over ten names costs what a confident one does
        (when `rows` is a subset of the session's rows, their cache is copied once). The
        session is unchanged (the fed nodes are dropped from the cache afterwards)."""
        out: list[dict[str, float]] = []
        if not rows:
            return out
        plans = [_trie_plan(cs) for cs in conts]
        N = max(p.nodes for p in plans)
        node_logits = None
        if N:
            R, Lc = len(rows), self.mask.shape[1]
            ids = torch.full((R, N), self.pad_id, dtype=torch.long)
            pos = torch.zeros((R, N), dtype=torch.long)
            tree = torch.eye(N, dtype=torch.bool).repeat(R, 1, 1)  # padding attends to itself (a row of no keys would give NaN)
            for i, (r, p) in enumerate(zip(rows, plans)):
                n = p.nodes
                ids[i, :n] = p.tokens
                pos[i] = self.pos[r]
                pos[i, :n] += p.depth
                tree[i, :n, :n] = p.tree
            ctx = self.mask.index_select(0, torch.tensor(list(rows))).bool()[:, None, :].expand(R, N, Lc)
            attend = torch.cat([ctx, tree], dim=2)[:, None]  # R x 1 x N x (Lc + N)
            att = attend if self.shares else tree_mask(self.model, attend)
            keep = [getattr(layer, "_n", None) for layer in self.cache.layers]
            sub = self._row_view(rows)
            dev = self.device
            try:
                with torch.no_grad(), (shared_attention(self.model, self.store, self.group.index_select(0, torch.tensor(list(rows), dtype=torch.long))) if self.shares else nullcontext()):
                    node_logits = self.model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos.to(dev), past_key_values=sub, use_cache=True).logits.float()
            finally:
                self._drop_view(sub, keep)
            self.forward_tokens += sum(p.nodes for p in plans)
            self.forward_calls += 1
        # every (row, prefix): its logits (the row's next-token logits for the empty prefix, a
        # node's for the others) and the log-sum-exp over the tokens that continue it; a name's
        # score sums, along its tokens, the token's logit minus its prefix's log-sum-exp
        R = len(rows)
        Z = self.logits.index_select(0, torch.tensor(list(rows), device=self.logits.device)).float()[:, None]
        if node_logits is not None:
            Z = torch.cat([Z, node_logits.to(Z.device)], dim=1)  # R x (1 + N) x V
        width = max(p.kids.shape[1] for p in plans)
        cidx = torch.zeros((R, Z.shape[1], width), dtype=torch.long)
        cval = torch.zeros((R, Z.shape[1], width), dtype=torch.bool)
        for i, p in enumerate(plans):
            cidx[i, : p.kids.shape[0], : p.kids.shape[1]] = p.kids
            cval[i, : p.kids.shape[0], : p.kids.shape[1]] = p.kid_ok
        lse = torch.logsumexp(Z.gather(2, cidx.to(Z.device)).masked_fill(~cval.to(Z.device), float("-inf")), dim=-1)  # R x (1 + N)
        for i, p in enumerate(plans):
            zi, tk, ok = p.zi.to(Z.device), p.tk.to(Z.device), p.ok.to(Z.device)
            got = ((Z[i][zi, tk] - lse[i][zi]) * ok).sum(-1).tolist()
            out.append(dict(zip(p.names, got)))
        return out

    def _row_view(self, rows: Sequence[int]) -> Any:
        """The cache of `rows` for one extra forward: the session's own cache when the rows are
        all of them in order (its layers then grow in place and are cut back after), else a copy."""
        if list(rows) == list(range(self.rows)):
            return self.cache
        c = new_cache()
        t = torch.tensor(list(rows), dtype=torch.long)
        for li, layer in enumerate(self.cache.layers):
            c.update(layer.keys.index_select(0, t.to(layer.keys.device)), layer.values.index_select(0, t.to(layer.values.device)), li)
        return c

    def _drop_view(self, view: Any, keep: list[Any]) -> None:
        if view is self.cache:
            for layer, n in zip(self.cache.layers, keep):
                layer._n = n  # forget the scored nodes


def _pad_time(x: torch.Tensor, L: int) -> torch.Tensor:
    return x if x.shape[2] == L else torch.nn.functional.pad(x, (0, 0, 0, L - x.shape[2]))


def _zero_cache(like: Any, n: int, L: int) -> Any:
    cache = new_cache()  # growing layers: a session cache built here must still let score_names cut its nodes off
    for li, layer in enumerate(like.layers):
        k, v = layer.keys, layer.values
        cache.update(k.new_zeros((n, k.shape[1], L, k.shape[3])), v.new_zeros((n, v.shape[1], L, v.shape[3])), li)
    return cache


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of raw `logits` (rows x V) as transformers samples them: temperature,
    top-k, top-p (the smallest set of tokens whose probability reaches top_p), then one
    multinomial draw for the whole batch."""
    x = logits.float() / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=False)
        cum = torch.softmax(sorted_x, dim=-1).cumsum(-1)
        drop = cum <= (1 - top_p)
        drop[:, -1] = False
        x = x.scatter(1, order, sorted_x.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(x, dim=-1), 1, generator=generator).squeeze(1)


def draw_names(logits: torch.Tensor, sets: list[list[int]], rows: list[int], temperature: float, greedy: bool, forced: list[int | None] | None = None) -> dict[int, tuple[list[int], int, float, float]]:
    """One token per row from its logits renormalised over its allowed set (a name decision in
    progress), for all such rows at once: row -> (set, token, its log-prob, the entropy).
    `forced[i]`, where not None, is taken instead of a draw (its log-prob under the same
    renormalised distribution)."""
    K = max(len(a) for a in sets)
    idx = torch.tensor([a + [a[0]] * (K - len(a)) for a in sets], device=logits.device)
    valid = torch.tensor([[True] * len(a) + [False] * (K - len(a)) for a in sets], device=logits.device)
    x = logits[rows].float().gather(1, idx) / (temperature if not greedy else 1.0)
    lp = torch.log_softmax(x.masked_fill(~valid, float("-inf")), dim=-1)
    p = lp.exp()
    j = lp.argmax(-1) if greedy else torch.multinomial(p, 1).squeeze(1)
    if forced is not None and any(f is not None for f in forced):
        j = torch.tensor([sets[i].index(f) if f is not None else int(j[i]) for i, f in enumerate(forced)], device=j.device)
    ent = -(p * lp.masked_fill(~valid, 0.0)).sum(-1)
    lps = lp.gather(1, j[:, None]).squeeze(1)
    return {r: (sets[i], sets[i][int(j[i])], float(lps[i]), float(ent[i])) for i, r in enumerate(rows)}


_THREADS: dict[tuple[Any, ...], int] = {}


def decode_threads(model: Any, rows: int) -> int:
    """How many torch threads decode fastest for this model at this batch size, measured once
    per process (a few forwards of one token per row against a short cache, 1 thread vs all):
    a small router's per-token matrices are too small to split (measured: the tiny router at
    128 rows decodes 2x faster on 1 thread than on 2), a 135M one's are not. The cache is 8
    tokens: the decode steps are what is compared, and a longer prefill only costs (64 tokens
    per row took 13 s of a 49 s SmolLM2 rollout of 64 rows, most of it on one thread)."""
    import time

    n_all = torch.get_num_threads()
    cfg = getattr(model, "config", None)
    key = (getattr(cfg, "hidden_size", None), getattr(cfg, "num_hidden_layers", None), getattr(cfg, "vocab_size", None), min(rows, 256) // 16, n_all)
    if n_all <= 1:
        return n_all
    if key not in _THREADS:
        from transformers import DynamicCache

        dev = next(model.parameters()).device
        best, best_t = n_all, float("inf")
        for n in (1, n_all):
            torch.set_num_threads(n)
            try:
                cache = DynamicCache()
                # its own generator: the measurement must not move the global RNG that sampling
                # draws from (a resumed run measures at another step than an uninterrupted one)
                ids = torch.randint(0, int(getattr(cfg, "vocab_size", 100)), (max(1, min(rows, 256)), 8), generator=torch.Generator().manual_seed(0)).to(dev)
                with torch.no_grad():
                    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True, logits_to_keep=1)  # warm-up step, untimed
                    t0 = time.perf_counter()
                    for _ in range(3):
                        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True, logits_to_keep=1)
                    t = time.perf_counter() - t0
            finally:
                torch.set_num_threads(n_all)
            if t < best_t:
                best, best_t = n, t
        _THREADS[key] = best
    return _THREADS[key]


class GenerationCancelled(Exception):
    """Raised inside a decode when its caller asked it to stop (a client disconnected, the
    server is shutting down)."""


@dataclass
class Fork:
    """A row split at a decision: a new row continuing `parent`'s turn with another choice,
    for the biases that choose it."""

    parent: int
    biases: tuple[float, ...]
    turn: RowTurn


def decode_turns(
    session: Session,
    *,
    tokenizer: Any,
    vocab: list[str],
    max_new_tokens: int,
    stop_strings: tuple[str, ...],
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    decide: Callable[[Session, list[int], list[RowTurn]], list[Fork]] | None = None,
    want_logprobs: bool = True,
    should_stop: Callable[[], bool] | None = None,
    max_positions: int | None = None,
) -> tuple[list[RowTurn], list[Fork]]:
    """Decode one turn for every row of the session (their contexts already fed): greedy or
    sampled tokens, forced tokens where a decision put them, until each row reaches a stop
    string, EOS, `max_new_tokens` or the model's `max_positions`. `decide(session, rows,
    turns)` is called for rows whose text just reached a decision point; it sets forced tokens
    and may fork rows (returned forks are already rows of the session, at the end). Finished
    rows are fed a masked pad so the batch stays in step. `should_stop()`, checked every token,
    aborts the decode (GenerationCancelled)."""
    eos = tokenizer.eos_token_id
    turns = [RowTurn() for _ in range(session.rows)]
    forks: list[Fork] = []
    greedy = temperature <= 0
    steps = 0
    while not all(t.done for t in turns) and steps < max_new_tokens:
        steps += 1
        if should_stop is not None and should_stop():
            raise GenerationCancelled("decoding stopped by its caller")
        if max_positions is not None:
            for r, t in enumerate(turns):
                if not t.done and session.pos[r] >= max_positions:  # the model's context is full
                    t.done = True
            if all(t.done for t in turns):
                break
        logits = session.logits
        best = logits.argmax(-1).tolist() if greedy else None  # one op for the batch
        lps = torch.log_softmax(logits / (temperature if not greedy else 1.0), dim=-1) if want_logprobs else None
        free = [r for r, t in enumerate(turns) if not t.done and not t.forced and t.trie is None]
        drawn = sample_tokens(logits[free], temperature, top_p, top_k).tolist() if free and not greedy else []
        draw_of = dict(zip(free, drawn))
        in_trie = [r for r, t in enumerate(turns) if not t.done and not t.forced and t.trie is not None]
        name_draw = draw_names(logits, [turns[r].trie.allowed() for r in in_trie], in_trie, temperature, greedy, [turns[r].trie.forced_token() for r in in_trie]) if in_trie else {}
        chosen: list[int] = []
        for r, t in enumerate(turns):
            if t.done:
                chosen.append(-1)
                continue
            if t.forced:
                tok = t.forced.pop(0)
                within = t.forced_allowed.pop(0) if t.forced_allowed else None
                t.allowed.append(within)
                if lps is not None:  # a forced token inside a decision is certain under the name distribution
                    t.logprobs.append(0.0 if within is not None else float(lps[r, tok]))
            elif t.trie is not None:  # a name drawn from the renormalised distribution, one token at a time
                within, tok, lp_tok, ent = name_draw[r]
                t.allowed.append(within)
                if want_logprobs:
                    t.logprobs.append(lp_tok)
                name = t.trie.advance(tok, lp_tok, ent)
                if name is not None:
                    d = t.trie
                    t.decisions.append({"stem": d.stem, "names": d.names, "scores": None, "choice": name, "bias": 0.0, "logprob": d.logprob, "entropy": d.entropy})
                    if d.kind == "route":
                        t.choice = name
                    t.trie = None
            else:
                tok = best[r] if greedy else draw_of[r]
                t.allowed.append(None)
                if lps is not None:
                    t.logprobs.append(float(lps[r, tok]))
            chosen.append(tok)
        chunks = []
        for r, (t, tok) in enumerate(zip(turns, chosen)):
            if tok < 0:
                chunks.append([])
                continue
            if tok == eos:
                t.done, t.eos = True, True
                t.ids.append(tok)
                chunks.append([tok])
                continue
            t.ids.append(tok)
            piece = vocab[tok] if tok < len(vocab) else tokenizer.decode([tok])
            t.text += piece
            chunks.append([tok])
            if any(s in t.text[-(len(s) + len(piece)):] for s in stop_strings):  # a stop string first appears within the new piece
                t.done = True
        session.feed(chunks)
        if decide is not None:
            live = [r for r, t in enumerate(turns) if not t.done and not t.forced and t.trie is None]
            if live:
                new = decide(session, live, turns)
                for f in new:
                    turns.append(f.turn)
                forks += new
    return turns, forks


