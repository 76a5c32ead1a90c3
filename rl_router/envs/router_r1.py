"""Multi-round QA routing in the Router-R1 style.

The router alternates `<think>` with `<route model="NAME">sub-query</route>`; each route
calls the pool and the reply comes back as `<information>...</information>`; the episode
ends at `<answer>` (terminated) or when `max_turns` policy turns have passed (truncated).
`<answer>@NAME</answer>` adopts the final answer of NAME's latest reply (as a one-shot
router returns its chosen model's answer) so a router need not re-type it; adopting a
model that was not called is a format error (`TextEnv.format_error`), as is routing to a
model the pool does not have.

Budget (USD per task) is hard: before a call the environment asks the pool for the call's
cost upper bound (exact for recorded and simulated pools; for live ones the prompt's UTF-8
bytes plus chat overhead, and `pool_max_tokens` of output) and refuses the call with an
error observation if the remaining budget does not cover it. So `info["cost"] <= budget`
holds in every episode whose providers bill within that bound; a provider that bills past
it is charged what it billed and the episode ends at once (`TextEnv._charge`).

Rewards: the env's own reward is the outcome quality at termination (gymnasium users get
a usable signal); training combines richer terms from `rl_router.rewards` computed on the
episode info the rollout engine returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import re

from rl_router.answers import extract_final_answer, score_answer
from rl_router.envs.base import StepResult, TextEnv
from rl_router.errors import ConfigError
from rl_router.pools.base import Pool
from rl_router.prompts import initial_messages, pool_messages
from rl_router.protocol import parse_turn
from rl_router.tasks import Task


@dataclass
class RoutingEnvConfig:
    max_turns: int = 4  # policy turns per episode (each may route once or answer)
    budget: float | None = None  # USD per task; None = unlimited
    max_obs_tokens: int = 256  # pool replies are cut to this many tokens
    pool_max_tokens: int = 512  # max_tokens sent to pool models
    pool_temperature: float = 0.0
    on_budget_exhausted: str = "continue"  # "continue": the router must answer; "end": truncate
    system_extra: str = ""  # appended to the system prompt
    card_style: str = "auto"  # model cards in the system prompt: full | compact | auto (compact above 3 models)
    show_answer: bool = False  # put each reply's stated final answer in its header ("answer (B)"), read as @NAME would adopt it

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ConfigError("env.max_turns", f"must be >= 1, got {self.max_turns}")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError("env.budget", f"must be > 0 or null, got {self.budget}")
        if self.max_obs_tokens < 1:
            raise ConfigError("env.max_obs_tokens", f"must be >= 1, got {self.max_obs_tokens}")
        if self.pool_max_tokens < 1:
            raise ConfigError("env.pool_max_tokens", f"must be >= 1, got {self.pool_max_tokens}", "the max_tokens sent with every pool call")
        if not self.pool_temperature >= 0:
            raise ConfigError("env.pool_temperature", f"must be >= 0, got {self.pool_temperature}")
        if self.card_style not in ("auto", "full", "compact"):
            raise ConfigError("env.card_style", f"unknown value {self.card_style!r}", "use auto, full or compact")
        if self.on_budget_exhausted not in ("continue", "end"):
            raise ConfigError("env.on_budget_exhausted", f"unknown value {self.on_budget_exhausted!r}", "use 'continue' or 'end'")


ADOPT_RE = re.compile(r"^@([\w.\-/:]+)$")


def information(text: str) -> str:
    return f"\n<information>{text}</information>\n"


class MultiRoundRoutingEnv(TextEnv):
    def __init__(self, pool: Pool, config: RoutingEnvConfig | None = None, *, tokenizer: Any = None, **overrides: Any):
        self.pool = pool
        self.config = config or RoutingEnvConfig(**overrides)
        self.tokenizer = tokenizer
        self.task: Task | None = None
        self.messages = []

    @property
    def replies(self) -> dict[str, str]:
        """Each model's latest reply of this episode, in full (what `@NAME` adopts from)."""
        return dict(self._replies)

    # ---- helpers ------------------------------------------------------------------------
    def _truncate(self, text: str) -> str:
        """Cut a pool reply to `max_obs_tokens`, keeping its head and its tail (final answers
        sit at the end of a reply) with " ... " between."""
        n = self.config.max_obs_tokens
        head = n // 2
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) <= n:
                return text
            return self.tokenizer.decode(ids[:head]) + " ... " + self.tokenizer.decode(ids[len(ids) - (n - head):])
        if len(text) <= 4 * n:
            return text
        return text[: 4 * head] + " ... " + text[len(text) - 4 * (n - head):]

    def _budget_left(self) -> float:
        b = self.config.budget
        return float("inf") if b is None else b - self.info["cost"]

    def _error(self, kind: str, msg: str) -> str:
        """An error observation; `kind` is "invalid" (a malformed action: a format error),
        "over_budget" or "pool_errors" (counted, not format errors)."""
        if kind == "invalid":
            self._invalid(msg)
        else:
            self.info[kind] += 1
        return information(f"error: {msg}")

    # ---- gym API ------------------------------------------------------------------------
    def reset(self, task: Task, *, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.task = task
        self.messages = initial_messages(task, self.pool.models, self.config.budget, self.config.system_extra, self.config.card_style)
        self._replies: dict[str, str] = {}
        self.info: dict[str, Any] = self._start_info(task, adopted=None)
        obs = "\n\n".join(m["content"] for m in self.messages)
        return obs, self._public_info()

    async def astep(self, action: str) -> StepResult:
        self._record_turn(action)
        cfg, info = self.config, self.info
        act = parse_turn(action)
        obs, reward, terminated = "", 0.0, False

        if act.kind == "answer":
            answer = act.answer
            m = ADOPT_RE.match(answer)
            if m:  # "@NAME": adopt the final answer of NAME's latest reply
                reply = self._replies.get(m.group(1))
                if reply is None:
                    self._invalid(f"adopted {m.group(1)!r}, which was never called; route to it first or write the answer")
                    answer = None
                else:
                    answer = extract_final_answer(reply, self.task.answer_type)
                    info["adopted"] = m.group(1)
            info["answer"] = answer
            info["quality"] = score_answer(answer, self.task.gold, self.task.answer_type)
            self._end("answer")
            return StepResult("", info["quality"], True, False, self._public_info())

        if act.kind == "invalid":
            obs = self._error("invalid", act.error)
        elif not self.pool.has_model(act.model):
            obs = self._error("invalid", f"unknown model {act.model!r}; choose one of: {', '.join(self.pool.model_names)}")
        else:
            msgs = pool_messages(self.task.question, act.query)
            est = self.pool.estimate_cost(act.model, msgs, max_tokens=cfg.pool_max_tokens, context=self.task.context())
            left = self._budget_left()
            if est > left + 1e-12:
                obs = self._error("over_budget", f"over budget: {act.model} costs about ${est:.6f} but ${max(left, 0):.6f} is left; answer now or route to a cheaper model")
            else:
                comp = await self.pool.complete(act.model, msgs, context=self.task.context(), max_tokens=cfg.pool_max_tokens, temperature=cfg.pool_temperature)
                info["trace"].append({"model": act.model, "query": act.query, "cost": comp.cost, "error": comp.error, "latency_s": comp.latency_s, "retries": comp.retries})
                if comp.error:
                    obs = self._error("pool_errors", f"{act.model} failed ({comp.error}); try again or route elsewhere")
                else:
                    broke_budget = self._charge(comp.cost, est)
                    info["n_routes"] += 1
                    info["calls"][act.model] += 1
                    self._replies[act.model] = comp.text
                    info["trace"][-1]["final"] = extract_final_answer(comp.text, self.task.answer_type)  # for behaviour summaries (metrics.behaviour)
                    left = self._budget_left()
                    budget_note = f" | ${left:.6f} left" if cfg.budget is not None else ""
                    # the reply's own conclusion, as adopting it would read it: nothing a reader of the
                    # full reply would not see, placed where a small router finds it
                    stated = f" | answer ({extract_final_answer(comp.text, self.task.answer_type) or '?'})" if cfg.show_answer else ""
                    obs = information(f"[{act.model}{stated} | ${comp.cost:.6f}{budget_note}]\n{self._truncate(comp.text.strip())}")
                    if broke_budget:
                        self._end("provider_overcharge")
                        return StepResult(obs, 0.0, False, True, self._public_info())

        truncated = False
        if info["turn"] >= cfg.max_turns:
            truncated = True
            self._end("max_turns")
        elif cfg.on_budget_exhausted == "end" and cfg.budget is not None and self._budget_left() < self._cheapest_call():
            truncated = True
            self._end("budget_exhausted")
        return StepResult(obs, reward, terminated, truncated, self._public_info())

    def _cheapest_call(self) -> float:
        msgs = pool_messages(self.task.question, self.task.question) if self.task else []
        ctx = self.task.context() if self.task else None
        return min(self.pool.estimate_cost(c.name, msgs, max_tokens=self.config.pool_max_tokens, context=ctx) for c in self.pool.models)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)
