"""Every boundary of issue 33, fuzzed with hypothesis: recipes, pool cards, pool files, task
files, step files, requests to `serve` and `pool-server` (real servers on 127.0.0.1), a live
pool's replies (a real server on 127.0.0.1 answering whatever hypothesis draws), and the output
folders we write. The properties:

- any input is accepted or refused with one `ConfigError` (the CLI's one line, exit 2), never
  another exception (a traceback);
- a server answers every request with JSON in OpenAI's error shape and a 4xx, or a 200, never a
  500 / 501 and never nothing;
- a reply a pool cannot parse is a pool error for that call (a Completion with `error`), never
  an exception that ends the rollout;
- no file outside the output folder changes, and no file inside it we did not write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rl_router.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
#: examples per property: modest, so the suite stays fast; RL_ROUTER_FUZZ_EXAMPLES=500 for a deeper sweep
FUZZ = settings(max_examples=int(os.environ.get("RL_ROUTER_FUZZ_EXAMPLES", "30")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])

# ---- values a user (or an attacker) might put anywhere ----------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20) | st.sampled_from(["1e-1", ".nan", "-.inf", "1_000", "0x10", "\ud800", "http://bob:hunter2@h/v1", "", " ", "../x"]))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)


def nested(depth: int, leaf: object = 1) -> object:
    """A value nested `depth` lists deep, built without recursion."""
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


deep = st.integers(65, 400).map(nested)  # deeper than any document may be, still serialisable
deep_text = st.integers(65, 5000).map(lambda n: "[" * n + "1" + "]" * n)  # past Python's recursion limit too
anything = values | deep


def accepted_or_config_error(fn, *a, **kw):
    """fn's result, or None when it raised ConfigError; any other exception fails the test."""
    try:
        return fn(*a, **kw)
    except ConfigError as e:
        assert str(e) and len(str(e).splitlines()) == 1, str(e)  # one line, whatever breaks a line (\n, \r, NEL, U+2028, ...)
        return None


# ---- recipes ----------------------------------------------------------------------------------
RECIPE_FIELDS = [
    "output_dir", "model.name_or_path", "model.hidden_size", "model.lora", "pool.type", "pool.max_error_rate", "pool.datasets", "pool.models",
    "env.budget", "env.max_turns", "env.name", "rollout.temperature", "rollout.top_p", "rollout.batch_size", "rewards", "trainer.learning_rate",
    "trainer.max_steps", "trainer.report_to", "trainer.num_generations", "algorithm.name", "algorithm.neither_rate", "algorithm.cascade_models",
    "sft.max_steps", "data.source", "data.heldout_fraction", "data.max_train", "data.hf", "data.world", "nonsense", "trainer.nonsense",
]


@FUZZ
@given(field=st.sampled_from(RECIPE_FIELDS), value=anything)
def test_any_value_at_any_recipe_field_is_a_recipe_or_one_config_error(tmp_path_factory, field, value):
    import yaml

    from rl_router.recipe import load_recipe

    raw: dict = {}
    node = raw
    *parents, last = field.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    f = tmp_path_factory.mktemp("recipe") / "r.yaml"
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except (yaml.YAMLError, RecursionError):
        text = json.dumps(raw, allow_nan=True)  # YAML is a superset of JSON
    f.write_text(text, errors="surrogatepass")
    r = accepted_or_config_error(load_recipe, str(f))
    if r is not None:  # a recipe that loads holds no credential, and an output folder that is a folder
        assert "hunter2" not in json.dumps(r.to_dict(), default=str) and r.output_dir.strip()


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")) | deep_text | deep_text.map(lambda t: "trainer: " + t))
@example(text="0\n\x850")  # found by this test in CI: YAML reads it as the string "0\n0", which the error quoted on two lines
@example(text="a\u2028b")
def test_any_recipe_text_is_a_recipe_or_one_config_error(tmp_path_factory, text):
    from rl_router.recipe import load_recipe

    f = tmp_path_factory.mktemp("recipe") / "r.yaml"
    f.write_bytes(text.encode("utf-8", "surrogatepass"))
    accepted_or_config_error(load_recipe, str(f))


@FUZZ
@given(key=st.sampled_from(["trainer.max_steps", "env.budget", "pool.datasets", "data.world", "x", "a.b.c", "trainer", ""]), value=st.text(max_size=40) | deep_text)
def test_any_set_override_is_a_recipe_or_one_config_error(key, value):
    from rl_router.recipe import load_recipe

    accepted_or_config_error(load_recipe, None, [f"{key}={value}"])


