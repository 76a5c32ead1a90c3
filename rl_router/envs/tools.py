"""Our routing environments as native tool calls: for TRL's `environment_factory`, and for our own
rollout engine (`rollout.protocol: tools`).

The tag protocol asks the router to write `<route model="NAME">sub-query</route>`; the tool
protocol asks it to call functions through its chat template, as a TRL user who trains with
tools expects:

  route(model: str, query: str) -> str    ask a pool model; returns its reply, the call's cost
                                          and what is left of the budget
  answer(text: str) -> str                finish (Router-R1 env only; "@NAME" adopts NAME's answer)

Both protocols drive the same environment: a tool call is translated into the tag action the
env already understands, so budget, invalid-action feedback, cost accounting and the format
verdict are exactly the tag path's (tested: the same scripted policy gives the same episodes
through both). The chat template is Qwen2.5's (`TOOL_CHAT_TEMPLATE`, taken from TRL so TRL
recognises it: response parsing, prefix-preserving training template); the tiny router and
SmolLM2 share its ChatML tokens.

Two faces:
- `environment_factory(...)`: a class for `trl.GRPOTrainer(environment_factory=...)`: one
  instance per rollout, `reset(**row)` returns the pool cards and budget (TRL appends them to
  the user message), the tools above, `get_reward()` from our reward functions (Router-R1's
  gated reward, BoPO's boundary-relative reward), so `reward_funcs` are optional.
- `ToolCallEnv`: a `TextEnv` over any env for our rollout engine, whose actions are the
  router's raw assistant text (tool calls) and whose observations are the exact tokens the
  chat template puts between turns (the tool response), so the engine's env_mask masks them.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Callable

from rl_router.envs.base import EPISODE_FIELDS, StepResult, TextEnv
from rl_router.prompts import format_card
from rl_router.tasks import Task


def tool_chat_template() -> str:
    """Qwen2.5's chat template, exactly as TRL knows it (so `add_response_schema` and
    `get_training_chat_template` recognise it)."""
    from trl.chat_template_utils import qwen2_5_chat_template

    return qwen2_5_chat_template


def with_tool_template(tokenizer: Any) -> Any:
    """A copy of `tokenizer` whose chat template supports tool calls (ChatML tokens kept)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = tool_chat_template()
    return tok


TOOLS_PROTOCOL = (
    "You are a router. Solve the user's task by calling models from the pool with the route tool "
    "(model, query); each call returns the model's reply, its cost and the budget left. "
    "Finish with the answer tool: the final answer only, or @NAME to adopt NAME's final answer."
)
AGENTIC_TOOLS_PROTOCOL = (
    "You are the router of an agent. At each step call the route tool with the model that acts next "
    "(cheap models slip on hard steps) and a note for it; the step's result comes back. The episode "
    "ends when the task is solved or has failed; a step that would exceed the budget is refused."
)


def _route(model: str, query: str) -> str:
    """Ask one pool model; returns its reply, the call's cost and the budget left.

    Args:
        model: the pool model to call
        query: what to ask it (the task is sent along with it)
    """
    raise NotImplementedError


def _answer(text: str) -> str:
    """Give the final answer and end the episode.

    Args:
        text: the final answer only, or @NAME to adopt NAME's final answer
    """
    raise NotImplementedError


def tool_schemas(final_action: str = "answer") -> list[dict[str, Any]]:
    """The tools' JSON schemas, derived from their signatures and docstrings exactly as TRL
    derives them from the environment's methods (so both paths show the router one prompt)."""
    from transformers.utils import get_json_schema

    out = []
    for name, fn in (("route", _route), ("answer", _answer)):
        if name == "answer" and final_action == "route":
            continue
        schema = get_json_schema(fn)
        schema["function"]["name"] = name
        out.append(schema)
    return out


def tools_prompt(task: Task, final_action: str = "answer") -> list[dict[str, str]]:
    """The conversation a tool-calling router starts from (a dataset's `prompt` column for TRL):
    the protocol as the system message, the task as the user message. The pool cards and the
    budget are appended to the user message by `reset` (TRL's contract)."""
    return [{"role": "system", "content": AGENTIC_TOOLS_PROTOCOL if final_action == "route" else TOOLS_PROTOCOL}, {"role": "user", "content": f"Task: {task.question}"}]


def reset_text(env: TextEnv) -> str:
    """What `reset` returns: the pool's cards and the task's budget (appended to the user message)."""
    cards = "\n".join(format_card(c) for c in env.pool.models)
    b = env.config.budget
    return f"\n\nPool:\n{cards}" + (f"\nBudget: ${b:.4f} for this task" if b is not None else "")


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_tool_call(text: str) -> tuple[str, dict[str, Any]] | str:
    """(name, arguments) of the first tool call in an assistant turn, or why there is none."""
    m = _TOOL_CALL.search(text)
    if not m:
        return "no tool call found; call route(model, query) or answer(text)"
    try:
        call = json.loads(m.group(1))
    except ValueError:
        return "the tool call is not valid JSON"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(call.get("arguments", {}), dict):
        return 'a tool call is {"name": ..., "arguments": {...}}'
    return call["name"], call.get("arguments", {})


def tag_action(name: str, args: dict[str, Any]) -> str:
    """The tag-protocol action a tool call stands for (what the wrapped env steps)."""
    if name == "route":
        return f'<think>tool call</think><route model="{str(args.get("model", "")).replace(chr(34), "")}">{args.get("query", "")}</route>'
    if name == "answer":
        return f"<think>tool call</think><answer>{args.get('text', '')}</answer>"
    return f"<think>tool call</think>unknown tool {name!r}"


