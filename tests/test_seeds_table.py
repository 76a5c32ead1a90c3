"""scripts/seeds.py's RL table: a seed run without wall-time / memory records (made in pieces,
e.g. a warm start then `train --resume`) shows "-" there, not a measured-looking 0.0."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("seeds_script", ROOT / "scripts" / "seeds.py")
seeds = importlib.util.module_from_spec(spec)
assert spec.loader is not None
spec.loader.exec_module(seeds)


def _row(seed: int, **extra) -> dict:
    fig = {"mean": 0.1, "ci95": [0.05, 0.15]}
    return {"seed": seed, "rl_minus_start": {k: dict(fig) for k in ("above_hull", "reward", "quality", "cost")}, "steps": 20, "kept_step": 20, "rl_episodes": 1280, "rl_distinct_tasks": 160, **extra}


def test_missing_wall_and_memory_show_a_dash_and_recorded_ones_their_value():
    lines = seeds.rl_table([_row(0, wall_s=None, max_rss_mb=None), _row(1, wall_s=3484.0, max_rss_mb=17306.0)], {})
    assert lines[2].endswith("| -, - |"), lines[2]
    assert lines[3].endswith("| 58.1 min, 16.9 GB |"), lines[3]
    assert "0.0 min" not in "\n".join(lines)
