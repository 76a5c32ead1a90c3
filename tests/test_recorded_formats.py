"""Recorded datasets in every format we read (records.py): the shipped ten- and nine-model sets,
the importers on local files, the one grading rule per dataset, and bad rows refused with their
file, line and field."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl_router.aio import run_sync
from rl_router.answers import extract_final_answer, score_answer
from rl_router.errors import ConfigError
from rl_router.pools import RecordedPool, build_pool
from rl_router.pools.recorded_datasets import DATASETS
from rl_router.pools.records import mmlu_pro_prompt
from rl_router.prompts import SHORT_QUERY, pool_messages

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).with_name("rl-router"))


def mmlu_pro_rows(n: int | None = None, start: int = 0) -> list[dict]:
    rows = []
    with gzip.open(DATASETS["mmlu-pro"].path, "rt") as fh:
        for i, line in enumerate(fh):
            if i >= start:
                rows.append(json.loads(line))
            if n is not None and len(rows) >= n:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


# ---- the shipped sets --------------------------------------------------------------------------
def test_mmlu_pro_grading_reproduces_every_recorded_verdict():
    """One rule for MMLU-Pro: the reply's last 'answer is (X)' against gold. Replies whose kept
    text does not state the recorded letter are completed with it, so all 82,170 verdicts hold."""
    from rl_router.pools.records import completed_reply

    rows = mmlu_pro_rows()
    n = completed = 0
    for r in rows:
        for a in r["models"].values():
            text = completed_reply(a["response"], a["pred"])
            completed += text != a["response"]
            assert (score_answer(extract_final_answer(text, "choice"), r["answer"], "choice") == 1.0) == a["correct"]
            n += 1
    assert n == 82_170 and 3000 < completed < 4000


def test_packaged_multi_model_sets_load_with_all_models_and_cards():
    mp = RecordedPool.packaged(["mmlu-pro"])
    assert len(mp.model_names) == 10 and mp.card("gemini-1.5-pro-002").price_out == 5.0 and mp.card("gemini-1.5-flash-002").context == 1_000_000
    acc = {c.name: c.example_scores["mmlu-pro"] for c in mp.models}
    assert acc["gemini-1.5-pro-002"] == pytest.approx(0.719, abs=2e-3) and acc["mistral-7b-instruct-v0.2"] == pytest.approx(0.312, abs=2e-3)  # MANIFEST
    t = mp.tasks()[0]
    assert t.answer_type == "choice" and t.gold == "I" and t.question.startswith("[business] ") and "\nI. Unsafe practices" in t.question
    assert any("109 records repeat" in n for n in mp.notes)  # duplicates merged by the stated rule, and said
    dc = RecordedPool.packaged(["dcrouter"])
    assert len(dc.model_names) == 9 and len(dc.tasks()) == 5608 and dc.made_up_replies == {"dcrouter"}
    assert dc.card("llama-3.1-nemotron-51b-instruct").example_scores["dcrouter"] == pytest.approx(0.621, abs=1e-3)


def test_fractional_scores_are_first_class():
    """dcrouter's commongen scores are fractions: adopting a reply scores exactly its recorded
    score, every reply has one form, and the oracle takes the best score per task."""
    dc = RecordedPool.packaged(["dcrouter"])
    graded = [t for t in dc.tasks() if t.answer_type == "graded"]
    assert len(graded) == 150
    raw = {json.loads(x)["query"]: json.loads(x) for x in gzip.open(DATASETS["dcrouter"].path, "rt")}
    fractional = 0
    for t in graded:
        for m, a in dc.recorded(t.task_id).answers.items():
            want = raw[t.question]["scores"][m]
            assert score_answer(extract_final_answer(a.response), t.gold, "graded") == pytest.approx(want) == a.score
            assert a.response.startswith("The answer is ") and len(a.response) == len("The answer is 123456.")
            fractional += 0 < want < 1
    assert fractional > 500


def test_the_same_format_in_pool_files_reads_as_that_dataset(tmp_path):
    f = write_jsonl(tmp_path / "mine.jsonl.gz", mmlu_pro_rows(30))
    pool = build_pool({"type": "recorded", "files": [str(f)]})
    ref = RecordedPool.packaged(["mmlu-pro"])
    assert pool.model_names == ref.model_names and [c.price_in for c in pool.models] == [c.price_in for c in ref.models]
    assert len(pool.tasks()) == 30 and pool.file_task_ids == {t.task_id for t in pool.tasks()}
    sub = build_pool({"type": "recorded", "files": [str(f)], "models": ["gemini-1.5-flash-002", "gemini-1.5-pro-002"]})
    assert sub.model_names == ["gemini-1.5-flash-002", "gemini-1.5-pro-002"]
    with pytest.raises(ConfigError, match="pool.models: 'gpt-5' is not a model of"):
        build_pool({"type": "recorded", "datasets": ["mmlu-pro"], "models": ["gpt-5"]})


# ---- importers on local files ------------------------------------------------------------------
def test_routerbench_wide_table_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"sample_id": "s1", "prompt": "['What is 2+2?']", "eval_name": "arith", "small": 1.0, "small|total_cost": 0.0001, "small|model_response": "4", "big": 1.0, "big|total_cost": 0.002, "big|model_response": "4"},
        {"sample_id": "s2", "prompt": "['Name the capital of Peru.']", "eval_name": "geo", "small": 0.0, "small|total_cost": 0.0002, "small|model_response": "Cusco", "big": 0.5, "big|total_cost": 0.003, "big|model_response": "Lima?"},
    ]
    f = tmp_path / "rb.csv"
    with open(f, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    models = {"small": {"price_in": 0.1, "price_out": 0.1}, "big": {"price_in": 5, "price_out": 15}}
    for path in (f, tmp_path / "rb.parquet"):
        if path.suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        pool = RecordedPool.from_files([path], models)
        t1, t2 = pool.tasks()
        assert t1.question == "What is 2+2?" and t1.topic == "arith" and t2.answer_type == "graded"
        rec = pool.recorded(t2.task_id)
        assert rec.answers["big"].score == 0.5 and rec.answers["small"].score == 0.0
        c = run_sync(pool.complete("big", pool_messages(t2.question, SHORT_QUERY), context=t2.context()))
        assert c.cost == pytest.approx(0.003)  # the recorded cost, not the card's prices
        assert score_answer(extract_final_answer(c.text), t2.gold, t2.answer_type) == 0.5


def test_llmrouter_json_list_and_routing_rows(tmp_path):
    models = json.loads((ROOT / "rl_router" / "data" / "dcrouter_models.json").read_text())
    listed = [{"question": f"Q{i}: what is {i}?", "scores": {m: float((i + j) % 2) for j, m in enumerate(models)}, "cluster_id": i % 3} for i in range(6)]
    f = tmp_path / "train.json"
    f.write_text(json.dumps(listed))
    pool = RecordedPool.from_files([f])
    assert pool.model_names == list(DATASETS["dcrouter"].models) and len(pool.tasks()) == 6  # the dcrouter models: read as that dataset
    long = [{"query": r["question"], "model_name": m, "performance": s, "task_name": "toy"} for r in listed[:3] for m, s in r["scores"].items()]
    g = write_jsonl(tmp_path / "routing_data_train.jsonl", long)
    pool2 = RecordedPool.from_files([g])
    assert len(pool2.tasks()) == 3 and pool2.tasks()[0].topic == "toy"
    for t in pool2.tasks():
        src = next(r for r in listed if r["question"] == t.question)
        assert {m: a.score for m, a in pool2.recorded(t.task_id).answers.items()} == src["scores"]


def test_mmlu_pro_eval_results_files_one_per_model(tmp_path):
    """MMLU-Pro's own output files (one JSON list per model, named model_outputs_<model>_5shots)."""
    rows = mmlu_pro_rows(5)
    names = {"gemini-1.5-flash-002": "model_outputs_gemini-1.5-flash-002_5shots.json", "deepseek-coder-v2": "model_outputs_DeepSeek-Coder-V2_5shots.json"}
    for m, fname in names.items():
        items = [{"question_id": int(r["question_id"]), "question": r["question"], "options": r["options"], "answer": r["answer"], "answer_index": "ABCDEFGHIJ".index(r["answer"]),
                  "category": r["category"], "src": r["src"], "pred": r["models"][m]["pred"], "model_outputs": r["models"][m]["response"]} for r in rows]
        (tmp_path / fname).write_text(json.dumps(items))
    pool = RecordedPool.from_files([tmp_path / f for f in names.values()], models=list(names))
    assert pool.model_names == list(names) and len(pool.tasks()) == 5
    for t, r in zip(pool.tasks(), rows):
        for m in names:
            assert pool.recorded(t.task_id).answers[m].score == float(r["models"][m]["correct"])


