"""`rl-router serve`: a trained router behind an OpenAI-compatible endpoint.

`POST /v1/chat/completions` takes the last user message as the task, runs the router's
think / route loop against the pool (the same environment and rollout engine as training
and evaluation, so served behaviour is evaluated behaviour), and returns the final answer
as the assistant message. `usage` counts the router's own tokens; the extension field
`rl_router` carries the routing trace (models called, per-call cost and errors, total
cost, turns, why the episode ended). `stream: true` streams the final answer as
server-sent events (the answer exists only once the episode ends, so the stream starts
then). `GET /v1/models` lists the router. Errors use OpenAI's JSON shape and status codes
(400 bad request, 401 bad key, 404 unknown model or route, 500 internal).

Recorded pools answer only the questions they recorded: a served question is matched to
its recorded task, and an unknown one is refused with 400 (a live pool answers anything).
Binds 127.0.0.1 by default; optional bearer token. One generation at a time (a lock): the
router is small, and the pool calls of an episode still run concurrently.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from rl_router.envs import make_env
from rl_router.httpd import JSONHandler, QuietHTTPServer, ServerLifecycle, openai_error
from rl_router.rollout.policies import HFPolicy
from rl_router.rollout.engine import RolloutEngine
from rl_router.tasks import Task


_err = openai_error


class RouterServer(ServerLifecycle):
    def __init__(self, model: Any, tokenizer: Any, pool: Any, env_config: Any, *, env_name: str = "router_r1", model_id: str = "rl-router", max_new_tokens: int = 96, max_completion_tokens: int = 2048, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None):
        self.model, self.tok, self.pool = model, tokenizer, pool
        self.model_id, self.max_new_tokens = model_id, max_new_tokens
        self.api_key = api_key
        self.engine = RolloutEngine(lambda: make_env(env_name, pool, config=env_config, tokenizer=tokenizer), tokenizer, max_completion_tokens=max_completion_tokens)
        self._lock = threading.Lock()
        self._recorded = {t.question: t for t in pool.tasks()} if hasattr(pool, "tasks") else None
        self.requests = 0
        server = self

        class Handler(JSONHandler):
            api_key = server.api_key

            def do_GET(self) -> None:
                if not self._auth_ok():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": 0, "owned_by": "rl-router"}]})
                else:
                    self._send(404, _err(f"no route GET {self.path}", "invalid_request_error", 404))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self._auth_ok():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, _err(f"no route POST {self.path}", "invalid_request_error", 404))
                    return
                try:
                    req = json.loads(raw or b"{}")
                    if not isinstance(req, dict):
                        raise ValueError("the body must be a JSON object")
                except ValueError as e:
                    self._send(400, _err(f"invalid JSON body: {e}", "invalid_request_error", 400))
                    return
                problem = server.validate(req)
                if problem is not None:
                    code, msg, param = problem
                    self._send(code, _err(msg, "invalid_request_error", code, param))
                    return
                try:
                    result = server.answer(req)
                except LookupError as e:
                    self._send(400, _err(str(e), "invalid_request_error", 400, "messages"))
                    return
                except Exception as e:  # noqa: BLE001 (the client gets an OpenAI-shaped 500, the server stays up)
                    self._send(500, _err(f"router failed: {type(e).__name__}: {e}", "server_error", 500))
                    return
                if req.get("stream"):
                    self._stream(result, bool((req.get("stream_options") or {}).get("include_usage")))
                else:
                    self._send(200, result)

            def _stream(self, result: dict[str, Any], include_usage: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": result["id"], "object": "chat.completion.chunk", "created": result["created"], "model": result["model"]}
                text = result["choices"][0]["message"]["content"]
                pieces = [text[i : i + 16] for i in range(0, len(text), 16)]
                chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
                chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
                chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": result["choices"][0]["finish_reason"]}], "rl_router": result["rl_router"]})
                if include_usage:
                    chunks.append({**base, "choices": [], "usage": result["usage"]})
                for c in chunks:
                    self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self._httpd = QuietHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True

    # ---- the router -------------------------------------------------------------------
    def validate(self, req: dict[str, Any]) -> tuple[int, str, str] | None:
        if req.get("model") not in (None, self.model_id):
            return 404, f"model {req.get('model')!r} not found; this server serves {self.model_id!r}", "model"
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return 400, "'messages' must be a non-empty list of {role, content}", "messages"
        users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[-1].get("content"), str) or not users[-1]["content"].strip():
            return 400, "the last user message must have non-empty string content (the task to route)", "messages"
        t = req.get("temperature", 0.0)
        if not isinstance(t, (int, float)) or not 0 <= t <= 2:
            return 400, f"'temperature' must be a number in [0, 2], got {t!r}", "temperature"
        return None

    def task_for(self, question: str) -> Task:
        if self._recorded is None:
            return Task(question=question, dataset="served")
        if question not in self._recorded:
            raise LookupError("a recorded pool only answers the questions it recorded; send one of them verbatim, or serve a live pool")
        return self._recorded[question]

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        question = [m for m in req["messages"] if m.get("role") == "user"][-1]["content"]
        task = self.task_for(question)
        temperature = float(req.get("temperature", 0.0))
        policy = HFPolicy(self.model, self.tok, max_new_tokens=int(req.get("max_tokens") or self.max_new_tokens), temperature=temperature, top_p=float(req.get("top_p", 1.0)))
        with self._lock:
            ep = self.engine.run([task], policy)[0]
        self.requests += 1
        answer = ep.get("answer")
        n_policy = sum(ep["env_mask"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer or ""}, "finish_reason": "stop" if answer is not None else "length"}],
            "usage": {"prompt_tokens": len(ep["prompt_ids"]), "completion_tokens": n_policy, "total_tokens": len(ep["prompt_ids"]) + n_policy},
            "rl_router": {
                "cost": ep.get("cost") or 0.0,
                "calls": ep.get("calls") or {},
                "routes": [{k: c.get(k) for k in ("model", "query", "cost", "error")} for c in ep.get("trace") or []],
                "turns": len(ep.get("policy_turns") or []),
                "done_reason": ep.get("done_reason") or ("answer" if answer is not None else None),
                "format_error": ep.get("format_error"),
                "trajectory": ep.get("policy_turns") or [],
            },
        }
