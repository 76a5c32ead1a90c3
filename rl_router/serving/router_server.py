"""`rl-router serve`: a trained router behind an OpenAI-compatible endpoint, on Starlette + uvicorn.

`POST /v1/chat/completions` takes the last user message as the task (a string, or OpenAI's
list of content parts whose text parts are joined), runs the router's think / route loop
against the pool (the same environment and rollout engine as training and evaluation, so
served behaviour is evaluated behaviour), and returns the final answer as the assistant
message. `usage` counts the router's own tokens; the extension field `rl_router` carries the
routing trace (models called, per-call cost and errors, total cost, turns, why the episode
ended). `stream: true` streams the final answer as server-sent events (the answer exists only
once the episode ends, so the stream starts then). `GET /v1/models` lists the router. Errors
use OpenAI's JSON shape and status codes (400 bad request, 401 bad key, 404 unknown model or
route, 413 body too large, 500 internal).

Why an ASGI stack: users put this behind load balancers next to vLLM and LiteLLM. uvicorn
parses HTTP (a malformed Content-Length is a 400, not a traceback; keep-alive; no Nagle
stalls), and the app bounds what it reads: a body over `max_body_bytes` is refused from its
Content-Length before it is read, and a body that dribbles in slower than `read_timeout_s`
is dropped. Generation runs in worker threads, at most `max_concurrent` episodes at once, so a
long request never holds every short one up; a client's `max_tokens` is capped at the episode's
token budget and the model's context, and a task too long for the context is refused (400).
An episode whose client disconnects stops at its next token; SIGTERM stops every running
episode and shuts down within `SHUTDOWN_GRACE_S`.

Recorded pools answer only the questions they recorded: a served question is matched to its
recorded task, and an unknown one is refused with 400 (a live pool answers anything).
Binds 127.0.0.1 by default; optional bearer token (compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from typing import Any

from rl_router.envs import make_env
from rl_router.errors import ConfigError
from rl_router.httpd import openai_error
from rl_router.rollout.engine import RolloutEngine
from rl_router.rollout.policies import HFPolicy
from rl_router.schemas import parse_chat_request
from rl_router.tasks import Task

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a chat request with a long task fits many times over
READ_TIMEOUT_S = 30.0
MAX_CONCURRENT = 2  # episodes generated at once: a long one never holds every short one up
SHUTDOWN_GRACE_S = 5.0  # after SIGTERM: running episodes are cancelled, connections get this long


class RequestError(Exception):
    def __init__(self, code: int, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def user_text(content: Any) -> str | None:
    """A message's text: a string, or OpenAI's content parts (the text parts, joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)]
        return "\n".join(parts) if parts else None
    return None


