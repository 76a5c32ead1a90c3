"""The loss's per-token log-probs: only where the loss reads them, and at name decisions the
distribution the rollout sampled.

Two things TRL 1.16's own log-prob pass does not do for us:

1. **Only the tokens that carry loss.** TRL projects hidden states through the LM head with a
   fused, tiled kernel; on a GPU (Triton) it scores only labelled positions, elsewhere it
   scores every position of every sequence, prompt included. A routing episode's trained
   tokens are a small share of it (MMLU-Pro: ~450 prompt tokens, pool replies, and ~60 router
   tokens), so on a CPU most of that work is thrown away: measured (under cProfile), the
   LM-head backward alone took 52 of a 60 s step of 256 episodes. Here the backbone runs
   through every wrapper (DDP, PEFT, TRL's patched forward, with `logits_to_keep=1` so the
   model computes no logits of its own; once for the distinct prompts and once for the
   completions, with the prompts' last tokens apart under `prompt_gradient: false`:
   `shared_prompt_hidden`), its last hidden states are captured by a forward
   hook, and the LM head is applied only at the positions the loss reads (`completion_mask *
   env_mask`), in row tiles, so no [batch, length, vocabulary] tensor ever exists.

2. **Name decisions.** A route name is sampled from the router's next-token distribution
   renormalised over the tokens that continue some allowed name (rollout/names.py
   `allowed_sets`; `@NAME` only over the models the episode called). At those positions the
   log-prob (and entropy) is taken within the allowed set:

       log p(tok) = z_tok / T - logsumexp_{a in allowed} z_a / T

   so the policy gradient and the importance ratio see the distribution that was sampled, and
   the sum over a decision's tokens is the decoder's name log-prob
   (tests/test_name_decisions.py checks both to float tolerance).

Everywhere else the numbers equal TRL's to float tolerance (log_softmax of logits / temperature,
the LM head in the autocast dtype: `cast_lm_head_to_fp32` is not applied; tested against TRL's
own pass). Models whose logits are rescaled (soft-capping, logit scales) are refused with name
decisions (`check_trainable`), since their renormalised log-probs would need the rescaling too.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, NamedTuple, Sequence

import torch


def allowed_tensor(decision_tokens: Sequence[Sequence[tuple[int, Sequence[int]]] | None], width: int, device: Any = None) -> torch.Tensor | None:
    """(episodes x width x K) token ids, -1 where unused: row b, column j lists the allowed set
    of episode b's completion token j (all -1 where the vocabulary is the set). None when no
    episode has a decision token."""
    per_ep = [list(d or []) for d in decision_tokens]
    k = max((len(a) for d in per_ep for _, a in d), default=0)
    if k == 0:
        return None
    out = torch.full((len(per_ep), width, k), -1, dtype=torch.long)
    for b, d in enumerate(per_ep):
        for pos, a in d:
            if 0 <= pos < width:
                out[b, pos, : len(a)] = torch.tensor(list(a), dtype=torch.long)
    return out.to(device) if device is not None else out


def check_trainable(model: Any, names: bool) -> None:
    """Refuse what the loss cannot train exactly: name decisions on a router whose logits are
    rescaled (TRL's own pass would then compute whole-vocabulary log-probs for names sampled
    within their allowed sets: a gradient for another distribution than the one sampled)."""
    if names and rescales_logits(model):
        from rl_router.errors import ConfigError

        raise ConfigError("rollout.decisions", "names needs a router whose logits are not soft-capped or scaled (the loss renormalises raw logits)", "set rollout.decisions: free for this model")


def causal_lm(model: Any) -> Any:
    """The causal LM inside the wrappers training puts around it (DDP, PEFT)."""
    m = model.module if hasattr(model, "module") else model
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def rescales_logits(model: Any) -> bool:
    """Whether the model's logits are soft-capped or scaled (then TRL's own pass is used)."""
    cfg = causal_lm(model).config.get_text_config()
    return any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))


@contextmanager
def captured_hidden(model: Any) -> Iterator[list[torch.Tensor]]:
    """The backbone's last hidden states of every forward run inside the block, in order."""
    backbone = causal_lm(model).base_model
    got: list[torch.Tensor] = []

    def hook(_mod: Any, _inp: Any, out: Any) -> None:
        got.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

    h = backbone.register_forward_hook(hook)
    try:
        yield got
    finally:
        h.remove()


