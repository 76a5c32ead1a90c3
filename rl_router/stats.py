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


def curve_apgr_values(points: Sequence[Mapping[str, Sequence[float]]], cheap: Mapping[str, Sequence[float]], strong: Mapping[str, Sequence[float]], idx: np.ndarray, steps: int = 400) -> np.ndarray:
    """Per resample: the APGR of a cost-quality curve whose points are policies run on the same
    tasks (`points[k]` holds per-task `quality` and `cost`): mean quality over costs
    [0, always-strong's cost] (linear between points, flat beyond the ends, as
    `frontier.area_under`), as a PGR between always-cheap and always-strong. Every point and
    both boundaries are resampled together, so differences between curves are paired."""
    mean = lambda v, f: np.asarray(v[f], dtype=float)[idx].mean(axis=1)  # noqa: E731
    C = np.stack([mean(p, "cost") for p in points])  # (points, resamples)
    Q = np.stack([mean(p, "quality") for p in points])
    qc, qs, cmax = mean(cheap, "quality"), mean(strong, "quality"), mean(strong, "cost")
    out = np.full(idx.shape[0], np.nan)
    grid = (np.arange(steps) + 0.5) / steps
    for r in range(idx.shape[0]):
        gap = qs[r] - qc[r]
        if cmax[r] <= 0 or abs(gap) < 1e-12:
            continue
        order = np.argsort(C[:, r], kind="stable")
        area = np.interp(cmax[r] * grid, C[order, r], Q[order, r]).mean()
        out[r] = (area - qc[r]) / gap
    return out


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
