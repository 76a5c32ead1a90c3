"""A custom routing environment, written against rl-router's env protocol and registered
under a name a recipe can use: single-shot routing, RouteLLM style. The router writes one
`<route model="NAME">...</route>`; the env asks that model the task and the episode ends
with the model's final answer. Run it: `python envs/custom_env.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl_router.answers import extract_final_answer, score_answer
from rl_router.envs import StepResult, TextEnv, register_env
from rl_router.prompts import initial_messages, pool_messages
from rl_router.protocol import parse_turn
from rl_router.tasks import Task


@dataclass
class SingleShotConfig:  # its fields are what a recipe's `env:` section may set
    budget: float | None = None
    pool_max_tokens: int = 512


class SingleShotRoutingEnv(TextEnv):
    final_action = "route"  # a well-formed episode is exactly one route turn

    def __init__(self, pool: Any, config: SingleShotConfig | None = None, *, tokenizer: Any = None, **overrides: Any):
        self.pool, self.config, self.tokenizer = pool, config or SingleShotConfig(**overrides), tokenizer

    def reset(self, task: Task, *, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.task = task
        self.messages = initial_messages(task, self.pool.models, self.config.budget, "Route once; the model's answer is final.")
        self.info = self._start_info(task)
        return "\n\n".join(m["content"] for m in self.messages), self._public_info()

    async def astep(self, action: str) -> StepResult:
        self._record_turn(action)
        act = parse_turn(action)
        if act.kind != "route" or not self.pool.has_model(act.model):
            self._invalid(act.error or f"route to one of {self.pool.model_names}")
        else:
            msgs = pool_messages(self.task.question, act.query)
            bound = self.pool.estimate_cost(act.model, msgs, max_tokens=self.config.pool_max_tokens, context=self.task.context())
            if self.config.budget is not None and bound > self.config.budget:
                self.info["over_budget"] += 1
            else:
                comp = await self.pool.complete(act.model, msgs, context=self.task.context(), max_tokens=self.config.pool_max_tokens)
                self.info["trace"].append({"model": act.model, "query": act.query, "cost": comp.cost, "error": comp.error, "latency_s": comp.latency_s, "retries": comp.retries})
                if comp.error:
                    self.info["pool_errors"] += 1
                else:
                    self._charge(comp.cost, bound)
                    self.info["n_routes"] += 1
                    self.info["calls"][act.model] += 1
                    self.info["answer"] = extract_final_answer(comp.text, self.task.answer_type)
                    self.info["quality"] = score_answer(self.info["answer"], self.task.gold, self.task.answer_type)
        self._end("answer" if self.info["answer"] is not None else "failed")
        return StepResult("", self.info["quality"], True, False, self._public_info())


register_env("single_shot", SingleShotRoutingEnv, SingleShotConfig)


if __name__ == "__main__":
    from rl_router.metrics import summarize
    from rl_router.pools import RecordedPool
    from rl_router.rollout import RolloutEngine, ScriptedPolicy
    from rl_router.tiny import load_tiny_tokenizer

    pool, tok = RecordedPool.packaged(["gsm8k"]), load_tiny_tokenizer()
    engine = RolloutEngine(lambda: SingleShotRoutingEnv(pool, budget=0.05), tok)
    for model in pool.model_names:
        s = summarize(engine.run(pool.tasks()[:100], ScriptedPolicy.always(tok, model, query="short")))
        print(f"always-{model}: quality {s['quality']:.3f}, ${1000 * s['mean_cost']:.3f} per 1k tasks, format errors {s['format_error_rate']:.0%}")
