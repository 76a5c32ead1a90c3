"""How a policy or a curve compares with the single models: the figures every report gives.

References come from the always-<model> runs on the same held-out tasks: the *cheapest* model
(lowest mean cost) and the *best* one (highest quality, ties to the cheaper), and the
single-model hull between them (`frontier.hull`). Every figure carries a 95% bootstrap
interval in which the policy and all single models are resampled on the same tasks (paired):

- `pgr`: (q - q_cheapest) / (q_best - q_cheapest);
- `above_hull`: quality minus the hull's at the policy's cost (with two models, the random
  cheap/strong line: `above_random_mixture`, kept under that name too);
- against the best single model: `vs_best.quality` (policy minus best, paired), `vs_best.cost`
  (the policy's cost as a share of the best's), and for curves the quality at the best model's
  cost, the cost to reach its quality and the share of its cost saved at equal quality;
- curves: APGR of the closed curve (`frontier.apgr`) with its interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from rl_router.frontier import above, apgr, hull, non_dominated, pgr, point
from rl_router.stats import above_hull_values, curve_apgr_values, hull_apgr_values, interval, paired_difference, pgr_values, statistic_ci, vs_best_values


@dataclass
class References:
    models: list[str]  # sorted by mean cost
    summaries: dict[str, dict[str, Any]]  # always-<model> summaries
    cheapest: str
    best: str
    frontier: list[str]  # non-dominated models, in cost order
    hull: list[tuple[float, float]]

    @property
    def per_task(self) -> list[Mapping[str, Sequence[float]]]:
        return [self.summaries[m]["per_task"] for m in self.models]

    def point(self, m: str) -> tuple[float, float]:
        return point(self.summaries[m])


def references(single: Mapping[str, dict[str, Any]]) -> References:
    """`single`: always-<model> summaries keyed by model name."""
    models = sorted(single, key=lambda m: (single[m]["mean_cost"], m))
    cheapest = models[0]
    best = min(models, key=lambda m: (-single[m]["quality"], single[m]["mean_cost"]))
    pts = {m: point(single[m]) for m in models}
    return References(models, dict(single), cheapest, best, non_dominated(pts), hull(list(pts.values())))


def score_policy(s: dict[str, Any], refs: References, idx: np.ndarray) -> None:
    """Add the comparison figures (module docstring) to one policy's summary, in place."""
    lo, hi = refs.summaries[refs.cheapest], refs.summaries[refs.best]
    p = s["per_task"]
    s["pgr"] = pgr(s["quality"], lo["quality"], hi["quality"])
    s["ci95"]["pgr"] = list(interval(pgr_values(p, lo["per_task"], hi["per_task"], idx)))
    s["above_hull"] = above(point(s), refs.hull)
    s["ci95"]["above_hull"] = statistic_ci(lambda i: above_hull_values(p, refs.per_task, i), idx)["ci95"]
    if len(refs.models) == 2:  # the random cheap/strong line is the hull
        s["above_random_mixture"], s["ci95"]["above_random_mixture"] = s["above_hull"], s["ci95"]["above_hull"]
    s["cost_fraction_of_best"] = s["mean_cost"] / hi["mean_cost"] if hi["mean_cost"] > 0 else None
    s["vs_best"] = {"model": refs.best, "quality": paired_difference(p["quality"], hi["per_task"]["quality"], idx), "cost": paired_difference(p["cost"], hi["per_task"]["cost"], idx)}


def baseline_references(baselines: Mapping[str, dict[str, Any]]) -> References:
    """References from an evaluation's policies (keyed always-<model>, random, ...): its single models."""
    return references({k.removeprefix("always-"): v for k, v in baselines.items() if k.startswith("always-")})


def one_minus_other(s: dict[str, Any], other: dict[str, Any], refs: References, idx: np.ndarray) -> dict[str, Any]:
    """One policy minus another on the same tasks (a router after RL minus its warm start, one
    run minus another): quality, cost, reward and distance above the single-model hull, each a
    mean difference with its 95% bootstrap interval, and the number of tasks."""
    d = paired_vs(s, {"other": other}, refs, idx)["other"]
    d["reward"] = paired_difference(s["per_task"]["reward"], other["per_task"]["reward"], idx)
    d["tasks"] = len(s["per_task"]["quality"])
    return d


def paired_vs(s: dict[str, Any], others: Mapping[str, dict[str, Any]], refs: References, idx: np.ndarray) -> dict[str, Any]:
    """A policy minus each other policy on the same tasks: quality, cost and distance above the hull."""
    p = s["per_task"]
    mine = above_hull_values(p, refs.per_task, idx)
    return {
        b: {"quality": paired_difference(p["quality"], o["per_task"]["quality"], idx), "cost": paired_difference(p["cost"], o["per_task"]["cost"], idx),
            "above_hull": statistic_ci(lambda i, o=o: mine - above_hull_values(o["per_task"], refs.per_task, i), idx)}
        for b, o in others.items()
    }


def score_curve(points: Sequence[dict[str, Any]], refs: References, idx: np.ndarray, *, envelope: bool = False) -> dict[str, Any]:
    """APGR (closed curve, with interval) and the curve against the best single model.
    `envelope`: the points are single models and the curve is their hull (recomputed on every
    resample), not the line through them."""
    per = [p["per_task"] for p in points]
    lo, hi = refs.summaries[refs.cheapest], refs.summaries[refs.best]
    if envelope:
        v = hull_apgr_values(per, lo["per_task"], hi["per_task"], idx)
        value = apgr(hull([point(p) for p in points]), point(lo), point(hi))
    else:
        v = curve_apgr_values(per, lo["per_task"], hi["per_task"], idx)
        value = apgr([point(p) for p in points], point(lo), point(hi))
    out: dict[str, Any] = {"apgr": value, "apgr_ci95": list(interval(v)), "_apgr_values": v}
    vb = vs_best_values(per if not envelope else [refs.summaries[m]["per_task"] for m in refs.frontier], hi["per_task"], idx)
    reach = vb["cost_to_reach"]
    out["vs_best"] = {
        "model": refs.best,
        "quality_at_its_cost": {"value": float(vb["quality_at_its_cost"][0]), "ci95": list(interval(vb["quality_at_its_cost"]))},
        "cost_to_reach": {"value": None if np.isnan(reach[0]) else float(reach[0]), "ci95": list(interval(reach)), "reached_share": float(np.isfinite(reach).mean())},
        "cost_saved": {"value": None if np.isnan(vb["cost_saved"][0]) else float(vb["cost_saved"][0]), "ci95": list(interval(vb["cost_saved"]))},
    }
    return out