# ---- pool cards -------------------------------------------------------------------------------
card_fields = st.dictionaries(st.sampled_from(["price_in", "price_out", "latency_ms", "context", "strengths", "example_scores", "skills", "base_url", "api_key_env", "model_id", "column", "pric_in"]),
                              anything, max_size=5)


@FUZZ
@given(kind=st.sampled_from(["simulated", "openai", "recorded"]), a=card_fields, b=card_fields)
def test_any_card_is_a_pool_of_finite_prices_or_one_config_error(kind, a, b):
    from rl_router.pools import build_pool

    if kind == "openai":  # a reachable-looking URL unless hypothesis drew one
        a.setdefault("base_url", "http://127.0.0.1:9/v1")
        b.setdefault("base_url", "http://127.0.0.1:9/v1")
    names = ("mixtral-8x7b", "gpt-4-1106")
    pool = accepted_or_config_error(build_pool, {"type": kind, "models": dict(zip(names, (a, b)))})
    if pool is not None:
        import math

        for c in pool.models:
            assert all(math.isfinite(x) and x >= 0 for x in (c.price_in, c.price_out, c.latency_ms)), c


# ---- pool files, task files, step files -------------------------------------------------------
lines = st.lists(st.one_of(values.map(lambda v: json.dumps(v, allow_nan=True)), st.text(max_size=40), deep_text, deep_text.map(lambda t: '{"a": ' + t + "}"), st.just("")), min_size=1, max_size=5)


@FUZZ
@given(rows=lines, suffix=st.sampled_from([".jsonl", ".csv", ".json"]))
def test_any_pool_file_is_a_pool_or_one_config_error(tmp_path_factory, rows, suffix):
    from rl_router.pools import build_pool

    f = tmp_path_factory.mktemp("pool") / f"rows{suffix}"
    f.write_text("\n".join(rows), errors="surrogatepass")
    accepted_or_config_error(build_pool, {"type": "recorded", "files": [str(f)]})


good_task = {"question": "What is 2+2?", "gold": "4", "answer_type": "number"}
task_fields = st.fixed_dictionaries({}, optional={"question": anything, "gold": anything, "answer_type": anything, "topic": anything, "task_id": anything})


@FUZZ
@given(rows=st.lists(st.one_of(task_fields.map(lambda d: json.dumps({**good_task, **d}, allow_nan=True)), lines.map("\n".join)), min_size=1, max_size=4))
def test_any_task_file_is_tasks_or_one_config_error(tmp_path_factory, rows):
    from rl_router.task_sources import load_task_file

    f = tmp_path_factory.mktemp("tasks") / "t.jsonl"
    f.write_text("\n".join(rows), errors="surrogatepass")
    tasks = accepted_or_config_error(load_task_file, str(f))
    if tasks is not None:
        assert tasks and all(isinstance(t.question, str) and t.question for t in tasks)


good_step = {"task_id": "t", "step": 0, "messages": [{"role": "user", "content": "x"}], "completion": "", "tiers": {"a": {"cost": 0.1, "correct": True}}, "target": "a"}
step_fields = st.fixed_dictionaries({}, optional={k: anything for k in good_step})


@FUZZ
@given(rows=st.lists(st.one_of(step_fields.map(lambda d: json.dumps({**good_step, **d}, allow_nan=True)), lines.map("\n".join)), min_size=1, max_size=4))
def test_any_step_file_is_records_or_one_config_error(tmp_path_factory, rows):
    import math

    from rl_router.evaluation.steplog import read_steps

    f = tmp_path_factory.mktemp("steps") / "s.jsonl"
    f.write_text("\n".join(rows), errors="surrogatepass")
    recs = accepted_or_config_error(read_steps, f)
    for r in recs or []:
        assert r.target in r.tiers and all(math.isfinite(t["cost"]) and t["cost"] >= 0 for t in r.tiers.values())


# ---- requests to the two servers --------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(recorded_pool):
    from rl_router.envs import RoutingEnvConfig
    from rl_router.pools.server import PoolServer
    from rl_router.serving.router_server import RouterServer
    from rl_router.tiny import build_tiny_router

    model, tok = build_tiny_router(seed=1)
    router = RouterServer(model, tok, recorded_pool, RoutingEnvConfig(budget=0.05, max_turns=2), model_id="tiny", max_new_tokens=4, max_completion_tokens=96, port=0).start()
    pool = PoolServer(recorded_pool).start()
    yield {"serve": router.url, "pool-server": pool.url}, recorded_pool.tasks()[0]
    router.stop()
    pool.stop()


