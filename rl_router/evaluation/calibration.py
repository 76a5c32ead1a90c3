"""`rl-router calibrate`: the cost knob's setting that hits a target on real traffic.

RouteLLM users keep asking what a threshold means on their traffic. Here the answer is
measured: the router runs greedy on validation tasks (set aside from training by
`data.validation_fraction`) at a grid of route biases in one pass (the decisions are made by
name and episodes fork where the biases disagree: rollout/names.py), then at a finer grid
inside the bracket around the target, and the bias whose mean cost per task, or share of
tasks that call the strongest model, is closest to the target is kept. The setting is written beside the weights (`route_bias.json`), where
`eval`, `serve` and `export` read it, so what is evaluated is what is served.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from rl_router.errors import ConfigError

CALIBRATION_FILE = "route_bias.json"


def read_route_bias(folder: str | Path | None) -> dict[str, Any] | None:
    """The calibrated setting kept beside a model's weights, or None."""
    if folder is None:
        return None
    f = Path(folder) / CALIBRATION_FILE
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
        float(rec["route_bias"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(str(f), f"not a calibration record ({type(e).__name__}: {e})", "run rl-router calibrate again, or delete the file") from None
    return rec


def write_route_bias(folder: Path, record: dict[str, Any]) -> Path:
    f = folder / CALIBRATION_FILE
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, f)
    return f


def strong_calls(episodes: list[dict[str, Any]], strong: str) -> list[float]:
    """Per task: 1 if the episode called `strong` (the strongest model) at least once."""
    return [1.0 if any(c.get("model") == strong and not c.get("error") for c in e.get("trace") or []) else 0.0 for e in episodes]


def knob_summary(ev: Any, eps: list[dict[str, Any]], bias: float, strong: str) -> dict[str, Any]:
    s = ev.summarize(eps)
    share = strong_calls(eps, strong)
    s["strong_share"] = sum(share) / max(1, len(share))
    s["strong_per_task"] = share
    s["route_bias"] = bias
    return s


def knob_point(ev: Any, model: Any, tok: Any, recipe: Any, bias: float, strong: str, name: str | None = None) -> dict[str, Any]:
    """The router, greedy, at one route bias: its summary plus the strong-call share."""
    from rl_router.evaluation.evaluator import router_policy

    eps = ev.episodes(name or f"bias {bias:+g}", router_policy(model, tok, recipe, greedy=True, route_bias=bias, pool=ev.pool))
    return knob_summary(ev, eps, bias, strong)


def knob_points(ev: Any, model: Any, tok: Any, recipe: Any, biases: list[float], strong: str, name: str = "knob sweep") -> dict[float, dict[str, Any]]:
    """The router, greedy, at every bias from one pass (episodes fork where biases disagree)."""
    from rl_router.evaluation.evaluator import router_policy

    biases = sorted(set(float(b) for b in biases))
    eps = ev.episodes_at_biases(name, router_policy(model, tok, recipe, greedy=True, pool=ev.pool, biases=biases), biases)
    return {b: knob_summary(ev, eps[b], b, strong) for b in biases}


#: the first pass's biases (logit units): dense near 0, where a trained router's margins lie
GRID = (-32.0, -16.0, -8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def search_bias(measure: Callable[[list[float]], dict[float, float]], target: float, *, grid: tuple[float, ...] = GRID, refine: int = 8) -> tuple[float, dict[float, float], str | None]:
    """(bias, {bias: value}, note) for a measure that grows with the bias (cost and strong-call
    share do: a larger bias only makes costlier names likelier). `measure(biases)` runs them
    all in one pass; a second pass puts `refine` biases inside the bracket around the target.
    The bias returned is the tried one closest to the target (ties: the smaller |bias|), and
    the note describes that bias, never another."""
    values = dict(measure(list(grid)))
    lo_b, hi_b = min(values), max(values)
    inside = [(a, b) for a, b in zip(sorted(values), sorted(values)[1:]) if values[a] <= target <= values[b] and values[a] != values[b]]
    if inside and refine > 0:
        a, b = inside[0]
        values.update(measure([a + (b - a) * (i + 1) / (refine + 1) for i in range(refine)]))
    best = min(values, key=lambda x: (abs(values[x] - target), abs(x)))
    note = None
    if target < min(values.values()) - 1e-12:
        note = f"the target {target:g} is below what the router does at any bias (at least {min(values.values()):g}, from bias {lo_b:g}): bias {best:g} is the closest setting"
    elif target > max(values.values()) + 1e-12:
        note = f"the target {target:g} is above what the router does at any bias (at most {max(values.values()):g}, up to bias {hi_b:g}): bias {best:g} is the closest setting"
    elif values[best] != target:
        below = max((x for x in values if values[x] < target), default=None)  # the bracket's two nearest biases
        above = min((x for x in values if values[x] > target), default=None)
        note = (f"the target {target:g} lies between bias {below:g} ({values[below]:g}) and {above:g} ({values[above]:g}); bias {best:g} ({values[best]:g}) is the closest tried"
                if below is not None and above is not None else f"bias {best:g} ({values[best]:g}) is the closest tried")
    return best, values, note


def calibrate(recipe: Any, target: str, *, cost: float | None = None, strong_share: float | None = None, split: str = "validation", n: int | None = None,
              iters: int = 8, batch_size: int = 32, progress: Callable[[str, int], None] | None = None, write: bool = True) -> dict[str, Any]:
    """Find the route bias that hits `cost` (mean $ per task) or `strong_share` (share of tasks
    calling the strongest model) on `split` tasks, and write it beside the router's weights."""
    from rl_router.evaluation.evaluator import EvalOptions, Evaluator
    from rl_router.models import load_checkpoint, resolve_checkpoint
    from rl_router.recipe import validate_against_pool
    from rl_router.rollout.names import cost_weights
    from rl_router.task_sources import check_validation_tasks, recipe_pool, recipe_splits

    if (cost is None) == (strong_share is None):
        raise ConfigError("--target-cost / --target-strong-share", "give exactly one target", "e.g. --target-strong-share 0.3, or --target-cost 0.002 ($ per task)")
    if strong_share is not None and not 0.0 <= strong_share <= 1.0:
        raise ConfigError("--target-strong-share", f"{strong_share} is not a share", "use a number in [0, 1]")
    if cost is not None and cost < 0:
        raise ConfigError("--target-cost", f"{cost} is negative", "give dollars per task, e.g. 0.002")
    if split not in ("validation", "train", "heldout"):
        raise ConfigError("--split", f"unknown {split!r}", "use validation (default), train or heldout")
    ckpt = resolve_checkpoint(target)
    if ckpt is None:
        raise ConfigError("target", f"{target!r} is not a model folder or a training output dir", "e.g. rl-router calibrate outputs/quickstart --target-strong-share 0.3")
    pool = recipe_pool(recipe)
    train, val, held = recipe_splits(recipe, pool)
    tasks = check_validation_tasks(recipe, val) if split == "validation" else train if split == "train" else held
    tasks = tasks[:n] if n else tasks
    _cheap, _strong = validate_against_pool(recipe, pool, tasks)
    weights = cost_weights(pool)
    strong = pool.strongest().name  # "strong share": tasks that call the best model (the costliest one, with two models)
    model, tok = load_checkpoint(ckpt, recipe)
    ev = Evaluator(recipe, pool, tok, tasks, options=EvalOptions(batch_size=batch_size), progress=progress)
    ev.run_single_models()  # the cost reference
    key, goal = ("mean_cost", cost) if cost is not None else ("strong_share", strong_share)
    points: dict[float, dict[str, Any]] = {}

    def measure(biases: list[float]) -> dict[float, float]:
        new = knob_points(ev, model, tok, recipe, biases, strong, name=f"calibrate ({len(biases)} biases, one pass)")
        points.update(new)
        return {b: float(p[key]) for b, p in new.items()}

    bias, tried, note = search_bias(measure, float(goal), refine=iters)
    got = points[bias]
    record = {
        "route_bias": bias,
        "target": {key: goal},
        "achieved": {"mean_cost": got["mean_cost"], "strong_share": got["strong_share"], "quality": got["quality"], "ci95": {"quality": got["ci95"]["quality"], "mean_cost": got["ci95"]["mean_cost"]}},
        "split": split,
        "tasks": len(tasks),
        "weights": weights,
        "tried": [{"route_bias": b, "mean_cost": points[b]["mean_cost"], "strong_share": points[b]["strong_share"], "quality": points[b]["quality"]} for b in sorted(tried)],
        "note": note,
    }
    if write:
        record["file"] = str(write_route_bias(ckpt, record))
    return record
