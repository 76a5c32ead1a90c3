"""RecordedPool: replay real per-model answers, verdicts and costs from a routing dataset.

The offline default. A routing dataset records, for each prompt, what every pool model
answered and whether it was right. Replaying it lets a router be trained and evaluated
with real model behaviour and no network.

Resolving sub-queries: a router writes free-form sub-queries, which rarely equal a
recorded prompt. The environment sends the task with every sub-query
(`prompts.pool_messages`), so the pool finds the task from the request text alone: (1) the
recorded prompt the request starts with (after whitespace normalisation), else (2) the
episode's task given in `context`; either way the request must contain that task's prompt
(a model cannot answer a task it was not shown), else an error completion. So a recorded
pool answers "the question of this episode"; it cannot answer arbitrary decompositions,
which only live pools can. Over HTTP (`PoolServer`) it needs no context at all.

Billing: prompt tokens are max(tokens sent, tokens of the recorded prompt) by the chars/4
rule (the model needed the whole question to give the recorded answer), completion tokens
are chars/4 of the recorded response; cost uses the card's prices.

Correctness-only data (MMLU in RouteLLM has verdicts, no responses, no gold letter): each
task gets a gold letter among its choices (A-D unless the prompt lists others), drawn by a
hash of the task id; a model recorded correct replies "The answer is <gold>.", a model
recorded wrong replies with one of the other letters, drawn by a hash of (task, model). So
every reply has the same form and the same letter distribution whatever its verdict: the
router cannot tell from the text which is right (a test holds a reply-text classifier at
chance), two wrong models agree as often as two random wrong letters do, and the outcome is
the verdict of the model whose answer it adopts.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import gzip
import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from rl_router.tasks import Task, stable_hash
from rl_router.pools.base import TASK_NOT_SHOWN, Completion, Message, ModelCard, Pool, approx_tokens, last_user_text, messages_tokens, shows_task


@dataclass
class RecordedAnswer:
    correct: bool
    response: str
    cost: float | None = None  # recorded cost in USD, if the dataset has one


@dataclass
class RecordedTask:
    task: Task
    prompt: str
    answers: dict[str, RecordedAnswer]  # keyed by pool model name


# Default cards for the RouteLLM recordings. Prices: USD per 1M tokens, list prices around
# the data's date (see ../shared/data/MANIFEST.md). Latencies are nominal, not measured.
ROUTELLM_MODELS = {
    "mixtral-8x7b": {
        "column": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "price_in": 0.60,
        "price_out": 0.60,
        "latency_ms": 600.0,
        "context": 32768,
        "strengths": "cheap open-weight mixture-of-experts; decent at grade-school math and general knowledge",
    },
    "gpt-4-1106": {
        "column": "gpt-4-1106-preview",
        "price_in": 10.00,
        "price_out": 30.00,
        "latency_ms": 2500.0,
        "context": 128000,
        "strengths": "strong closed model; best at multi-step math and expert knowledge, ~17x the price",
    },
}


def _norm(s: str) -> str:
    return " ".join(s.split()).lower()


_CHOICE_LINE = re.compile(r"^\s*([A-Z])[.)]\s", re.M)


def choice_letters(prompt: str) -> list[str]:
    """The option letters a multiple-choice prompt lists ("A. ...", "B) ..."), else A-D."""
    found = list(dict.fromkeys(_CHOICE_LINE.findall(prompt)))
    return found if len(found) >= 2 else ["A", "B", "C", "D"]


def _draw(*parts: str) -> int:
    return int(stable_hash(*parts)[:8], 16)


def read_routellm_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read one RouteLLM-style CSV: `prompt`, `<model>` (True/False), optional `<model>_response`,
    optional `<model>_cost`. Returns records `{prompt, models: {column: {correct, response, cost}}}`."""
    csv.field_size_limit(10**9)
    out = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "prompt" not in cols:
            raise ValueError(f"{path}: no 'prompt' column (columns: {cols})")
        models = [c for c in cols if c != "prompt" and not c.endswith(("_response", "_cost")) and c not in ("gold", "task_id", "dataset", "topic")]
        for row in reader:
            rec: dict[str, Any] = {"prompt": row["prompt"], "models": {}}
            for m in models:
                v = (row.get(m) or "").strip().lower()
                if v not in ("true", "false", "1", "0", "1.0", "0.0"):
                    continue
                resp = row.get(f"{m}_response")
                cost = row.get(f"{m}_cost")
                rec["models"][m] = {
                    "correct": v in ("true", "1", "1.0"),
                    "response": resp,
                    "cost": float(cost) if cost not in (None, "") else None,
                }
            for extra in ("gold", "task_id", "dataset", "topic"):
                if row.get(extra):
                    rec[extra] = row[extra]
            out.append(rec)
    return out


