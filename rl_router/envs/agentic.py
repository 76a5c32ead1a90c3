"""Step-level agentic routing (the BoPO setting): a router picks which model acts at each
step of an agent episode, under a hard per-task budget.

At every step the router sees the router-visible prefix (the task, every step so far with
its result, the remaining budget, and what the next step asks) and emits
`<think>...</think><route model="TIER">note for the agent</route>`. The env then sends the
chosen model the world's agent prompt (`envs/worlds`), executes the model's action in the
task world for real (calculator, unit tests in a subprocess), and returns the step's
result as `<information>...</information>`. There is no `<answer>`: the episode ends when
the world says success or failure (terminated), or after `max_turns` router turns
(truncated). Reward arrives only at the end: the env's reward is 1.0 for success.

Budget (USD per task) is hard. Before each call the env asks the pool for the call's cost
upper bound (exact for simulated pools; for live ones the prompt's UTF-8 bytes plus chat
overhead, and `pool_max_tokens` of output; a provider billing past it ends the episode, see
`TextEnv._charge`). A call that would exceed what is left is refused; `on_over_budget: refuse` shows
the router an error and the episode continues with what is affordable, `end` ends the
episode as a failure. When not even the cheapest tier is affordable the episode ends.
So `info["cost"] <= budget` in every episode, whatever the router writes.

Tiers are the pool's models (two or more), shown to the router as cards sorted by price.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rl_router.envs.base import StepResult, TextEnv
from rl_router.errors import ConfigError
from rl_router.pools.base import Pool
from rl_router.prompts import format_card
from rl_router.protocol import parse_turn
from rl_router.tasks import Task

from rl_router.envs.router_r1 import information
from rl_router.envs.worlds import get_world

PROTOCOL = (
    "You are the router of an agent. At each step choose which model acts next; cheap models "
    "slip on hard steps, and an early slip ruins the rest of the task.\n"
    "Protocol, every turn:\n"
    "1. Think first: <think>...</think>\n"
    '2. Pick the model for the next step: <route model="NAME">note for the agent</route>; '
    "the step's result arrives as <information>...</information>\n"
    "The episode ends when the task is solved or has failed. A step that would exceed the budget is refused."
)


@dataclass
class AgenticEnvConfig:
    max_turns: int = 8  # router turns per episode (refused and malformed turns count)
    budget: float | None = None  # USD per task; None = unlimited
    on_over_budget: str = "refuse"  # "refuse": error observation, continue; "end": the episode fails
    max_obs_tokens: int = 96  # a step's result is cut to this many tokens
    pool_max_tokens: int = 256  # max_tokens sent to the acting model
    pool_temperature: float = 0.0
    system_extra: str = ""

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ConfigError("env.max_turns", f"must be >= 1, got {self.max_turns}")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError("env.budget", f"must be > 0 or null, got {self.budget}")
        if self.on_over_budget not in ("refuse", "end"):
            raise ConfigError("env.on_over_budget", f"unknown value {self.on_over_budget!r}", "use 'refuse' or 'end'")
        if self.max_obs_tokens < 1:
            raise ConfigError("env.max_obs_tokens", f"must be >= 1, got {self.max_obs_tokens}")


def agentic_system_prompt(pool: Pool, extra: str = "") -> str:
    cards = sorted(pool.models, key=lambda c: (c.price_in + c.price_out, c.name))
    return f"{PROTOCOL}\nModels:\n" + "\n".join(format_card(c) for c in cards) + (f"\n{extra}" if extra else "")


class AgenticRoutingEnv(TextEnv):
    #: the router never answers here: every turn is a route (read by scripted policies and rewards)
    final_action = "route"

    def __init__(self, pool: Pool, config: AgenticEnvConfig | None = None, *, tokenizer: Any = None, **overrides: Any):
        if len(pool.models) < 2:
            raise ConfigError("pool.models", "agentic routing needs at least two tiers")
        self.pool = pool
        self.config = config or AgenticEnvConfig(**overrides)
        self.tokenizer = tokenizer
        self.task: Task | None = None
        self.state: Any = None
        self.messages = []

    # ---- helpers ------------------------------------------------------------------------
    def _truncate(self, text: str) -> str:
        n = self.config.max_obs_tokens
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            return text if len(ids) <= n else self.tokenizer.decode(ids[:n]) + " ..."
        return text if len(text) <= 4 * n else text[: 4 * n] + " ..."

    def _left(self) -> float:
        b = self.config.budget
        return float("inf") if b is None else b - self.info["cost"]

    def _context(self) -> dict[str, Any]:
        sc = self.state.step_context()
        tid = f"{self.task.task_id}#s{sc.get('step', 0)}#a{sc.get('attempt', 0)}"
        return {**sc, "task_id": tid, "question": self.task.question, "dataset": self.task.dataset}

    def _estimate(self, model: str, msgs: list[dict[str, str]] | None = None, ctx: dict[str, Any] | None = None) -> float:
        """Cost bound of `model` acting now (agent prompt and pool context built if not given)."""
        msgs = self.state.agent_messages() if msgs is None else msgs
        return self.pool.estimate_cost(model, msgs, max_tokens=self.config.pool_max_tokens, context=self._context() if ctx is None else ctx)

    def step_key(self) -> tuple[int, int]:
        """(step, attempt) of the next decision: which step of the task, which try at it."""
        sc = self.state.step_context()
        return int(sc.get("step", 0)), int(sc.get("attempt", 0))

    async def probe(self, model: str) -> dict[str, Any]:
        """What `model` would do at the current step, without committing: the call runs on a
        copy of the world state and nothing is charged to the episode. Used to label
        recorded step-level data (which tier was needed here?)."""
        ctx, probe_state = self._context(), self.state.clone()
        comp = await self.pool.complete(model, probe_state.agent_messages(), context=ctx, max_tokens=self.config.pool_max_tokens, temperature=self.config.pool_temperature)
        if comp.error:
            return {"cost": 0.0, "correct": None, "error": comp.error}
        return {"cost": comp.cost, "correct": probe_state.apply(comp.text).correct, "error": None}

    def step_cost(self, model: str) -> float:
        """Cost bound of the next step by `model` (after reset); used by recipe validation."""
        return self._estimate(model)

    def _affordable(self) -> bool:
        msgs, ctx = self.state.agent_messages(), self._context()
        return min(self._estimate(c.name, msgs, ctx) for c in self.pool.models) <= self._left() + 1e-12

    # ---- gym API ------------------------------------------------------------------------
    def reset(self, task: Task, *, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        world = (task.meta or {}).get("world")
        if not world:
            raise ValueError(f"task {task.task_id}: agentic tasks carry meta['world'] (arithmetic, code); use data.source: arithmetic or code")
        self.task = task
        self.state = get_world(world).start(task)
        b = self.config.budget
        user = f"Task: {task.question}\n{self.state.describe()}" + (f"\nBudget: ${b:.4f}" if b is not None else "")
        self.messages = [{"role": "system", "content": agentic_system_prompt(self.pool, self.config.system_extra)}, {"role": "user", "content": user}]
        self.info: dict[str, Any] = self._start_info(task, world=world, steps=[])
        return "\n\n".join(m["content"] for m in self.messages), self._public_info()

    def _finish(self, reason: str) -> None:
        self.info["answer"] = self.state.final_answer
        self.info["quality"] = 1.0 if self.state.success else 0.0
        self._end(reason)

    async def astep(self, action: str) -> StepResult:
        self._record_turn(action)
        cfg, info = self.config, self.info
        act = parse_turn(action)
        obs = ""
        if act.kind in ("answer", "invalid") or not self.pool.has_model(act.model):
            why = ('there is no <answer> here; pick the model for the next step with <route model="NAME">...</route>' if act.kind == "answer"
                   else act.error if act.kind == "invalid" else f"unknown model {act.model!r}; choose one of: {', '.join(self.pool.model_names)}")
            self._invalid(why)
            obs = information(f"error: {why}")
        else:
            msgs, ctx = self.state.agent_messages(act.query), self._context()
            est, left = self._estimate(act.model, msgs, ctx), self._left()
            if est > left + 1e-12:
                info["over_budget"] += 1
                if cfg.on_over_budget == "end":
                    self._finish("over_budget")
                    return StepResult("", 0.0, False, True, self._public_info())
                obs = information(f"error: over budget: {act.model} costs about ${est:.6f} but ${max(left, 0):.6f} is left; pick a cheaper model")
            else:
                comp = await self.pool.complete(act.model, msgs, context=ctx, max_tokens=cfg.pool_max_tokens, temperature=cfg.pool_temperature)
                info["trace"].append({"model": act.model, "cost": comp.cost, "error": comp.error, "latency_s": comp.latency_s, "retries": comp.retries, "step": ctx.get("step")})
                if comp.error:
                    info["pool_errors"] += 1
                    obs = information(f"error: {act.model} failed ({comp.error}); try again or pick another model")
                else:
                    broke_budget = self._charge(comp.cost, est)
                    info["n_routes"] += 1
                    info["calls"][act.model] += 1
                    out = self.state.apply(comp.text)
                    info["steps"].append({"step": ctx.get("step"), "attempt": ctx.get("attempt", 0), "model": act.model, "topic": ctx.get("topic"), "cost": comp.cost, "correct": out.correct, "advanced": out.advanced})
                    note = f" | ${self._left():.6f} left" if cfg.budget is not None else ""
                    obs = information(f"[{act.model} | ${comp.cost:.6f}{note}] {self._truncate(out.text)}\n{self.state.describe()}")
                    if broke_budget and not self.state.done:
                        self._finish("provider_overcharge")
                        return StepResult(obs, 0.0, False, True, self._public_info())
                    if self.state.done:
                        self._finish("success" if self.state.success else "failure")
                        return StepResult(obs, info["quality"], True, False, self._public_info())
        if info["turn"] >= cfg.max_turns:
            self._finish("max_turns")
            return StepResult(obs, 0.0, False, True, self._public_info())
        if cfg.budget is not None and not self._affordable():
            self._finish("budget_exhausted")
            return StepResult(obs, 0.0, False, True, self._public_info())
        return StepResult(obs, 0.0, False, False, self._public_info())

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)
