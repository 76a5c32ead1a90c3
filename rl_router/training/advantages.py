"""Advantage estimators over groups of episodes of the same task.

All take rewards as a flat tensor whose groups of `G` consecutive entries share a task
(TRL's RepeatSampler order) and return one advantage per episode.

GRPO (reference, TRL computes it itself):  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

RLOO (leave-one-out baseline, Ahmadian et al. 2024):
    A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r_group))
An unbiased baseline that excludes the episode's own reward; no std scaling.

BoPO (boundary-guided; see `rl_router/boundary.py` for the reward):
    b_g   = (1 - beta) * mean(r_group) + beta * r_ref(task)
    A_i   = r_i - b_g
    A_i   = min(A_i, 0)   if episode i failed and a boundary policy succeeds on the task
`r_ref` is the reward the better boundary policy (always-cheapest / always-strongest)
earns on this task. Mixing it into the baseline keeps a signal when the whole group
agrees (e.g. every episode took the cheap model and failed a task the strong model
solves: GRPO's advantage is 0, BoPO's is negative). Within a group the baseline is shared,
so advantages keep the rewards' order; BoPO's reward ranks every success above every
failure, hence a cheap failure never gets a higher advantage than a costlier success, and
the clamp makes sure failing a solvable task is never pushed up, so the policy cannot
collapse to always-cheap.
"""

from __future__ import annotations

import torch


def _groups(rewards: torch.Tensor, G: int) -> torch.Tensor:
    if G < 1 or rewards.numel() % G:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of num_generations={G}")
    return rewards.view(-1, G)


def grpo_advantages(rewards: torch.Tensor, G: int, eps: float = 1e-4) -> torch.Tensor:
    g = _groups(rewards, G)
    std = g.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(g[:, :1])
    return ((g - g.mean(dim=1, keepdim=True)) / (std + eps)).reshape(-1)


def rloo_advantages(rewards: torch.Tensor, G: int) -> torch.Tensor:
    """NaN rewards (TRL's unscorable episodes: every reward function returned None) are left
    out of the other episodes' baselines and get advantage 0, as TRL does for GRPO."""
    if G < 2:
        raise ValueError("RLOO needs num_generations >= 2 (the baseline leaves one out)")
    g = _groups(rewards, G)
    valid = ~torch.isnan(g)
    v = torch.where(valid, g, torch.zeros_like(g))
    n_others = valid.sum(dim=1, keepdim=True) - valid.long()
    others = (v.sum(dim=1, keepdim=True) - v) / n_others.clamp(min=1)
    adv = torch.where(valid & (n_others > 0), g - others, torch.zeros_like(g))
    return adv.reshape(-1)


def bopo_advantages(rewards: torch.Tensor, G: int, ref_rewards: torch.Tensor, success: torch.Tensor, ref_solvable: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """`ref_rewards`, `ref_solvable`: per episode (constant within a group); `success`: per
    episode. NaN rewards (unscorable episodes) are left out of the group mean and get 0."""
    g = _groups(rewards, G)
    ref = _groups(ref_rewards.to(rewards.dtype), G)[:, :1]
    mean = torch.nanmean(g, dim=1, keepdim=True)
    mean = torch.where(torch.isnan(mean), ref, mean)  # a wholly unscorable group: baseline = reference
    base = (1 - beta) * mean + beta * ref
    adv = (g - base).reshape(-1)
    clamp = (~success.bool()) & ref_solvable.bool()
    adv = torch.where(clamp, torch.clamp(adv, max=0.0), adv)
    return torch.nan_to_num(adv, nan=0.0)
