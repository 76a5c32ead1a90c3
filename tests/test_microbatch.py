"""Micro-batches at their own width and in pieces sized by tokens (training/microbatch.py): fewer columns or bounded memory, the same loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_router.training.microbatch import shift_invariant, trim_padding


def test_trim_cuts_only_columns_that_are_padding_in_every_row():
    pm = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    cm = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    inputs = {"prompt_ids": torch.arange(8).view(2, 4), "prompt_mask": pm, "completion_ids": torch.arange(10).view(2, 5), "completion_mask": cm,
              "decision_allowed": torch.zeros(2, 5, 3), "advantages": torch.tensor([1.0, -1.0]), "num_items_in_batch": torch.tensor(3.0)}
    out = trim_padding(inputs)
    assert out["prompt_ids"].tolist() == [[1, 2, 3], [5, 6, 7]] and out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[0, 1], [5, 6]] and out["decision_allowed"].shape == (2, 2, 3)
    assert out["advantages"] is inputs["advantages"] and out["num_items_in_batch"] is inputs["num_items_in_batch"]
    full = {**inputs, "prompt_mask": torch.ones(2, 4, dtype=torch.long), "completion_mask": torch.ones(2, 5, dtype=torch.long)}
    assert trim_padding(full) is full  # nothing to cut


def test_rows_cut_per_row_tensors_and_lists_as_trl_splits_a_generation():
    from rl_router.training.microbatch import rows

    b = {"prompt_mask": torch.ones(3, 2), "advantages": torch.tensor([1.0, 2.0, 3.0]), "tools": ["a", "b", "c"], "num_items_in_batch": torch.tensor(7.0), "names": ["x", "y"]}
    out = rows(b, 1, 3)
    assert out["advantages"].tolist() == [2.0, 3.0] and out["tools"] == ["b", "c"] and out["prompt_mask"].shape == (2, 2)
    assert out["num_items_in_batch"] is b["num_items_in_batch"] and out["names"] == ["x", "y"]  # not per row: kept


def test_rotary_routers_may_shift_and_absolute_position_ones_may_not(tiny_router):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert shift_invariant(tiny_router[0])
    assert not shift_invariant(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)))


def test_a_trimmed_micro_batch_gives_the_loss_and_gradients_of_the_padded_one(gsm8k_trainer):
    """One group of a real GRPO generation batch (the GSM8K router, prompts of different
    lengths): trimmed to its own width (checked to be narrower), the trainer's loss and every
    gradient equal the padded micro-batch's to float tolerance."""
    trainer, tasks = gsm8k_trainer(lambda completions, **kw: [float(i % 2) for i in range(len(completions))])
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    n = out["prompt_ids"].size(0)
    pads = [int((out["prompt_mask"][g : g + 4].sum(0) == 0).sum()) for g in range(0, n, 4)]
    g = 4 * max(range(len(pads)), key=pads.__getitem__)
    assert max(pads) > 0  # the group has columns to trim
    group = {k: (v[g : g + 4] if isinstance(v, torch.Tensor) and v.dim() and v.size(0) == n else v) for k, v in out.items()}
    assert trim_padding(group)["prompt_ids"].size(1) == group["prompt_ids"].size(1) - max(pads)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def loss_and_grads(trim: bool):
        trainer.trim_padding = trim
        loss = trainer._compute_loss(trainer.model, group)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss), [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]

    l0, g0 = loss_and_grads(False)
    l1, g1 = loss_and_grads(True)
    assert abs(l0) > 0
    assert abs(l1 - l0) <= 1e-5 * max(1.0, abs(l0))
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def _batch(prompt_lens: list[int], completion_lens: list[int], group: int) -> dict:
    """A left-padded prompt / right-padded completion micro-batch: rows of one group share a prompt."""
    B, P, C = len(prompt_lens), max(prompt_lens), max(completion_lens)
    pm = torch.zeros(B, P, dtype=torch.long)
    cm = torch.zeros(B, C, dtype=torch.long)
    pi = torch.zeros(B, P, dtype=torch.long)
    for r, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        pm[r, P - p :] = 1
        pi[r, P - p :] = 100 + r // group
        cm[r, :c] = 1
    return {"prompt_ids": pi, "prompt_mask": pm, "completion_ids": torch.arange(B * C).view(B, C), "completion_mask": cm, "advantages": torch.ones(B)}


