"""Summaries of episodes: quality, cost, routes, call shares, error and budget rates."""

from __future__ import annotations

from statistics import mean
from typing import Any


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    if not episodes:
        return {"episodes": 0}
    n = len(episodes)
    calls: dict[str, int] = {}
    for e in episodes:
        for m, k in (e.get("calls") or {}).items():
            calls[m] = calls.get(m, 0) + k
    total_calls = sum(calls.values())
    quality = mean(float(e.get("quality") or 0.0) for e in episodes)
    cost = mean(float(e.get("cost") or 0.0) for e in episodes)
    return {
        "episodes": n,
        "quality": quality,
        "mean_cost": cost,
        "total_cost": sum(float(e.get("cost") or 0.0) for e in episodes),
        "quality_per_dollar": quality / cost if cost > 0 else None,
        "routes_per_task": mean(float(e.get("n_routes") or 0) for e in episodes),
        "answered_rate": mean(1.0 if e.get("answer") is not None else 0.0 for e in episodes),
        "format_error_rate": mean(1.0 if e.get("format_error") else 0.0 for e in episodes),
        "budget_violation_rate": mean(1.0 if (e.get("over_budget") or 0) > 0 else 0.0 for e in episodes),
        "budget_exceeded_rate": mean(1.0 if e.get("budget") is not None and float(e.get("cost") or 0.0) > float(e["budget"]) + 1e-12 else 0.0 for e in episodes),
        "calls_per_task": {m: k / n for m, k in sorted(calls.items())},
        "pool_error_rate": mean(1.0 if (e.get("pool_errors") or 0) > 0 else 0.0 for e in episodes),
        "call_share": {m: (k / total_calls if total_calls else 0.0) for m, k in sorted(calls.items())},
    }