messages = st.lists(st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant", "bot"]) | anything, "content": st.text(max_size=20) | anything}), max_size=3)
chat_fields = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["tiny", "mixtral-8x7b", "gpt-4-1106"]) | anything, "messages": messages | anything, "temperature": anything, "top_p": anything,
    "max_tokens": anything, "n": anything, "stream": anything, "stream_options": anything, "rl_router_context": anything, "user": anything,
})
bodies = st.one_of(chat_fields.map(lambda d: json.dumps(d, allow_nan=True).encode()), anything.map(lambda v: json.dumps(v, allow_nan=True).encode()), st.binary(max_size=64),
                   st.sampled_from([b'{"messages": [{"role": "user", "content": "\\ud800"}], "model": "mixtral-8x7b"}', b'{"a": 1, "a": 2}', b'[' * 100_000, b'{"messages": [5]}']))


def _check_reply(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code != 200:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["code"] == r.status_code


@FUZZ
@given(which=st.sampled_from(["serve", "pool-server"]), body=bodies)
def test_any_request_body_gets_a_json_answer_never_a_500(servers, which, body):
    urls, _task = servers
    _check_reply(httpx.post(f"{urls[which]}/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["serve", "pool-server"]), extra=st.fixed_dictionaries({}, optional={"temperature": anything, "max_tokens": anything, "n": anything, "stream": anything, "stream_options": anything}))
def test_a_real_task_with_any_options_is_answered_or_refused(servers, which, extra):
    """A question the recorded pool holds, so a valid request runs a real episode / pool call."""
    urls, task = servers
    body = {"model": "tiny" if which == "serve" else "mixtral-8x7b", "messages": [{"role": "user", "content": task.question}], **extra}
    _check_reply(httpx.post(f"{urls[which]}/chat/completions", content=json.dumps(body, allow_nan=True).encode(), timeout=60))


@pytest.mark.parametrize("which", ["serve", "pool-server"])
def test_openai_request_rules_on_both_servers(servers, which):
    urls, task = servers
    base = urls[which]
    ok = {"model": "tiny" if which == "serve" else "mixtral-8x7b", "messages": [{"role": "user", "content": task.question}]}

    def post(**kw):
        return httpx.post(f"{base}/chat/completions", json={**ok, **kw}, timeout=60)

    for bad, field in (({"n": 2}, "n"), ({"stream": "false"}, "stream"), ({"stream_options": "yes"}, "stream_options"), ({"max_tokens": "5"}, "max_tokens"), ({"temperature": 9}, "temperature")):
        r = post(**bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (bad, r.text)
    r = httpx.post(f"{base}/chat/completions", content=b'{"model": "x", "messages": [{"role": "user", "content": "\\udc00"}]}', timeout=60)
    assert r.status_code == 400 and "Unicode" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/chat/completions", content=b"[" * 100_000, timeout=60)
    assert r.status_code == 400 and "nested" in r.json()["error"]["message"]
    assert post(n=1).status_code == 200
    for method in ("GET", "PUT", "DELETE", "PATCH"):  # a wrong method on a route that exists: 405 naming the right one
        r = httpx.request(method, f"{base}/chat/completions", timeout=60)
        assert r.status_code == 405 and r.headers.get("allow") == "POST" and r.json()["error"]["code"] == 405, (method, r.text)
    r = httpx.post(f"{base}/models", timeout=60)
    assert r.status_code == 405 and "GET" in r.headers.get("allow", "").split(", ")
    assert httpx.get(f"{base}/nope", timeout=60).status_code == 404


def test_stream_false_as_a_bool_does_not_stream(servers):
    urls, task = servers
    r = httpx.post(f"{urls['serve']}/chat/completions", json={"messages": [{"role": "user", "content": task.question}], "stream": False}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")


# ---- a live pool's replies --------------------------------------------------------------------
@pytest.fixture(scope="module")
def replies():
    from test_boundaries import _Server  # answers every POST with the bytes it is given (tests/ is on sys.path)

    s = _Server()
    yield s
    s.httpd.shutdown()


reply_bodies = st.one_of(
    deep_text.map(lambda t: ('{"choices": [{"message": {"content": ' + t + "}}]}").encode()),
    deep_text.map(lambda t: ('{"choices": [{"message": {"content": "ok"}}], "usage": ' + t + "}").encode()),
    st.integers(1000, 50_000).map(lambda n: b'{"choices": ' + b"[" * n + b"]" * n + b"}"),
    st.binary(max_size=64), anything.map(lambda v: json.dumps({"choices": v}, allow_nan=True).encode()),
)


@FUZZ
@given(body=reply_bodies)
def test_any_live_reply_is_a_completion_or_a_pool_error(replies, body):
    import math

    from rl_router.aio import run_sync
    from rl_router.pools import Endpoint, ModelCard, OpenAIPool, RetryPolicy

    replies.body = body
    pool = OpenAIPool([Endpoint(ModelCard("m", 1.0, 2.0), replies.url, "m")], retry=RetryPolicy(max_retries=0), timeout_s=10)
    try:
        c = run_sync(pool.complete("m", [{"role": "user", "content": "What is 2+2?"}]))
    finally:
        run_sync(pool.aclose())
    assert isinstance(c.text, str) and math.isfinite(c.cost) and c.cost >= 0
    assert c.error is None or c.cost == 0


# ---- output folders: nothing outside changes, nothing of a user's inside ----------------------
names = st.sampled_from(["recipe.json", "metrics.json", "eval.json", "README.md", "notes.txt", "model.safetensors", "config.json", ".rl-router-owned.json", ".rl-router-export.json"])
listed = st.lists(st.sampled_from(["../victim.txt", "/etc/passwd", "..", ".", "", "a/../../victim.txt", "README.md", "config.json", "notes.txt", "model.safetensors"]) | st.text(max_size=10), max_size=6)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@FUZZ
@given(user_files=st.lists(names, max_size=4, unique=True), manifest=listed, marker=st.booleans(), overwrite=st.booleans())
def test_export_placement_never_touches_a_file_outside_or_a_users_file(tmp_path_factory, user_files, manifest, marker, overwrite):
    from rl_router.owned import MARKER
    from rl_router.serving.export import LEGACY_MANIFEST, _place

    base = tmp_path_factory.mktemp("place")
    (base / "victim.txt").write_text("keep me")
    out = base / "out"
    out.mkdir()
    for n in user_files:
        (out / n).write_text(f"user's {n}")
    if marker:
        (out / MARKER).write_text(json.dumps({"written_by": "rl-router", "kind": "export", "files": manifest}))
    else:
        (out / LEGACY_MANIFEST).write_text(json.dumps({"files": manifest}))
    stage = base / "stage"
    stage.mkdir()
    for n in ("README.md", "config.json", "model.safetensors"):
        (stage / n).write_text(f"ours {n}")
    before_outside = (base / "victim.txt").read_bytes()
    before = _snapshot(out)
    ours = set(json.loads((out / MARKER).read_text())["files"]) if marker else set(manifest)
    try:
        _place(stage, out, overwrite=overwrite)
    except ConfigError:
        assert _snapshot(out) == before  # refused: nothing changed
    else:
        after = _snapshot(out)
        for n in user_files:  # a user's file survives unless we listed it, or --overwrite replaced it by name
            if n in (MARKER, LEGACY_MANIFEST) or n in ours:
                continue
            assert n in after and (after[n] == before[n] or (overwrite and n in ("README.md", "config.json", "model.safetensors"))), n
        assert {"README.md", "config.json", "model.safetensors"} <= set(after)
    assert (base / "victim.txt").read_bytes() == before_outside
    assert sorted(p.name for p in base.iterdir()) == ["out", "stage", "victim.txt"]


@FUZZ
@given(user_files=st.lists(names, min_size=1, max_size=4, unique=True))
def test_a_run_folder_holding_a_users_files_is_refused_and_left_as_it_was(tmp_path_factory, user_files):
    from rl_router.owned import MARKER, claim_run

    out = tmp_path_factory.mktemp("run")
    for n in user_files:
        (out / n).write_text(f"user's {n}")
    before = _snapshot(out)
    assume(user_files != [MARKER])
    try:
        claim_run(out)
    except ConfigError as e:
        assert "did not write" in str(e) or "damaged" in str(e)
        assert _snapshot(out) == before
    else:
        assert MARKER in user_files  # only a folder that says it is ours is claimed


def test_train_into_a_users_folder_is_refused_before_any_work(tmp_path):
    """The CLI end to end: the user's files are byte for byte as they were, nothing was added."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "recipe.json").write_text('{"mine": true}')
    (out / "metrics.json").write_text("{}")
    before = _snapshot(out)
    p = _cli("quickstart", "--output-dir", str(out))
    assert p.returncode == 2 and "holds files rl-router did not write (metrics.json, recipe.json)" in p.stdout, p.stdout + p.stderr
    assert _snapshot(out) == before and sorted(x.name for x in out.iterdir()) == ["metrics.json", "recipe.json"]


def test_export_over_an_earlier_export_follows_no_listed_path_out(tmp_path):
    """The CLI end to end: an earlier export's manifest lists `../victim.txt` (hand-edited, or
    written by an attacker); re-exporting replaces our files there, keeps the user's file, and
    the file beside the folder is untouched."""
    from rl_router.recipe import load_recipe
    from rl_router.tiny import build_tiny_router

    build_tiny_router(save_dir=tmp_path / "run" / "final", seed=0)
    (tmp_path / "run" / "recipe.json").write_text(json.dumps(load_recipe(None, []).to_dict()))
    (tmp_path / "victim.txt").write_text("keep me")
    out = tmp_path / "e"
    out.mkdir()
    (out / ".rl-router-export.json").write_text(json.dumps({"files": ["../victim.txt", "/etc/hostname", "README.md"]}))
    (out / "README.md").write_text("our old card")
    (out / "notes.txt").write_text("mine")
    p = _cli("export", str(tmp_path / "run"), "--repo-id", "a/b", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert (tmp_path / "victim.txt").read_text() == "keep me" and (out / "notes.txt").read_text() == "mine"
    assert "our old card" not in (out / "README.md").read_text() and (out / "model.safetensors").is_file()
    listed = json.loads((out / ".rl-router-owned.json").read_text())["files"]
    assert "notes.txt" not in listed and "model.safetensors" in listed and all("/" not in n for n in listed)


def test_a_url_password_never_reaches_a_file_or_a_line(tmp_path):
    """Refused with the recipe (nothing written), and the password is not in the error line."""
    r = tmp_path / "r.yaml"
    r.write_text("pool: {type: openai, models: {m: {base_url: 'http://bob:hunter2@127.0.0.1:1/v1', price_in: 1, price_out: 1}}}\ndata: {source: synthetic}\n")
    p = _cli("train", str(r), "--output-dir", str(tmp_path / "out"))
    assert p.returncode == 2 and "holds credentials in a URL" in p.stdout and "hunter2" not in p.stdout + p.stderr
    assert not (tmp_path / "out").exists()
    from rl_router.redact import redact, redact_obj

    assert redact("see https://bob:hunter2@h/v1 and ftp://tok@x") == "see https://***@h/v1 and ftp://***@x"
    assert "hunter2" not in json.dumps(redact_obj({"a": ["http://u:hunter2@h"]}))


# ---- the environment the CLI starts in ---------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "RL_ROUTER_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "rl_router.cli", *args], capture_output=True, text=True, env=e, cwd=ROOT)


@pytest.mark.parametrize("columns", ["abc", "0", "-5"])
def test_a_useless_columns_still_prints_one_error_line(tmp_path, columns):
    p = _cli("eval", str(tmp_path / "nope"), env={"COLUMNS": columns})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("error")] == [ln for ln in p.stdout.splitlines() if ln.strip()] and "is neither a model folder" in p.stdout


def test_world_size_not_a_number_is_one_line(tmp_path):
    p = _cli("quickstart", "--output-dir", str(tmp_path / "out"), env={"WORLD_SIZE": "abc"})
    assert p.returncode == 2 and "WORLD_SIZE: 'abc' is not a number of processes" in p.stdout, p.stdout + p.stderr[-2000:]


def test_an_empty_trainer_section_takes_set_overrides(tmp_path):
    from rl_router.recipe import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("trainer:\nsft:\n")
    assert load_recipe(str(f), ["trainer.max_steps=3", "sft.max_steps=5"]).trainer["max_steps"] == 3


def test_yaml_12_numbers_mean_the_same_in_a_recipe_and_in_a_card():
    from rl_router.parsing import parse_yaml
    from rl_router.pools import build_pool

    doc = parse_yaml("price_in: 1e-1\nprice_out: 2E+0\nname: 1e\n", "card")
    assert doc == {"price_in": 0.1, "price_out": 2.0, "name": "1e"}
    pool = build_pool({"type": "simulated", "models": {"a": {"price_in": doc["price_in"], "price_out": 1}, "b": {"price_in": 1, "price_out": doc["price_out"]}}})
    assert pool.card("a").price_in == 0.1

