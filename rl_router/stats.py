"""Bootstrap intervals over tasks: how much an evaluation figure would move on other tasks.

Every figure we report is a mean over held-out tasks, so it carries sampling noise of the
order 1/sqrt(n). `bootstrap` resamples tasks with replacement (the same resampled tasks for
every policy: a *paired* bootstrap) and recomputes a statistic; the 2.5th and 97.5th
percentiles of its values are the 95% interval. Paired, because a router and a baseline
answered the same tasks: the interval of their difference is much narrower than the two
intervals side by side, and it is the one that says whether the router is better.

Deterministic: a fixed seed, so the same episodes give the same intervals on every machine.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

N_RESAMPLES = 2000


def resample_index(n: int, resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) task indices drawn with replacement; row 0 is the tasks themselves."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    idx[0] = np.arange(n)
    return idx


def interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values[np.isfinite(values)], [2.5, 97.5]) if np.isfinite(values).any() else (float("nan"), float("nan"))
    return float(lo), float(hi)


def mean_ci(per_task: Sequence[float], idx: np.ndarray) -> tuple[float, float]:
    x = np.asarray(per_task, dtype=float)
    return interval(x[idx].mean(axis=1))


def line_quality(c: np.ndarray, cheap: tuple[np.ndarray, np.ndarray], strong: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Quality of the random cheap/strong mixture at cost c (flat beyond its ends), per resample."""
    (cc, qc), (cs, qs) = cheap, strong
    span = np.where(np.abs(cs - cc) > 1e-15, cs - cc, 1.0)
    t = np.clip((c - cc) / span, 0.0, 1.0)
    return qc + t * (qs - qc)


def above_line_values(policy: Mapping[str, Sequence[float]], cheap: Mapping[str, Sequence[float]], strong: Mapping[str, Sequence[float]], idx: np.ndarray) -> np.ndarray:
    """Per resample: the policy's quality minus the random line's at the policy's cost.
    Each argument holds per-task `quality` and `cost` lists (the same tasks, in order)."""
    m = {k: {f: np.asarray(v[f], dtype=float)[idx].mean(axis=1) for f in ("quality", "cost")} for k, v in (("p", policy), ("c", cheap), ("s", strong))}
    return m["p"]["quality"] - line_quality(m["p"]["cost"], (m["c"]["cost"], m["c"]["quality"]), (m["s"]["cost"], m["s"]["quality"]))


def pgr_values(policy: Mapping[str, Sequence[float]], cheap: Mapping[str, Sequence[float]], strong: Mapping[str, Sequence[float]], idx: np.ndarray) -> np.ndarray:
    q = {k: np.asarray(v["quality"], dtype=float)[idx].mean(axis=1) for k, v in (("p", policy), ("c", cheap), ("s", strong))}
    gap = q["s"] - q["c"]
    return np.where(np.abs(gap) > 1e-12, (q["p"] - q["c"]) / np.where(np.abs(gap) > 1e-12, gap, 1.0), np.nan)


def _means(per_task: Mapping[str, Sequence[float]], f: str, idx: np.ndarray) -> np.ndarray:
    return np.asarray(per_task[f], dtype=float)[idx].mean(axis=1)


