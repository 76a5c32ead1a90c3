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

**Pieces sized by tokens** (`algorithm.microbatch_tokens`). TRL sizes a micro-batch in rows
(`per_device_train_batch_size`), so its memory follows the longest episodes: SmolLM2 on
MMLU-Pro prompts ran out of 24 GB at 8 rows that fit easily at 8 short ones. `plan_pieces`
cuts a micro-batch into contiguous row ranges whose tokens, counted as the loss runs them
(each distinct prompt once when prompts are shared, every row's completion, at the piece's
own width when trimmed; a group's real tokens where its completions run packed), stay within a budget: whole prompt groups together while they fit,
a group alone over the budget split by rows. The trainer runs the pieces one after another,
each backwarded before the next, so activations are bounded by the budget, and short episodes
share one forward. `piece_weights` makes the pieces' losses sum to the micro-batch's for each
TRL loss type, so the gradient is the same (tests/test_microbatch.py). Under several
processes every rank runs the same row ranges (`the_same_on_every_rank`: cut wherever any
rank cuts), since TRL's loss gathers per-row metrics once per call.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rl_router.recipe import LOSS_NORMALISERS, LOSS_TYPES


def shift_invariant(model: Any) -> bool:
    """Whether shifting every position of a row by the same amount leaves the model's outputs
    unchanged: rotary embeddings (the config names a rope theta or rope parameters)."""
    from rl_router.training.logprobs import causal_lm

    cfg = causal_lm(model).config.get_text_config()
    return any(getattr(cfg, k, None) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling"))


def used_span(prompt_mask: torch.Tensor, completion_mask: torch.Tensor) -> tuple[int, int]:
    """The columns some row uses: the first used prompt column (at least the last one is
    kept: its hidden state predicts the first completion token) and one past the last used
    completion column (at least one)."""
    used_p = prompt_mask.bool().any(0).nonzero()
    used_c = completion_mask.bool().any(0).nonzero()
    start = int(used_p[0]) if len(used_p) else prompt_mask.size(1) - 1
    end = int(used_c[-1]) + 1 if len(used_c) else 1
    return start, end


def trim_padding(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` (a TRL micro-batch) without the prompt columns that are padding in every row
    and the completion columns that are padding in every row. Every tensor whose first two
    dims are (rows, completion width) is cut with the completions (masks, log-probs, the name
    decisions' allowed sets, per-token advantages); the rest is kept as is."""
    pm, cm = inputs["prompt_mask"], inputs["completion_mask"]
    B, C = pm.size(0), cm.size(1)
    start, end = used_span(pm, cm)
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


def rows(inputs: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """Rows [start, end) of a micro-batch: every tensor whose first dim is the row count and
    every per-row list is cut (as TRL's `split_tensor_dict` cuts a generation batch), the rest
    (e.g. the generation's `num_items_in_batch`) is kept as is."""
    B = inputs["prompt_mask"].size(0)
    return {k: (v[start:end] if (isinstance(v, torch.Tensor) and v.dim() >= 1 and v.size(0) == B) or (isinstance(v, list) and len(v) == B) else v) for k, v in inputs.items()}


def _groups(inputs: dict[str, Any]) -> list[int]:
    """Row -> index of its distinct prompt (ids and mask)."""
    from rl_router.training.logprobs import prompt_groups

    pi, pm = inputs["prompt_ids"], inputs["prompt_mask"]
    return prompt_groups(pi, pm, pi.size(1)).tolist()


def piece_cost(inputs: dict[str, Any], start: int, end: int, *, trim: bool, shared: bool, groups: Sequence[int] | None = None, packed: bool = False) -> int:
    """Tokens the loss runs for rows [start, end): the prompt width once per distinct prompt
    (per row when prompts are not shared) plus every row's completion width, the widths the
    piece's own when trimmed (`trim_padding`), else the micro-batch's. `packed` (shared prompts
    whose completions run packed, logprobs.py `_packed_completions`): each group's rows run
    as one row of their real tokens, padded to the piece's longest group, so a single long row
    (the protocol anchor's whole episode) does not count as if every row were that long."""
    pm, cm = inputs["prompt_mask"][start:end], inputs["completion_mask"][start:end]
    P, C = pm.size(1), cm.size(1)
    if trim:
        first, C = used_span(pm, cm)
        P -= first
    groups = _groups(inputs) if groups is None else groups
    prompts = len(set(groups[start:end])) if shared else end - start
    if packed and shared:
        real: dict[int, int] = {}
        for g, n in zip(groups[start:end], cm.sum(1).tolist()):
            real[g] = real.get(g, 0) + int(n)
        return prompts * P + prompts * max(real.values(), default=0)
    return prompts * P + (end - start) * C


def plan_pieces(inputs: dict[str, Any], budget: int, *, trim: bool, shared: bool, packed: bool = False) -> list[tuple[int, int]]:
    """Contiguous row ranges covering the micro-batch, each within `budget` tokens
    (`piece_cost`) where it can be: consecutive rows of one prompt (a GRPO group) stay
    together, groups are added to a piece while it fits, and a group that alone exceeds the
    budget is split by rows (its prompt then runs once per piece). A single row over the budget
    is a piece of its own: nothing smaller exists."""
    B = inputs["prompt_mask"].size(0)
    g = _groups(inputs)
    cost = lambda s, e: piece_cost(inputs, s, e, trim=trim, shared=shared, groups=g, packed=packed)  # noqa: E731
    runs, s = [], 0  # runs of consecutive rows with the same prompt
    for r in range(1, B + 1):
        if r == B or g[r] != g[s]:
            runs.append((s, r))
            s = r
    pieces: list[tuple[int, int]] = []
    for s, e in runs:
        if pieces and cost(pieces[-1][0], e) <= budget:
            pieces[-1] = (pieces[-1][0], e)
        elif cost(s, e) <= budget:
            pieces.append((s, e))
        else:  # the group alone is over the budget: as many rows per piece as fit
            a = s
            while a < e:
                b = a + 1
                while b < e and cost(a, b + 1) <= budget:
                    b += 1
                pieces.append((a, b))
                a = b
    return pieces


def cuts(pieces: list[tuple[int, int]], rows: int) -> torch.Tensor:
    """(rows - 1) 0/1: 1 where a piece ends before row r + 1."""
    c = torch.zeros(max(rows - 1, 0), dtype=torch.long)
    for _, e in pieces[:-1]:
        c[e - 1] = 1
    return c


def from_cuts(c: torch.Tensor) -> list[tuple[int, int]]:
    """The row ranges a (rows - 1) cut vector (`cuts`) makes."""
    ends = [int(i) + 1 for i in c.nonzero().flatten()] + [c.numel() + 1]
    return [(s, e) for s, e in zip([0, *ends[:-1]], ends)]


def the_same_on_every_rank(pieces: list[tuple[int, int]], rows: int) -> list[tuple[int, int]]:
    """The pieces every rank of the process group runs: cut wherever any rank's own plan cuts.
    TRL's loss gathers per-row metrics once per call, so ranks must run as many pieces of as
    many rows; each common piece lies inside one of every rank's own pieces, so it is within
    every rank's budget too (a piece's cost only shrinks with its rows). One process: as they are."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return pieces
    c = cuts(pieces, rows)
    if dist.get_backend() == "nccl":
        c = c.cuda()
    dist.all_reduce(c, op=dist.ReduceOp.MAX)
    return from_cuts(c.cpu())


def piece_weights(inputs: dict[str, Any], pieces: list[tuple[int, int]], loss_type: str) -> list[float]:
    """Each piece's weight so that the weighted sum of the pieces' losses, computed by TRL's
    `_compute_loss` on each piece alone, is the micro-batch's loss: 1 where TRL divides by the
    whole generation's tokens (dapo, cispo, vespo), the piece's share of rows where it averages
    over sequences (grpo, sapo, dr_grpo, luspo), its share of loss tokens for bnpo."""
    by = LOSS_NORMALISERS.get(loss_type)
    if by == "fixed":  # the generation's token count: pieces add up as they are
        return [1.0] * len(pieces)
    B = inputs["prompt_mask"].size(0)
    if by == "rows":
        return [(e - s) / B for s, e in pieces]
    if by == "tokens":
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        total = max(float(mask.sum()), 1.0)
        return [max(float(mask[s:e].sum()), 0.0) / total for s, e in pieces]
    raise ValueError(f"trainer.loss_type: {loss_type!r} has no known normalisation for algorithm.microbatch_tokens; use one of {LOSS_TYPES}")


def decision_weights(inputs: dict[str, Any], pieces: list[tuple[int, int]]) -> list[float]:
    """Each piece's share of the micro-batch's name decisions that have a choice: the entropy
    floor's hinge is a mean over them (training/exploration.py), so its pieces weigh by it."""
    from rl_router.training.exploration import choice_positions, decision_ids

    allowed = inputs.get("decision_allowed")
    if allowed is None:
        return [1.0] * len(pieces)
    ids = decision_ids(allowed)
    with_choice = ids.masked_fill(~choice_positions(allowed), -1)
    counts = [len(set(with_choice[s:e][with_choice[s:e] >= 0].tolist())) for s, e in pieces]
    total = max(sum(counts), 1)
    return [c / total for c in counts]
