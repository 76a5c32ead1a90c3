"""Composable reward functions with TRL's signature.

Every function here is `f(prompts, completions, completion_ids, **kwargs) -> list[float]`,
so it can be passed to `GRPOTrainer(reward_funcs=[...])` as is. Inputs come from two
places: dataset columns (`gold`, `answer_type`) and the rollout engine's episode fields
(`policy_turns`, `answer`, `cost`, `over_budget`, `split`, ...), which TRL forwards as
kwargs. Each function falls back to parsing the completion text when a field is absent,
so they also work on plain single-turn completions.

Router-R1's reward (Zhang et al., 2025, arXiv:2506.09033):
    r = R_format + (1 - alpha) * R_outcome + alpha * R_cost
with hierarchical gating: a format failure gives -1 and nothing else; the cost credit is
paid only when the outcome is correct (a cheap wrong answer earns nothing for being
cheap). R_cost here is 1 - normalised cost, in [0, 1], normalised linearly against a fixed
cost scale, or (Router-R1) by percentiles of a cost distribution:
- in training (the rollout's `split` is "train"), a running window of the costs seen so far,
  fed with every rank's costs (gathered), so all ranks share one window;
- in evaluation (any other split), a fixed reference given at construction (our evaluator
  passes the always-<model> baselines' costs on the same tasks), else the scored batch
  itself: stateless, so a policy's score never depends on what was scored before it.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any, Callable, Sequence

from rl_router.answers import score_answer, token_f1
from rl_router.protocol import ANSWER_RE, check_format, split_policy_turns

RewardFunc = Callable[..., list[float]]


def completion_text(c: Any) -> str:
    """TRL passes strings, or lists of chat messages for conversational prompts."""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(m.get("content", "") for m in c if isinstance(m, dict))
    return str(c)


def _col(kwargs: dict[str, Any], key: str, n: int, default: Any = None) -> list[Any]:
    v = kwargs.get(key)
    return list(v) if v is not None else [default] * n


def _answers(completions: Sequence[Any], kwargs: dict[str, Any]) -> list[str | None]:
    given = kwargs.get("answer")
    if given is not None:
        return list(given)
    out: list[str | None] = []
    for c in completions:
        m = ANSWER_RE.findall(completion_text(c))
        out.append(m[-1].strip() if m else None)
    return out


def _turns(completions: Sequence[Any], kwargs: dict[str, Any]) -> list[list[str]]:
    turns = kwargs.get("policy_turns")
    if turns is not None:
        return [list(t) for t in turns]
    return [split_policy_turns(completion_text(c)) for c in completions]


# ---- format -------------------------------------------------------------------------------
def format_reward(prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
    """1.0 if the trajectory is well formed (each turn: <think> then one action; exactly one
    <answer>, at the end; tags balanced, not nested; no router-written <information>), else 0.
    Episodes from the rollout engine carry the environment's own verdict (`format_error`),
    which the agentic env gives by its routes-only protocol."""
    given = kwargs.get("format_error")
    if given is not None:
        return [0.0 if why else 1.0 for why in given]
    return [0.0 if check_format(t) else 1.0 for t in _turns(completions, kwargs)]


# ---- outcome ------------------------------------------------------------------------------
def _golds(kwargs: dict[str, Any], n: int) -> list[Any]:
    g = kwargs.get("gold")
    if g is None:
        raise KeyError("outcome rewards need a 'gold' column in the dataset (accepted answers per task)")
    return list(g)


def accuracy_reward(prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
    """1.0 if the final answer is right by the task's `answer_type` (number / code / text EM)."""
    answers, golds = _answers(completions, kwargs), _golds(kwargs, len(completions))
    types = _col(kwargs, "answer_type", len(answers), "text")
    return [score_answer(a, g, t) for a, g, t in zip(answers, golds, types)]