class RouterApp:
    """The router as an ASGI application (Starlette)."""

    def __init__(self, model: Any, tokenizer: Any, pool: Any, env_config: Any, *, env_name: str = "router_r1", model_id: str = "rl-router", max_new_tokens: int = 96,
                 max_completion_tokens: int = 2048, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES, read_timeout_s: float = READ_TIMEOUT_S,
                 stop_strings: tuple[str, ...] | None = None, engine: Any = None, route_bias: float = 0.0, max_concurrent: int = MAX_CONCURRENT, autocast: str | None = None):
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.model, self.tok, self.pool = model, tokenizer, pool
        self.model_id, self.max_new_tokens, self.api_key = model_id, max_new_tokens, api_key
        self.max_body_bytes, self.read_timeout_s = max_body_bytes, read_timeout_s
        self.engine = engine or RolloutEngine(lambda: make_env(env_name, pool, config=env_config, tokenizer=tokenizer), tokenizer, max_completion_tokens=max_completion_tokens)
        self.stop_strings = stop_strings
        self.autocast = autocast  # the recipe's model.autocast: serve the numerics the router was trained and evaluated in
        # the cost knob as calibrated (route_bias.json beside the weights) or set with --route-bias
        from rl_router.rollout.names import cost_weights

        self.route_bias = float(route_bias)
        self.route_weights: dict[str, float] = cost_weights(pool)  # each model's share of the bias (0: cheapest, 1: costliest)
        self.max_completion_tokens = max_completion_tokens
        # the model's context bounds everything: a turn's tokens, and the prompt it starts from
        self.context = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 0) or None
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent))
        self._running: set[threading.Event] = set()  # cancel flags of the episodes in flight
        self._recorded = {t.question: t for t in pool.tasks()} if hasattr(pool, "tasks") else None
        self.requests = 0
        self.cancelled = 0  # episodes stopped because their client left or the server stopped

        async def not_found(request: Any, exc: Any) -> Any:
            return self._error(404, f"no route {request.method} {request.url.path}", "invalid_request_error")

        async def not_allowed(request: Any, exc: Any) -> Any:
            allowed = getattr(exc, "headers", None) or {}
            resp = self._error(405, f"method {request.method} is not allowed on {request.url.path}" + (f"; use {allowed.get('Allow')}" if allowed.get("Allow") else ""), "invalid_request_error")
            if allowed.get("Allow"):
                resp.headers["Allow"] = allowed["Allow"]
            return resp

        if not math.isfinite(self.route_bias):
            raise ConfigError("--route-bias", f"{route_bias} is not a finite number", "give a number such as 0 or 2")
        self.app = Starlette(
            routes=[Route("/v1/models", self._models, methods=["GET"]), Route("/v1/chat/completions", self._chat, methods=["POST"])],
            exception_handlers={404: not_found, 405: not_allowed},
        )

    # ---- HTTP -------------------------------------------------------------------------
    def _error(self, code: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(openai_error(message, "server_error" if code >= 500 else type_, code, param), status_code=code)

    def _auth_ok(self, request: Any) -> bool:
        return self.api_key is None or hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode())

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if not self._auth_ok(request):
            return self._error(401, "invalid or missing API key")
        return JSONResponse({"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0, "owned_by": "rl-router"}]})

    async def _body(self, request: Any) -> bytes:
        """The request body, bounded in size (from Content-Length before reading, and while
        reading) and in time (each chunk within read_timeout_s)."""
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > self.max_body_bytes:  # uvicorn has rejected non-numbers already
            raise RequestError(413, f"request body of {int(declared)} bytes is over the {self.max_body_bytes}-byte limit")
        chunks, size = [], 0
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), self.read_timeout_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise RequestError(408, f"request body not received within {self.read_timeout_s:g}s") from None
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestError(413, f"request body is over the {self.max_body_bytes}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _chat(self, request: Any) -> Any:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, StreamingResponse

        if not self._auth_ok(request):
            return self._error(401, "invalid or missing API key")
        try:
            raw = await self._body(request)
            try:
                req, typed = parse_chat_request(raw)
            except ConfigError as e:  # not JSON, too deep, a wrong type: one line naming the field
                raise RequestError(400, str(e), e.field.split(".")[0].split("[")[0] if e.field != "body" else None) from None
            self.validate(req)
            cancel = threading.Event()
            job = asyncio.ensure_future(run_in_threadpool(self.answer, req, cancel))
            while not job.done():  # a client that leaves stops its episode at the next token
                await asyncio.wait({job}, timeout=0.2)
                if not job.done() and await request.is_disconnected():
                    cancel.set()
                    self.cancelled += 1
                    break
            result = await job
            if cancel.is_set():
                return self._error(499, "client closed the request; its episode was stopped")
        except RequestError as e:
            return self._error(e.code, e.message, param=e.param)
        except Exception as e:  # noqa: BLE001 (the client gets an OpenAI-shaped 500, the server stays up)
            from rl_router.rollout.decoder import GenerationCancelled

            if isinstance(e, GenerationCancelled):
                return self._error(503, "the server is shutting down; the episode was stopped")
            return self._error(500, f"router failed: {type(e).__name__}: {e}")
        if typed.stream:
            return StreamingResponse(self._sse(result, bool(typed.stream_options and typed.stream_options.include_usage)), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return JSONResponse(result)

    @staticmethod
    def _sse(result: dict[str, Any], include_usage: bool) -> Any:
        base = {"id": result["id"], "object": "chat.completion.chunk", "created": result["created"], "model": result["model"]}
        text = result["choices"][0]["message"]["content"]
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": text[i : i + 16]}, "finish_reason": None}]} for i in range(0, len(text), 16)]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": result["choices"][0]["finish_reason"]}], "rl_router": result["rl_router"]})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": result["usage"]})
        for c in chunks:
            yield f"data: {json.dumps(c)}\n\n"
        yield "data: [DONE]\n\n"

    # ---- the router -------------------------------------------------------------------
    def cancel_all(self) -> None:
        """Stop every running episode at its next token (shutdown)."""
        running = list(self._running)
        for ev in running:
            ev.set()
        self.cancelled += len(running)

    def validate(self, req: dict[str, Any]) -> None:
        """What the schema (rl_router.schemas.ChatRequest, already applied) cannot know: the
        model this server serves, a task to route, and that it fits the router's context."""
        if req.get("model") not in (None, self.model_id):
            raise RequestError(404, f"model {req.get('model')!r} not found; this server serves {self.model_id!r}", "model")
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
        users = [m for m in msgs if m.get("role") == "user"]
        text = user_text(users[-1].get("content")) if users else None
        if not text or not text.strip():
            raise RequestError(400, "the last user message must have non-empty text content (the task to route)", "messages")
        if self.context is not None:  # the task must leave the router room to work in its context
            room = self.context - self.max_completion_tokens
            n = len(self.tok.encode(text[: 8 * self.context], add_special_tokens=False))
            if n > room:
                raise RequestError(400, f"the task is {n} tokens; this router takes at most {room} (its context is {self.context}, {self.max_completion_tokens} of which are its own turns)", "messages")

    def task_for(self, question: str) -> Task:
        if self._recorded is None:
            return Task(question=question, dataset="served")
        if question not in self._recorded:
            raise RequestError(400, "a recorded pool only answers the questions it recorded; send one of them verbatim, or serve a live pool", "messages")
        return self._recorded[question]

    def answer(self, req: dict[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        question = user_text([m for m in req["messages"] if m.get("role") == "user"][-1]["content"]) or ""
        task = self.task_for(question)
        # a client's max_tokens is a wish: a turn never runs past the episode's token budget
        # (rollout.max_completion_tokens) nor the model's context
        limit = min(int(req.get("max_completion_tokens") or req.get("max_tokens") or self.max_new_tokens), self.max_completion_tokens, self.context or 10**9)
        kw = {"stop_strings": self.stop_strings} if self.stop_strings else {}
        cancel = cancel or threading.Event()
        policy = HFPolicy(self.model, self.tok, max_new_tokens=limit, temperature=float(req.get("temperature") or 0.0), top_p=float(req.get("top_p") or 1.0),
                          route_bias=self.route_bias, route_weights=self.route_weights, names=self.pool.model_names, cancel=cancel, autocast=self.autocast, **kw)
        with self._slots:
            if cancel.is_set():  # the client left while this request waited for a slot
                from rl_router.rollout.decoder import GenerationCancelled

                raise GenerationCancelled("cancelled before it started")
            self._running.add(cancel)
            try:
                ep = self.engine.run([task], policy)[0]
            finally:
                self._running.discard(cancel)
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
                "route_bias": self.route_bias,
                "trajectory": ep.get("policy_turns") or [],
            },
        }


