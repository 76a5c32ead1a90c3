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
    group: str = ""  # split unit: tasks of one group (MMLU-Pro: one question text under different options) stay on one side of every split; default the task itself

    def __post_init__(self) -> None:
        if not self.task_id:
            self.task_id = stable_hash(self.dataset, self.question)[:16]
        if not self.group:
            self.group = self.task_id

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


def split_tasks(tasks: list[Task], heldout_fraction: float, seed: int = 0, *, by: str = "task") -> tuple[list[Task], list[Task]]:
    """Deterministic split by hashing task groups (`Task.group`: the task id unless tasks share
    a question, as MMLU-Pro's reused question texts do) or, with `by="topic"`, topic names,
    with the seed: stable across runs and machines. By topic, every held-out task comes from a topic
    (an MMLU subject) that no train task has: the test of a router that must generalise to
    traffic it never saw, not only to new questions on familiar subjects."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if by not in ("task", "topic"):
        raise ValueError(f"data.heldout_by must be 'task' or 'topic', got {by!r}")
    train, held = [], []
    for t in tasks:
        key = t.group if by == "task" else f"topic:{t.dataset}:{t.topic}"
        u = int(stable_hash(str(seed), key)[:8], 16) / 0xFFFFFFFF
        (held if u < heldout_fraction else train).append(t)
    return train, held


def split_validation(train: list[Task], fraction: float, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """(train, validation): a seeded hash share of the train split set aside before training,
    so `rl-router calibrate` tunes the cost knob on tasks the router never trained on and
    the held-out tasks stay untouched for the final figures."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in [0, 1), got {fraction}")
    keep, val = [], []
    for t in train:
        u = int(stable_hash(str(seed), "validation", t.group)[:8], 16) / 0xFFFFFFFF
        (val if u < fraction else keep).append(t)
    return keep, val
