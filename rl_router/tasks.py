"""Tasks: what an episode is about, and deterministic train / held-out splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def stable_hash(*parts: str) -> str:
    """A process-independent hash (Python's `hash` is salted per process)."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return h


@dataclass
class Task:
    """One routing task. `gold` is a string or a list of accepted strings."""

    question: str
    gold: str | list[str] | None = None
    answer_type: str = "text"  # number | code | text
    dataset: str = "custom"
    topic: str = "general"
    task_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.task_id:
            self.task_id = stable_hash(self.dataset, self.question)[:16]

    def context(self) -> dict[str, Any]:
        """What a recorded/simulated pool may use to resolve a sub-query to this task (the
        question too: those pools refuse a request whose text does not contain it)."""
        return {"task_id": self.task_id, "question": self.question, "gold": self.gold, "topic": self.topic, "dataset": self.dataset}

    def to_row(self) -> dict[str, Any]:
        """A flat dict for `datasets.Dataset` rows (reward kwargs in TRL)."""
        gold = self.gold if isinstance(self.gold, list) else ([] if self.gold is None else [self.gold])
        return {
            "task_id": self.task_id,
            "question": self.question,
            "gold": gold,
            "answer_type": self.answer_type,
            "dataset": self.dataset,
            "topic": self.topic,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Task":
        return cls(
            question=row["question"],
            gold=row.get("gold"),
            answer_type=row.get("answer_type", "text"),
            dataset=row.get("dataset", "custom"),
            topic=row.get("topic", "general"),
            task_id=row.get("task_id", ""),
        )


def split_tasks(tasks: list[Task], heldout_fraction: float, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """Deterministic split by hashing task ids with the seed: stable across runs and machines."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction must be in [0, 1), got {heldout_fraction}")
    train, held = [], []
    for t in tasks:
        u = int(stable_hash(str(seed), t.task_id)[:8], 16) / 0xFFFFFFFF
        (held if u < heldout_fraction else train).append(t)
    return train, held