class RouterServer(RouterApp):
    """`RouterApp` under uvicorn: `start()` in a background thread (tests, benchmarks) or
    `serve_forever()` in the foreground (the CLI); `url` once bound."""

    def __init__(self, *args: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        import socket

        import uvicorn

        super().__init__(*args, **kwargs)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # bind now: a busy port fails here, with its own error
        self.host, self.port = self._sock.getsockname()[:2]
        app = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:  # SIGTERM / SIGINT: stop the running episodes too
                app.cancel_all()
                super().handle_exit(sig, frame)

        self._server = Server(uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_keep_alive=30, lifespan="off", timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "RouterServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True, name="rl-router-serve")
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        self._server.run(sockets=[self._sock])

    def stop(self) -> None:
        self.cancel_all()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> "RouterServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def server_from_checkpoint(checkpoint: str, *, pool_file: str | None = None, host: str = "127.0.0.1", port: int = 8080, model_id: str | None = None, api_key_env: str | None = None, route_bias: float | None = None) -> RouterServer:
    """Everything `rl-router serve` needs, checked before the port opens: the router (a model
    folder, a training run, or a Hub repo id), the recipe it was trained with, the pool (its
    own, or --pool's, whose model names must be the ones the router was trained to call),
    the bearer token's variable."""
    import os
    from pathlib import Path

    from rl_router.errors import ConfigError
    from rl_router.models import load_checkpoint, resolve_checkpoint
    from rl_router.recipe import load_pool_file, recipe_for_target, recipe_from_dict
    from rl_router.task_sources import recipe_pool

    from rl_router.errors import ConfigError
    from rl_router.models import unfinished_run

    local = resolve_checkpoint(checkpoint)
    if local is None and unfinished_run(checkpoint):
        raise ConfigError("checkpoint", unfinished_run(checkpoint))
    if local is None:
        local = fetch_from_hub(checkpoint)
    recipe = recipe_for_target(str(local), None, [])
    trained_on = recipe_pool(recipe).model_names
    if pool_file:
        recipe = recipe_from_dict({**recipe.to_dict(), "pool": load_pool_file(pool_file)})
    pool = recipe_pool(recipe)
    if sorted(pool.model_names) != sorted(trained_on):
        raise ConfigError("--pool", f"its models {sorted(pool.model_names)} are not the ones the router was trained to call {sorted(trained_on)}", "name the pool's models as in training (each name may point at any endpoint)")
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        raise ConfigError("--api-key-env", f"the environment variable {api_key_env} is empty", f"export {api_key_env}=<token clients must send>")
    if not 0 <= port <= 65535:
        raise ConfigError("--port", f"{port} is not a port number", "use 1-65535 (0: any free port)")
    import socket

    from rl_router.httpd import listen_error

    try:  # a host that does not resolve fails now, before the model loads
        socket.getaddrinfo(host, port)
    except (socket.gaierror, UnicodeError) as e:
        raise listen_error(host, port, e) from None
    model, tok = load_checkpoint(local, recipe)
    if route_bias is None:
        from rl_router.evaluation.calibration import read_route_bias

        cal = read_route_bias(local)
        route_bias = float(cal["route_bias"]) if cal else 0.0
    try:
        from rl_router.rollout.engine import make_engine, stop_strings

        return RouterServer(model, tok, pool, recipe.env_config(), env_name=recipe.env.get("name", "router_r1"), model_id=model_id or Path(checkpoint).resolve().name if Path(checkpoint).exists() else model_id or checkpoint.split("/")[-1],
                            max_new_tokens=recipe.rollout.max_new_tokens, max_completion_tokens=recipe.rollout.max_completion_tokens, host=host, port=port, api_key=key,
                            stop_strings=stop_strings(recipe), engine=make_engine(recipe, pool, tok), route_bias=route_bias, autocast=recipe.model.autocast)
    except (OverflowError, OSError, UnicodeError) as e:
        from rl_router.httpd import listen_error

        raise listen_error(host, port, e) from None


def fetch_from_hub(repo_id: str) -> Any:
    """A router exported to the Hub (`rl-router export --push`): download it (HF_ENDPOINT picks
    the Hub; offline, the local cache) and return its folder."""
    from pathlib import Path

    from rl_router.errors import ConfigError

    if repo_id.count("/") != 1 or any(not p for p in repo_id.split("/")):
        raise ConfigError("checkpoint", f"{repo_id}: no model there", "give a model folder, a training output dir (with final/), or a Hub repo id ORG/NAME")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as e:  # noqa: BLE001 (huggingface_hub raises many types)
        raise ConfigError("checkpoint", f"{repo_id}: not a local folder, and the Hub did not provide it ({type(e).__name__})", "give a model folder or training run, or check the repo id / HF_ENDPOINT / HF_TOKEN") from None
