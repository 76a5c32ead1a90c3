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
        "behaviour": behaviour(episodes),
    }


def behaviour(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """What a multi-call router does with the replies it reads: the share of episodes that make
    a second call, and among those whose first two replies both state an answer, how often a
    third call follows when the two agree and when they disagree (an agreement cascade
    escalates exactly on disagreement). Counts are given beside the rates. Two replies agree
    when their extracted final answers are the same string: exact for MMLU-Pro's letters; on
    free-form answers (GSM8K's "18" and "18.0") it counts some agreements as disagreements."""
    n = len(episodes)
    ok = [[c for c in (e.get("trace") or []) if not c.get("error")] for e in episodes]
    second = sum(1 for calls in ok if len(calls) >= 2)
    agree = disagree = esc_agree = esc_disagree = 0
    for calls in ok:
        if len(calls) < 2 or not calls[0].get("final") or not calls[1].get("final"):
            continue
        same = calls[0]["final"] == calls[1]["final"]
        third = len(calls) >= 3
        agree += same
        disagree += not same
        esc_agree += same and third
        esc_disagree += (not same) and third
    return {
        "second_call_rate": second / n if n else 0.0,
        "first_two_agree": agree,
        "first_two_disagree": disagree,
        "escalation_rate_when_agree": esc_agree / agree if agree else None,
        "escalation_rate_when_disagree": esc_disagree / disagree if disagree else None,
    }
