"""The protocol anchor (`algorithm.protocol_anchor`): keep the protocol the names' gradient does not train.

Why: a scripted all-names step (rollout/decision_episodes.py) trains the route name alone; the
tokens the script wrote before it (the warm start's own `<think>Route.</think><route model="`)
are masked out of the policy loss, since no sampler wrote them. Yet at evaluation and in
service the router writes those tokens itself, and the names' gradient moves the same (LoRA)
weights that write them. Measured on dcrouter (README, "The route decision alone"): at 5x the
recipe's learning rate every greedy held-out episode was a format error (`<think><route><route>...`),
while every training episode, written by the script, was well formed.

The anchor adds to the loss
    coef x (mean over the anchored script tokens of -log p(token))
at the loss's own temperature (the full-vocabulary distribution the decoder samples those
tokens from): behaviour cloning of the protocol the warm start was taught, on the very
contexts the step trains on, the way PPO-ptx (Ouyang et al. 2022) mixes a supervised term into
an RL loss. It leaves the name decision's objective as it is and pins only what the router
must keep writing, before the name and after it: the group's first episode keeps the whole
episode (`<think>Route.</think><route model="NAME">Solve the task above.</route>`, the pool's
reply, `<think>Adopt.</think><answer>@NAME</answer>`; rollout/engine.py `anchor_episode`), the
reply masked apart from the script's tokens (`script_mask`); the others are cut after the name
as before. Every episode of a group carries the same script before its name (the warm start's
shape, whatever the name), so each distinct prompt's tokens are counted once, from the row that
has the most of them. Measured (README, "The route decision alone"), at 5x the recipe's rate:
with the tokens before the name alone anchored, they held (`protocol/nll` about 1e-5 a token at
the end) and the router broke after the name (`<route model="NAME"><answer>@...`); with the
whole route turn anchored, the turn held and the router broke at the adoption turn after the
pool's reply (it routed again): hence the whole episode.
"""

from __future__ import annotations

from typing import Any

import torch

from rl_router.training.logprobs import prompt_groups


def anchor_mask(inputs: dict[str, Any], script: list[list[int]]) -> torch.Tensor:
    """(B x C) bool: the completion tokens the script wrote (`script`: each episode's
    `script_mask`, rollout/decision_episodes.py `cut_at_decision`), within `completion_mask`, in
    one row of each distinct prompt: the row with the most of them (the group's episode that
    keeps the whole episode: rollout.engine `make_rollout_func(anchor_episode=True)`), the
    first such row on ties."""
    width = inputs["completion_ids"].size(1)
    marked = torch.zeros_like(inputs["completion_mask"], dtype=torch.bool)
    for b, m in enumerate(script):
        m = list(m or [])[:width]
        marked[b, : len(m)] = torch.tensor(m, dtype=torch.bool)
    scripted = inputs["completion_mask"].bool() & marked
    P = inputs["prompt_ids"].size(1)
    inv = prompt_groups(inputs["prompt_ids"], inputs["prompt_mask"], P)
    n = scripted.sum(1)
    keep = torch.zeros_like(n, dtype=torch.bool)
    for g in range(int(inv.max()) + 1):
        rows = (inv == g).nonzero()[:, 0]
        keep[rows[int(torch.argmax(n[rows]))]] = True  # argmax returns the first maximum
    return scripted & keep[:, None]


def anchor_nll_sum(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The summed negative log-likelihood of the anchored tokens (`logps`: the loss's per-token
    log-probs, computed at least where `mask` is True)."""
    return -(logps * mask.to(logps.dtype)).sum()