def test_hf_dataset_through_load_dataset_on_a_local_file(tmp_path):
    f = write_jsonl(tmp_path / "mp.jsonl", mmlu_pro_rows(12))
    pool = build_pool({"type": "recorded", "hf_dataset": {"path": "json", "data_files": str(f)}})
    assert len(pool.tasks()) == 12 and pool.model_names == list(DATASETS["mmlu-pro"].models)
    with pytest.raises(ConfigError, match="pool.hf_dataset: could not be loaded"):
        build_pool({"type": "recorded", "hf_dataset": {"path": "json", "data_files": str(tmp_path / "missing.jsonl")}})


def test_bom_and_csv_text_verdicts_read_by_rule(tmp_path):
    f = tmp_path / "bom.csv"
    f.write_bytes("\ufeffprompt,cheap,strong\nWhat is 1+1?,TRUE,1\n".encode("utf-8"))
    pool = RecordedPool.from_files([f], {"cheap": {"price_in": 1, "price_out": 1}, "strong": {"price_in": 9, "price_out": 9}})
    t = pool.tasks()[0]
    assert t.question == "What is 1+1?" and all(a.score == 1.0 for a in pool.recorded(t.task_id).answers.values())


# ---- bad rows: refused with file, line and field -----------------------------------------------
BAD_MMLU_PRO = [
    ("missing gold", lambda r: r.pop("answer"), "answer: is missing or empty"),
    ("gold not an option", lambda r: r.update(answer="Z"), "answer: gold letter 'Z' is not one of the options"),
    ("unknown model", lambda r: r["models"].update({"gpt-9": r["models"]["gemini-1.5-pro-002"]}), "models.gpt-9: is a model this dataset does not know"),
    ("model absent", lambda r: r["models"].pop("jamba-1.5-large"), "models.jamba-1.5-large: is missing from this row"),
    ("verdict as a string", lambda r: r["models"]["command-r-v01"].update(correct="false"), "models.command-r-v01.correct: expected a boolean, got the string 'false'"),
    ("verdict contradicts pred", lambda r: r["models"]["command-r-v01"].update(correct=not r["models"]["command-r-v01"]["correct"]), "models.command-r-v01.correct: says"),
    ("options not a list", lambda r: r.update(options="A or B"), "options: expected a list of 2-10 option texts"),
]


