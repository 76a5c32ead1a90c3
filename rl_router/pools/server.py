"""A small OpenAI-compatible HTTP server backed by any pool, with fault injection.

Why it exists: to test `OpenAIPool` against a real HTTP server on 127.0.0.1 (no mocks), to
inject 429 / 5xx / timeouts at chosen rates, and to expose a recorded or simulated pool to
tools that speak the OpenAI API. Binds 127.0.0.1 by default; an optional bearer token.

Implementation: the stdlib threading HTTP server for requests, one background asyncio
loop for the pool, so concurrent requests overlap their (simulated) latency.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rl_router.aio import BackgroundLoop
from rl_router.httpd import JSONHandler, QuietHTTPServer, ServerLifecycle, openai_error
from rl_router.errors import ConfigError
from rl_router.pools.base import Pool
from rl_router.schemas import message_text, parse_chat_request


@dataclass
class FaultConfig:
    """Fraction of requests answered with each fault (drawn independently per request)."""

    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_timeout: float = 0.0
    rate_reset: float = 0.0  # close the connection without a response
    rate_truncated: float = 0.0  # 200 with a body cut short (Content-Length promises more)
    rate_nonjson: float = 0.0  # 200 with an HTML error page instead of JSON
    rate_slow: float = 0.0  # 200 whose body dribbles out over `slow_s`
    timeout_delay_s: float = 60.0  # how long a "timeout" request hangs (at most: it is released when the server stops)
    slow_s: float = 1.0
    retry_after_s: float = 0.05
    seed: int = 0


@dataclass
class ServerStats:
    requests: int = 0
    ok: int = 0
    faults: dict[str, int] = field(default_factory=dict)


class PoolServer(ServerLifecycle):
    def __init__(self, pool: Pool, *, host: str = "127.0.0.1", port: int = 0, faults: FaultConfig | None = None, api_key: str | None = None):
        self.pool = pool
        self.faults = faults or FaultConfig()
        self.stats = ServerStats()
        self._rng = random.Random(self.faults.seed)
        self._rng_lock = threading.Lock()
        self._api_key = api_key
        self._loop = BackgroundLoop("pool-server-aio")
        self._stopping = threading.Event()
        server = self

        class Handler(JSONHandler):
            api_key = server._api_key
            routes = {"/v1/models": ("GET",), "/v1/chat/completions": ("POST",)}

            def _send_faulty(self, kind: str) -> None:
                body = json.dumps({"id": "chatcmpl-faulty", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "partial"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) + (50 if kind == "truncated" else 0)))
                self.end_headers()
                try:
                    if kind == "truncated":  # promise more than we send, then hang up
                        self.wfile.write(body[: len(body) // 2])
                    else:  # slow: a few bytes at a time, well past any sane read timeout
                        step = max(1, len(body) // 10)
                        for i in range(0, len(body), step):
                            self.wfile.write(body[i : i + step])
                            self.wfile.flush()
                            time.sleep(server.faults.slow_s / 10)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def do_GET(self) -> None:
                if not self._auth_ok():
                    return
                if self._route() == "/v1/models":
                    data = [{"id": c.name, "object": "model", "owned_by": "rl-router"} for c in server.pool.models]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._not_allowed()

            def do_POST(self) -> None:
                raw = self._read_body()
                if raw is None or not self._auth_ok():
                    return
                if self._route() != "/v1/chat/completions":
                    self._not_allowed()
                    return
                try:
                    self._chat(raw)
                except Exception as e:  # noqa: BLE001 (a bug of ours: the client gets a 500 in OpenAI's shape, the traceback goes to stderr)
                    import traceback

                    traceback.print_exc()
                    self._send(500, _err(f"pool server failed: {type(e).__name__}", "server_error", 500))

            def _chat(self, raw: bytes) -> None:
                server.stats.requests += 1
                fault = server._draw_fault()
                if fault == "429":
                    server._count("429")
                    self._send(429, _err("rate limited", "rate_limit_error", 429), {"Retry-After": str(server.faults.retry_after_s)})
                    return
                if fault == "5xx":
                    code = server._choice([500, 502, 503])
                    server._count(str(code))
                    self._send(code, _err("upstream failure", "server_error", code))
                    return
                if fault == "timeout":  # hang until the client gives up (or the server stops), then drop the request
                    server._count("timeout")
                    server._stopping.wait(server.faults.timeout_delay_s)
                    self.close_connection = True
                    return
                if fault == "reset":
                    server._count("reset")
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                if fault == "nonjson":
                    server._count("nonjson")
                    page = b"<html><body>502 Bad Gateway (but sent as 200)</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                try:
                    _body, req = parse_chat_request(raw)
                    if req.model is None:
                        raise ConfigError("model", "is required", f"name one of {server.pool.model_names}")
                except ConfigError as e:
                    self._send(400, openai_error(str(e), "invalid_request_error", 400, e.field.split(".")[0].split("[")[0] or None))
                    return
                model = req.model
                if not server.pool.has_model(model):
                    self._send(404, _err(f"model {model!r} not found; available: {server.pool.model_names}", "invalid_request_error", 404))
                    return
                messages = [{"role": m.role, "content": message_text(m.content)} for m in req.messages]
                sampling = {k: getattr(req, k) for k in ("max_tokens", "temperature", "top_p") if getattr(req, k) is not None}
                comp = server._loop.run(server.pool.complete(model, messages, context=req.rl_router_context, **sampling))
                if comp.error:
                    self._send(502, _err(comp.error, "server_error", 502))
                    return
                server.stats.ok += 1
                if fault in ("truncated", "slow"):
                    server._count(fault)
                    self._send_faulty(fault)
                    return
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{server.stats.requests}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": comp.text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens, "total_tokens": comp.prompt_tokens + comp.completion_tokens},
                    },
                )

        self._httpd = QuietHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True

    def _draw_fault(self) -> str | None:
        f = self.faults
        with self._rng_lock:
            u = self._rng.random()
        edge = 0.0
        for kind, rate in (("429", f.rate_429), ("5xx", f.rate_5xx), ("timeout", f.rate_timeout), ("reset", f.rate_reset), ("truncated", f.rate_truncated), ("nonjson", f.rate_nonjson), ("slow", f.rate_slow)):
            edge += rate
            if u < edge:
                return kind
        return None

    def _choice(self, xs: list[int]) -> int:
        with self._rng_lock:
            return self._rng.choice(xs)

    def _count(self, kind: str) -> None:
        self.stats.faults[kind] = self.stats.faults.get(kind, 0) + 1

    def stop(self) -> None:
        self._stopping.set()  # release requests held by timeout faults
        super().stop()

    def _on_stop(self) -> None:
        self._loop.stop()


def _err(message: str, type_: str, code: int) -> dict[str, Any]:
    return openai_error(message, type_, code)

