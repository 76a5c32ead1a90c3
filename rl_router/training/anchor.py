"""The protocol anchor (`algorithm.protocol_anchor`): keep the protocol the names' gradient does not train.

Why: a scripted all-names step (rollout/decision_episodes.py) trains the route name alone; the
tokens the script wrote before it (the warm start's own `<think>Route.</think><route model="`)
are masked out of the policy loss, since no sampler wrote them. Yet at evaluation and in
service the router writes those tokens itself, and the names' gradient moves the same (LoRA)
weights that write them. Measured on dcrouter (README, "The route decision alone"): at 5x the
recipe's learning rate every greedy held-out episode was a format error (`<think><route><route>...`),
while every training episode, written by the script, was well formed.

The anchor adds to the loss
    coef x (mean over the script's tokens before the name of -log p(token))
at the loss's own temperature (the full-vocabulary distribution the decoder samples those
tokens from): behaviour cloning of the protocol the warm start was taught, on the very
contexts the step trains on, the way PPO-ptx (Ouyang et al. 2022) mixes a supervised term into
an RL loss. It leaves the name decision's objective as it is and pins only what the router
must keep writing. Every episode of a group carries the same script before its name (the
warm start's shape, whatever the name), so each distinct prompt's tokens are counted once:
the same mean as over every row, at a ninth of the LM head's work on dcrouter.
"""

from __future__ import annotations

from typing import Any

import torch

from rl_router.training.logprobs import _first_rows, prompt_groups


def anchor_mask(inputs: dict[str, Any]) -> torch.Tensor | None:
    """(B x C) bool: the completion tokens the script wrote (in `completion_mask`, out of the
    policy loss's `tool_mask`), in the first row of each distinct prompt; None when the batch
    has no `tool_mask` (nothing scripted to anchor)."""
    if "tool_mask" not in inputs:
        return None
    scripted = inputs["completion_mask"].bool() & ~inputs["tool_mask"].bool()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    P = inputs["prompt_ids"].size(1)
    inv = prompt_groups(ids, att, P)
    keep = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    keep[_first_rows(inv, int(inv.max()) + 1)] = True
    return scripted & keep[:, None]


def anchor_nll_sum(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The summed negative log-likelihood of the anchored tokens (`logps`: the loss's per-token
    log-probs, computed at least where `mask` is True)."""
    return -(logps * mask.to(logps.dtype)).sum()