@pytest.mark.parametrize("what,change,message", BAD_MMLU_PRO, ids=[b[0] for b in BAD_MMLU_PRO])
def test_bad_mmlu_pro_rows_are_refused_with_file_line_and_field(tmp_path, what, change, message):
    rows = mmlu_pro_rows(4)
    change(rows[2])
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as e:
        build_pool({"type": "recorded", "files": [str(f)]})
    assert f"{f}:3: " in str(e.value) and message in str(e.value), str(e.value)


def test_bad_score_rows_are_refused(tmp_path):
    base = json.loads(next(iter(gzip.open(DATASETS["dcrouter"].path, "rt"))))
    for value, msg in (("high", "expected a score in [0, 1], got 'high'"), (1.5, "expected a finite score in [0, 1], got 1.5"), (float("nan"), "expected a finite score")):
        row = json.loads(json.dumps(base))
        row["scores"]["gemma-2-9b-it"] = value
        f = tmp_path / "dc.jsonl"
        f.write_text(json.dumps(base) + "\n" + json.dumps(row, allow_nan=True) + "\n")
        with pytest.raises(ConfigError) as e:
            build_pool({"type": "recorded", "files": [str(f)]})
        assert f"{f}:2: scores.gemma-2-9b-it: {msg}" in str(e.value)


