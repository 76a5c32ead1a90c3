"""The Router-R1 environment: valid, invalid, over-budget, max-turn and pool-failure episodes."""

from __future__ import annotations

import pytest
from gymnasium.utils.env_checker import check_env

from rl_router.envs import MultiRoundRoutingEnv, RoutingEnvConfig, make_env
from rl_router.errors import ConfigError
from rl_router.envs.gym_adapter import GymRoutingEnv
from rl_router.pools import Endpoint, ModelCard, OpenAIPool, RetryPolicy
from rl_router.protocol import parse_turn

ROUTE = '<think>ask</think><route model="{m}">{q}</route>'


def test_valid_episode_routes_then_answers(recorded_pool):
    t = recorded_pool.tasks()[0]  # Janet's ducks, gold 18
    env = MultiRoundRoutingEnv(recorded_pool, budget=0.01, max_turns=3)
    obs, info = env.reset(t)
    assert "gpt-4-1106" in obs and "$10/$30" in obs and "gsm8k 89%" in obs and "latency 2500 ms" in obs  # cards in the prompt
    assert env.messages[0]["role"] == "system" and "Budget: $0.0100" in env.messages[1]["content"]
    obs, r, term, trunc, info = env.step(ROUTE.format(m="mixtral-8x7b", q=t.question))
    assert obs.startswith("\n<information>[mixtral-8x7b") and "#### 18" in obs and not (term or trunc)
    assert info["n_routes"] == 1 and info["calls"] == {"mixtral-8x7b": 1, "gpt-4-1106": 0} and info["cost"] > 0
    obs, r, term, trunc, info = env.step("<think>done</think><answer>$18</answer>")
    assert term and not trunc and r == 1.0 and info["answer"] == "$18" and info["quality"] == 1.0
    with pytest.raises(RuntimeError):
        env.step("<answer>1</answer>")


def test_wrong_answer_scores_zero(recorded_pool):
    env = MultiRoundRoutingEnv(recorded_pool)
    env.reset(recorded_pool.tasks()[0])
    _obs, r, term, _tr, info = env.step("<think>x</think><answer>17</answer>")
    assert term and r == 0.0 and info["quality"] == 0.0


@pytest.mark.parametrize(
    "action, needle",
    [
        ('<think>x</think><route model="gpt-5">q</route>', "unknown model 'gpt-5'; choose one of: mixtral-8x7b, gpt-4-1106"),
        ('<think>x</think><route model="gpt-4-1106"></route>', "empty sub-query"),
        ('<think>x</think><route model=gpt-4-1106>q</route>', "malformed <route> tag"),
        ("<think>only thinking</think>", "no action found"),
        ("<think>x</think><answer>18", "unclosed <answer>"),
        ("<information>the answer is 18</information><answer>18</answer>", "only the environment writes <information>"),
    ],
)
def test_invalid_actions_return_error_observations(recorded_pool, action, needle):
    env = MultiRoundRoutingEnv(recorded_pool, max_turns=3)
    env.reset(recorded_pool.tasks()[0])
    obs, r, term, trunc, info = env.step(action)
    assert obs.startswith("\n<information>error: ") and needle in obs
    assert not term and not trunc and r == 0.0 and info["invalid_actions"] == 1 and info["format_error"] and info["cost"] == 0.0


