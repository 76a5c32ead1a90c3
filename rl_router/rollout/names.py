"""Route decisions made once, by name: the cost knob as an exact threshold on the router's log-odds.

A *decision point* is where a turn's text reaches a stem after which its action names a model:

| stem | continuation scored | candidates |
|---|---|---|
| `<route model="` | `NAME">` | every pool model |
| `"model": "` | `NAME",` (a tool call's arguments) | every pool model |
| `<answer>@` | `NAME</answer>` | the models this episode called |

At a route decision every candidate's continuation is scored teacher-forced (sum of its tokens'
log-probs, one batched forward on the shared context), and the choice is
argmax_n log p(n) + B * w(n), with w(n) the model's price position (0 cheapest, 1 costliest).
So the choice flips from n to m exactly when B * (w(m) - w(n)) exceeds log p(n) - log p(m):
B is a threshold on the router's own log-odds between names, whatever the tokenizer splits
them into and whether names share a prefix (`gpt-4o` / `gpt-4o-mini`): each name is scored
with its closing text, so a name that is a prefix of another is never credited with the
other's mass. The chosen tokens are forced, and `@NAME` can only adopt a model the episode
called (so no bias can route to one model and adopt another). The decision is the action's
own: free text before it (the warm start's `<think>Route to NAME.</think>`) is the router's
to write, and a router may well reconsider there (measured: an agentic warm start writes
`Route to cheap.` then routes to `expensive` on 15 of 40 held-out tasks), so binding the
action to the think text would change what the router does at B = 0.

The continuation's tokens are `encode(stem + continuation)` after `encode(stem)`; a name whose
tokens do not start at the stem's end (a tokenizer that merges across it) is not offered,
and if none can be, the point is not a decision (counted in `undecided`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

#: (stem, continuation template, kind): kind "route" (a cost decision) or "adopt" (held to called models)
STEMS: tuple[tuple[str, str, str], ...] = (
    ('<route model="', '{name}">', "route"),
    ('"model": "', '{name}",', "route"),
    ("<answer>@", "{name}</answer>", "adopt"),
)

_CONT: "weakref.WeakKeyDictionary[Any, dict[tuple[str, str], list[int] | None]]" = weakref.WeakKeyDictionary()
_VOCAB: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def vocab_strings(tokenizer: Any) -> list[str]:
    """Each token id's text (decoded alone), cached per tokenizer: a turn's text is built by
    appending these, so stems are found without decoding the turn at every step."""
    if tokenizer not in _VOCAB:
        _VOCAB[tokenizer] = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return _VOCAB[tokenizer]


def continuation(tokenizer: Any, stem: str, text: str) -> list[int] | None:
    """Token ids of `text` written right after `stem`, or None when the tokenizer would merge
    across the stem's end (then the stem is not a token boundary for this text)."""
    cache = _CONT.setdefault(tokenizer, {})
    key = (stem, text)
    if key not in cache:
        a = tokenizer.encode(stem, add_special_tokens=False)
        b = tokenizer.encode(stem + text, add_special_tokens=False)
        cache[key] = b[len(a):] if b[: len(a)] == a and len(b) > len(a) else None
    return cache[key]


def stem_at_end(text: str) -> tuple[str, str, str] | None:
    """The decision stem `text` (a turn so far) ends with, if any."""
    for stem, cont, kind in STEMS:
        if text.endswith(stem):
            return stem, cont, kind
    return None


@dataclass
class Decision:
    """What one decision point saw and chose (kept per turn in the episode, for curves)."""

    stem: str
    names: list[str]
    scores: list[float | None]  # log p(name's continuation) under the router; None: a name that could not win (not scored)
    choice: str
    bias: float

    def as_dict(self) -> dict[str, Any]:
        return {"stem": self.stem, "names": self.names, "scores": self.scores, "choice": self.choice, "bias": self.bias}


def cost_weights(pool: Any) -> dict[str, float]:
    """Each model's position between the cheapest (0) and the costliest (1) by what a call
    typically costs (`Pool.typical_costs`: measured on a recorded pool's tasks, else list price
    in + out per 1M tokens): the share of the bias its name gets."""
    price = {m: float(v) for m, v in pool.typical_costs().items()}
    lo, hi = min(price.values()), max(price.values())
    return {m: 0.0 if hi <= lo else (p - lo) / (hi - lo) for m, p in price.items()}


def choose(scores: Sequence[float | None], names: Sequence[str], weights: Mapping[str, float], bias: float) -> str:
    """argmax log p(n) + bias * w(n); ties to the earlier name (pool order). A None score is a
    name shown unable to win (see HFPolicy._score_names)."""
    live = [i for i in range(len(names)) if scores[i] is not None]
    best = max(live, key=lambda i: (scores[i] + bias * float(weights.get(names[i], 0.0)), -i))
    return names[best]


def sample_choice(scores: Sequence[float], names: Sequence[str], weights: Mapping[str, float], bias: float, temperature: float, generator: torch.Generator | None = None) -> str:
    """A name drawn from softmax((log p(n) + bias * w(n)) / temperature)."""
    x = torch.tensor([s + bias * float(weights.get(n, 0.0)) for s, n in zip(scores, names)]) / max(temperature, 1e-6)
    return names[int(torch.multinomial(torch.softmax(x, dim=0), 1, generator=generator))]


def group_biases(scores: Sequence[float], names: Sequence[str], weights: Mapping[str, float], biases: Sequence[float]) -> dict[str, tuple[float, ...]]:
    """The choice at each bias, grouped: choice -> the biases that make it (first-seen order)."""
    out: dict[str, list[float]] = {}
    for b in biases:
        out.setdefault(choose(scores, names, weights, b), []).append(b)
    return {k: tuple(v) for k, v in out.items()}