def test_bad_lines_and_costs_are_refused(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text(json.dumps(mmlu_pro_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(ConfigError, match=rf"{f}:2: json: not valid JSON"):
        build_pool({"type": "recorded", "files": [str(f)]})
    g = tmp_path / "neg.csv"
    g.write_text("prompt,cheap,cheap_cost,strong\nq1?,True,-0.5,False\n")
    with pytest.raises(ConfigError, match=rf"{g}:2: cheap_cost: expected a finite cost >= 0 USD, got '-0.5'"):
        RecordedPool.from_files([g], {"cheap": {"price_in": 1, "price_out": 1}, "strong": {"price_in": 9, "price_out": 9}})
    h = tmp_path / "nogold.csv"  # response text without gold: the verdicts are replayed, never scored 0
    h.write_text("prompt,cheap,cheap_response,strong,strong_response\nq1?,True,yes,False,no\n")
    pool = RecordedPool.from_files([h], {"cheap": {"price_in": 1, "price_out": 1}, "strong": {"price_in": 9, "price_out": 9}})
    t = pool.tasks()[0]
    assert {m: a.score for m, a in pool.recorded(t.task_id).answers.items()} == {"cheap": 1.0, "strong": 0.0}


# ---- a held-out file, evaluated without code -----------------------------------------------------
def test_eval_baselines_on_a_held_out_file_equal_a_plain_computation(tmp_path):
    """`rl-router eval oracle --recipe recipes/mmlu_pro.yaml --set pool.files=[F]`: F's questions
    are the held-out set (data.heldout_by: files); always-<model> and the oracle equal what a
    few lines of plain Python compute from F by the stated rules (graded: the recorded verdict;
    billed: chars/4 of the task and sub-query + 4, chars/4 of the recorded response)."""
    rows = mmlu_pro_rows(150, start=4000)
    f = write_jsonl(tmp_path / "held.jsonl.gz", rows)
    out = tmp_path / "ev"
    env = {**os.environ, "RL_ROUTER_NO_PROGRESS": "1", "COLUMNS": "250"}
    p = subprocess.run([BIN, "eval", "oracle", "--recipe", str(ROOT / "recipes" / "mmlu_pro.yaml"), "--set", f"pool.files=[{f}]", "--output-dir", str(out)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "eval.json").read_text())
    prices = json.loads((ROOT / "rl_router" / "data" / "mmlu_pro_models.json").read_text())
    seen, tasks = set(), []
    for r in rows:  # one task per prompt: the first record kept
        prompt = mmlu_pro_prompt(r["question"], r["options"], r["category"])
        if prompt.lower() not in seen:
            seen.add(prompt.lower())
            tasks.append((prompt, r))
    assert res["tasks"] == len(tasks)

    def cost(prompt: str, response: str, m: str) -> float:
        sent = math.ceil(len(prompt + "\n\n" + SHORT_QUERY) / 4) + 4
        return (sent * prices[m]["price_in"] + math.ceil(len(response) / 4) * prices[m]["price_out"]) / 1e6

    for m in prices:
        s = res["policies"][f"always-{m}"]
        assert s["quality"] == pytest.approx(sum(r["models"][m]["correct"] for _, r in tasks) / len(tasks), abs=1e-12)
        assert s["mean_cost"] == pytest.approx(sum(cost(p_, r["models"][m]["response"], m) for p_, r in tasks) / len(tasks), rel=1e-9)
    oq = oc = 0.0
    for p_, r in tasks:  # the oracle: per task the cheapest model with the best score
        right = [m for m in prices if r["models"][m]["correct"]] or list(prices)
        m = min(right, key=lambda m: cost(p_, r["models"][m]["response"], m))
        oq += r["models"][m]["correct"]
        oc += cost(p_, r["models"][m]["response"], m)
    assert res["policies"]["oracle"]["quality"] == pytest.approx(oq / len(tasks)) and res["policies"]["oracle"]["mean_cost"] == pytest.approx(oc / len(tasks))
    assert "agreement cascade" in res["policies"] and "knn-tfidf" in res["policies"] and "per-category" in res["policies"]
    assert "* gemini-1.5-flash-002" in p.stdout and (out / "frontier.png").stat().st_size > 20_000