def _read_records(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        return read_routellm_csv(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:  # type: ignore[operator]
        return [json.loads(line) for line in fh if line.strip()]


def packaged_data_path(name: str) -> Path:
    """Path of a recorded slice shipped in the package (`gsm8k` or `mmlu`)."""
    p = resources.files("rl_router") / "data" / f"routellm_{name}.jsonl.gz"
    return Path(str(p))


def _accuracy_by_dataset(tasks: Iterable[RecordedTask], model: str) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for t in tasks:
        if model in t.answers:
            per.setdefault(t.task.dataset, []).append(float(t.answers[model].correct))
    return {k: round(sum(v) / len(v), 3) for k, v in per.items()}


class RecordedPool(Pool):
    """Replays recorded answers. See the module docstring for resolution and billing rules."""

    def __init__(self, tasks: list[RecordedTask], cards: list[ModelCard], *, latency_scale: float = 0.0):
        if not cards:
            raise ValueError("pool.models: a recorded pool needs at least one model")
        self.cards = cards
        self.latency_scale = latency_scale
        self._tasks = {t.task.task_id: t for t in tasks}
        self._by_prompt = {_norm(t.prompt): t.task.task_id for t in tasks}
        self.calls = 0

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_records(
        cls,
        records: Iterable[dict[str, Any]],
        models: dict[str, dict[str, Any]],
        *,
        latency_scale: float = 0.0,
        dataset: str | None = None,
    ) -> "RecordedPool":
        """Build from records as written by `read_routellm_csv` (or its JSONL twin).

        `models` maps the pool's model name to `{column, price_in, price_out, ...card fields}`;
        `column` is the model's key in the records (defaults to the name).
        """
        tasks: list[RecordedTask] = []
        for rec in records:
            ds = rec.get("dataset") or dataset or "custom"
            recorded = rec.get("models", {})
            has_text = all(recorded.get(spec.get("column", n), {}).get("response") for n, spec in models.items() if spec.get("column", n) in recorded)
            gold = rec.get("gold")
            answer_type = "number" if ds == "gsm8k" else ("choice" if not has_text else "text")
            question = rec["prompt"]
            task = Task(question=question, gold=None, answer_type=answer_type, dataset=ds, topic=rec.get("topic", "general"), task_id=rec.get("task_id", ""))
            answers: dict[str, RecordedAnswer] = {}
            if not has_text:
                letters = choice_letters(question)
                task.gold = letters[_draw(task.task_id, "gold") % len(letters)]
                wrong = [x for x in letters if x != task.gold]
                for name, spec in models.items():
                    r = recorded.get(spec.get("column", name))
                    if r is None:
                        continue
                    mine = task.gold if r["correct"] else wrong[_draw(task.task_id, name) % len(wrong)]
                    answers[name] = RecordedAnswer(r["correct"], f"The answer is {mine}.", r.get("cost"))
            else:
                task.gold = gold
                for name, spec in models.items():
                    r = recorded.get(spec.get("column", name))
                    if r is None:
                        continue
                    answers[name] = RecordedAnswer(bool(r["correct"]), r.get("response") or "", r.get("cost"))
            if answers:
                tasks.append(RecordedTask(task, question, answers))
        cards = []
        for name, spec in models.items():
            scores = spec.get("example_scores")
            if scores is None:  # accuracy per dataset, measured on the records (fit_cards: train rows only)
                scores = _accuracy_by_dataset(tasks, name)
            cards.append(
                ModelCard(
                    name=name,
                    price_in=float(spec["price_in"]),
                    price_out=float(spec["price_out"]),
                    latency_ms=float(spec.get("latency_ms", 0.0)),
                    context=int(spec.get("context", 8192)),
                    strengths=str(spec.get("strengths", "")),
                    example_scores=dict(scores),
                )
            )
        pool = cls(tasks, cards, latency_scale=latency_scale)
        pool._measured_scores = {name for name, spec in models.items() if spec.get("example_scores") is None}
        return pool

    def fit_cards(self, train_task_ids: Iterable[str]) -> None:
        """Measure the cards' example accuracies on these (train) tasks only. Why: the router
        reads the cards in its prompt, so scores measured on held-out rows would show it a
        statistic of its own test set. Cards whose scores the recipe gave are left alone."""
        keep = set(train_task_ids)
        rows = [t for t in self._tasks.values() if t.task.task_id in keep]
        self.cards = [dataclasses.replace(c, example_scores=_accuracy_by_dataset(rows, c.name)) if c.name in getattr(self, "_measured_scores", ()) else c for c in self.cards]

    @classmethod
    def from_files(cls, paths: list[str | Path], models: dict[str, dict[str, Any]] | None = None, **kw: Any) -> "RecordedPool":
        """Load RouteLLM-style CSVs or our JSONL(.gz) records; `models` defaults to the RouteLLM pair."""
        records: list[dict[str, Any]] = []
        for p in paths:
            p = Path(p)
            if not p.exists():
                raise FileNotFoundError(f"pool.files: {p} does not exist")
            recs = _read_records(p)
            if p.suffix == ".csv" and "mmlu" in p.stem:
                for r in recs:
                    r.setdefault("dataset", "mmlu")
                    r.setdefault("topic", p.stem.removeprefix("mmlu_"))
            records.extend(recs)
        return cls.from_records(records, models or ROUTELLM_MODELS, **kw)

    @classmethod
    def packaged(cls, datasets: list[str] = ("gsm8k",), models: dict[str, dict[str, Any]] | None = None, **kw: Any) -> "RecordedPool":
        """The RouteLLM recordings shipped in the package (Apache-2.0; see rl_router/data)."""
        return cls.from_files([packaged_data_path(d) for d in datasets], models, **kw)

    # ---- queries ------------------------------------------------------------------------
    def tasks(self, dataset: str | None = None) -> list[Task]:
        return [t.task for t in self._tasks.values() if dataset is None or t.task.dataset == dataset]

    def recorded(self, task_id: str) -> RecordedTask:
        return self._tasks[task_id]

    def _resolve(self, messages: list[Message], context: dict[str, Any] | None) -> RecordedTask | None:
        """The recorded task a request is about: from its text alone (the last user message is
        a recorded prompt, or starts with one followed by a blank line and a sub-query, as
        `prompts.pool_messages` writes it), else the episode's task in `context`."""
        text = last_user_text(messages)
        parts = text.split("\n\n")
        for k in range(len(parts), 0, -1):  # longest prefix first: prompts may contain blank lines
            tid = self._by_prompt.get(_norm("\n\n".join(parts[:k])))
            if tid is not None:
                return self._tasks[tid]
        tid = (context or {}).get("task_id")
        return self._tasks.get(tid) if tid else None

    def _bill(self, model: str, messages: list[Message], rt: RecordedTask) -> tuple[int, int, float]:
        ans = rt.answers[model]
        p = max(messages_tokens(messages), approx_tokens(rt.prompt) + 4)
        c = approx_tokens(ans.response)
        cost = ans.cost if ans.cost is not None else self.card(model).cost(p, c)
        return p, c, cost

    def estimate_cost(self, model: str, messages: list[Message], *, max_tokens: int, context: dict[str, Any] | None = None) -> float:
        rt = self._resolve(messages, context)
        if rt is None or model not in rt.answers or not shows_task(messages, rt.prompt):
            return 0.0  # the call will fail and bill nothing
        return self._bill(model, messages, rt)[2]

    async def complete(self, model: str, messages: list[Message], *, context: dict[str, Any] | None = None, **sampling: Any) -> Completion:
        t0 = time.perf_counter()
        self.calls += 1
        if not self.has_model(model):
            return Completion("", error=f"unknown model {model!r}", model=model)
        rt = self._resolve(messages, context)
        if rt is None:
            return Completion("", error="no recorded answer for this query (a recorded pool only answers the prompts it holds)", model=model)
        if not shows_task(messages, rt.prompt):
            return Completion("", error=TASK_NOT_SHOWN, model=model)
        if model not in rt.answers:
            return Completion("", error=f"{model} has no recorded answer for this task", model=model)
        p, c, cost = self._bill(model, messages, rt)
        if self.latency_scale > 0:
            await asyncio.sleep(self.card(model).latency_ms / 1000.0 * self.latency_scale)
        return Completion(rt.answers[model].response, p, c, cost, time.perf_counter() - t0, model=model)
