"""Micro-batches at their own width (training/microbatch.py): fewer columns, the same loss."""

from __future__ import annotations

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
