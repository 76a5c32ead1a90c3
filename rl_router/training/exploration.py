"""An entropy floor on the router's name decisions: exploration that survives the early collapse.

Why: with GRPO on a ten-model pool, the per-model mean reward dominates the per-task signal of
8 samples, and the route decision collapses onto one model within 5-7 steps of 8 tasks (both
SmolLM2 single-shot recipes, seed 0): from then on every group's samples call the same model,
no group compares two models, and the router can no longer learn which task needs which.
TRL's `entropy_coef` rewards the entropy of every completion token, which mostly pays the
router to write noisier text; this acts only where a model is chosen.

The penalty is a hinge, `coef * mean(relu(floor - H))`, over the name decisions of the batch
that have a choice. A decision is a run of consecutive decision tokens (a name's tokens); its H
is the sum of its tokens' entropies in nats, each within its allowed set (the distribution the
rollout sampled; logprobs.head_logps). By the chain rule that sum is an unbiased estimate of the
entropy of the name distribution, so the floor reads the choice among names, not each token's
share of it: a per-token floor would also force a mix between names that share a prefix
(gemini-1.5-pro and gemini-1.5-flash) however spread the names already are. Decisions with no
choice (every token has one allowed continuation, e.g. adopting the only model called) are left
out. Above the floor the term is 0 and changes nothing; below it, it pushes that decision's
entropy back up.
"""

from __future__ import annotations

import torch


def choice_positions(allowed: torch.Tensor) -> torch.Tensor:
    """(B x C) bool: decision tokens with at least two allowed tokens (`allowed`: B x C x K, -1 padded)."""
    return (allowed >= 0).sum(-1) >= 2


def decision_ids(allowed: torch.Tensor) -> torch.Tensor:
    """(B x C) long: for each decision token, the index of its decision (a run of consecutive
    decision tokens in a row), numbered in row-major order; -1 elsewhere."""
    dec = allowed[..., 0] >= 0
    start = dec & ~torch.nn.functional.pad(dec[:, :-1], (1, 0), value=False)
    ids = start.flatten().cumsum(0).view_as(dec) - 1
    return ids.masked_fill(~dec, -1)


def entropy_shortfall(entropies: torch.Tensor, allowed: torch.Tensor | None, floor: float) -> torch.Tensor | None:
    """mean over the decisions that have a choice of relu(floor - H), H the sum of the
    decision's token entropies; connected to the graph. None where the batch has no such
    decision (then there is nothing to penalise)."""
    if allowed is None or allowed.shape[:2] != entropies.shape:
        return None
    ids = decision_ids(allowed)
    dec = ids >= 0
    if not bool(dec.any()):
        return None
    n = int(ids.max()) + 1
    h = entropies.new_zeros(n).index_add(0, ids[dec], entropies[dec])
    has_choice = torch.zeros(n, dtype=torch.bool, device=ids.device).index_fill(0, ids[choice_positions(allowed)], True)
    if not bool(has_choice.any()):
        return None
    return torch.relu(floor - h[has_choice]).mean()