def tile_rows(vocab: int, budget: int = 1 << 24) -> int:
    """Rows of logits per tile: about `budget` floats (64 MB) whatever the vocabulary."""
    return max(16, budget // max(1, vocab))


def head_logps(head: Any, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, allowed: torch.Tensor | None, want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `tokens` (N) given `hidden` (N x H), logits = head(hidden) / temperature,
    over the vocabulary, or within `allowed` (N x K, -1 padded) where that row has a set. A row
    with a set needs only its set's logits (`_allowed_logps`: K dot products instead of the
    vocabulary's; at a scripted step's name positions the whole-vocabulary head was about a
    tenth of the loss); the other rows run the head over the vocabulary (`_vocab_logps`)."""
    if allowed is None or not bool((has := allowed[:, 0] >= 0).any()):
        return _vocab_logps(head, hidden, tokens, temperature, want_entropy)
    if bool(has.all()):
        return _allowed_logps(head, hidden, tokens, temperature, allowed, want_entropy)
    r, f = has.nonzero().flatten(), (~has).nonzero().flatten()
    lp_r, ent_r = _allowed_logps(head, hidden[r], tokens[r], temperature, allowed[r], want_entropy)
    lp_f, ent_f = _vocab_logps(head, hidden[f], tokens[f], temperature, want_entropy)
    lp = lp_r.new_zeros(hidden.shape[0]).index_put((r,), lp_r).index_put((f,), lp_f)
    if not want_entropy:
        return lp, None
    assert ent_r is not None and ent_f is not None
    return lp, ent_r.new_zeros(hidden.shape[0]).index_put((r,), ent_r).index_put((f,), ent_f)


def _allowed_logps(head: Any, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, allowed: torch.Tensor, want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`head_logps` for rows that all have an allowed set: each row's logits over its set only
    (its tokens' rows of the output layer, and bias), then the log-softmax within the set. The
    same numbers as masking the whole vocabulary's logits, up to float rounding (a dot product
    summed in another order); a token outside its set gets -inf, as there."""
    valid = allowed >= 0
    ids = allowed.clamp(min=0)
    w = head.weight[ids]  # N x K x H (a tied embedding's rows: its gradient reaches only them)
    h = hidden if torch.is_autocast_enabled(hidden.device.type) else hidden.to(w.dtype)  # as head(hidden) would: autocast's dtype, else the layer's
    z = torch.matmul(w, h.unsqueeze(-1)).squeeze(-1)
    if getattr(head, "bias", None) is not None:
        z = z + head.bias[ids]
    z = (z.float() / temperature).masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(z, dim=-1)
    at = (allowed == tokens[:, None]) & valid
    zt = z.masked_fill(~at, float("-inf")).max(dim=-1).values  # the token's logit, -inf when it is not in its set
    lp = zt - lse
    if not want_entropy:
        return lp, None
    lps = z - lse[:, None]
    return lp, -(lps.exp() * lps.masked_fill(~valid, 0.0)).sum(-1)


def _vocab_logps(head: Any, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`head_logps` over the vocabulary, in row tiles (no rows x vocabulary tensor beyond one tile)."""
    lps, ents = [], []
    step = tile_rows(head.weight.shape[0])
    for i in range(0, hidden.shape[0], step):
        z = head(hidden[i : i + step]).float() / temperature
        tok = tokens[i : i + step]
        lp = torch.log_softmax(z, dim=-1)
        lps.append(lp.gather(1, tok[:, None]).squeeze(1))
        if want_entropy:
            p = lp.exp()
            ents.append(-(p * lp.masked_fill(torch.isinf(lp), 0.0)).sum(-1))
    return torch.cat(lps), (torch.cat(ents) if want_entropy else None)


def _expand_cache(cache: Any, index: torch.Tensor) -> Any:
    """A cache whose row r is row index[r] of `cache` (gradients flow back, summed per source row)."""
    from transformers import DynamicCache

    out = DynamicCache()
    for li, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), li)
    return out


def _hidden(model: Any, autocast: Any, **kw: Any) -> tuple[torch.Tensor, Any]:
    """(last hidden states, the model's output) of one forward through every wrapper, with the
    model computing logits at one position only (`logits_to_keep=1`)."""
    from contextlib import nullcontext

    with captured_hidden(model) as got, (autocast or nullcontext)():
        out = model(logits_to_keep=1, **kw)
    return got[-1], out


class PromptCache:
    """Prompts' no-gradient forwards (the keys and values of each distinct prompt row but its
    last token, which `shared_prompt_hidden` runs with the completions), kept so a later pass under the same weights reads them instead of
    running the prompt again. Why: with scripted all-names episodes and `prompt_gradient:
    false` a step runs each group's prompt twice without gradient, once for the names'
    log-probs that weigh the advantages and once in the loss, under the same weights (one
    generation per optimizer step) and at the same width (the same micro-batch trim): the
    second is the same numbers. A row is found by its exact token ids and mask (so by its
    width too); what is not found is computed. `tag` says under which weights it was filled
    (the trainer's optimizer step): the owner must not read it under others."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, bytes, bytes], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.tag: Any = None
        self.hits = self.misses = 0

    def reset(self, tag: Any) -> None:
        self.rows, self.tag = {}, tag

    @staticmethod
    def _key(ids: torch.Tensor, mask: torch.Tensor) -> tuple[int, bytes, bytes]:
        return ids.numel(), ids.detach().cpu().numpy().tobytes(), mask.detach().cpu().numpy().tobytes()

    def lookup(self, ids: torch.Tensor, mask: torch.Tensor) -> Any | None:
        """A DynamicCache of the rows' prompts but their last token when every row is kept, else None."""
        got = [self.rows.get(self._key(i, m)) for i, m in zip(ids, mask)]
        if any(g is None for g in got):
            self.misses += 1
            return None
        self.hits += 1
        from transformers import DynamicCache

        cache = DynamicCache()
        for li in range(len(got[0])):
            cache.update(torch.cat([g[li][0] for g in got]), torch.cat([g[li][1] for g in got]), li)  # type: ignore[index]
        return cache

    def store(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> None:
        """Keep each row's cache (its prompt but the last token: `shared_prompt_hidden`), found by its whole prompt."""
        for r in range(ids.size(0)):
            self.rows[self._key(ids[r], mask[r])] = [(layer.keys[r : r + 1].detach(), layer.values[r : r + 1].detach()) for layer in cache.layers]


def shared_prompt_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, C: int, autocast: Any = None, inv: torch.Tensor | None = None,
                         prompt_grad: bool = True, prompt_cache: PromptCache | None = None, share_prefix: bool = True) -> torch.Tensor:
    """(B x C x H) the hidden states that predict each completion token, with every distinct
    prompt of the batch run once: its KV cache (kept in the graph) is shared by the rows that
    have it, and only the completions run per row. GRPO's samples of a task share their prompt,
    so forward and backward of the prompt are done once per group instead of once per sample,
    and so are the leading completion tokens every sample of a group shares (`shared_prefix`);
    the result equals the per-row forward (same positions: TRL's left-padded rows start at the
    same offsets; tests/test_shared_prompt.py). `prompt_grad=False` runs the prompts but their last
    token without gradient (`algorithm.prompt_gradient: false`): the same values, a truncated
    gradient (the last token, whose hidden state predicts the first completion token, runs with
    gradient); then `prompt_cache` (PromptCache) is read first and filled with what had to be run."""
    B, L = input_ids.shape
    P = L - C
    prompts, pmask = input_ids[:, :P], attention_mask[:, :P]
    if inv is None:
        inv = prompt_groups(input_ids, attention_mask, P)
    first = _first_rows(inv, int(inv.max()) + 1)
    from transformers import DynamicCache

    grad = prompt_grad and torch.is_grad_enabled()
    if grad or (prompt_grad and prompt_cache is None):  # the whole prompt in one forward (a truncated gradient's passes all split it: the same rounding in each)
        # a plain cache (no config): a model's own cache would keep only a sliding window on its
        # sliding-window layers, and the completions must see the whole prompt
        hp, out = _hidden(model, autocast, input_ids=prompts[first], attention_mask=pmask[first], use_cache=True, past_key_values=DynamicCache())
        last, past = hp[:, P - 1 : P], out.past_key_values
    else:
        # all but the prompt's last token without gradient (kept, or read from `prompt_cache`);
        # the last token runs as the completions do, with gradient where it is enabled: its hidden
        # state predicts the first completion token, which would otherwise get no gradient
        past = prompt_cache.lookup(prompts[first], pmask[first]) if prompt_cache is not None else None
        if past is None:
            with torch.no_grad():
                past = DynamicCache()
                if P > 1:
                    past = _hidden(model, autocast, input_ids=prompts[first, : P - 1], attention_mask=pmask[first, : P - 1], use_cache=True, past_key_values=past)[1].past_key_values
            if prompt_cache is not None:
                prompt_cache.store(prompts[first], pmask[first], past)
        # DynamicCache.update concatenates into new tensors: the kept rows stay as they are
        last, out = _hidden(model, autocast, input_ids=prompts[first, P - 1 :], attention_mask=pmask[first], past_key_values=past, use_cache=True)
        past = out.past_key_values
    c = shared_prefix(input_ids[:, P:], attention_mask[:, P:], inv, first) if share_prefix and first.numel() < B else 0
    parts = [last[inv]]
    if c:  # the group's common completion prefix (e.g. a script's tokens before the name), once per group, with gradient as a completion
        # DynamicCache.update concatenates into new tensors: the kept rows stay as they are (tested: the loss with kept prompts equals running them)
        hpre, out = _hidden(model, autocast, input_ids=input_ids[first, P : P + c], attention_mask=attention_mask[first, : P + c], past_key_values=past, use_cache=True)
        past = out.past_key_values
        parts.append(hpre[inv])
    if packs(model):  # each group's rows in one row after its prompt: the prompt's cache read once per group
        hc = _packed_completions(model, autocast, input_ids[:, P + c :], attention_mask, P + c, inv, first, past)
    else:
        cache = _expand_cache(past, inv)
        hc, _ = _hidden(model, autocast, input_ids=input_ids[:, P + c :], attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    return torch.cat([*parts, hc[:, : C - c - 1]], dim=1)


def packs(model: Any) -> bool:
    """Whether a group's completions can run packed in one row (`_packed_completions`): the
    model's attention takes a custom 4D boolean mask as it is (transformers' sdpa), and no layer
    attends through a sliding window (the packed mask has none)."""
    cfg = causal_lm(model).config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(cfg, "_attn_implementation", None) == "sdpa" and "sliding_attention" not in (getattr(text, "layer_types", None) or ())


def _packed_completions(model: Any, autocast: Any, comp: torch.Tensor, attention_mask: torch.Tensor, K: int, inv: torch.Tensor, first: torch.Tensor, past: Any) -> torch.Tensor:
    """(B x W x H) the hidden states of the completion columns `comp` (B x W, after the first
    K columns of each row's sequence, which `past` holds once per group), with each group's rows
    packed into one row: its rows' real tokens one after another, each attending to the group's
    context (`attention_mask`'s first K columns of the group's first row) and to its own earlier
    tokens only (a block-diagonal causal 4D mask), at its own position (K + its column). The same
    attention as one row per sample, but the prompt's keys and values are read once per group
    instead of copied into every row, and the linear layers see one matrix of the group's
    tokens. Columns that are padding (mask 0) are not run; their rows here are zeros (the loss
    never reads them). The mask lets a row see none of its pack's other rows, so where that
    wastes most of the attention (long sampled completions) the attention itself runs row by
    row against the context and the row's own tokens (`install_row_split_attention`), while
    the linear layers still see one matrix a pack."""
    install_row_split_attention()
    B, W = comp.shape
    cm = attention_mask[:, K:].bool()
    ng = first.numel()
    r_idx, j_idx = cm.nonzero(as_tuple=True)  # row-major: each row's columns in order
    g_idx = inv[r_idx]
    order = torch.sort(g_idx, stable=True).indices  # by group, then row, then column
    r_idx, j_idx, g_idx = r_idx[order], j_idx[order], g_idx[order]
    counts = torch.bincount(g_idx, minlength=ng)
    slot = torch.arange(g_idx.numel(), device=comp.device) - (torch.cumsum(counts, 0) - counts)[g_idx]
    Q = max(int(counts.max()) if counts.numel() else 1, 1)
    ids = comp.new_zeros(ng, Q)
    seg = torch.full((ng, Q), -1, dtype=torch.long, device=comp.device)
    col = torch.zeros((ng, Q), dtype=torch.long, device=comp.device)
    ids[g_idx, slot] = comp[r_idx, j_idx]
    seg[g_idx, slot] = r_idx
    col[g_idx, slot] = j_idx
    own = (seg[:, :, None] == seg[:, None, :]) & (col[:, None, :] <= col[:, :, None]) & (seg[:, None, :] >= 0)  # query x key, within one sample
    ctx = attention_mask[first, :K].bool()[:, None, :].expand(ng, Q, K)
    mask = torch.cat([ctx, own], dim=-1)[:, None]  # ng x 1 x Q x (K + Q): True attends
    spans = _row_spans(g_idx, r_idx, counts)
    # not under activation checkpointing: its recomputation runs outside this block, and must
    # compute the attention as the forward did
    checkpointed = getattr(causal_lm(model), "is_gradient_checkpointing", False)
    plan = RowSplit(K, Q, spans) if not checkpointed and _split_pays(K, Q, spans) else None
    token = _ROW_SPLIT.set(plan)
    try:
        hp, _ = _hidden(model, autocast, input_ids=ids, attention_mask=mask, position_ids=K + col, past_key_values=past, use_cache=True)
    finally:
        _ROW_SPLIT.reset(token)
    out = hp.new_zeros(B, W, hp.size(-1))
    return out.index_put((r_idx, j_idx), hp[g_idx, slot])


class RowSplit(NamedTuple):
    """How a packed completion pass's attention is computed row by row (`install_row_split_attention`):
    the context's width K, the packed width Q, and for each pack the slot range of each of its
    rows (in slot order; slots after the last range are padding)."""

    K: int
    Q: int
    spans: list[list[tuple[int, int]]]


#: set by `_packed_completions` around its forward: the attention below then runs each packed row
#: against its context and its own tokens only (None: attention as the model's)
_ROW_SPLIT: ContextVar[RowSplit | None] = ContextVar("rl_router_row_split", default=None)
_ROW_SPLIT_INSTALLED = False


def _row_spans(g_idx: torch.Tensor, r_idx: torch.Tensor, counts: torch.Tensor) -> list[list[tuple[int, int]]]:
    """For each pack, the slot range of each of its rows (slots are ordered by pack, row, column)."""
    spans: list[list[tuple[int, int]]] = [[] for _ in range(counts.numel())]
    if g_idx.numel() == 0:
        return spans
    rows = int(r_idx.max()) + 1
    keys, n = torch.unique_consecutive(g_idx * rows + r_idx, return_counts=True)
    packs_of = (keys // rows).tolist()
    at = [0] * counts.numel()
    for g, c in zip(packs_of, n.tolist()):
        spans[g].append((at[g], at[g] + c))
        at[g] += c
    return spans


#: `_split_pays`' share (0: never split; scripts/bench_step.py --row-split-ab times the loss both ways)
SPLIT_SHARE = 0.6


def _split_pays(K: int, Q: int, spans: list[list[tuple[int, int]]], share: float | None = None) -> bool:
    """Whether running the attention row by row scores at most `share` of the (query, key) pairs
    the packed mask scores (each pack's Q queries against K + Q keys, most of them masked: a
    row never sees its pack's other rows). Sampled GRPO groups (8 rows of ~100 tokens after a
    ~470-token prompt) score less than half; scripted names (a few tokens a row) about as many,
    where one call a pack is cheaper than one a row."""
    share = SPLIT_SHARE if share is None else share
    split = sum((e - b) * (K + e - b) for rows in spans for b, e in rows)
    return sum(len(rows) for rows in spans) > len(spans) and split <= share * len(spans) * Q * (K + Q)


def install_row_split_attention() -> None:
    """Wrap transformers' "sdpa" attention (once per process) so a packed completion pass can
    run each row's attention on its own: its queries against its pack's context (the first K
    keys) and its own keys, instead of every query of the pack against all K + Q keys under a
    block-diagonal mask. The same softmax over the same unmasked keys (tested equal to the
    packed pass, values and gradients), less work: the packed mask scores every pair of a pack's
    rows and masks most of them. Outside `_packed_completions` (no plan set, or another shape)
    the wrapper passes straight through."""
    global _ROW_SPLIT_INSTALLED
    if _ROW_SPLIT_INSTALLED:
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def row_split_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kw: Any) -> Any:
        plan = _ROW_SPLIT.get()
        if plan is None or attention_mask is None or query.dim() != 4 or query.size(0) != len(plan.spans) or query.size(2) != plan.Q or key.size(2) != plan.K + plan.Q:
            return inner(module, query, key, value, attention_mask, **kw)
        K, dev = plan.K, query.device
        ctx = torch.arange(K, device=dev)
        outs = []
        for g, rows in enumerate(plan.spans):
            parts = []
            for b, e in rows:
                keep = torch.cat([ctx, torch.arange(K + b, K + e, device=dev)])
                o, _ = inner(module, query[g : g + 1, :, b:e], key[g : g + 1].index_select(2, keep), value[g : g + 1].index_select(2, keep),
                             attention_mask[g : g + 1, ..., b:e, :].index_select(-1, keep), **kw)
                parts.append(o)  # 1 x rows x heads x dim (transformers' layout after attention)
            end = rows[-1][1] if rows else 0
            if end < plan.Q:  # padding slots: no row reads them
                parts.append(query.new_zeros(1, plan.Q - end, query.size(1), value.size(-1), dtype=parts[0].dtype if parts else query.dtype))
            outs.append(torch.cat(parts, dim=1))
        return torch.cat(outs, dim=0), None

    ALL_ATTENTION_FUNCTIONS["sdpa"] = row_split_sdpa
    _ROW_SPLIT_INSTALLED = True


def shared_prefix(completion_ids: torch.Tensor, completion_mask: torch.Tensor, inv: torch.Tensor, first: torch.Tensor) -> int:
    """How many leading completion columns every row shares with its prompt group's first row
    (ids and mask), at most width - 1: those run once per group. All-names groups that name
    the model after a fixed prefix share it (scripted episodes: `<think>Route.</think><route
    model="`); sampled groups rarely share more than a token or two."""
    same = ((completion_ids == completion_ids[first[inv]]) & (completion_mask == completion_mask[first[inv]])).all(0)
    differs = (~same).nonzero()
    c = int(differs[0]) if len(differs) else same.numel()
    return max(0, min(c, completion_ids.size(1) - 1))


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int) -> torch.Tensor:
    """Row -> index of its distinct prompt (a prompt is its first P tokens and their padding)."""
    return torch.unique(torch.cat([input_ids[:, :P], attention_mask[:, :P]], 1), dim=0, return_inverse=True)[1]


def _first_rows(inv: torch.Tensor, n: int) -> torch.Tensor:
    """For each of `n` groups, the first row whose group it is (`inv`: row -> group)."""
    first = torch.full((n,), -1, dtype=torch.long, device=inv.device)
    for r, g in enumerate(inv.tolist()):
        if first[g] < 0:
            first[g] = r
    return first


def policy_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, *, temperature: float, positions: torch.Tensor | None = None,
                 allowed: torch.Tensor | None = None, batch_size: int | None = None, compute_entropy: bool = False, autocast: Any = None, share_prompts: bool = True,
                 prompt_grad: bool = True, prompt_cache: PromptCache | None = None, share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B x logits_to_keep) log-probs (and entropies) of the completion tokens, computed only at
    `positions` (B x logits_to_keep bool; default: every completion token) and 0 elsewhere.
    `share_prompts`: rows with the same prompt run it once (`shared_prompt_hidden`).
    `prompt_grad=False`: every prompt but its last token runs without gradient (shared or not),
    so the gradient reaches the weights only through the completion tokens' own computation and
    the last prompt token's (which predicts the first completion token), reading the earlier
    prompt's keys and values as constants: a truncated gradient of the same log-probs, at the
    cost of a forward of the prompt instead of a forward and backward (`algorithm.prompt_gradient`).
    `prompt_cache`: prompts run without gradient are read from it where kept (PromptCache).
    `share_prefix`: a group's common leading completion tokens run once (`shared_prefix`; the
    same values and gradients, with or without the prompt's gradient)."""
    B, L = input_ids.shape
    C = logits_to_keep
    head = causal_lm(model).get_output_embeddings()
    if positions is None:
        positions = attention_mask[:, L - C :].bool()
    logps = []
    ents = []
    bs = batch_size or B
    for s in range(0, B, bs):
        ids, att, pos = input_ids[s : s + bs], attention_mask[s : s + bs], positions[s : s + bs]
        # checkpointing drops the cache; when every prompt is distinct, sharing saves nothing and
        # the plain per-row forward is cheaper (no cache copy)
        inv = prompt_groups(ids, att, L - C) if share_prompts and C < L and not getattr(causal_lm(model), "is_gradient_checkpointing", False) else None
        if not prompt_grad and C < L:  # the prompt as a constant context: through the cache, however many rows share it
            hidden = shared_prompt_hidden(model, ids, att, C, autocast, inv=prompt_groups(ids, att, L - C), prompt_grad=False, prompt_cache=prompt_cache, share_prefix=share_prefix)
        elif inv is not None and int(inv.max()) + 1 < inv.numel():
            hidden = shared_prompt_hidden(model, ids, att, C, autocast, inv=inv, share_prefix=share_prefix)
        else:
            full, _ = _hidden(model, autocast, input_ids=ids, attention_mask=att, use_cache=False)
            hidden = full[:, L - C - 1 : L - 1]  # the hidden state that predicts completion token j
        b_idx, j_idx = pos.nonzero(as_tuple=True)
        if len(b_idx) == 0:  # nothing here carries loss: zeros still connected to the graph (backward and DDP need it)
            zero = hidden.sum() * 0.0
            logps.append(zero + hidden.new_zeros(pos.shape, dtype=torch.float32))
            if compute_entropy:
                ents.append(hidden.new_zeros(pos.shape, dtype=torch.float32))
            continue
        tokens = ids[:, L - C :][b_idx, j_idx]
        a = allowed[s : s + bs][b_idx, j_idx] if allowed is not None else None
        lp, ent = head_logps(head, hidden[b_idx, j_idx], tokens, temperature, a, compute_entropy)
        logps.append(hidden.new_zeros(pos.shape, dtype=torch.float32).index_put((b_idx, j_idx), lp))
        if compute_entropy:
            ents.append(hidden.new_zeros(pos.shape, dtype=torch.float32).index_put((b_idx, j_idx), ent))
    return torch.cat(logps), (torch.cat(ents) if compute_entropy else None)
