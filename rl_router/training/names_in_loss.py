"""Scripted all-names weights read from the loss's own forward (`algorithm.all_names_weights_in_loss`).

Why: with scripted all-names episodes (rollout/decision_episodes.py) a step ran the router
twice over the same tokens under the same weights: a no-grad "names pass" for each episode's
log p(name), which the mirror target needs before the advantages exist, then the loss's
forward with gradient over the same prompts and names. A profile of the SmolLM2 scripted
step (8 dcrouter queries x 9 models) put the names pass at 45% of it. The names' log-probs
are exactly what the loss's forward computes, so here the loss computes them once: its
forward gives the log-probs, their detached sum over each episode's name tokens weighs the
mirror target, the advantages are taken from it, and the same forward's log-probs carry the
gradient. The objective is the one the names pass trains (the target is built from the
router's current probabilities, which both read), without its rounding differences between a
no-grad pass and the loss's.

What it needs: every loss forward holds whole groups (the target of a group is over all its
names); the trainer checks this at generation from the forwards the loss will run (its
`microbatch_tokens` pieces, else TRL's micro-batches: `whole_groups`) and runs the separate
names pass for a step where one splits a group. One generation per optimizer step
(`num_iterations: 1`, `steps_per_generation` = `gradient_accumulation_steps`), so the weights
the target reads are the ones the loss moves (with a generation reused, the names pass reads
the generation's weights and this would read later ones: refused). Mirror weights only: the
target is per group, where the policy and uniform weights under `scale_rewards: batch` need
the whole batch's rewards. `all_names_credit` is moot here: a scripted episode's policy tokens
are its name's, so its advantage is per episode. The rl-router log-prob pass only: a model
whose loss TRL's pass computes (rescaled logits, an MoE aux loss) is refused, and a loss that
ran without filling its advantages raises before any optimizer step.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rl_router.training.advantages import all_names_advantages

#: the per-row fields the generation hands the loss in place of advantages
REWARD, TARGET = "names_reward", "names_target"


def whole_groups(ranges: Sequence[tuple[int, int]], G: int, rows: int) -> bool:
    """Whether every row range (a loss forward) starts and ends on a group boundary."""
    return rows % G == 0 and all(s % G == 0 and (e % G == 0 or e == rows) for s, e in ranges)


def defer(out: dict[str, Any], rewards: torch.Tensor, targets: Sequence[str | None], names: list[str]) -> dict[str, Any]:
    """`out` with this process's rewards and route targets (an index into `names`, which grows
    with new names; -1: none) for the loss, and NaN advantages until the loss computes them
    (never zeros that would train silently: the trainer raises where a loss ran without filling
    them)."""
    idx = []
    for t in targets:
        if t is not None and t not in names:
            names.append(t)
        idx.append(names.index(t) if t is not None else -1)
    dev = out["completion_ids"].device
    out[REWARD] = rewards.to(dev, torch.float32)
    out[TARGET] = torch.tensor(idx, dtype=torch.long, device=dev)
    out["advantages"] = torch.full((len(idx),), float("nan"), device=dev, dtype=out["advantages"].dtype)
    return out


def piece_advantages(inputs: dict[str, Any], logps: torch.Tensor, names: list[str], *, G: int, K: int, weights: str, temperature: float) -> tuple[torch.Tensor, list[str | None], list[float]]:
    """(advantages, route targets, the names' log-probs) of a loss forward's rows: each row's
    log p(name) is the detached sum of `logps` (rows x completion width, the loss's own) over
    its name tokens (the completion tokens the policy loss reads: `completion_mask` x
    `tool_mask`, which for scripted episodes are the name's only), and the advantages are
    `all_names_advantages` of the rows' rewards, targets and those log-probs, as the names
    pass would give them."""
    mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else inputs["completion_mask"]
    mask = mask[:, : logps.size(1)].to(logps.dtype)
    named = mask.sum(1) > 0
    lp = torch.where(named, (logps.detach() * mask).sum(1), torch.full_like(named, float("nan"), dtype=logps.dtype))
    targets = [names[i] if i >= 0 and bool(h) else None for i, h in zip(inputs[TARGET].tolist(), named.tolist())]
    adv = all_names_advantages(inputs[REWARD], G, targets, lp, K, scale="none", weights=weights, temperature=temperature)
    return adv, targets, lp.tolist()
