"""Boundary outcomes as data: per task, did always-cheapest and always-strongest succeed, at
what cost, and which class that makes (both / strong_only / cheap_only / neither); the JSON
file training writes (`OUT/boundaries.json`, episodes beside it) and what reads it back
(BoPO's reward, the warm start on `--resume`, `eval`'s kNN fit)."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CLASSES = ("both", "strong_only", "cheap_only", "neither")


@dataclass
class BoundaryRecord:
    task_id: str
    cheap_model: str
    strong_model: str
    cheap_success: bool
    cheap_cost: float
    strong_success: bool
    strong_cost: float

    @property
    def klass(self) -> str:
        return classify(self.cheap_success, self.strong_success)

    @property
    def solvable(self) -> bool:
        return self.cheap_success or self.strong_success


def classify(cheap_success: bool, strong_success: bool) -> str:
    if cheap_success and strong_success:
        return "both"
    if strong_success:
        return "strong_only"
    if cheap_success:
        return "cheap_only"
    return "neither"


def class_counts(records: dict[str, BoundaryRecord]) -> dict[str, int]:
    out = {k: 0 for k in CLASSES}
    for r in records.values():
        out[r.klass] += 1
    return out


def save_boundaries(path: str | Path, records: dict[str, BoundaryRecord], episodes: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """Write the records (JSON, atomically) and, if given, the boundary episodes beside them
    (`<stem>_episodes.jsonl.gz`: what the warm start is synthesised from), so a resumed run
    or a later eval reuses them instead of paying for the calls again."""
    path = Path(path)
    _atomic_write(path, json.dumps({"classes": class_counts(records), "records": [asdict(r) for r in records.values()]}, indent=1).encode())
    if episodes is not None:
        keep = ("prompt_ids", "completion_ids", "env_mask", "policy_turns", "quality", "cost", "calls", "steps", "format_error", "task_id")
        lines = [json.dumps({"task_id": tid, "role": role, "episode": {k: ep[k] for k in keep if k in ep}}) for tid, eps in episodes.items() for role, ep in eps.items()]
        _atomic_write(episodes_path(path), gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


def episodes_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "_episodes.jsonl.gz")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_boundaries(path: str | Path) -> dict[str, BoundaryRecord]:
    d = json.loads(Path(path).read_text())
    return {r["task_id"]: BoundaryRecord(**r) for r in d["records"]}


def load_boundary_episodes(path: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    with gzip.open(episodes_path(path), "rt") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                out.setdefault(d["task_id"], {})[d["role"]] = d["episode"]
    return out


def class_costs(records: dict[str, BoundaryRecord]) -> list[dict[str, Any]]:
    """Per class: how many tasks, their share, and each boundary's mean cost on them."""
    n = max(1, len(records))
    rows = []
    for k, v in class_counts(records).items():
        rs = [x for x in records.values() if x.klass == k]
        m = max(1, len(rs))
        rows.append({"class": k, "tasks": v, "share": v / n, "cheap_cost": sum(x.cheap_cost for x in rs) / m, "strong_cost": sum(x.strong_cost for x in rs) / m})
    return rows
