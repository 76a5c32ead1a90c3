"""One definition of a format error, shared by the env, the rollout, the rewards and the metrics.

An episode breaks the protocol when its router turns break the tag grammar
(`protocol.check_format`) or when the env refused one of its actions as invalid (an unknown
model, adopting a model that was never called, a malformed tag). Either way every consumer
sees the same verdict: the episode's `format_error`, and Router-R1's gated reward is -1.
"""

from __future__ import annotations

from rl_router.envs import MultiRoundRoutingEnv
from rl_router.boundary_records import BoundaryRecord
from rl_router.training.boundary import BoPOReward
from rl_router.metrics import summarize
from rl_router.rollout.policies import text_turns
from rl_router.rewards import RouterR1Reward, format_reward
from rl_router.rollout.engine import RolloutEngine


class Script:
    def __init__(self, tok, turns):
        self.tok, self.turns = tok, turns

    def act(self, states):
        return text_turns(self.tok, [self.turns[len(s.policy_turns)] for s in states])


def _episode(pool, tok, turns):
    eng = RolloutEngine(lambda: MultiRoundRoutingEnv(pool, tokenizer=tok, max_turns=4, budget=0.05), tok)
    return eng.run(pool.tasks()[:1], Script(tok, turns))[0]


def _score(ep, task):
    kw = {k: [ep[k]] for k in ("format_error", "policy_turns", "answer", "cost", "quality", "task_id")}
    r1 = RouterR1Reward(alpha=0.3, cost=None)
    rec = BoundaryRecord(task.task_id, "mixtral-8x7b", "gpt-4-1106", True, 1e-4, True, 3e-3)
    return r1(completions=[""], gold=[[task.gold]], answer_type=[task.answer_type], **kw)[0], BoPOReward({task.task_id: rec})(completions=[""], **kw)[0]


def test_unknown_model_and_adopting_an_uncalled_model_are_format_errors_everywhere(recorded_pool, tokenizer):
    task = recorded_pool.tasks()[0]
    gold = task.gold
    cases = {
        "unknown model": ['<think>a</think><route model="gpt-9">q</route>', f"<think>b</think><answer>{gold}</answer>"],
        "adopt uncalled": ["<think>a</think><answer>@gpt-4-1106</answer>"],
    }
    for name, turns in cases.items():
        ep = _episode(recorded_pool, tokenizer, turns)
        assert ep["format_error"], name
        assert format_reward(completions=[""], format_error=[ep["format_error"]]) == [0.0], name
        assert _score(ep, task) == (-1.0, -1.0), name
        assert summarize([ep])["format_error_rate"] == 1.0, name
    ok = _episode(recorded_pool, tokenizer, ['<think>a</think><route model="gpt-4-1106">q</route>', "<think>b</think><answer>@gpt-4-1106</answer>"])
    assert ok["format_error"] is None and _score(ok, task)[0] > 0 and summarize([ok])["format_error_rate"] == 0.0


def test_env_info_carries_the_same_verdict_at_the_end(recorded_pool):
    env = MultiRoundRoutingEnv(recorded_pool, max_turns=3)
    env.reset(recorded_pool.tasks()[0])
    _, _, _, _, info = env.step('<think>a</think><route model="gpt-9">q</route>')
    assert info["invalid_actions"] == 1 and "gpt-9" in info["format_error"]
    _, _, term, _, info = env.step("<think>b</think><answer>18</answer>")
    assert term and "gpt-9" in info["format_error"] and info["format_error"] == env.format_error()
