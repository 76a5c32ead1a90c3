"""The router's tag protocol: parse one policy turn into an action; check a trajectory's format.

Tags: `<think>...</think>` (own reasoning), `<route model="NAME">sub-query</route>` (call a
pool model), `<answer>...</answer>` (finish). Only the environment writes
`<information>...</information>`; a router that writes it is making a format error, and its
fake span is never treated as pool output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUTE_RE = re.compile(r'<route\s+model\s*=\s*"([^"<>]*)"\s*>(.*?)</route>', re.S)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.S)
INFO_RE = re.compile(r"<information>.*?</information>", re.S)
TAG_RE = re.compile(r"</?(think|route|answer|information)\b[^>]*>")
STOP_STRINGS = ("</route>", "</answer>")

ROUTE_HINT = 'write <route model="NAME">your sub-query</route> or <answer>...</answer>'


@dataclass
class Action:
    kind: str  # "route" | "answer" | "invalid"
    model: str = ""
    query: str = ""
    answer: str = ""
    error: str = ""
    think: str = ""


def parse_turn(text: str) -> Action:
    """The first complete action of one policy turn (text after it is ignored)."""
    if "<information" in text:
        return Action("invalid", error="only the environment writes <information>; " + ROUTE_HINT)
    route, answer = ROUTE_RE.search(text), ANSWER_RE.search(text)
    think_m = THINK_RE.search(text)
    think = think_m.group(1).strip() if think_m else ""
    if route and (not answer or route.start() < answer.start()):
        model, query = route.group(1).strip(), route.group(2).strip()
        if not model:
            return Action("invalid", error='empty model name in <route model="">; ' + ROUTE_HINT, think=think)
        if not query:
            return Action("invalid", model=model, error=f"empty sub-query for {model}; put the question between the route tags", think=think)
        return Action("route", model=model, query=query, think=think)
    if answer:
        return Action("answer", answer=answer.group(1).strip(), think=think)
    if "<route" in text:
        return Action("invalid", error="malformed <route> tag; " + ROUTE_HINT, think=think)
    if "<answer>" in text:
        return Action("invalid", error="unclosed <answer> tag; end it with </answer>", think=think)
    return Action("invalid", error="no action found; " + ROUTE_HINT, think=think)


def check_turn_format(text: str, *, last: bool, final: str = "answer") -> str | None:
    """Why one policy turn is badly formatted, or None if it is well formed.

    Well formed: starts with a <think> block, then exactly one action (a route, or on the
    last turn an answer), tags balanced and not nested, nothing written after the action.
    `final="route"` is the agentic protocol: every turn routes (the episode ends when the
    task does), and <answer> is never an action.
    """
    s = text.strip()
    if "<information" in s:
        return "router wrote <information>"
    if not s.startswith("<think>"):
        return "turn does not start with <think>"
    depth_open: str | None = None
    for m in TAG_RE.finditer(s):
        tag, closing = m.group(1), m.group(0).startswith("</")
        if not closing:
            if depth_open is not None:
                return f"<{tag}> nested inside <{depth_open}>"
            depth_open = tag
        else:
            if depth_open != tag:
                return f"unbalanced </{tag}>"
            depth_open = None
    if depth_open is not None:
        return f"unclosed <{depth_open}>"
    routes, answers = ROUTE_RE.findall(s), ANSWER_RE.findall(s)
    if len(routes) + len(answers) != 1:
        return f"expected exactly one action per turn, found {len(routes) + len(answers)}"
    if final == "route":
        if answers:
            return "<answer> is not an action here; pick the next step's model with <route>"
    elif last and not answers:
        return "trajectory does not end with <answer>"
    if not last and answers:
        return "<answer> before the end of the trajectory"
    if not (s.endswith("</route>") or s.endswith("</answer>")):
        return "text after the action"
    return None


def check_format(policy_turns: list[str], final: str = "answer") -> str | None:
    """Why a whole trajectory (the router's own turns, in order) is badly formatted, or None.
    `final`: "answer" (Router-R1: routes, then one answer) or "route" (agentic: routes only)."""
    if not policy_turns:
        return "empty trajectory"
    for i, t in enumerate(policy_turns):
        why = check_turn_format(t, last=i == len(policy_turns) - 1, final=final)
        if why:
            return f"turn {i + 1}: {why}"
    return None


def split_policy_turns(completion_text: str) -> list[str]:
    """Recover the router's turns from a decoded trajectory by cutting at <information> spans.

    Only a fallback for reward functions called without the rollout's `policy_turns`: from
    text alone a fake <information> written by the router cannot be told from a real one.
    """
    return [p for p in (part.strip() for part in INFO_RE.split(completion_text)) if p]