def test_over_budget_route_is_refused_and_budget_never_exceeded(recorded_pool):
    t = recorded_pool.tasks()[0]
    gpt4 = recorded_pool.estimate_cost("gpt-4-1106", [{"role": "user", "content": t.question}], max_tokens=1, context=t.context())
    mix = recorded_pool.estimate_cost("mixtral-8x7b", [{"role": "user", "content": t.question}], max_tokens=1, context=t.context())
    env = MultiRoundRoutingEnv(recorded_pool, budget=gpt4 * 0.9, max_turns=6)
    env.reset(t)
    obs, *_rest, info = env.step(ROUTE.format(m="gpt-4-1106", q=t.question))
    assert "over budget" in obs and info["over_budget"] == 1 and info["cost"] == 0.0 and info["n_routes"] == 0
    for _ in range(3):
        obs, *_rest, info = env.step(ROUTE.format(m="mixtral-8x7b", q=t.question))
        assert info["cost"] <= env.config.budget + 1e-12
    assert info["n_routes"] == min(3, int(gpt4 * 0.9 // mix))


def test_budget_exhausted_can_end_the_episode(recorded_pool):
    t = recorded_pool.tasks()[0]
    mix = recorded_pool.estimate_cost("mixtral-8x7b", [{"role": "user", "content": t.question}], max_tokens=1, context=t.context())
    env = MultiRoundRoutingEnv(recorded_pool, budget=mix * 1.5, max_turns=5, on_budget_exhausted="end")
    env.reset(t)
    _obs, _r, term, trunc, info = env.step(ROUTE.format(m="mixtral-8x7b", q=t.question))
    assert trunc and not term and info["done_reason"] == "budget_exhausted"


def test_max_turns_truncates(recorded_pool):
    env = MultiRoundRoutingEnv(recorded_pool, max_turns=2)
    env.reset(recorded_pool.tasks()[1])
    assert not env.step("<think>a</think>")[3]
    _obs, _r, term, trunc, info = env.step("<think>b</think>")
    assert trunc and not term and info["done_reason"] == "max_turns" and info["invalid_actions"] == 2 and info["format_error"]


def test_observation_is_cut_to_max_obs_tokens_keeping_head_and_tail(recorded_pool, tokenizer):
    t = recorded_pool.tasks()[0]
    full = recorded_pool.recorded(t.task_id).answers["gpt-4-1106"].response
    env = MultiRoundRoutingEnv(recorded_pool, max_obs_tokens=24, tokenizer=tokenizer)
    env.reset(t)
    obs = env.step(ROUTE.format(m="gpt-4-1106", q=t.question))[0]
    body = obs.split("]\n", 1)[1].removesuffix("</information>\n")
    head, tail = body.split(" ... ")
    assert full.startswith(head) and full.endswith(tail) and "$18" in tail  # the final answer survives
    assert len(tokenizer.encode(head, add_special_tokens=False)) + len(tokenizer.encode(tail, add_special_tokens=False)) <= 26


def test_pool_failure_becomes_an_observation_with_no_cost(recorded_pool):
    dead = OpenAIPool([Endpoint(ModelCard("m", 1, 1), "http://127.0.0.1:9/v1", "m")], retry=RetryPolicy(0, 0.01, 0.01), timeout_s=1)
    env = MultiRoundRoutingEnv(dead, max_turns=2)
    env.reset(recorded_pool.tasks()[0])
    obs, _r, term, _tr, info = env.step(ROUTE.format(m="m", q="hi"))
    assert "error: m failed (transport error" in obs and info["pool_errors"] == 1 and info["cost"] == 0.0 and not term


def test_env_config_validation_names_field():
    with pytest.raises(ConfigError, match="env.max_turns"):
        RoutingEnvConfig(max_turns=0)
    with pytest.raises(ConfigError, match="env.budget"):
        RoutingEnvConfig(budget=-1)
    with pytest.raises(ConfigError, match="env.on_budget_exhausted"):
        RoutingEnvConfig(on_budget_exhausted="panic")
    with pytest.raises(KeyError, match="env.name"):
        make_env("nope", None)


def test_parse_turn_takes_the_first_action():
    a = parse_turn('<think>t</think><route model="a">q1</route><answer>x</answer>')
    assert (a.kind, a.model, a.query, a.think) == ("route", "a", "q1", "t")
    assert parse_turn("<answer> 42 </answer>").answer == "42"


def test_gymnasium_check_env_passes(recorded_pool):
    env = GymRoutingEnv(MultiRoundRoutingEnv(recorded_pool, budget=0.01, max_turns=3), recorded_pool.tasks()[:20], render_mode="ansi")
    check_env(env, skip_render_check=False)
    obs, info = env.reset(seed=7)
    obs2, _ = env.reset(seed=7)
    assert obs == obs2
    o, r, term, trunc, info = env.step('<think>x</think><route model="gpt-4-1106">' + info["task_id"] + "</route>")
    assert isinstance(o, str) and env.observation_space.contains(o) and isinstance(r, float)
