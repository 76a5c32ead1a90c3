"""Cost-quality frontiers and the one-number comparisons built on them.

A *point* is (mean cost per task in USD, quality in [0, 1]). Curves:

- random mixture: a router that sends a fraction p of tasks to the strongest model at
  random and the rest to the cheapest traces the straight line between the two boundary
  points. Anything below it is worse than chance.
- oracle frontier: with per-task outcomes of every pool model, start from the cheapest
  model on every task and upgrade tasks one by one to the cheapest model that solves them,
  cheapest upgrade first: the best quality reachable at each cost by per-task routing.

One-number figures, in the spirit of RouteLLM's APGR / CPT (Ong et al., 2024), computed by
our own code on costs in dollars rather than on "% calls to the strong model":

- `pgr(q)`: performance gap recovered, (q - q_cheap) / (q_strong - q_cheap);
- `cost_to_reach(curve, target)`: the least cost at which a curve (linear between its
  points) reaches `target` quality; with target = PGR 50% this is RouteLLM's CPT(50%);
- `area_under(curve, c_max)`: mean quality over costs [0, c_max] with the curve held flat
  beyond its ends: a router whose curve lies higher everywhere has a larger area; as a PGR
  (`pgr(area)`) it is our APGR.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

Point = tuple[float, float]


def point(summary: Mapping[str, Any]) -> Point:
    """A policy's summary (metrics.summarize) as a point on the cost-quality plane."""
    return (summary["mean_cost"], summary["quality"])


def random_mixture(cheap: Point, strong: Point, n: int = 11) -> list[Point]:
    return [(cheap[0] + p * (strong[0] - cheap[0]), cheap[1] + p * (strong[1] - cheap[1])) for p in (i / (n - 1) for i in range(n))]


def oracle_frontier(outcomes: dict[str, list[tuple[bool, float]]]) -> list[Point]:
    """`outcomes[model][i]` = (success, cost) of always-`model` on task i."""
    models = list(outcomes)
    n = len(outcomes[models[0]])
    if n == 0:
        return []
    mean_cost = {m: sum(c for _, c in outcomes[m]) / n for m in models}
    base = min(models, key=lambda m: mean_cost[m])
    cost = sum(c for _, c in outcomes[base])
    solved = sum(1 for s, _ in outcomes[base] if s)
    upgrades = []
    for i in range(n):
        if outcomes[base][i][0]:
            continue
        fixes = [outcomes[m][i][1] for m in models if outcomes[m][i][0]]
        if fixes:
            upgrades.append(min(fixes) - outcomes[base][i][1])
    pts = [(cost / n, solved / n)]
    for extra in sorted(upgrades):
        cost += extra
        solved += 1
        pts.append((cost / n, solved / n))
    return pts


def interp(curve: Sequence[Point], c: float) -> float:
    """Quality of a curve at cost c (linear between points, flat beyond the ends)."""
    pts = sorted(curve)
    if c <= pts[0][0]:
        return pts[0][1]
    for (c0, q0), (c1, q1) in zip(pts, pts[1:]):
        if c <= c1:
            return q0 if c1 == c0 else q0 + (q1 - q0) * (c - c0) / (c1 - c0)
    return pts[-1][1]


def above(point: Point, curve: Sequence[Point], tol: float = 1e-9) -> float:
    """How far a point lies above a curve at its own cost (negative: below)."""
    return point[1] - interp(curve, point[0]) - tol


def pgr(q: float, q_cheap: float, q_strong: float) -> float | None:
    gap = q_strong - q_cheap
    return None if abs(gap) < 1e-12 else (q - q_cheap) / gap


def cost_to_reach(curve: Sequence[Point], target: float) -> float | None:
    pts = sorted(curve)
    best = None
    for (c0, q0), (c1, q1) in zip([pts[0]] + pts, pts):
        if q1 >= target:
            c = c1 if q1 == q0 or q0 >= target else c0 + (c1 - c0) * (target - q0) / (q1 - q0)
            best = c if best is None else min(best, c)
    return best


def area_under(curve: Sequence[Point], c_max: float, steps: int = 400) -> float:
    if c_max <= 0 or not curve:
        return 0.0
    return sum(interp(curve, c_max * (i + 0.5) / steps) for i in range(steps)) / steps
