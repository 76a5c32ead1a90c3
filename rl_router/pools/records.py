"""Recorded routing data in the formats people have, read into one validated shape.

A recording says, per task, what each pool model answered and how good that was. Every
format below is read into `Record`s, and every row is checked as it is read: a bad row is
refused with its file, line and field named (`RecordError`, exit 2 in the CLI), never dropped.

| format             | where it comes from                                  | a row holds |
|--------------------|------------------------------------------------------|-------------|
| `routellm`         | RouteLLM `routellm/evals` CSV, or our JSONL(.gz)     | `prompt`, `<model>` True/False, `<model>_response`, `<model>_cost`, `gold` |
| `mmlu-pro`         | MMLU-Pro records (`../shared/data/mmlu-pro`)         | `question_id`, `category`, `question`, `options`, `answer`, `models: {m: {pred, correct, response}}` |
| `mmlu-pro-outputs` | MMLU-Pro `eval_results` files, one JSON list per model | `question_id`, `question`, `options`, `answer`, `category`, `pred`, `model_outputs` |
| `dcrouter`         | LLMRouter query data with scores (`llmrouter-dcrouter`) | `query`, `task_name`, `metric`, `choices`, `ground_truth`, `scores: {m: [0, 1]}` |
| `llmrouter`        | LLMRouter `dcrouter_preprocessed/*.json` (a JSON list) or routing JSONL | `question`/`query` and `scores`; or one row per (`query`, `model_name`, `performance`) |
| `routerbench`      | RouterBench-style wide tables (CSV, parquet, JSON)  | `prompt`, `<model>` score, `<model>|total_cost`, `<model>|model_response`, `eval_name` |

**Grading: one rule per dataset** (the outcome of adopting a model's reply, `RecordedAnswer.score`):
- *gold and reply text, numbers or letters* (GSM8K, MMLU-Pro, your files with a `gold` column
  and `answer_type: number|choice`): the reply is graded from its text, like any answer the
  router writes (`answers.extract_final_answer` by answer type, then `answers.score_answer`
  against gold). Recorded verdicts are not used (GSM8K: 39 of 2,000 differ from this, e.g.
  `#### $20.00` against gold 20 recorded wrong, -15 against gold 15 recorded right).
- *gold and reply text, free text* (answer type `text`): a final answer cannot be checked
  exactly from free text, so the recorded verdict stands and every reply recorded right is an
  accepted answer next to gold (SQuAD exact match); a reply recorded wrong whose final answer
  equals an accepted one is refused as contradictory. MMLU-Pro's recorded
  letter (`pred`) was extracted from the full model output, of which the file keeps the head:
  where the kept text does not state that letter, the reply ends with `The answer is (X).`
  (`The answer is none.` when MMLU-Pro found no letter), so re-grading reproduces every
  recorded verdict (a test checks all 82,170).
- *no gold, or no reply text* (RouteLLM MMLU, dcrouter, LLMRouter, RouterBench without gold):
  the recorded score is the outcome, and the reply is made up so that its form never shows it:
  `The answer is X.` with X the task's gold code for a model recorded right, the model's own
  wrong code for one recorded wrong, and a code worth its fractional score in between (scores
  in [0, 1] are first-class: dcrouter's commongen). Codes are letters among the task's choices
  when it lists any, else 6-digit codes. The router can only adopt such replies.

**Rules for odd rows** (documented, counted in `RecordSet.notes`, never silent):
- a UTF-8 byte-order mark at the start of a file is skipped;
- records with the same dataset and prompt (whitespace- and case-folded) are one task: the first
  one read is kept (`pool.files` are read before the packaged datasets, so your record replaces
  a packaged one), the others are counted, with how many of them differed in their answers;
- everything else is refused: a line that is not JSON, a missing or empty prompt, a missing gold
  where the format has one, a verdict that is not a boolean, a score that is not a finite number
  in [0, 1], a negative or non-finite cost, a model missing from a row, a model the dataset does
  not know.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from rl_router.answers import extract_final_answer, score_answer
from rl_router.errors import ConfigError
from rl_router.parsing import MAX_DEPTH, check_depth
from rl_router.tasks import stable_hash

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class RecordError(ConfigError):
    """A recorded row that cannot be used: names the file, line and field."""

    def __init__(self, where: str, field_: str, problem: str, fix: str = ""):
        super().__init__(f"{where}: {field_}", problem, fix)


@dataclass
class RecordedAnswer:
    """One model's recorded answer: `score` in [0, 1] is the outcome of adopting it (see the
    module's grading rules); `response` the reply text the pool returns; `cost` a recorded USD
    cost, if the data has one (else the card's prices and the chars/4 rule)."""

    score: float
    response: str
    cost: float | None = None
    billed_text: str | None = None  # what completion tokens are counted on, when the reply was completed

    @property
    def correct(self) -> bool:
        return self.score > 0


@dataclass
class Record:
    """One task with every model's answer, as read (before the pool builds its Task)."""

    prompt: str
    dataset: str
    answers: dict[str, RecordedAnswer]
    gold: str | list[str] | None = None
    answer_type: str = "text"
    topic: str = "general"
    task_id: str = ""
    where: str = ""
    made_up: bool = False  # replies made up from scores (records.scored_replies), not recorded text
    group: str = ""  # tasks of one group stay on one side of every split (MMLU-Pro: the question text, whatever its options); default: the task

    def __post_init__(self) -> None:
        if not self.task_id:
            self.task_id = stable_hash(self.dataset, self.prompt)[:16]


@dataclass
class RecordSet:
    """Records of one read, and the notes on rows a documented rule handled."""

    records: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- small validators ------------------------------------------------------------------------
def _text(where: str, row: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    v = row.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise RecordError(where, key, "is missing or empty", f"every row needs a non-empty {key!r}")
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise RecordError(where, key, f"expected text, got {type(v).__name__} {str(v)[:40]!r}")
    return v


def _verdict(where: str, key: str, v: Any, *, cells: bool = False) -> float:
    """A recorded right/wrong: a JSON boolean or 0/1; in CSV cells (`cells`) also the text
    true/false/1/0. A JSON string such as "false" is refused: read as text it would be true."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return float(v)
    if isinstance(v, str) and cells and v.strip().lower() in ("true", "false", "1", "0", "1.0", "0.0"):
        return 1.0 if v.strip().lower() in ("true", "1", "1.0") else 0.0
    if isinstance(v, str) and not cells and v.strip().lower() in ("true", "false", "1", "0"):
        raise RecordError(where, key, f"expected a boolean, got the string {v!r}", "write JSON true/false")
    raise RecordError(where, key, f"expected a verdict (true/false), got {v!r}", "every row needs every model's verdict")


def _score(where: str, key: str, v: Any) -> float:
    """A recorded score: a finite number in [0, 1] (booleans read as 0/1)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "false"):
            return 1.0 if s == "true" else 0.0
        try:
            v = float(s)
        except ValueError:
            raise RecordError(where, key, f"expected a score in [0, 1], got {v!r}") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= float(v) <= 1.0:
        raise RecordError(where, key, f"expected a finite score in [0, 1], got {v!r}", "scores are shares: 0 wrong, 1 right, fractions for partial credit")
    return float(v)


def _cost(where: str, key: str, v: Any) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        c = float(v)
    except (TypeError, ValueError):
        raise RecordError(where, key, f"expected a cost in USD, got {v!r}") from None
    if isinstance(v, bool) or not math.isfinite(c) or c < 0:
        raise RecordError(where, key, f"expected a finite cost >= 0 USD, got {v!r}", "a call costs nothing or something, never less")
    return c


def check_models(where: str, found: Iterable[str], known: Iterable[str], field_: str) -> None:
    """The row names no model the dataset lacks (the pool's models must all be there: see
    `Converter.pool_answers`)."""
    found, known = set(found), list(known)
    extra = sorted(found - set(known))
    if extra:
        raise RecordError(where, f"{field_}.{extra[0]}", "is a model this dataset does not know", f"its models are {', '.join(known)}; give its card in pool.models to use it")


# ---- made-up replies for score-only data -------------------------------------------------------
def _draw(*parts: str) -> int:
    return int(stable_hash(*parts)[:8], 16)


_CHOICE_LINE = re.compile(r"^\s*([A-Z])[.)]\s", re.M)


def choice_letters(prompt: str) -> list[str]:
    """The option letters a multiple-choice prompt lists ("A. ...", "B) ..."), else A-D."""
    found = list(dict.fromkeys(_CHOICE_LINE.findall(prompt)))
    return found if len(found) >= 2 else ["A", "B", "C", "D"]


def code(*parts: str) -> str:
    return f"{_draw(*parts) % 10**6:06d}"


def scored_replies(task_id: str, scores: dict[str, float], letters: list[str] | None) -> tuple[str, str, dict[str, RecordedAnswer]]:
    """(gold, answer_type, answers) for score-only data: every reply is `The answer is X.`,
    the same form whatever the score (see the module docstring).

    `letters`: the task's choices: the gold is drawn among them by a hash of the task, a model
    recorded wrong answers one of the others, drawn by a hash of (task, model), so two wrong
    models agree as often as two random wrong letters do. None: 6-digit codes. A task with a
    fractional score uses codes (answer type `graded`): each fractional reply has a code of
    its own, worth its score (gold `["CODE=SCORE", ...]`, see `graded_gold`)."""
    graded = any(0.0 < s < 1.0 for s in scores.values())
    if letters and not graded:
        gold = letters[_draw(task_id, "gold") % len(letters)]
        wrong = [x for x in letters if x != gold]
        pick = lambda m: wrong[_draw(task_id, m) % len(wrong)]  # noqa: E731
    else:
        gold = code(task_id, "gold")
        pick = lambda m: code(task_id, m)  # noqa: E731
    answers = {}
    for m, s in scores.items():
        mine = gold if s >= 1.0 else pick(m) if s <= 0.0 else code(task_id, m, "partial")
        answers[m] = RecordedAnswer(s, f"The answer is {mine}.")
    kind = "graded" if graded else "choice" if letters else "code"
    return gold, kind, answers


def graded_gold(answers: dict[str, RecordedAnswer], gold: str) -> list[str]:
    """Gold of a graded task: each reply's code with its score ("CODE=SCORE")."""
    out = {f"{gold}=1"} if gold else set()
    for a in answers.values():
        if a.score > 0:
            out.add(f"{extract_final_answer(a.response, 'code')}={a.score:.10g}")
    return sorted(out)


# ---- file reading ----------------------------------------------------------------------------
def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # utf-8-sig: a leading BOM is skipped


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of a CSV, JSONL(.gz), JSON list or parquet file; `where` is
    `file:line` (JSONL, CSV), `file:item N` (a JSON list) or `file:row N` (parquet)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from hf_rows({"path": "parquet", "data_files": str(path)}, label=str(path))
        return
    try:
        if name.endswith(".csv"):
            csv.field_size_limit(10**9)
            with _open_text(path) as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames:
                    raise RecordError(str(path), "header", "the CSV has no header row", "the first line names the columns (prompt, <model>, ...)")
                for row in reader:
                    if None in row:  # DictReader files the fields past the header under None
                        raise RecordError(f"{path}:{reader.line_num}", "row", f"has {len(reader.fieldnames) + len(row[None])} fields, the header names {len(reader.fieldnames)}", "one field per header column (quote text holding commas)")
                    yield f"{path}:{reader.line_num}", dict(row)
            return
        with _open_text(path) as fh:
            head = fh.read(1)
            while head and head.isspace():
                head = fh.read(1)
            if head == "[":  # one JSON list (LLMRouter's dcrouter_preprocessed/*.json, MMLU-Pro outputs)
                try:
                    items = json.loads(head + fh.read())
                except json.JSONDecodeError as e:
                    raise RecordError(f"{path}:{e.lineno}", "json", f"not valid JSON ({e.msg})") from None
                except RecursionError:
                    raise RecordError(str(path), "json", f"nested more than {MAX_DEPTH} levels deep", "flatten it") from None
                check_depth(items, str(path))
                for i, row in enumerate(items):
                    if not isinstance(row, dict):
                        raise RecordError(f"{path}:item {i + 1}", "row", f"expected an object, got {type(row).__name__}")
                    yield f"{path}:item {i + 1}", row
                return
            line_no, buf = 0, head
            for line in fh:
                line_no += 1
                text = buf + line
                buf = ""
                if not text.strip():
                    continue
                try:
                    row = check_depth(json.loads(text), f"{path}:{line_no}")
                except json.JSONDecodeError as e:
                    raise RecordError(f"{path}:{line_no}", "json", f"not valid JSON ({e.msg} at column {e.colno})", "one JSON object per line") from None
                except RecursionError:
                    raise RecordError(f"{path}:{line_no}", "json", f"nested more than {MAX_DEPTH} levels deep", "flatten it") from None
                if not isinstance(row, dict):
                    raise RecordError(f"{path}:{line_no}", "row", f"expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{line_no}", row
    except UnicodeDecodeError as e:
        raise RecordError(str(path), "encoding", f"not UTF-8 text ({e.reason} at byte {e.start})", "save the file as UTF-8") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # a folder, a truncated or corrupted .gz
        raise RecordError(str(path), "file", f"cannot be read ({type(e).__name__}: {e})") from None


def hf_rows(spec: dict[str, Any], label: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows through `datasets.load_dataset` (Hub ids where the Hub is reachable, or local files
    with a builder: parquet, json, csv)."""
    from datasets import load_dataset

    kw = {k: spec[k] for k in ("name", "data_files") if spec.get(k) is not None}
    try:
        ds = load_dataset(spec["path"], split=spec.get("split", "train"), **kw)
    except Exception as e:  # the datasets library raises many kinds; one line names the source
        raise ConfigError("pool.hf_dataset" if label is None else f"pool.files: {label}", f"could not be loaded by datasets.load_dataset ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                          "check the path / Hub id, split and data_files (offline: give a local file)") from None
    where = label or spec["path"]
    for i, row in enumerate(ds):
        yield f"{where}:row {i + 1}", dict(row)


# ---- formats ---------------------------------------------------------------------------------
def detect_format(keys: Iterable[str]) -> str | None:
    """The format of a row, from its keys (None: none we know)."""
    k = set(keys)
    if {"question_id", "options", "models"} <= k:
        return "mmlu-pro"
    if {"question_id", "options", "pred", "model_outputs"} <= k:
        return "mmlu-pro-outputs"
    if {"query", "task_name", "scores"} <= k:
        return "dcrouter"
    if "scores" in k and ({"question"} & k or {"query"} & k):
        return "llmrouter"
    if {"query", "model_name", "performance"} <= k:
        return "llmrouter-routing"
    if "prompt" in k and "models" in k:
        return "routellm"
    if any("|" in c for c in k) and ("prompt" in k or "question" in k):
        return "routerbench"
    if "prompt" in k:
        return "routellm"
    return None


FORMAT_HELP = ("one of: RouteLLM CSV (prompt, <model> True/False, ...), MMLU-Pro records or eval_results, "
               "LLMRouter (query/question with scores, or query/model_name/performance rows), "
               "RouterBench wide tables (prompt, <model> scores, <model>|total_cost)")


def mmlu_pro_prompt(question: str, options: list[str], category: str) -> str:
    """An MMLU-Pro question as a pool model receives it: the subject (MMLU-Pro's own prompt
    names it), the question and the lettered options."""
    opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"[{category}] {question.strip()}\n{opts}"


def completed_reply(text: str, pred: str | None) -> str:
    """A recorded MMLU-Pro reply that states the recorded letter by our extraction rule (see
    the module docstring)."""
    if extract_final_answer(text, "choice") == (pred or ""):
        return text
    return text.rstrip() + ("\nThe answer is (%s)." % pred if pred else "\nThe answer is none.")


def parse_choices(v: Any) -> list[str] | None:
    """Choice labels from LLMRouter's `choices` (a dict with `labels`/`label`, a list, or
    either written as Python/JSON text); None when the task lists none."""
    if v is None or v == "" or v == "None":
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
    if isinstance(v, dict):
        labels = v.get("labels") or v.get("label")
        if isinstance(labels, list) and all(isinstance(x, str) and len(x) == 1 for x in labels) and len(labels) >= 2:
            return list(labels)
        texts = v.get("text")
        return list(LETTERS[: len(texts)]) if isinstance(texts, list) and len(texts) >= 2 else None
    if isinstance(v, list) and len(v) >= 2:
        return list(LETTERS[: len(v)])
    return None


class Converter:
    """Rows of one format -> Records, given the dataset's model names (`column` -> pool name)."""

    def __init__(self, fmt: str, dataset: str, columns: dict[str, str], *, strict_models: bool):
        self.fmt, self.dataset, self.columns, self.strict = fmt, dataset, columns, strict_models

    def pool_answers(self, where: str, recorded: dict[str, Any], field_: str) -> dict[str, Any]:
        """The recorded entries keyed by pool name (only the chosen models), every one present."""
        if self.strict:
            check_models(where, recorded, known_columns(self.dataset) or list(self.columns), field_)
        missing = [c for c in self.columns if c not in recorded]
        if missing:
            raise RecordError(where, f"{field_}.{missing[0]}", "is missing from this row", f"every row needs every model of the pool ({len(self.columns)}: {', '.join(self.columns)}); complete the row, or leave the model out with pool.models")
        return {self.columns[c]: recorded[c] for c in self.columns}


def known_columns(dataset: str) -> list[str] | None:
    from rl_router.pools.recorded_datasets import DATASETS

    d = DATASETS.get(dataset)
    return list(d.models) if d is not None and d.format != "routellm" else None


def routellm_record(cv: Converter, where: str, row: dict[str, Any]) -> Record:
    prompt = _text(where, row, "prompt")
    if "models" in row:  # our JSONL form
        if not isinstance(row["models"], dict):
            raise RecordError(where, "models", f"expected a mapping of model -> {{correct, response, cost}}, got {type(row['models']).__name__}")
        recorded = {}
        for col, r in row["models"].items():
            if not isinstance(r, dict):
                raise RecordError(where, f"models.{col}", f"expected {{correct, response, cost}}, got {type(r).__name__}")
            recorded[col] = r
    else:  # CSV columns
        recorded = {}
        for col in cv.columns:
            if col not in row:
                raise RecordError(where, col, "no such column", f"the file's columns are {sorted(row)}; name its model columns in pool.models")
            recorded[col] = {"correct": row.get(col), "response": row.get(f"{col}_response"), "cost": row.get(f"{col}_cost")}
    chosen = cv.pool_answers(where, recorded, "models")
    ds = row.get("dataset") or cv.dataset
    gold = row.get("gold")
    gold = None if gold is None or (isinstance(gold, str) and not gold.strip()) else gold
    texts = [isinstance(r.get("response"), str) and bool(r["response"]) for r in chosen.values()]
    has_text = all(texts)
    if any(texts) and not has_text:
        m = list(chosen)[texts.index(False)]
        raise RecordError(where, f"{m}_response" if "models" not in row else f"models.{m}.response", "is empty while other models have response text", "give every model's response or none (then the verdicts are replayed)")
    answer_type = row.get("answer_type") or ("number" if ds == "gsm8k" else "text")
    answers: dict[str, RecordedAnswer] = {}
    for m, r in chosen.items():
        col = next(c for c, n in cv.columns.items() if n == m)
        verdict = _verdict(where, col if "models" not in row else f"models.{col}.correct", r.get("correct"), cells="models" not in row)
        answers[m] = RecordedAnswer(verdict, r.get("response") or "", _cost(where, f"{col}_cost" if "models" not in row else f"models.{col}.cost", r.get("cost")))
    topic = row.get("topic") or "general"
    if gold is not None and has_text:
        gold = [str(g) for g in gold] if isinstance(gold, list) else str(gold)
        if answer_type in ("number", "choice"):  # checkable from the text: graded like any router answer
            for a in answers.values():
                a.score = score_answer(extract_final_answer(a.response, answer_type), gold, answer_type)
        else:  # free text: the recorded verdict stands; a reply recorded right is an accepted answer
            finals = {m: extract_final_answer(a.response, answer_type) for m, a in answers.items()}
            accepted = ([gold] if isinstance(gold, str) else list(gold)) + [finals[m] for m, a in answers.items() if a.score > 0]
            for m, a in answers.items():
                if a.score <= 0 and score_answer(finals[m], accepted, answer_type) > 0:
                    raise RecordError(where, f"{m}_response" if "models" not in row else f"models.{m}.response",
                                      f"its final answer {finals[m][:40]!r} is recorded wrong but equals an answer recorded right (or gold)", "fix the verdicts, or drop the gold column to replay verdicts only")
            gold = list(dict.fromkeys(accepted))
        return Record(prompt, ds, answers, gold, answer_type, topic, str(row.get("task_id") or ""), where)
    rec = Record(prompt, ds, answers, None, "choice", topic, str(row.get("task_id") or ""), where)
    gold_, kind, made = scored_replies(rec.task_id, {m: a.score for m, a in answers.items()}, choice_letters(prompt))
    for m, a in made.items():
        a.cost = answers[m].cost
    rec.answers, rec.gold, rec.answer_type, rec.made_up = made, gold_, kind, True
    return rec


def mmlu_pro_record(cv: Converter, where: str, row: dict[str, Any]) -> Record:
    qid = _text(where, row, "question_id")
    question = _text(where, row, "question")
    category = _text(where, row, "category")
    options = row.get("options")
    if not isinstance(options, list) or not 2 <= len(options) <= 10 or not all(isinstance(o, str) for o in options):
        raise RecordError(where, "options", f"expected a list of 2-10 option texts, got {str(options)[:60]!r}")
    letters = LETTERS[: len(options)]
    gold = _text(where, row, "answer")
    if gold not in letters:
        raise RecordError(where, "answer", f"gold letter {gold!r} is not one of the options {letters[0]}-{letters[-1]}")
    models = row.get("models")
    if not isinstance(models, dict):
        raise RecordError(where, "models", f"expected a mapping of model -> {{pred, correct, response}}, got {type(models).__name__}")
    chosen = cv.pool_answers(where, models, "models")
    answers = {}
    for m, r in chosen.items():
        col = next(c for c, n in cv.columns.items() if n == m)
        f = f"models.{col}"
        if not isinstance(r, dict):
            raise RecordError(where, f, f"expected {{pred, correct, response}}, got {type(r).__name__}")
        pred = r.get("pred")
        if pred is not None and (not isinstance(pred, str) or pred not in LETTERS[:10]):  # a letter beyond the options is a real (wrong) answer
            raise RecordError(where, f"{f}.pred", f"{pred!r} is not a letter A-J (or null)")
        correct = _verdict(where, f"{f}.correct", r.get("correct"))
        if correct != float(pred == gold):
            raise RecordError(where, f"{f}.correct", f"says {bool(correct)} but pred {pred!r} vs gold {gold!r} says {pred == gold}", "the verdict must be pred == answer")
        resp = r.get("response")
        if not isinstance(resp, str):
            raise RecordError(where, f"{f}.response", f"expected the response text, got {type(resp).__name__}")
        answers[m] = RecordedAnswer(0.0, completed_reply(resp, pred), billed_text=resp)
    prompt = mmlu_pro_prompt(question, options, category)
    for a in answers.values():
        a.score = score_answer(extract_final_answer(a.response, "choice"), gold, "choice")
    # a task is what the router sees (question and options: MMLU-Pro reuses a question's text
    # with other options as another question); its split group is the question's text alone,
    # so such variants never sit on both sides of a train / held-out split
    group = stable_hash(cv.dataset, "question", " ".join(question.split()).lower())[:16]
    return Record(prompt, cv.dataset, answers, gold, "choice", category, f"{cv.dataset}:{qid}", where, group=group)


def dcrouter_record(cv: Converter, where: str, row: dict[str, Any]) -> Record:
    key = "query" if "query" in row else "question"
    prompt = _text(where, row, key)
    scores = row.get("scores")
    if not isinstance(scores, dict):
        raise RecordError(where, "scores", f"expected a mapping of model -> score, got {type(scores).__name__}")
    chosen = cv.pool_answers(where, scores, "scores")
    vals = {}
    for m, v in chosen.items():
        col = next(c for c, n in cv.columns.items() if n == m)
        vals[m] = _score(where, f"scores.{col}", v)
    topic = str(row.get("task_name") or row.get("cluster_id") or "general")
    rec = Record(prompt, cv.dataset, {}, None, "code", topic, "", where)
    gold, kind, answers = scored_replies(rec.task_id, vals, parse_choices(row.get("choices")))
    rec.answers, rec.answer_type, rec.made_up = answers, kind, True
    rec.gold = graded_gold(answers, gold) if kind == "graded" else gold
    return rec


def routerbench_record(cv: Converter, where: str, row: dict[str, Any]) -> Record:
    key = "prompt" if "prompt" in row else "question"
    prompt = _text(where, row, key)
    if isinstance(prompt, str) and prompt.startswith("[") and prompt.endswith("]"):  # RouterBench keeps prompts as a one-item list
        try:
            items = ast.literal_eval(prompt)
            if isinstance(items, list) and items and all(isinstance(x, str) for x in items):
                prompt = "\n".join(items)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    vals, costs = {}, {}
    for col, m in cv.columns.items():
        if col not in row:
            raise RecordError(where, col, "no such column", f"the table's model columns are {sorted(c for c in row if '|' not in c)}")
        vals[m] = _score(where, col, row[col])
        costs[m] = _cost(where, f"{col}|total_cost", row.get(f"{col}|total_cost"))
    topic = str(row.get("eval_name") or row.get("topic") or "general")
    rec = Record(prompt, cv.dataset, {}, None, "code", topic, str(row.get("sample_id") or ""), where)
    gold, kind, answers = scored_replies(rec.task_id, vals, choice_letters(prompt) if _CHOICE_LINE.search(prompt) else None)
    for m, a in answers.items():
        a.cost = costs[m]
    rec.answers, rec.answer_type, rec.made_up = answers, kind, True
    rec.gold = graded_gold(answers, gold) if kind == "graded" else gold
    return rec


CONVERTERS: dict[str, Callable[[Converter, str, dict[str, Any]], Record]] = {
    "routellm": routellm_record,
    "mmlu-pro": mmlu_pro_record,
    "dcrouter": dcrouter_record,
    "llmrouter": dcrouter_record,
    "routerbench": routerbench_record,
}


def group_rows(fmt: str, rows: Iterable[tuple[str, dict[str, Any]]], model_names: Callable[[str], str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Formats with one row per (task, model) -> one row per task in the `dcrouter` / `mmlu-pro`
    shape: LLMRouter routing rows (`query`, `model_name`, `performance`) and MMLU-Pro output
    rows (one file per model; `model_names(where)` names a row's model from its file)."""
    tasks: dict[str, tuple[str, dict[str, Any]]] = {}
    for where, row in rows:
        if fmt == "llmrouter-routing":
            q = _text(where, row, "query")
            m = _text(where, row, "model_name")
            first, task = tasks.setdefault(q, (where, {"query": q, "task_name": row.get("task_name") or "general", "choices": row.get("choices"), "scores": {}}))
            if m in task["scores"]:
                raise RecordError(where, "model_name", f"{m!r} already has a row for this query (at {first})", "one row per (query, model)")
            task["scores"][m] = row.get("performance")
        else:
            qid = _text(where, row, "question_id")
            m = model_names(where)
            first, task = tasks.setdefault(qid, (where, {k: row.get(k) for k in ("question_id", "question", "options", "answer", "category")} | {"models": {}}))
            for k in ("question", "answer"):
                if row.get(k) != task[k]:
                    raise RecordError(where, k, f"differs from the same question_id in {first}", "the files must be runs on the same questions")
            pred = row.get("pred")
            task["models"][m] = {"pred": pred, "correct": pred is not None and pred == row.get("answer"), "response": row.get("model_outputs") or ""}
    yield from tasks.values()


def outputs_model_name(where: str) -> str:
    """MMLU-Pro eval_results files are `model_outputs_<model>_5shots.json`: the model's name."""
    stem = Path(where.split(":")[0]).name.split(".")[0]
    return re.sub(r"_\d+shots$", "", stem.removeprefix("model_outputs_"))