def test_pieces_keep_groups_together_within_the_budget_and_split_only_what_cannot_fit():
    from rl_router.training.microbatch import cuts, from_cuts, piece_cost, plan_pieces

    # three groups of 4: prompts 10, 40, 12 tokens; completions 3-5 tokens
    b = _batch([10] * 4 + [40] * 4 + [12] * 4, [3, 5, 4, 3] * 3, group=4)
    cost = lambda s, e: piece_cost(b, s, e, trim=True, shared=True)  # noqa: E731
    assert cost(0, 4) == 10 + 4 * 5 and cost(8, 12) == 12 + 4 * 5 and cost(0, 12) == 3 * 40 + 12 * 5
    assert plan_pieces(b, 10_000, trim=True, shared=True) == [(0, 12)]  # everything fits: one piece
    pieces = plan_pieces(b, 60, trim=True, shared=True)
    assert pieces[0] == (0, 4) and pieces[-1] == (8, 12)  # the short groups whole; the long one (40 + 4 x 5 = 60) too
    assert [r for s, e in pieces for r in range(s, e)] == list(range(12)) and all(cost(*p) <= 60 for p in pieces)
    tight = plan_pieces(b, 50, trim=True, shared=True)  # the 40-token group alone is over: split by rows
    assert [r for s, e in tight for r in range(s, e)] == list(range(12)) and all(cost(*p) <= 50 for p in tight if p[1] - p[0] > 1)
    assert any(4 <= s and e <= 8 and e - s < 4 for s, e in tight)
    # without shared prompts (gradient checkpointing) every row runs its prompt, at the micro-batch's width untrimmed
    assert piece_cost(b, 0, 4, trim=False, shared=False) == 4 * (40 + 5)
    assert plan_pieces(b, 40, trim=True, shared=True)[4:] and all(e - s == 1 for s, e in plan_pieces(b, 1, trim=True, shared=True))  # one row is the smallest piece
    for p in (pieces, tight, [(0, 12)]):  # the cut vector ranks exchange gives the pieces back
        assert from_cuts(cuts(p, 12)) == [tuple(x) for x in p]


def test_packed_pieces_count_each_groups_real_tokens_not_its_longest_row_times_its_rows():
    """With packed completions a group runs as one row of its real tokens: a group whose first
    row is long (the protocol anchor's whole episode) costs its prompt plus its rows' tokens,
    not every row padded to the long one, so more groups share a piece."""
    from rl_router.training.microbatch import piece_cost, plan_pieces

    b = _batch([10] * 8, [20, 3, 3, 3] * 2, group=4)  # two groups, each: one 20-token row and three 3-token rows
    assert piece_cost(b, 0, 4, trim=True, shared=True) == 10 + 4 * 20  # padded: every row at the long row's width
    assert piece_cost(b, 0, 4, trim=True, shared=True, packed=True) == 10 + (20 + 3 + 3 + 3)
    assert piece_cost(b, 0, 8, trim=True, shared=True, packed=True) == 2 * 10 + 2 * 29  # two packed rows, each 29 real tokens
    assert len(plan_pieces(b, 80, trim=True, shared=True)) > 2  # padded, each group alone (90) is over the budget: split by rows
    assert plan_pieces(b, 80, trim=True, shared=True, packed=True) == [(0, 8)]  # both groups in one piece
    assert piece_cost(b, 0, 4, trim=True, shared=False, packed=True) == piece_cost(b, 0, 4, trim=True, shared=False)  # unshared prompts do not pack


