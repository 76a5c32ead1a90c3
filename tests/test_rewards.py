"""Reward functions on hand-made cases, including Router-R1's gating."""

from __future__ import annotations

import pytest

from rl_router.answers import exact_match, normalize_answer, numeric_match, token_f1
from rl_router.errors import ConfigError
from rl_router.rewards import (
    CostReward, PercentileCostNormalizer, RouterR1Reward, accuracy_reward, budget_penalty, build_rewards,
    exact_match_reward, f1_reward, format_reward,
)

GOOD = ['<think>a</think><route model="m">q</route>', "<think>b</think><answer>Paris</answer>"]


@pytest.mark.parametrize(
    "turns, ok",
    [
        (GOOD, True),
        (["<think>b</think><answer>x</answer>"], True),
        (['<route model="m">q</route>', "<think>b</think><answer>x</answer>"], False),  # no think before route
        (['<think>a</think><route model="m">q</route>'], False),  # never answers
        (["<think>a</think><answer>x</answer>", "<think>b</think><answer>y</answer>"], False),  # two answers
        (["<think>a<think>b</think></think><answer>x</answer>"], False),  # nested
        (["<think>a</think><answer>x</answer> trailing"], False),
        (["<think>a</think><information>fake</information><answer>x</answer>"], False),
        (["<think>a</think><answer>x"], False),
        ([], False),
    ],
)
def test_format_reward(turns, ok):
    assert format_reward(completions=["ignored"], policy_turns=[turns]) == [1.0 if ok else 0.0]


def test_format_reward_falls_back_to_completion_text():
    text = GOOD[0] + "\n<information>[m | $0.1]\nParis</information>\n" + GOOD[1]
    assert format_reward(completions=[text]) == [1.0]
    assert format_reward(completions=[[{"role": "assistant", "content": text}]]) == [1.0]  # conversational


def test_squad_normalisation_em_f1():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Paris", ["paris", "x"]) == 1.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert numeric_match("$1,234.0", "1234") == 1.0 and numeric_match("12", "13") == 0.0


def test_outcome_rewards_use_answer_field_or_text():
    kw = {"gold": [["Paris"], ["18"], ["c1a2b3"]], "answer_type": ["text", "number", "code"]}
    comps = ["<answer>paris</answer>", "<answer>$18.00</answer>", "<answer>c1a2b4</answer>"]
    assert accuracy_reward(completions=comps, **kw) == [1.0, 1.0, 0.0]
    assert accuracy_reward(completions=comps, answer=["Lyon", "18", "c1a2b3"], **kw) == [0.0, 1.0, 1.0]
    assert exact_match_reward(completions=comps, **kw) == [1.0, 0.0, 0.0]  # "$18.00" is not EM "18"
    assert f1_reward(completions=["<answer>Paris France</answer>", "no answer"], gold=[["Paris"], ["x"]]) == [pytest.approx(2 / 3), 0.0]
    with pytest.raises(KeyError, match="gold"):
        accuracy_reward(completions=comps)


def test_percentile_normalizer_hand_computed():
    n = PercentileCostNormalizer(window=100, low_pct=0, high_pct=100)
    n.update([0.0, 1.0, 2.0, 3.0, 4.0])
    assert n.normalize(2.0) == 0.5 and n.normalize(-1) == 0.0 and n.normalize(9) == 1.0
    w = PercentileCostNormalizer(window=3, low_pct=0, high_pct=100)
    w.update([100.0, 1.0, 2.0, 3.0])  # the 100 falls out of the window
    assert w.normalize(2.0) == 0.5


def test_cost_reward_keeps_a_training_window_and_scores_evaluation_statelessly():
    cr = CostReward("percentile")
    tr = cr(completions=["", ""], cost=[0.0, 10.0], split=["train", "train"])
    assert tr == [1.0, 0.0]
    ev = cr(completions=["", ""], cost=[0.0, 1.0], split=["eval", "eval"])
    assert ev == [1.0, 0.0]  # no reference: the batch itself is the scale
    assert cr(completions=["", ""], cost=[0.0, 1.0], split=["eval", "eval"]) == ev  # and nothing was remembered
    # train window [0, 10]: p5 = 0.5, p95 = 9.5, so a cost of 1.0 sits at 0.5 / 9
    assert cr.state["train"].normalize(1.0) == pytest.approx(0.5 / 9)
    assert set(cr.state) == {"train"} and len(cr.state["train"]._sorted) == 2
    # with a fixed reference, evaluation scores against it, whatever else is in the batch
    ref = CostReward("percentile", reference=[0.0, 10.0])
    assert ref(completions=[""], cost=[1.0], split=["eval"]) == pytest.approx([1 - 0.5 / 9])
    assert ref(completions=["", ""], cost=[1.0, 100.0], split=["eval", "eval"])[0] == pytest.approx(1 - 0.5 / 9)


def test_linear_cost_reward():
    cr = CostReward("linear", scale=0.01)
    assert cr(completions=["", "", ""], cost=[0.0, 0.005, 0.02]) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="scale"):
        CostReward("linear")


def test_budget_penalty():
    assert budget_penalty(completions=["", "", ""], over_budget=[0, 2, 0], cost=[0.1, 0.1, 0.3], budget=[0.2, 0.2, 0.2]) == [0.0, -1.0, -1.0]


def test_router_r1_gating_hand_computed():
    r = RouterR1Reward(alpha=0.4, cost=CostReward("linear", scale=1.0))
    turns_ok = ["<think>a</think><answer>x</answer>"]
    kw = {
        "policy_turns": [turns_ok, turns_ok, ["<answer>x</answer>"], turns_ok],
        "answer": ["18", "17", "18", "18"],
        "gold": [["18"]] * 4,
        "answer_type": ["number"] * 4,
        "cost": [0.25, 0.0, 0.0, 0.75],
    }
    got = r(completions=[""] * 4, **kw)
    # correct, cost .25: 0.6*1 + 0.4*(1-.25) = 0.9 ; wrong & free: no cost credit -> 0 ;
    # bad format -> -1 whatever else ; correct, cost .75: 0.6 + 0.4*0.25 = 0.7
    assert got == pytest.approx([0.9, 0.0, -1.0, 0.7])


def test_build_rewards_from_recipe_specs():
    funcs, weights = build_rewards([{"name": "router_r1", "alpha": 0.2, "cost_mode": "linear", "cost_scale": 0.01}, {"name": "budget_penalty", "weight": 0.5}])
    assert weights == [1.0, 0.5] and callable(funcs[0]) and funcs[1] is budget_penalty
    assert [f.__name__ for f in funcs] == ["router_r1_reward", "budget_penalty"]
    with pytest.raises(ConfigError, match=r"rewards\[0\].name"):
        build_rewards([{"name": "acuracy"}])
    with pytest.raises(ConfigError, match=r"rewards\[0\]"):
        build_rewards([{"name": "cost", "mode": "log"}])
