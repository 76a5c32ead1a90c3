"""The loss's log-probs at name decisions: the distribution the rollout sampled, recomputed.

In a rollout a route name is drawn from the router's next-token distribution renormalised,
position by position, over the tokens that continue some allowed name (rollout/names.py
`allowed_sets`; `@NAME` only over the models the episode called). TRL's loss computes every
completion token's log-prob over the whole vocabulary (its fused LM head, logits /
temperature). At a decision position that is not the probability the token was sampled with,
so the policy gradient would push probability mass onto names the decoder can never emit and
the importance ratio would compare two different distributions. Here, at exactly those
positions, the log-prob (and entropy) is recomputed within the allowed set from the same
forward pass: the backbone's last hidden state at the position (captured by a forward hook),
projected through the LM head's rows for the allowed tokens only (K rows, never the vocabulary).

    log p(tok) = z_tok / T - logsumexp_{a in allowed} z_a / T

Everywhere else TRL's numbers are left as they are. The sum over a decision's positions is the
decoder's name log-prob (tests/test_name_decisions.py checks it to float tolerance).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch


def allowed_tensor(decision_tokens: Sequence[Sequence[tuple[int, Sequence[int]]] | None], width: int, device: Any = None) -> torch.Tensor | None:
    """(episodes x width x K) token ids, -1 where unused: row b, column j lists the allowed set
    of episode b's completion token j (empty where the vocabulary is the set). None when no
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


def _head_parts(model: Any) -> tuple[Any, Any]:
    """(backbone module whose output carries last_hidden_state, LM head) of a causal LM,
    through the wrappers training puts around it (DDP, PEFT)."""
    m = model.module if hasattr(model, "module") else model
    if hasattr(m, "get_base_model"):  # peft
        m = m.get_base_model()
    return m.base_model, m.get_output_embeddings()


@contextmanager
def captured_hidden(model: Any) -> Iterator[list[torch.Tensor]]:
    """The backbone's last hidden states of every forward run inside the block (TRL's
    log-prob pass runs in chunks of the batch: one tensor per chunk, in order)."""
    backbone, _ = _head_parts(model)
    got: list[torch.Tensor] = []

    def hook(_mod: Any, _inp: Any, out: Any) -> None:
        got.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

    h = backbone.register_forward_hook(hook)
    try:
        yield got
    finally:
        h.remove()


def renormalise(model: Any, hidden: torch.Tensor, input_ids: torch.Tensor, logits_to_keep: int, allowed: torch.Tensor, temperature: float,
                logps: torch.Tensor, entropies: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`logps` / `entropies` (B x logits_to_keep, TRL's) with every decision position replaced
    by its log-prob / entropy within the allowed set. `hidden`: B x L x H for `input_ids`."""
    has = allowed[:, :logits_to_keep, 0] >= 0
    if not bool(has.any()):
        return logps, entropies
    _, head = _head_parts(model)
    b_idx, j_idx = has.nonzero(as_tuple=True)
    L = input_ids.size(1)
    h = hidden[b_idx, L - logits_to_keep - 1 + j_idx].float()  # the hidden state that predicts completion token j
    ids = allowed[b_idx, j_idx]  # N x K, -1 padded
    valid = ids >= 0
    w = head.weight.index_select(0, ids.clamp(min=0).reshape(-1)).view(*ids.shape, -1).float()  # N x K x H
    z = torch.einsum("nh,nkh->nk", h, w)
    if getattr(head, "bias", None) is not None:
        z = z + head.bias.index_select(0, ids.clamp(min=0).reshape(-1)).view(ids.shape).float()
    z = (z / temperature).masked_fill(~valid, float("-inf"))
    lp = torch.log_softmax(z, dim=-1)
    tok = input_ids[b_idx, L - logits_to_keep + j_idx]
    hit = (ids == tok[:, None]) & valid
    if not bool(hit.any(dim=-1).all()):
        raise ValueError("a decision token is not in its allowed set: the rollout and the loss disagree about what was sampled")
    lp_tok = (lp.masked_fill(~hit, 0.0)).sum(dim=-1)
    logps = logps.clone()
    logps[b_idx, j_idx] = lp_tok.to(logps.dtype)
    if entropies is not None:
        p = lp.exp()
        ent = -(p * lp.masked_fill(~valid, 0.0)).sum(dim=-1)
        entropies = entropies.clone()
        entropies[b_idx, j_idx] = ent.to(entropies.dtype)
    return logps, entropies
