"""The entropy floor on name decisions (training/exploration.py, RouterGRPOTrainer)."""

from __future__ import annotations

import math

import pytest
import torch

from rl_router.training.exploration import choice_positions, decision_ids, entropy_shortfall


def test_the_shortfall_is_per_name_decision_and_reads_only_choices_below_the_floor():
    # row 0: a three-token name (choice H 0.1, one allowed token, choice H 0.2: H 0.3), a free
    # token, a one-token choice of H 0.9 (above the floor); row 1: a decision with no choice,
    # then a one-token choice of H 0.3
    ent = torch.tensor([[0.1, 0.0, 0.2, 0.7, 0.9], [0.0, 0.0, 0.3, 0.0, 0.0]], requires_grad=True)
    allowed = torch.full((2, 5, 3), -1)
    allowed[0, 0, :2] = torch.tensor([5, 6])
    allowed[0, 1, :1] = 7
    allowed[0, 2, :2] = torch.tensor([8, 9])
    allowed[0, 4, :3] = torch.tensor([5, 6, 8])
    allowed[1, 0, :1] = 5
    allowed[1, 2, :2] = torch.tensor([5, 6])
    assert decision_ids(allowed).tolist() == [[0, 0, 0, -1, 1], [2, -1, 3, -1, -1]]
    assert choice_positions(allowed).tolist() == [[True, False, True, False, True], [False, False, True, False, False]]
    short = entropy_shortfall(ent, allowed, 0.5)
    assert float(short.detach()) == pytest.approx(((0.5 - 0.3) + 0.0 + (0.5 - 0.3)) / 3)  # decision 2 has no choice: left out
    short.backward()
    g = -1 / 3
    torch.testing.assert_close(ent.grad, torch.tensor([[g, g, g, 0.0, 0.0], [0.0, 0.0, g, 0.0, 0.0]]))  # pushes the low decisions up only
    assert entropy_shortfall(ent, torch.full((2, 5, 2), -1), 0.5) is None  # no decision: nothing to penalise
    assert entropy_shortfall(ent, None, 0.5) is None


def test_the_floor_raises_a_collapsed_route_decision_and_is_silent_above_it(gsm8k_trainer):
    """The quickstart-style GSM8K router (two models) after its warm start and 2 RL steps. On one
    sampled batch with zero advantages, the floor's gradient alone raises the entropy of the
    route decisions (within their allowed sets, the sampled distribution) after one SGD step;
    a floor below every decision's entropy adds exactly nothing to the loss."""
    # every episode gets the same reward: GRPO's advantages are 0 and only the floor can move the router
    trainer, tasks = gsm8k_trainer(lambda completions, **kw: [1.0] * len(completions), decision_entropy_floor=math.log(2), decision_entropy_coef=1.0)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    assert float(out["advantages"].abs().max()) == 0.0
    pos = choice_positions(out["decision_allowed"])
    assert int(pos.sum()) > 0

    def decision_entropy() -> float:
        with torch.no_grad():  # what _compute_loss sets before TRL's log-prob pass
            trainer._decision_allowed = out["decision_allowed"]
            trainer._logp_positions = (out["completion_mask"] * out["tool_mask"]).bool()
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
            att = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
            _, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, out["completion_ids"].size(1), compute_entropy=True)
            trainer._decision_allowed = trainer._logp_positions = None
        return float(ent[pos].mean())

    before = decision_entropy()
    assert before < math.log(2) - 0.05  # the warm-started router prefers one model: the floor is active
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer._compute_loss(trainer.model, out)
    assert trainer._metrics["train"]["decision/entropy_shortfall"][-1] > 0.05
    loss.backward()
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= 1.0 * p.grad
                p.grad = None
    after = decision_entropy()
    assert after > before + 0.01, (before, after)
    # a floor below the decisions' entropy: the same loss as no floor, to the bit
    trainer.decision_entropy_floor = 1e-6
    with torch.no_grad():
        low = trainer._compute_loss(trainer.model, out)
        trainer.decision_entropy_coef = 0.0
        off = trainer._compute_loss(trainer.model, out)
    assert float(low) == float(off)


def test_the_recipe_fields_are_read_and_range_checked():
    from rl_router.errors import ConfigError
    from rl_router.recipe import check_ranges, recipe_from_dict

    r = recipe_from_dict({"algorithm": {"decision_entropy_floor": 0.5, "decision_entropy_coef": 0.2}})
    assert (r.algorithm.decision_entropy_floor, r.algorithm.decision_entropy_coef) == (0.5, 0.2)
    with pytest.raises(ConfigError, match="algorithm.decision_entropy_floor"):
        check_ranges(recipe_from_dict({"algorithm": {"decision_entropy_floor": -0.1}}))