def success_reward(prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
    """The environment's own outcome (`quality` of the episode): 1.0 when an agentic task
    succeeded by its programmatic check (tests pass, final value right)."""
    q = kwargs.get("quality")
    if q is None:
        raise KeyError("the success reward needs the rollout's 'quality' field (episodes from the rollout engine)")
    return [float(x or 0.0) for x in q]


def exact_match_reward(prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
    """SQuAD exact match of the final answer against any accepted answer."""
    answers, golds = _answers(completions, kwargs), _golds(kwargs, len(completions))
    return [score_answer(a, g, "text") for a, g in zip(answers, golds)]


def f1_reward(prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
    """SQuAD token F1 of the final answer (best over accepted answers); 0 without an answer."""
    answers, golds = _answers(completions, kwargs), _golds(kwargs, len(completions))
    return [0.0 if a is None or g is None else token_f1(a, g) for a, g in zip(answers, golds)]


# ---- cost ---------------------------------------------------------------------------------
class PercentileCostNormalizer:
    """Router-R1-style cost normalisation: position of a cost between the low and high
    percentiles of a running window of costs seen so far, clipped to [0, 1]."""

    def __init__(self, window: int = 4096, low_pct: float = 5.0, high_pct: float = 95.0):
        self.window, self.low_pct, self.high_pct = window, low_pct, high_pct
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    @classmethod
    def fixed(cls, costs: Sequence[float]) -> "PercentileCostNormalizer":
        """A normaliser over a fixed set of costs (never updated)."""
        n = cls(window=max(1, len(costs)))
        n.update(costs)
        return n

    def update(self, costs: Sequence[float]) -> None:
        for c in costs:
            self._fifo.append(float(c))
            bisect.insort(self._sorted, float(c))
            if len(self._fifo) > self.window:
                old = self._fifo.popleft()
                del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _pct(self, q: float) -> float:
        s = self._sorted
        if not s:
            return 0.0
        k = (len(s) - 1) * q / 100.0
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    def normalize(self, c: float) -> float:
        lo, hi = self._pct(self.low_pct), self._pct(self.high_pct)
        if hi - lo <= 1e-15:
            return 0.0 if c <= lo else 1.0
        return min(1.0, max(0.0, (c - lo) / (hi - lo)))


def gather_across_ranks(values: Sequence[float]) -> list[float]:
    """Every rank's values, in rank order, on every rank (the values themselves when not
    distributed). Reward functions run on all ranks in the same order inside TRL's scoring,
    so a collective here is safe."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return list(values)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return list(values)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(values))
    return [v for part in parts for v in part]


class CostReward:
    """R_cost = 1 - normalised cost, in [0, 1] (cheaper is better).

    mode "percentile": Router-R1's percentile normalisation. Training batches (`split`
    "train") feed a running window shared by all ranks; every other split is scored
    statelessly against `reference` (fixed costs, e.g. the boundary policies' on the same
    tasks) or, without one, against the scored batch itself. mode "linear": cost / `scale`
    clipped to [0, 1] (`scale` = the cost that earns 0, e.g. the task budget).
    """

    __name__ = "cost_reward"

    def __init__(self, mode: str = "percentile", scale: float | None = None, window: int = 4096, reference: Sequence[float] | None = None):
        if mode not in ("percentile", "linear"):
            raise ValueError(f"rewards.cost.mode: unknown {mode!r}; use 'percentile' or 'linear'")
        if mode == "linear" and not scale:
            raise ValueError("rewards.cost.scale: linear cost normalisation needs a positive scale (USD that earns 0)")
        self.mode, self.scale, self.window = mode, scale, window
        self.reference = None if reference is None else [float(c) for c in reference]
        self.state: dict[str, PercentileCostNormalizer] = {}

    def normalizer(self, split: str) -> PercentileCostNormalizer:
        if split not in self.state:
            self.state[split] = PercentileCostNormalizer(self.window)
        return self.state[split]

    def __call__(self, prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
        costs = [float(c or 0.0) for c in _col(kwargs, "cost", len(completions), 0.0)]
        if self.mode == "linear":
            return [1.0 - min(1.0, max(0.0, c / float(self.scale))) for c in costs]
        split = (kwargs.get("split") or ["train"])[0]
        if split == "train":
            norm = self.normalizer("train")
            norm.update(gather_across_ranks(costs))  # the batch itself is part of the window, so the first batch is scaled too
        else:
            norm = PercentileCostNormalizer.fixed(self.reference if self.reference is not None else costs)
        return [1.0 - norm.normalize(c) for c in costs]


def budget_penalty(prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
    """-1 for an episode that tried to spend beyond its budget (a refused route) or whose
    cost exceeds its budget; 0 otherwise."""
    n = len(completions) or len(kwargs.get("cost") or [])
    over = _col(kwargs, "over_budget", n, 0)
    costs = _col(kwargs, "cost", n, 0.0)
    budgets = _col(kwargs, "budget", n, None)
    return [-1.0 if (o or 0) > 0 or (b is not None and (c or 0.0) > b + 1e-12) else 0.0 for o, c, b in zip(over, costs, budgets)]


# ---- combinations -------------------------------------------------------------------------
class RouterR1Reward:
    """Router-R1's gated reward: -1 on format failure; else (1-alpha)*outcome + alpha*R_cost,
    with R_cost counted only when the outcome is correct (outcome > 0).

    `outcome` is one of the outcome functions above (accuracy by default: EM for text, value
    match for numbers). Pass a `CostReward` to choose the normalisation.
    """

    __name__ = "router_r1_reward"

    def __init__(self, alpha: float = 0.2, outcome: RewardFunc = accuracy_reward, cost: CostReward | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"rewards.alpha must be in [0, 1], got {alpha}")
        self.alpha, self.outcome, self.cost = alpha, outcome, cost or CostReward()

    def __call__(self, prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
        fmt = format_reward(prompts, completions, completion_ids, **kwargs)
        out = self.outcome(prompts, completions, completion_ids, **kwargs)
        cst = self.cost(prompts, completions, completion_ids, **kwargs)
        return [
            -1.0 if f < 1.0 else (1.0 - self.alpha) * o + (self.alpha * c if o > 0 else 0.0)
            for f, o, c in zip(fmt, out, cst)
        ]


OUTCOMES = {"accuracy": accuracy_reward, "exact_match": exact_match_reward, "f1": f1_reward, "success": success_reward}

REWARDS: dict[str, Callable[..., Any]] = {
    "format": lambda **_: format_reward,
    "accuracy": lambda **_: accuracy_reward,
    "success": lambda **_: success_reward,
    "exact_match": lambda **_: exact_match_reward,
    "f1": lambda **_: f1_reward,
    "cost": lambda reference=None, **kw: CostReward(**kw, reference=reference),
    "budget_penalty": lambda **_: budget_penalty,
    "router_r1": lambda reference=None, **kw: RouterR1Reward(
        alpha=kw.get("alpha", 0.2),
        outcome=OUTCOMES[kw.get("outcome", "accuracy")],
        cost=CostReward(kw.get("cost_mode", "percentile"), kw.get("cost_scale"), reference=reference),
    ),
}
_TAKES_REFERENCE = ("cost", "router_r1")

#: the keys each reward spec takes (besides name and weight): anything else is a typo, refused
REWARD_KEYS: dict[str, set[str]] = {
    "format": set(), "accuracy": set(), "success": set(), "exact_match": set(), "f1": set(), "budget_penalty": set(),
    "cost": {"mode", "scale", "window"},
    "router_r1": {"alpha", "outcome", "cost_mode", "cost_scale"},
}


def _check_spec(spec: dict[str, Any], path: str) -> None:
    """Every key known for its reward and every number finite and in range, before training."""
    import math

    from rl_router.errors import ConfigError, check_keys

    name = spec["name"]
    check_keys(spec, REWARD_KEYS[name] | {"name", "weight"}, path)

    def number(key: str, lo: float | None = None, hi: float | None = None, positive: bool = False) -> None:
        if key not in spec or spec[key] is None:
            return
        v = spec[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{path}.{key}", f"expected a finite number, got {v!r}")
        if positive and v <= 0:
            raise ConfigError(f"{path}.{key}", f"must be > 0, got {v}", "USD per task that earns no cost credit, e.g. 0.004")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{path}.{key}", f"must be in [{lo}, {hi}], got {v}")

    number("weight")
    number("alpha", 0.0, 1.0)
    number("cost_scale", positive=True)
    number("scale", positive=True)
    if "window" in spec and (isinstance(spec["window"], bool) or not isinstance(spec["window"], int) or spec["window"] < 1):
        raise ConfigError(f"{path}.window", f"expected a whole number >= 1, got {spec['window']!r}")
    for key, allowed in (("outcome", OUTCOMES), ("cost_mode", ("percentile", "linear")), ("mode", ("percentile", "linear"))):
        if key in spec and spec[key] not in allowed:
            raise ConfigError(f"{path}.{key}", f"unknown {spec[key]!r}", f"use one of {sorted(allowed)}")


def build_rewards(specs: list[dict[str, Any]], path: str = "rewards", *, cost_reference: Sequence[float] | None = None) -> tuple[list[RewardFunc], list[float]]:
    """From a recipe's `rewards:` list (`- {name: router_r1, weight: 1.0, alpha: 0.2}`) to
    TRL's `reward_funcs` and `reward_weights`. `cost_reference`: the fixed costs percentile
    cost rewards score evaluation episodes against (see CostReward)."""
    from rl_router.errors import ConfigError

    funcs, weights = [], []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"{path}[{i}]", "each reward needs a 'name'", f"use one of {sorted(REWARDS)}")
        name = spec["name"]
        if not isinstance(name, str) or name not in REWARDS:
            raise ConfigError(f"{path}[{i}].name", f"unknown reward {name!r}", f"use one of {sorted(REWARDS)}")
        _check_spec(spec, f"{path}[{i}]")
        kw = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        if name in _TAKES_REFERENCE:
            kw["reference"] = cost_reference
        try:
            f = REWARDS[name](**kw)
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"{path}[{i}]", str(e)) from e
        if not hasattr(f, "__name__"):
            f.__name__ = name  # type: ignore[attr-defined]
        funcs.append(f)
        weights.append(float(spec.get("weight", 1.0)))
    return funcs, weights
