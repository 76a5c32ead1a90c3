"""Every boundary where a value enters, tried with values drawn by hypothesis:

- any JSON a server replies with becomes a Completion or a pool error, never an exception, and
  never a negative or non-finite cost (a real local server on 127.0.0.1);
- any recorded row becomes a task or an error naming its file, line and field;
- any scalar at any recipe field is valid, or refused with exit 2 before any work starts.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_router.aio import run_sync
from rl_router.errors import ConfigError, RouterError
from rl_router.pools import Endpoint, ModelCard, OpenAIPool, RetryPolicy

json_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4), max_leaves=12)
usage = st.fixed_dictionaries({}, optional={"prompt_tokens": json_values, "completion_tokens": json_values, "total_tokens": json_values})
content = st.one_of(st.text(max_size=50), st.none(), json_values, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}), max_size=3))
replies = st.one_of(
    json_values,
    st.fixed_dictionaries({"choices": st.just([{"message": {"role": "assistant", "content": "ok"}}])}, optional={"usage": usage | json_values}),
    st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries({"message": st.fixed_dictionaries({}, optional={"content": content})}), max_size=2)}, optional={"usage": usage}),
)


class _Server:
    """Answers every POST with the body it is given (json.dumps with NaN / Infinity allowed,
    as a broken server might send them), or raw bytes."""

    def __init__(self):
        self.body: bytes = b"{}"
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()


def _pool(url: str) -> OpenAIPool:
    return OpenAIPool([Endpoint(ModelCard("m", 1.0, 2.0), url, "m")], retry=RetryPolicy(max_retries=0), timeout_s=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(reply=replies)
def test_any_json_reply_is_a_completion_or_a_pool_error(server, reply):
    server.body = json.dumps(reply, allow_nan=True).encode()
    pool = _pool(server.url)
    try:
        c = run_sync(pool.complete("m", [{"role": "user", "content": "What is 2+2?"}]))
    finally:
        run_sync(pool.aclose())
    assert isinstance(c.text, str)
    assert math.isfinite(c.cost) and c.cost >= 0 and c.prompt_tokens >= 0 and c.completion_tokens >= 0
    if c.error is None:
        assert c.cost == pytest.approx((c.prompt_tokens * 1.0 + c.completion_tokens * 2.0) / 1e6)


def test_a_huge_reply_is_refused_before_it_is_read_whole(server):
    server.body = json.dumps({"choices": [{"message": {"content": "x" * (3 * 2**20)}}]}).encode()
    pool = _pool(server.url)
    c = run_sync(pool.complete("m", [{"role": "user", "content": "hi"}]))
    run_sync(pool.aclose())
    assert c.error and "MiB cap" in c.error and c.cost == 0


def test_a_negative_usage_never_hands_budget_back(server):
    server.body = json.dumps({"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": -2_000_000, "completion_tokens": "abc"}}).encode()
    pool = _pool(server.url)
    c = run_sync(pool.complete("m", [{"role": "user", "content": "What is 2+2?"}]))
    run_sync(pool.aclose())
    assert c.ok and c.prompt_tokens > 0 and c.completion_tokens == 1 and c.cost > 0  # our own counts instead


def test_a_key_quoted_in_an_error_is_redacted(server, monkeypatch):
    monkeypatch.setenv("MY_POOL_KEY", "sk-supersecret-123456")

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"error": {"message": f"bad header {self.headers.get('Authorization')}"}}).encode()
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    pool = OpenAIPool([Endpoint(ModelCard("m", 1.0, 2.0), f"http://127.0.0.1:{httpd.server_address[1]}/v1", "m", "MY_POOL_KEY")], retry=RetryPolicy(max_retries=0))
    c = run_sync(pool.complete("m", [{"role": "user", "content": "hi"}]))
    run_sync(pool.aclose())
    httpd.shutdown()
    assert c.error and "sk-supersecret" not in c.error and "Bearer ***" in c.error


# ---- recorded rows -------------------------------------------------------------------------------
row_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=3), st.dictionaries(st.text(max_size=8), json_scalars, max_size=3))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["query", "task_name", "choices", "scores", "scores.gemma-2-9b-it", "scores.nope", "ground_truth"]), value=row_values)
def test_any_recorded_row_is_a_task_or_an_error_naming_file_line_and_field(tmp_path_factory, field, value):
    import gzip

    from rl_router.pools import build_pool
    from rl_router.pools.recorded_datasets import DATASETS

    good = json.loads(next(iter(gzip.open(DATASETS["dcrouter"].path, "rt"))))
    row = json.loads(json.dumps(good))
    if "." in field:
        row["scores"][field.split(".")[1]] = value
    else:
        row[field] = value
    f = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(row, allow_nan=True) + "\n")
    try:
        pool = build_pool({"type": "recorded", "files": [str(f)]})
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith(f"{f}:2: "), msg  # the file and the line
        assert msg.split(": ", 2)[1].split(".")[0] in ("query", "scores", "task_name", "choices", "ground_truth"), msg  # the field
        return
    assert 1 <= len(pool.tasks()) <= 2
    for t in pool.tasks():
        for a in pool.recorded(t.task_id).answers.values():
            assert 0.0 <= a.score <= 1.0 and isinstance(a.response, str)