def tool_result_text(obs: str) -> str:
    """An env observation (`<information>...</information>`) as the tool's return value."""
    s = obs.strip()
    if s.startswith("<information>") and s.endswith("</information>"):
        s = s[len("<information>") : -len("</information>")].strip()
    return s


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """An assistant turn calling one tool, exactly as the chat template renders it (after the
    generation prompt; the end-of-turn token comes from the engine)."""
    return '<tool_call>\n{"name": "' + name + '", "arguments": ' + json.dumps(arguments, ensure_ascii=False) + "}\n</tool_call>"


class ToolCallEnv(TextEnv):
    """Any rl-router env, stepped with tool calls (see the module docstring). Actions are raw
    assistant text; observations are the chat template's tool-response tokens, ending with the
    next assistant header; every router turn ends with the end-of-turn token (EOS)."""

    turn_ends_on_eos = True

    def __init__(self, inner: TextEnv, tokenizer: Any):
        self.inner, self.tokenizer = inner, tokenizer
        self.pool = inner.pool
        self.config = inner.config
        self.final_action = getattr(inner, "final_action", "answer")
        self.tools = tool_schemas(self.final_action)
        self.task: Task | None = None

    @property
    def info(self) -> dict[str, Any]:  # type: ignore[override]
        return self.inner.info

    @property
    def turns(self) -> list[str]:  # type: ignore[override]
        return self.inner.turns

    def reset(self, task: Task, *, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        obs, info = self.inner.reset(task, seed=seed)
        self.task = task
        self.messages = tools_prompt(task, self.final_action)
        self.messages[-1] = {**self.messages[-1], "content": self.messages[-1]["content"] + reset_text(self.inner)}
        return obs, info

    def prompt_ids(self, tokenizer: Any) -> list[int]:
        ids = tokenizer.apply_chat_template(self.messages, tools=self.tools, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def render_route(self, model: str, query: str) -> str:
        return render_tool_call("route", {"model": model, "query": query})

    def render_answer(self, text: str) -> str:
        return render_tool_call("answer", {"text": text})

    def observation(self, content: str) -> str:
        """What the chat template puts between the router's turn (ended by <|im_end|>) and its
        next one, for a tool response `content`."""
        return f"\n<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"

    async def astep(self, action: str) -> StepResult:
        call = parse_tool_call(action)
        tag = tag_action(*call) if isinstance(call, tuple) else f"<think>tool call</think>{call}"
        obs, r, term, trunc, info = await self.inner.astep(tag)
        return StepResult(self.observation(tool_result_text(obs)) if obs else self.observation("ok"), r, term, trunc, info)

    def format_error(self) -> str | None:
        return self.inner.format_error()

    def _public_info(self) -> dict[str, Any]:
        return self.inner._public_info()


def episode_of(env: TextEnv, task: Task) -> dict[str, Any]:
    """The fields our reward functions read, for one finished (or abandoned) episode."""
    info = env.info
    return {
        **{k: info.get(k) for k in EPISODE_FIELDS}, "task_id": task.task_id, "calls": dict(info["calls"]), "budget": info.get("budget"),
        "format_error": env.format_error() if env.turns else "no action", "policy_turns": list(env.turns),
    }


def environment_factory(make_env: Callable[[], TextEnv], reward: Callable[..., list[float]] | None = None) -> type:
    """A class for `trl.GRPOTrainer(environment_factory=...)` over the env `make_env()` builds.

    `reward(prompts=, completions=, **episode columns)` is one of our reward functions (e.g.
    `RouterR1Reward`, `BoPOReward`); `get_reward()` applies it to the episode, so TRL's
    `reward_funcs` may be left out. Dataset rows are our task rows (`Task.to_row()`)."""
    probe = make_env()
    agentic = getattr(probe, "final_action", "answer") == "route"
    models = probe.pool.model_names
    del probe

    class RoutingToolEnv:
        """One routing episode per rollout, driven by tool calls."""

        def __init__(self) -> None:
            self.env = make_env()
            self.task: Task | None = None

        def reset(self, **row: Any) -> str:
            self.task = Task.from_row({k: row[k] for k in ("question", "gold", "answer_type", "dataset", "topic", "task_id") if k in row})
            self.env.reset(self.task)
            return reset_text(self.env)

        def route(self, model: str, query: str) -> str:
            return self._act(tag_action("route", {"model": model, "query": query}))

        route.__doc__ = _route.__doc__

        def _act(self, action: str) -> str:
            if self.task is None:
                return "error: the episode has not started"
            if self.env.info["done_reason"] is not None:
                return "error: the episode is over"
            obs, *_ = self.env.step(action)
            return tool_result_text(obs) or "ok"

        def get_reward(self) -> float:
            ep = episode_of(self.env, self.task)
            if reward is None:
                return float(ep["quality"] or 0.0)
            row = self.task.to_row()
            cols = {**{k: [v] for k, v in row.items()}, **{k: [v] for k, v in ep.items()}, "split": ["train"]}
            return float(reward(prompts=[self.task.question], completions=[""], **cols)[0])

    if not agentic:

        def answer(self, text: str) -> str:  # noqa: ANN001 (no annotation: TRL documents annotated parameters)
            return self._act(tag_action("answer", {"text": text}))

        answer.__doc__ = _answer.__doc__

        RoutingToolEnv.answer = answer  # type: ignore[attr-defined]
    RoutingToolEnv.__doc__ = f"Routing over {models} with tool calls (rl-router)."
    return RoutingToolEnv
