"""Agentic routing: worlds run for real, the budget is hard, boundaries are what they say,
step-level data round-trips, and eval works on the agentic env."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_router.envs import AgenticEnvConfig, make_env
from rl_router.envs.worlds import get_world
from rl_router.envs.worlds.arithmetic import CalculatorError, calculate
from rl_router.envs.worlds.code import run_tests
from rl_router.aio import run_sync
from rl_router.training.boundary import run_boundaries, synthesize_sft
from rl_router.errors import ConfigError
from rl_router.metrics import summarize
from rl_router.rollout.policies import ScriptedPolicy
from rl_router.pools import Endpoint, OpenAIPool, PoolServer, SimModel, SimulatedPool
from rl_router.recipe import load_recipe
from rl_router.rewards import build_rewards, format_reward
from rl_router.rollout.engine import RolloutEngine
from rl_router.evaluation.steplog import label_steps, read_steps, replay, write_steps
from rl_router.task_sources import recipe_pool, recipe_tasks


def tier_pool(seed: int = 0) -> SimulatedPool:
    return SimulatedPool([SimModel("cheap", 0.2, 0.2, skills={"easy": 0.97, "hard": 0.25}, answer_tokens=12),
                          SimModel("expensive", 5.0, 15.0, skills={"easy": 0.99, "hard": 0.95}, answer_tokens=12)], seed=seed, latency_scale=0)


def engine(pool, tok, **cfg):
    c = AgenticEnvConfig(**{"budget": 0.004, "max_turns": 6, **cfg})
    return RolloutEngine(lambda: make_env("agentic", pool, config=c, tokenizer=tok), tok)


# ---- worlds --------------------------------------------------------------------------------
def test_calculator_is_arithmetic_only():
    assert calculate("19 * 13 - (4 % 3)") == 246
    for bad in ("__import__('os').system('true')", "x + 1", "2 ** 100", "1 / 2", "9" * 14 + " * 99", "1 // 0"):
        with pytest.raises(CalculatorError):
            calculate(bad)


def test_arithmetic_slip_compounds_to_a_failed_task():
    task = get_world("arithmetic").make_tasks(1, seed=3)[0]
    good, bad = get_world("arithmetic").start(task), get_world("arithmetic").start(task)
    while not good.done:
        good.apply("The answer is " + good.step_context()["gold"] + ".")
    first = bad.apply("The answer is " + bad.step_context()["wrong"] + ".")  # one slip on step 1 ...
    assert first.advanced and first.correct is False
    while not bad.done:  # ... then every later step done right
        out = bad.apply("The answer is " + bad.step_context()["gold"] + ".")
        assert out.correct
    assert good.success and good.final_answer == task.gold
    assert not bad.success and bad.final_answer != task.gold


def test_code_world_runs_tests_in_a_subprocess_with_a_time_limit():
    task = get_world("code").make_tasks(1, seed=0)[0]
    s = get_world("code").start(task)
    out = s.apply(s.step_context()["wrong"])
    assert not out.advanced and "failed" in out.text and s.i == 0
    loop = "```python\ndef f1(xs):\n    while True:\n        pass\n```"
    s.timeout_s = 1.0
    out = s.apply(loop)
    assert "timed out" in out.text  # the infinite loop was killed (else pytest-timeout ends the test)
    escape = "```python\nimport os\ndef f1(xs):\n    os._exit(0)\n```"  # exiting early is not passing
    assert not s.apply(escape).advanced
    while not s.done:
        assert s.apply("The answer is " + s.step_context()["gold"] + ".").advanced
    assert s.success
    ok, msg = run_tests("def f(xs):\n    return len(xs)", [("f", [1, 2], 2), ("f", [], 1)])
    assert not ok and "expected 1" in msg


@pytest.mark.parametrize("world", ["arithmetic", "code"])
def test_the_stronger_model_succeeds_more_often(world, tokenizer):
    pool, tasks = tier_pool(), get_world(world).make_tasks(60 if world == "arithmetic" else 40, seed=1)
    eng = engine(pool, tokenizer)
    eps = {m: eng.run(tasks, ScriptedPolicy.always(tokenizer, m)) for m in ("cheap", "expensive")}
    res = {m: summarize(e) for m, e in eps.items()}
    hard = {m: summarize([e for e, t in zip(eps[m], tasks) if t.topic == "hard"]) for m in eps}
    assert res["expensive"]["quality"] > res["cheap"]["quality"] + 0.1
    assert hard["expensive"]["quality"] > hard["cheap"]["quality"] + 0.15  # tasks with a hard step (code: retries after a failed test narrow the gap)
    assert res["expensive"]["mean_cost"] > 5 * res["cheap"]["mean_cost"]


# ---- the env -------------------------------------------------------------------------------
ACTIONS = st.one_of(
    st.sampled_from(["cheap", "expensive", "gpt-9", ""]).map(lambda m: f'<think>x</think><route model="{m}">Do the next step.</route>'),
    st.just("<think>done</think><answer>42</answer>"),
    st.text(max_size=40),
    st.just("<information>fake</information>"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(ACTIONS, min_size=1, max_size=12), budget=st.floats(1e-5, 3e-3), mode=st.sampled_from(["refuse", "end"]),
       world=st.sampled_from(["arithmetic", "code"]), k=st.integers(0, 5))
def test_budget_is_never_exceeded(actions, budget, mode, world, k, tokenizer):
    pool = tier_pool()
    task = get_world(world).make_tasks(6, seed=2)[k]
    env = make_env("agentic", pool, config=AgenticEnvConfig(budget=budget, max_turns=10, on_over_budget=mode), tokenizer=tokenizer)
    env.reset(task)
    done = False
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        assert info["cost"] <= budget + 1e-12
        assert sum(s["cost"] for s in info["steps"]) == pytest.approx(info["cost"])
        if term or trunc:
            done = True
            assert info["done_reason"] in ("success", "failure", "max_turns", "budget_exhausted", "over_budget")
            assert r == info["quality"] == (1.0 if info["done_reason"] == "success" else 0.0)
            break
        assert info["turn"] < 10
    if not done:
        assert info["done_reason"] is None


def test_over_budget_refuses_then_continues_with_what_is_affordable(tokenizer):
    pool, task = tier_pool(), get_world("arithmetic").make_tasks(1)[0]
    env = make_env("agentic", pool, config=AgenticEnvConfig(budget=0.0009, max_turns=8), tokenizer=tokenizer)
    env.reset(task)
    route = lambda m: f'<think>x</think><route model="{m}">Do the next step.</route>'  # noqa: E731
    env.step(route("expensive"))  # affordable once (~$0.0007)
    obs, _, _, trunc, info = env.step(route("expensive"))
    assert "over budget" in obs and info["over_budget"] == 1 and not trunc and info["calls"]["expensive"] == 1
    obs, _, term, trunc, info = env.step(route("cheap"))
    assert info["calls"]["cheap"] == 1 and info["cost"] <= 0.0009
    end = make_env("agentic", pool, config=AgenticEnvConfig(budget=0.0009, on_over_budget="end"), tokenizer=tokenizer)
    end.reset(task)
    end.step(route("expensive"))
    _, _, _, trunc, info = end.step(route("expensive"))
    assert trunc and info["done_reason"] == "over_budget" and info["quality"] == 0.0


def test_format_is_the_agentic_protocol(tokenizer):
    pool, tasks = tier_pool(), get_world("arithmetic").make_tasks(4)
    eps = engine(pool, tokenizer).run(tasks, ScriptedPolicy.always(tokenizer, "cheap"))
    assert all(e["format_error"] is None and len(e["policy_turns"]) == 3 for e in eps)  # routes only, no <answer>
    assert format_reward(completions=[""] * 4, format_error=[e["format_error"] for e in eps]) == [1.0] * 4
    env = make_env("agentic", pool, config=AgenticEnvConfig(), tokenizer=tokenizer)
    env.reset(tasks[0])
    _, _, _, _, info = env.step("<think>a</think><answer>1</answer>")
    assert info["invalid_actions"] == 1 and "<answer> is not an action here" in env.format_error()


def test_agentic_episodes_over_real_http(tokenizer):
    sim, tasks = tier_pool(), get_world("arithmetic").make_tasks(24, seed=5)
    # a live pool's cost bound is the prompt's UTF-8 bytes + chat overhead + pool_max_tokens of
    # output: a budget with room for it, so both runs make the same calls
    direct = engine(sim, tokenizer, pool_max_tokens=32, budget=0.03).run(tasks, ScriptedPolicy.random(tokenizer, sim.model_names, seed=1))
    with PoolServer(tier_pool()) as srv:
        pool = OpenAIPool([Endpoint(c, srv.url, c.name) for c in sim.models], forward_context=True)
        via_http = engine(pool, tokenizer, pool_max_tokens=32, budget=0.03).run(tasks, ScriptedPolicy.random(tokenizer, sim.model_names, seed=1))
        run_sync(pool.aclose())
    assert srv.stats.ok == sum(sum(e["calls"].values()) for e in via_http) >= 24 * 3
    assert [e["quality"] for e in via_http] == [e["quality"] for e in direct]
    assert [e["calls"] for e in via_http] == [e["calls"] for e in direct]
    assert [e["cost"] for e in via_http] == pytest.approx([e["cost"] for e in direct])


# ---- boundaries ----------------------------------------------------------------------------
def test_boundary_policies_and_taxonomy(tokenizer):
    pool, tasks = tier_pool(), get_world("arithmetic").make_tasks(40, seed=4)
    eng = engine(pool, tokenizer)
    records, eps = run_boundaries(eng, pool, tasks, tokenizer, cheap="cheap", strong="expensive", stepwise=True)
    for t in tasks:
        r, e = records[t.task_id], eps[t.task_id]
        # the definitions: every step by one tier; success = the world's check
        assert all(s["model"] == "cheap" for s in e["cheap"]["steps"]) and all(s["model"] == "expensive" for s in e["strong"]["steps"])
        assert r.cheap_success == (e["cheap"]["quality"] == 1.0) == all(s["correct"] for s in e["cheap"]["steps"])
        assert r.cheap_cost == e["cheap"]["cost"] and r.strong_cost == e["strong"]["cost"]
        hybrid = e["stepwise"]["steps"]
        for s, c in zip(hybrid, e["cheap"]["steps"]):  # cheap exactly where the cheap boundary was right
            assert (s["model"] == "cheap") == bool(c["correct"])
        if r.klass == "both":
            assert e["stepwise"]["calls"]["expensive"] == 0
    classes = {r.klass for r in records.values()}
    assert {"both", "strong_only"} <= classes
    # hard tasks (a multiply / modulo step) are where cheap fails
    hard_fail = [not records[t.task_id].cheap_success for t in tasks if t.topic == "hard"]
    easy_fail = [not records[t.task_id].cheap_success for t in tasks if t.topic == "easy"]
    assert sum(hard_fail) / len(hard_fail) > sum(easy_fail) / max(1, len(easy_fail))
    sft = synthesize_sft(records, eps, 32, mix="stepwise", neither_rate=0.0)
    mixed = [e for e in sft if e["calls"]["cheap"] and e["calls"]["expensive"]]
    assert mixed and all(e["quality"] == 1.0 for e in sft if e.get("steps"))


def test_boundaries_cli(tmp_path):
    from typer.testing import CliRunner

    from rl_router.cli import app

    out = tmp_path / "b.json"
    res = CliRunner().invoke(app, ["boundaries", "recipes/bopo_agentic.yaml", "--out", str(out), "--n", "24"])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert sum(d["classes"].values()) == 24 and len(d["records"]) == 24
    assert "strong_only" in res.output


# ---- recorded step-level data --------------------------------------------------------------
def test_step_records_label_roundtrip_and_replay(tmp_path, tokenizer):
    pool, tasks = tier_pool(), get_world("arithmetic").make_tasks(10, seed=6)
    cfg = AgenticEnvConfig(budget=0.004)
    recs = label_steps(lambda: make_env("agentic", pool, config=cfg, tokenizer=tokenizer), tasks)
    assert len(recs) == 30  # 3 steps each, following the labels never fails a step
    for r in recs:
        ok = [t for t in ("cheap", "expensive") if r.tiers[t]["correct"]]
        assert r.target == (ok[0] if ok else "expensive")
        assert r.tiers["cheap"]["cost"] < r.tiers["expensive"]["cost"]
    assert any(r.target == "cheap" for r in recs) and any(r.target == "expensive" for r in recs)
    path = tmp_path / "steps.jsonl"
    assert write_steps(path, recs) == 30
    back = read_steps(path)
    assert back == recs
    # replay: a scripted router that always says "expensive" scores like always-expensive
    res = replay(back, _Always(tokenizer, "expensive"), tokenizer)
    assert res["policy"] == res["always-expensive"]
    assert res["labels"]["tier_accuracy"] == 1.0 and res["labels"]["step_success"] >= res["always-cheap"]["step_success"]
    assert res["labels"]["mean_cost"] < res["always-expensive"]["mean_cost"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "t", "step": 0}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: messages: is required"):
        read_steps(bad)


class _Always:
    def __init__(self, tok, m):
        self.tok, self.m = tok, m

    def act(self, states):
        from rl_router.rollout.policies import route_text, text_turns

        return text_turns(self.tok, [route_text(self.m, "Do the next step.")] * len(states))


# ---- recipe and eval -----------------------------------------------------------------------
def test_recipe_validation_names_the_field():
    with pytest.raises(ConfigError, match="data.source"):
        load_recipe("recipes/bopo_agentic.yaml", ["data.source=pool"])
    with pytest.raises(ConfigError, match="env.name"):
        load_recipe(None, ["data.source=arithmetic"])
    with pytest.raises(ConfigError, match="env.on_over_budget"):
        load_recipe("recipes/bopo_agentic.yaml", ["env.on_over_budget=skip"])
    with pytest.raises(ConfigError, match="env"):
        load_recipe("recipes/bopo_agentic.yaml", ["env.max_obs_tokenz=3"])
    with pytest.raises(ConfigError, match="data.world"):
        recipe_tasks(load_recipe("recipes/bopo_agentic.yaml", ["data.world.hardness=1"]), None)
    r = load_recipe("recipes/bopo_agentic.yaml", ["env.budget=0.00001"])
    from rl_router.recipe import validate_against_pool

    pool = recipe_pool(r)
    with pytest.raises(ConfigError, match="env.budget"):
        validate_against_pool(r, pool, recipe_tasks(r, pool)[0])
    funcs, _ = build_rewards(r.rewards)
    assert funcs[0](completions=[""] * 2, quality=[1.0, 0.0], cost=[0.0, 0.0], format_error=[None, None]) == [1.0, 0.0]


def test_eval_on_the_agentic_env(tmp_path):
    from rl_router.evaluation.report import evaluate, write_outputs

    r = load_recipe("recipes/bopo_agentic.yaml", [f"output_dir={tmp_path}"])
    res = evaluate(r, "baselines", n=16, sampled=False, budgets=[0.001, 0.004], knn_lambdas=(0.0, 0.5))
    files = write_outputs(res, tmp_path)
    p = res["policies"]
    for name in ("always-cheap", "always-expensive", "random", "oracle", "knn-tfidf"):
        s = p[name]
        assert s["budget_exceeded_rate"] == 0.0 and "calls_per_task" in s and "quality" in s
    assert p["always-expensive"]["quality"] > p["always-cheap"]["quality"]
    assert p["always-cheap"]["calls_per_task"]["cheap"] >= 3
    assert p["oracle"]["quality"] >= p["always-expensive"]["quality"] - 1e-9
    assert (tmp_path / "eval.json") in files and (tmp_path / "frontier.png").stat().st_size > 10_000


def test_stepwise_hybrid_is_a_cascade_in_the_router_r1_env(tokenizer, recorded_pool):
    """In Router-R1 episodes the boundary-guided hybrid routes to cheap first and escalates
    exactly on the tasks only the strong boundary solved."""
    from rl_router.envs import RoutingEnvConfig

    tasks = recorded_pool.tasks()[:40]
    cfg = RoutingEnvConfig(budget=0.01, max_turns=3, max_obs_tokens=64)
    eng = RolloutEngine(lambda: make_env("router_r1", recorded_pool, config=cfg, tokenizer=tokenizer), tokenizer)
    cheap, strong = "mixtral-8x7b", "gpt-4-1106"
    records, eps = run_boundaries(eng, recorded_pool, tasks, tokenizer, cheap=cheap, strong=strong, style="compact", stepwise=True)
    assert {r.klass for r in records.values()} >= {"both", "strong_only"}
    for t in tasks:
        r, h = records[t.task_id], eps[t.task_id]["stepwise"]
        assert [tr["model"] for tr in h["trace"]][0] == cheap and h["format_error"] is None
        if r.klass == "strong_only":
            assert [tr["model"] for tr in h["trace"]] == [cheap, strong] and h["quality"] == 1.0
            assert h["cost"] == pytest.approx(r.cheap_cost + r.strong_cost)
        else:
            assert h["calls"][strong] == 0 and h["quality"] == eps[t.task_id]["cheap"]["quality"]


def test_three_tiers(tokenizer):
    """N tiers: cards sorted by price in the prompt, every tier routable, labels pick the
    cheapest tier that was right."""
    pool = SimulatedPool([SimModel("large", 5.0, 15.0, skills={"easy": 0.99, "hard": 0.95}, answer_tokens=12),
                          SimModel("small", 0.2, 0.2, skills={"easy": 0.9, "hard": 0.1}, answer_tokens=12),
                          SimModel("medium", 1.0, 2.0, skills={"easy": 0.97, "hard": 0.6}, answer_tokens=12)], latency_scale=0)
    tasks = get_world("arithmetic").make_tasks(20, seed=8)
    env = make_env("agentic", pool, config=AgenticEnvConfig(budget=0.004), tokenizer=tokenizer)
    env.reset(tasks[0])
    sysmsg = env.messages[0]["content"]
    assert sysmsg.index("- small:") < sysmsg.index("- medium:") < sysmsg.index("- large:")
    eps = engine(pool, tokenizer).run(tasks, ScriptedPolicy.random(tokenizer, pool.model_names, seed=3))
    assert all(sum(e["calls"].values()) >= 3 for e in eps) and all(sum(e["calls"][m] for e in eps) > 0 for m in pool.model_names)
    recs = label_steps(lambda: make_env("agentic", pool, config=AgenticEnvConfig(budget=0.004), tokenizer=tokenizer), tasks)
    order = ["small", "medium", "large"]
    for r in recs:
        ok = [t for t in order if r.tiers[t]["correct"]]
        assert r.target == (ok[0] if ok else "large")
    assert {r.target for r in recs} == set(order)
