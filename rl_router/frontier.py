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
  beyond its ends (kept for callers that need it).

With N models, the comparison line is the **single-model hull** (`hull`): the best quality
reachable at each cost by sending each task to one fixed model drawn at random from a mix of
single models, i.e. the upper concave envelope of the always-<model> points from the cheapest
model to the best one (its vertices are the non-dominated models a mixture uses). With two
models it is the random cheap/strong line. `above(point, hull)` is a policy's quality minus
the hull's at the same cost.

**Closed curves** (`closed`, `apgr_area`): a curve's area is taken over what any policy can
reach, costs from always-cheapest to always-best, and every curve is first closed with those
two points (a knob sweep or a kNN sweep that never reaches an end would otherwise be held
flat there, which credits a curve for costs it never ran at). APGR = PGR of the closed curve's
mean quality over [cost of always-cheapest, cost of always-best].
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


def non_dominated(points: Mapping[str, Point]) -> list[str]:
    """Names whose point no other point beats (cost <= and quality >=, one of them strictly),
    in cost order: the single models worth considering."""
    names = sorted(points, key=lambda n: (points[n][0], -points[n][1]))
    out = []
    for n in names:
        c, q = points[n]
        if not any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for m, (c2, q2) in points.items() if m != n):
            out.append(n)
    return out


def hull(points: Sequence[Point]) -> list[Point]:
    """The upper concave envelope of `points` from the cheapest point to the best one: the
    quality a random mixture of single models reaches at each cost (see the module docstring).
    Points beyond the best one in cost add nothing (the best is reachable for less)."""
    pts = sorted(set(points), key=lambda p: (p[0], -p[1]))
    if not pts:
        return []
    start = pts[0]
    best = max(pts, key=lambda p: (p[1], -p[0]))
    cand = [p for p in pts if start[0] <= p[0] <= best[0] and p[1] >= start[1]]
    out: list[Point] = []
    for p in cand:
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            # drop the middle point when it lies on or below the segment from out[-2] to p
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                out.pop()
            else:
                break
        if out and p[0] == out[-1][0]:
            continue  # same cost, lower quality (sorted best first)
        out.append(p)
    return out


def closed(curve: Sequence[Point], cheapest: Point, best: Point) -> list[Point]:
    """A curve with the always-cheapest and always-best points added (cost order)."""
    return sorted(list(curve) + [cheapest, best])


def apgr_area(curve: Sequence[Point], cheapest: Point, best: Point, steps: int = 400) -> float:
    """Mean quality of the closed curve over costs [cheapest, best] (linear between points)."""
    lo, hi = cheapest[0], best[0]
    pts = closed(curve, cheapest, best)
    if hi <= lo:
        return interp(pts, lo)
    return sum(interp(pts, lo + (hi - lo) * (i + 0.5) / steps) for i in range(steps)) / steps


def apgr(curve: Sequence[Point], cheapest: Point, best: Point) -> float | None:
    """APGR of a curve (closed with both ends): PGR of its mean quality over the costs
    between always-cheapest and always-best."""
    return pgr(apgr_area(curve, cheapest, best), cheapest[1], best[1])