def test_pieces_sized_by_tokens_give_the_loss_and_gradients_of_the_whole_micro_batch(gsm8k_trainer):
    """A real GRPO generation batch of the GSM8K router (4 groups of 4, prompts of different
    lengths) as one micro-batch: run in pieces of a small token budget (each backwarded before
    the next, as training does), the reported loss and the summed gradients equal the whole
    micro-batch's, for TRL's three ways of normalising a loss (dapo: the generation's tokens;
    grpo: rows; bnpo: the micro-batch's tokens) and with the entropy floor's hinge (a mean over
    name decisions)."""
    from rl_router.training.logprobs import packs
    from rl_router.training.microbatch import piece_cost

    trainer, tasks = gsm8k_trainer(lambda completions, **kw: [float(i % 3 == 0) for i in range(len(completions))], trim_padding=True)
    packed = packs(trainer.model)  # the cost the trainer plans with: a group's real tokens where its completions run packed
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    whole_cost = piece_cost(batch, 0, 16, trim=True, shared=True, packed=packed)
    budget = whole_cost // 3

    def run(budget):
        trainer.microbatch_tokens = budget
        trainer.model.zero_grad()
        seen = []
        inner = trainer._compute_loss
        trainer._compute_loss = lambda model, inputs: seen.append((inputs["prompt_mask"].size(0), piece_cost(inputs, 0, inputs["prompt_mask"].size(0), trim=True, shared=True, packed=packed))) or inner(model, inputs)
        try:
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
        finally:
            del trainer._compute_loss
        return float(loss), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params], seen

    for loss_type, floor in (("dapo", 0.0), ("grpo", 0.0), ("bnpo", 0.0), ("dapo", 5.0)):
        trainer.loss_type = loss_type
        trainer.decision_entropy_floor, trainer.decision_entropy_coef = floor, 0.3
        l0, g0, seen0 = run(None)
        l1, g1, seen1 = run(budget)
        assert seen0 == [(16, whole_cost)] and len(seen1) >= 3 and sum(r for r, _ in seen1) == 16
        assert all(c <= budget for r, c in seen1 if r > 1)  # every piece within the budget (a single row may not be)
        assert abs(l0) > 0 and abs(l1 - l0) <= 1e-5 * max(1.0, abs(l0)), (loss_type, floor)
        assert any(float(g.abs().max()) > 0 for g in g0)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=f"{loss_type}, floor {floor}")


def _plan_on_rank(rank: int, port: int, out_dir: str) -> None:
    """One of two gloo processes: a micro-batch of its own (rank 1's episodes longer, so it
    plans more pieces), then the pieces both run."""
    import json

    import torch.distributed as dist

    from rl_router.training.microbatch import piece_cost, plan_pieces, the_same_on_every_rank

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        b = _batch([10] * 4 + [30 if rank else 12] * 4, [3, 5, 4, 3] * 2 if rank == 0 else [20, 25, 30, 22] * 2, group=4)
        own = plan_pieces(b, 80, trim=True, shared=True)
        run = the_same_on_every_rank(own, 8)
        Path(out_dir, f"{rank}.json").write_text(json.dumps({"own": own, "run": run, "costs": [piece_cost(b, s, e, trim=True, shared=True) for s, e in run]}))
    finally:
        dist.destroy_process_group()


def test_every_rank_runs_the_same_pieces(tmp_path):
    """Two real gloo processes whose micro-batches plan different pieces: both run the same
    row ranges (TRL's loss gathers per-row metrics per call: different counts or sizes would
    hang or fail), cut wherever either cut, so each is within both ranks' budgets."""
    import json

    import torch.multiprocessing as mp
    from conftest import free_port

    mp.spawn(_plan_on_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["own"] != got[1]["own"]  # the ranks did plan differently
    assert got[0]["run"] == got[1]["run"] and len(got[0]["run"]) >= len(got[1]["own"])
    assert [r for s, e in got[0]["run"] for r in range(s, e)] == list(range(8))
    assert all(c <= 80 for g in got for (s, e), c in zip(g["run"], g["costs"]) if e - s > 1)
