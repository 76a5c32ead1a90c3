"""A micro-batch computed at its own width, not the generation batch's.

TRL pads a whole generation batch to its longest prompt (on the left) and its longest
completion (on the right), then splits it into micro-batches that keep that width. Routing
prompts vary a lot in length (MMLU-Pro single-shot: 739 tokens for the longest of 16 tasks,
about 450 typical), and with shared prompts a micro-batch is one group, whose rows all have
the same prompt: most of its left padding is columns no row uses, run forward and backward
for nothing. `trim_padding` drops the columns that are padding in every row of the
micro-batch, the prompt's on the left and the completion's on the right, from every tensor
aligned with them.

Why the log-probs do not change: masked columns are never attended to, and dropping
left columns shifts every row's positions by the same amount, which rotary position
embeddings (every router this project trains) do not see: attention depends on position
differences only. The rollout's own positions start at 0 per row anyway (rollout/decoder.py),
so TRL's padded positions were already a shift of them. Models with absolute position
embeddings are left untouched (`shift_invariant`).
"""

from __future__ import annotations

from typing import Any

import torch


def shift_invariant(model: Any) -> bool:
    """Whether shifting every position of a row by the same amount leaves the model's outputs
    unchanged: rotary embeddings (the config names a rope theta or rope parameters)."""
    from rl_router.training.logprobs import causal_lm

    cfg = causal_lm(model).config.get_text_config()
    return any(getattr(cfg, k, None) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling"))


def trim_padding(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` (a TRL micro-batch) without the prompt columns that are padding in every row
    and the completion columns that are padding in every row. Every tensor whose first two
    dims are (rows, completion width) is cut with the completions (masks, log-probs, the name
    decisions' allowed sets, per-token advantages); the rest is kept as is."""
    pm, cm = inputs["prompt_mask"], inputs["completion_mask"]
    B, P = pm.shape
    C = cm.size(1)
    used_p = pm.bool().any(0).nonzero()
    used_c = cm.bool().any(0).nonzero()
    start = int(used_p[0]) if len(used_p) else P - 1  # keep at least one prompt column: its hidden state predicts the first completion token
    end = int(used_c[-1]) + 1 if len(used_c) else 1
    if start == 0 and end == C:
        return inputs
    out = dict(inputs)
    for k, v in inputs.items():
        if not isinstance(v, torch.Tensor) or v.dim() < 2 or v.size(0) != B:
            continue
        if k in ("prompt_ids", "prompt_mask"):
            out[k] = v[:, start:]
        elif v.size(1) == C:
            out[k] = v[:, :end]
    return out
