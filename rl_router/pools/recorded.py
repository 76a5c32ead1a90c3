"""RecordedPool: replay real per-model answers, scores and costs from a routing dataset.

The offline default. A routing dataset records, for each prompt, what every pool model
answered and how good that was. Replaying it lets a router be trained and evaluated with real
model behaviour and no network. Which formats are read, how each row is validated and the one
grading rule per dataset are in `records.py`; the shipped datasets and their model cards in
`recorded_datasets.py` (`gsm8k`, `mmlu`, `mmlu-pro`, `dcrouter`).

Resolving sub-queries: a router writes free-form sub-queries, which rarely equal a recorded
prompt. The environment sends the task with every sub-query (`prompts.pool_messages`), so
the request is about (1) the episode's task given in `context`, when the request shows its
prompt, else (2) the recorded prompt the request starts with (after whitespace
normalisation); either way the request must contain that task's prompt (a model cannot
answer a task it was not shown), else an error completion. So a recorded pool answers "the
question of this episode"; it cannot answer arbitrary decompositions, which only live pools
can. Over HTTP (`PoolServer`) it needs no context at all.

Billing: prompt tokens are max(tokens sent, tokens of the recorded prompt) by the chars/4
rule (the model needed the whole question to give the recorded answer), completion tokens
are chars/4 of the recorded response (a recorded cost, where the data has one, replaces
both); cost uses the card's prices.

Score-only data (RouteLLM's MMLU, dcrouter, ...): replies are made up so that their form never
shows the verdict (`records.scored_replies`): a test holds a reply-text classifier at chance,
two wrong models agree as often as two random wrong letters do, and the outcome is the
recorded score of the model whose answer the router adopts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rl_router.errors import ConfigError
from rl_router.pools.base import TASK_NOT_SHOWN, Completion, Message, ModelCard, Pool, approx_tokens, last_user_text, messages_tokens, shows_task
from rl_router.pools.recorded_datasets import DATASETS, FORMAT_DATASET, ROUTELLM_MODELS, dataset_models, mmlu_pro_output_names
from rl_router.pools.records import (
    CONVERTERS, FORMAT_HELP, Converter, Record, RecordError, RecordedAnswer, choice_letters, detect_format, group_rows, hf_rows,
    outputs_model_name, read_rows,
)
from rl_router.tasks import Task

__all__ = ["RecordedPool", "RecordedTask", "RecordedAnswer", "ROUTELLM_MODELS", "choice_letters", "packaged_data_path", "read_routellm_csv"]

#: card fields a model spec may hold (the rest of a spec: `column`, its key in the records)
CARD_FIELDS = ("price_in", "price_out", "latency_ms", "context", "strengths", "example_scores")


@dataclass
class RecordedTask:
    task: Task
    prompt: str
    answers: dict[str, RecordedAnswer]  # keyed by pool model name


def _norm(s: str) -> str:
    return " ".join(s.split()).lower()


def packaged_data_path(name: str) -> Path:
    """Path of a recorded dataset shipped in the package (see recorded_datasets.DATASETS)."""
    if name not in DATASETS:
        raise ConfigError("pool.datasets", f"unknown packaged dataset {name!r}", f"use one of {sorted(DATASETS)}, or give your own recordings in pool.files")
    return DATASETS[name].path


def read_routellm_csv(path: str | Path) -> list[dict[str, Any]]:
    """One RouteLLM-style CSV as raw rows (for scripts/build_packaged_data.py): `prompt`,
    `<model>` (True/False), optional `<model>_response`, `<model>_cost`, `gold`, `topic`."""
    rows = []
    for where, row in read_rows(Path(path)):
        if "prompt" not in row:
            raise RecordError(where, "prompt", "no 'prompt' column", f"the columns are {sorted(row)}")
        models = [c for c in row if c != "prompt" and not c.endswith(("_response", "_cost")) and c not in ("gold", "task_id", "dataset", "topic", "answer_type")]
        rec: dict[str, Any] = {"prompt": row["prompt"], "models": {m: {"correct": str(row[m]).strip().lower() in ("true", "1", "1.0"), "response": row.get(f"{m}_response"), "cost": row.get(f"{m}_cost") or None} for m in models}}
        for extra in ("gold", "task_id", "dataset", "topic"):
            if row.get(extra):
                rec[extra] = row[extra]
        rows.append(rec)
    return rows


def _accuracy_by_dataset(tasks: Iterable[RecordedTask], model: str) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for t in tasks:
        if model in t.answers:
            per.setdefault(t.task.dataset, []).append(float(t.answers[model].score))
    return {k: round(sum(v) / len(v), 3) for k, v in per.items()}


# ---- reading sources ---------------------------------------------------------------------------
@dataclass
class Source:
    """One thing to read: a packaged dataset, a file, or a `datasets.load_dataset` spec."""

    label: str
    rows: Any  # iterable of (where, row)
    packaged: str | None = None  # dataset name when shipped
    format: str | None = None
    dataset: str | None = None


def _peek(rows: Iterable[tuple[str, dict[str, Any]]]) -> tuple[tuple[str, dict[str, Any]] | None, Iterable[tuple[str, dict[str, Any]]]]:
    it = iter(rows)
    first = next(it, None)
    if first is None:
        return None, []

    def chain() -> Any:
        yield first
        yield from it

    return first, chain()


def _file_dataset(fmt: str, label: str, first: dict[str, Any]) -> str:
    if fmt in FORMAT_DATASET:
        return FORMAT_DATASET[fmt]
    if fmt == "llmrouter" and set(first.get("scores") or {}) == set(DATASETS["dcrouter"].models):
        return "dcrouter"  # LLMRouter's own dcrouter files: the same nine models
    if fmt == "routellm":
        stem = Path(label).name.split(".")[0]
        return first.get("dataset") or ("mmlu" if "mmlu" in stem else "custom")
    return "custom"


def _chosen_models(models: Any, registry: dict[str, dict[str, Any]], file_models: list[str], where: str) -> dict[str, dict[str, Any]]:
    """pool.models (None: every model the data has; a list: a subset; a mapping: cards or
    overrides) -> name -> spec with `column` and card fields."""
    known = registry or {m: {"column": m} for m in file_models}
    if models is None:
        if not registry and file_models:
            raise ConfigError("pool.models", f"{where} holds models with no card ({', '.join(file_models[:6])})", "give price_in / price_out for each in pool.models (USD per 1M tokens)")
        return {m: dict(v) for m, v in known.items()}
    if isinstance(models, list):
        out = {}
        for m in models:
            if not isinstance(m, str) or m not in known:
                raise ConfigError("pool.models", f"{m!r} is not a model of {where}", f"its models are {', '.join(known)}")
            if not registry:
                raise ConfigError("pool.models", f"{where} has no cards for its models", "give each model's price_in / price_out: pool.models: {NAME: {price_in: ..., price_out: ...}}")
            out[m] = dict(known[m])
        return out
    out = {}
    for m, spec in models.items():
        base = dict(known.get(m, {}))
        col = spec.get("column", base.get("column", m))
        if m not in known and col not in file_models and col not in {v.get("column", k) for k, v in known.items()}:
            raise ConfigError(f"pool.models.{m}", f"is not a model of {where}", f"its models are {', '.join(known) or ', '.join(file_models)}; set column: to name its key in the records")
        merged = {**base, **spec, "column": col}
        for k in ("price_in", "price_out"):
            if k not in merged:
                raise ConfigError(f"pool.models.{m}.{k}", "is required (the data has no card for this model)", "USD per 1M tokens")
        out[m] = merged
    return out


class RecordedPool(Pool):
    """Replays recorded answers. See the module docstring for resolution and billing rules."""

    def __init__(self, tasks: list[RecordedTask], cards: list[ModelCard], *, latency_scale: float = 0.0, notes: list[str] | None = None, file_task_ids: Iterable[str] = ()):
        if not cards:
            raise ValueError("pool.models: a recorded pool needs at least one model")
        self.cards = cards
        self.latency_scale = latency_scale
        self._tasks = {t.task.task_id: t for t in tasks}
        self._by_prompt: dict[str, str] = {}
        for t in tasks:
            self._by_prompt.setdefault(_norm(t.prompt), t.task.task_id)
        self.notes = list(notes or [])  # rows a documented rule handled (duplicates merged)
        self.file_task_ids = set(file_task_ids)  # tasks read from pool.files / pool.hf_dataset
        self.calls = 0
        self._measured_scores: set[str] = set()
        self.made_up_replies: set[str] = set()  # datasets whose replies are made up from scores (records.scored_replies)
        self._fit_ids: list[str] = []
        self._typical: dict[str, float] | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], models: dict[str, dict[str, Any]], *, latency_scale: float = 0.0, dataset: str | None = None) -> "RecordedPool":
        """Build from raw rows in our RouteLLM-style JSONL shape (`{prompt, models: {column:
        {correct, response, cost}}, gold, dataset, topic}`); `models` maps the pool's model
        name to `{column, price_in, price_out, ...card fields}`."""
        rows = ((f"records:{i + 1}", r) for i, r in enumerate(records))
        return cls.load(sources=[Source("records", rows, format="routellm", dataset=dataset or "custom")], models=models, latency_scale=latency_scale)

    @classmethod
    def from_files(cls, paths: list[str | Path], models: Any = None, **kw: Any) -> "RecordedPool":
        """Recordings in any format of `records.py` (detected from the first row)."""
        return cls.load(files=paths, models=models, **kw)

    @classmethod
    def packaged(cls, datasets: list[str] | tuple[str, ...] = ("gsm8k",), models: Any = None, **kw: Any) -> "RecordedPool":
        """Datasets shipped in the package (see recorded_datasets.DATASETS and their licenses)."""
        return cls.load(datasets=list(datasets), models=models, **kw)

    @classmethod
    def load(cls, *, datasets: list[str] = (), files: list[str | Path] = (), hf_dataset: dict[str, Any] | None = None, models: Any = None,
             latency_scale: float = 0.0, sources: list[Source] | None = None) -> "RecordedPool":
        """Read every source (pool.files first, then pool.hf_dataset, then the packaged
        datasets: your records replace packaged ones with the same prompt), validate each row,
        merge duplicates by the documented rule, and build the cards."""
        srcs = list(sources or [])
        for f in files:
            p = Path(f)
            if not p.exists():
                raise ConfigError("pool.files", f"{p} does not exist", "give paths to recordings (RouteLLM CSV, MMLU-Pro or dcrouter JSONL(.gz), LLMRouter JSON, RouterBench tables)")
            first, rows = _peek(read_rows(p))
            fmt = detect_format(first[1]) if first else None
            if fmt == "mmlu-pro-outputs" and srcs and srcs[-1].format == "mmlu-pro-outputs":  # one file per model: one source
                prev = srcs[-1]
                prev.rows, prev.label = itertools.chain(prev.rows, rows), f"{prev.label}, {p}"
                continue
            srcs.append(Source(str(p), rows, format=fmt if fmt == "mmlu-pro-outputs" else None))
        if hf_dataset is not None:
            srcs.append(Source(str(hf_dataset.get("path")), hf_rows(hf_dataset), format=hf_dataset.get("format"), dataset=hf_dataset.get("dataset")))
        n_user = len(srcs)
        for d in datasets:
            packaged_data_path(d)
            srcs.append(Source(d, read_rows(DATASETS[d].path), packaged=d, format=DATASETS[d].format, dataset=d))
        chosen: dict[str, dict[str, Any]] | None = None
        records: list[Record] = []
        user_ids: set[str] = set()
        for i, src in enumerate(srcs):
            first, rows = _peek(src.rows)
            if first is None:
                raise RecordError(src.label, "rows", "holds no records", "give a file with at least one row")
            where0, row0 = first
            fmt = src.format or detect_format(row0)
            if fmt is None or (fmt not in CONVERTERS and fmt not in ("llmrouter-routing", "mmlu-pro-outputs")):
                raise RecordError(where0, "format", f"not a recording format we read (keys: {sorted(row0)[:8]})", FORMAT_HELP)
            if fmt == "mmlu-pro-outputs":
                names = mmlu_pro_output_names()
                rows = group_rows(fmt, rows, lambda w: names.get(outputs_model_name(w), outputs_model_name(w)))
                fmt = "mmlu-pro"
            elif fmt == "llmrouter-routing":
                rows = group_rows(fmt, rows, lambda w: "")
                fmt = "llmrouter"
            first, rows = _peek(rows)
            where0, row0 = first
            ds = src.dataset or _file_dataset(fmt, src.label, row0)
            registry = dataset_models(ds) if ds in DATASETS else ({} if fmt != "routellm" or not _routellm_columns_in(row0) else {m: dict(v) for m, v in ROUTELLM_MODELS.items()})
            file_models = _row_models(fmt, row0)
            mine = _chosen_models(models, registry, file_models, src.label)
            if chosen is None:
                chosen = mine
            elif set(mine) != set(chosen):
                raise ConfigError("pool.datasets" if src.packaged else "pool.files", f"{src.label} has the models {sorted(mine)}, the pool so far {sorted(chosen)}",
                                  "one pool holds one set of models: record the same models, or pick a common subset in pool.models")
            columns = {spec.get("column", m): m for m, spec in chosen.items()}
            cv = Converter(fmt, ds, columns, strict_models=ds in DATASETS and DATASETS[ds].format != "routellm")
            for where, row in rows:
                rec = CONVERTERS[fmt](cv, where, row)
                records.append(rec)
                if i < n_user:
                    user_ids.add(rec.task_id)
        assert chosen is not None
        records, notes = merge_duplicates(records)
        tasks = [RecordedTask(Task(question=r.prompt, gold=r.gold, answer_type=r.answer_type, dataset=r.dataset, topic=r.topic, task_id=r.task_id, group=r.group), r.prompt, r.answers) for r in records]
        cards = []
        for name, spec in chosen.items():
            scores = spec.get("example_scores")
            cards.append(ModelCard(
                name=name, price_in=float(spec["price_in"]), price_out=float(spec["price_out"]), latency_ms=float(spec.get("latency_ms", 0.0)),
                context=int(spec.get("context", 8192)), strengths=str(spec.get("strengths", "")),
                example_scores=dict(scores) if scores is not None else _accuracy_by_dataset(tasks, name),
            ))
        pool = cls(tasks, cards, latency_scale=latency_scale, notes=notes, file_task_ids=user_ids & {t.task.task_id for t in tasks})
        pool.made_up_replies = {r.dataset for r in records if r.made_up}
        pool._measured_scores = {name for name, spec in chosen.items() if spec.get("example_scores") is None}
        return pool

    def typical_costs(self) -> dict[str, float]:
        """Each model's mean cost of answering the tasks (the card-fitting tasks when fit_cards
        ran, else all; up to 1,000 of them, in a seeded order): what a call really costs, which
        list prices alone misorder when replies differ in length (MMLU-Pro: llama-3.1-8b is
        cheaper per token than gemini-1.5-flash, and dearer per question)."""
        if getattr(self, "_typical", None) is None:
            from rl_router.tasks import stable_hash

            ids = sorted(self._fit_ids or self._tasks, key=lambda t: stable_hash("typical", t))[:1000]
            out = {}
            for m in self.model_names:  # billed for the task alone (a sub-query adds the same few tokens to every model)
                costs = [self._bill(m, [{"role": "user", "content": self._tasks[t].prompt}], self._tasks[t])[2] for t in ids if m in self._tasks[t].answers]
                out[m] = sum(costs) / len(costs) if costs else float("inf")
            self._typical = out
        return dict(self._typical)

    def fit_cards(self, train_task_ids: Iterable[str]) -> None:
        """Measure the cards' example accuracies on these (train) tasks only. Why: the router
        reads the cards in its prompt, so scores measured on held-out rows would show it a
        statistic of its own test set. Cards whose scores the recipe gave are left alone."""
        keep = set(train_task_ids)
        rows = [t for t in self._tasks.values() if t.task.task_id in keep]
        self._fit_ids, self._typical = [t.task.task_id for t in rows], None
        self.cards = [dataclasses.replace(c, example_scores=_accuracy_by_dataset(rows, c.name)) if c.name in self._measured_scores else c for c in self.cards]

    # ---- queries ------------------------------------------------------------------------
    def tasks(self, dataset: str | None = None) -> list[Task]:
        return [t.task for t in self._tasks.values() if dataset is None or t.task.dataset == dataset]

    def recorded(self, task_id: str) -> RecordedTask:
        return self._tasks[task_id]

    def _resolve(self, messages: list[Message], context: dict[str, Any] | None) -> RecordedTask | None:
        """The recorded task a request is about: the episode's task in `context` when the
        request shows its prompt, else from the text alone (the last user message is a
        recorded prompt, or starts with one followed by a blank line and a sub-query, as
        `prompts.pool_messages` writes it)."""
        tid = (context or {}).get("task_id")
        if tid and tid in self._tasks and shows_task(messages, self._tasks[tid].prompt):
            return self._tasks[tid]
        text = last_user_text(messages)
        parts = text.split("\n\n")
        for k in range(len(parts), 0, -1):  # longest prefix first: prompts may contain blank lines
            found = self._by_prompt.get(_norm("\n\n".join(parts[:k])))
            if found is not None:
                return self._tasks[found]
        return self._tasks.get(tid) if tid else None

    def _bill(self, model: str, messages: list[Message], rt: RecordedTask) -> tuple[int, int, float]:
        ans = rt.answers[model]
        p = max(messages_tokens(messages), approx_tokens(rt.prompt) + 4)
        c = approx_tokens(ans.billed_text if ans.billed_text is not None else ans.response)
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


def _routellm_columns_in(row: dict[str, Any]) -> bool:
    keys = set(row.get("models") or {}) | set(row)
    return all(spec["column"] in keys for spec in ROUTELLM_MODELS.values())


def _row_models(fmt: str, row: dict[str, Any]) -> list[str]:
    """The model keys a row of this format holds (for files with no registry cards)."""
    if fmt in ("mmlu-pro", "routellm") and isinstance(row.get("models"), dict):
        return list(row["models"])
    if fmt in ("dcrouter", "llmrouter") and isinstance(row.get("scores"), dict):
        return list(row["scores"])
    skip = {"prompt", "question", "gold", "task_id", "dataset", "topic", "answer_type", "sample_id", "eval_name", "oracle_model_to_route_to"}
    if fmt == "routerbench":
        return [c for c in row if "|" not in c and c not in skip]
    return [c for c in row if c not in skip and not c.endswith(("_response", "_cost"))]


def merge_duplicates(records: list[Record]) -> tuple[list[Record], list[str]]:
    """One task per (dataset, prompt): the prompt is all the router and a pool model see (an
    MMLU-Pro question with its options: the same text with other options is another task), so
    two records with one prompt are one task read twice; the first record read is kept (see records.py's rules);
    returns the kept records and a note per dataset on what was merged."""
    seen: dict[tuple[str, str], Record] = {}
    kept: list[Record] = []
    merged: dict[str, list[int]] = {}
    for r in records:
        key = (r.dataset, _norm(r.prompt))
        first = seen.get(key)
        if first is None:
            seen[key] = r
            kept.append(r)
            continue
        differs = {m: (a.score, a.response) for m, a in first.answers.items()} != {m: (a.score, a.response) for m, a in r.answers.items()}
        n = merged.setdefault(r.dataset, [0, 0])
        n[0] += 1
        n[1] += int(differs)
    notes = [f"{ds}: {n} records repeat an earlier prompt and were merged into it (the first read is kept; {d} of them differed in their answers)" for ds, (n, d) in merged.items()]
    return kept, notes