def hull_at(c: np.ndarray, C: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Per resample r: the single-model hull (frontier.hull) of the points (C[m, r], Q[m, r])
    at cost c[r], flat beyond its ends."""
    from rl_router.frontier import hull

    out = np.empty(len(c))
    for r in range(len(c)):
        xs, ys = zip(*hull(list(zip(C[:, r].tolist(), Q[:, r].tolist()))))
        out[r] = np.interp(c[r], xs, ys)
    return out


def model_points(models: Sequence[Mapping[str, Sequence[float]]], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, Q): every single model's mean cost and quality per resample, shape (models, resamples)."""
    return np.stack([_means(m, "cost", idx) for m in models]), np.stack([_means(m, "quality", idx) for m in models])


def above_hull_values(policy: Mapping[str, Sequence[float]], models: Sequence[Mapping[str, Sequence[float]]], idx: np.ndarray) -> np.ndarray:
    """Per resample: the policy's quality minus the single-model hull's at the policy's cost,
    the policy and every model resampled on the same tasks (paired). With two models this is
    `above_line_values`."""
    C, Q = model_points(models, idx)
    return _means(policy, "quality", idx) - hull_at(_means(policy, "cost", idx), C, Q)


def curve_apgr_values(points: Sequence[Mapping[str, Sequence[float]]], cheap: Mapping[str, Sequence[float]], strong: Mapping[str, Sequence[float]], idx: np.ndarray, steps: int = 400) -> np.ndarray:
    """Per resample: the APGR of a cost-quality curve whose points are policies run on the same
    tasks (`points[k]` holds per-task `quality` and `cost`), as `frontier.apgr`: the curve
    closed with the always-cheapest (`cheap`) and always-best (`strong`) points, its mean
    quality over costs [cheapest's, best's] (linear between points), as a PGR between the two.
    Every point and both ends are resampled together, so differences between curves are paired."""
    C = np.stack([_means(p, "cost", idx) for p in list(points) + [cheap, strong]])  # (points, resamples)
    Q = np.stack([_means(p, "quality", idx) for p in list(points) + [cheap, strong]])
    qc, qs, clo, chi = _means(cheap, "quality", idx), _means(strong, "quality", idx), _means(cheap, "cost", idx), _means(strong, "cost", idx)
    out = np.full(idx.shape[0], np.nan)
    grid = (np.arange(steps) + 0.5) / steps
    for r in range(idx.shape[0]):
        gap = qs[r] - qc[r]
        if chi[r] <= clo[r] or abs(gap) < 1e-12:
            continue
        order = np.lexsort((Q[:, r], C[:, r]))
        area = np.interp(clo[r] + (chi[r] - clo[r]) * grid, C[order, r], Q[order, r]).mean()
        out[r] = (area - qc[r]) / gap
    return out


def hull_apgr_values(models: Sequence[Mapping[str, Sequence[float]]], cheap: Mapping[str, Sequence[float]], strong: Mapping[str, Sequence[float]], idx: np.ndarray, steps: int = 400) -> np.ndarray:
    """Per resample: the APGR of the single-model hull itself (its envelope recomputed on every
    resample), on the same terms as `curve_apgr_values`."""
    from rl_router.frontier import hull

    C, Q = model_points(models, idx)
    qc, qs, clo, chi = _means(cheap, "quality", idx), _means(strong, "quality", idx), _means(cheap, "cost", idx), _means(strong, "cost", idx)
    out = np.full(idx.shape[0], np.nan)
    grid = (np.arange(steps) + 0.5) / steps
    for r in range(idx.shape[0]):
        gap = qs[r] - qc[r]
        if chi[r] <= clo[r] or abs(gap) < 1e-12:
            continue
        pts = hull(list(zip(C[:, r].tolist(), Q[:, r].tolist())) + [(clo[r], qc[r]), (chi[r], qs[r])])
        xs, ys = zip(*pts)
        out[r] = (np.interp(clo[r] + (chi[r] - clo[r]) * grid, xs, ys).mean() - qc[r]) / gap
    return out


def vs_best_values(points: Sequence[Mapping[str, Sequence[float]]], best: Mapping[str, Sequence[float]], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample, a policy (one point) or a curve (several) against the best single model:
    `quality_at_its_cost` (the curve's quality at the best model's cost minus the best
    model's quality; flat beyond the curve's ends), `cost_to_reach` (the least cost at which the
    curve reaches the best model's quality, NaN when it does not) and `cost_saved` (1 -
    cost_to_reach / the best model's cost: the share of its cost saved at equal quality)."""
    from rl_router.frontier import cost_to_reach

    C = np.stack([_means(p, "cost", idx) for p in points])
    Q = np.stack([_means(p, "quality", idx) for p in points])
    cb, qb = _means(best, "cost", idx), _means(best, "quality", idx)
    at, reach = np.empty(idx.shape[0]), np.full(idx.shape[0], np.nan)
    for r in range(idx.shape[0]):
        order = np.lexsort((Q[:, r], C[:, r]))
        at[r] = np.interp(cb[r], C[order, r], Q[order, r]) - qb[r]
        c = cost_to_reach(list(zip(C[:, r].tolist(), Q[:, r].tolist())), qb[r] - 1e-12)
        reach[r] = np.nan if c is None else c
    return {"quality_at_its_cost": at, "cost_to_reach": reach, "cost_saved": 1.0 - reach / np.where(cb > 0, cb, np.nan)}


def paired_difference(a: Sequence[float], b: Sequence[float], idx: np.ndarray) -> dict[str, float]:
    """Mean of a - b over tasks, its 95% interval and whether the interval excludes 0."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    lo, hi = mean_ci(d, idx)
    return {"mean": float(d.mean()), "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}


def statistic_ci(stat: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> dict[str, float | list[float]]:
    """A vectorised statistic of the resampled tasks: its value on the tasks themselves and its 95% interval."""
    v = stat(idx)
    lo, hi = interval(v)
    return {"value": float(v[0]), "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0)}


def seed_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean and spread over training seeds (a t-interval for the mean: few seeds)."""
    from math import sqrt

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return {"n": n, "mean": float(x.mean()) if n else float("nan")}
    t975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(n, 1.96)
    half = t975 * x.std(ddof=1) / sqrt(n)
    return {"n": n, "mean": float(x.mean()), "sd": float(x.std(ddof=1)), "min": float(x.min()), "max": float(x.max()), "ci95": [float(x.mean() - half), float(x.mean() + half)]}
