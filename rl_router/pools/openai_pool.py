"""OpenAIPool: any OpenAI-compatible chat endpoint (vLLM, SGLang, LiteLLM proxy, hosted APIs).

Design points, each because a long paid run must survive a flaky endpoint:
- one shared `httpx.AsyncClient` (connection pooling) and a concurrency limit per base_url;
- retries with exponential backoff and full jitter on timeouts, transport errors, 408/409/
  425/429 and 5xx, honouring `Retry-After`; a malformed 200 body is retried too;
- after the last try the call returns a `Completion` with `error` set and zero cost (nothing
  billed), which the environment turns into an observation;
- API keys are read from the environment variable *named* in the config at request time;
  the key never enters the config, reprs, errors or the cache;
- cost is computed from the returned `usage` and the card's prices (chars/4 if no usage);
- an optional on-disk cache keyed by (model, messages, sampling) saves money on re-runs.
  A cached completion keeps the cost the call would have had, so rewards do not change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rl_router.pools.base import Completion, Message, ModelCard, Pool, approx_tokens, messages_tokens

RETRY_STATUS = {408, 409, 425, 429}


@dataclass
class Endpoint:
    """One pool model served behind an OpenAI-compatible API."""

    card: ModelCard
    base_url: str
    model_id: str  # the name the server knows the model by
    api_key_env: str | None = None  # name of the environment variable holding the key

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                h["Authorization"] = f"Bearer {key}"
        return h

    def __repr__(self) -> str:  # never show a key, only the variable's name
        return f"Endpoint(name={self.card.name!r}, base_url={self.base_url!r}, model_id={self.model_id!r}, api_key_env={self.api_key_env!r})"


@dataclass
class RetryPolicy:
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(self.backoff_max_s, max(0.0, retry_after))
        cap = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return rng.uniform(cap / 2, cap)  # "equal jitter": never zero, never above the cap


@dataclass
class CircuitBreaker:
    """Per endpoint: after `threshold` consecutive failed calls (each after its own retries)
    the circuit opens and calls fail at once, without touching the network, for
    `cooldown_s`; then one trial call is let through (half-open): success closes it, failure
    opens it again. Stops a run from hammering a dead endpoint with retries."""

    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if now - self.opened_at >= self.cooldown_s and not self.trial_in_flight:
            self.trial_in_flight = True  # half-open: exactly one trial
            return True
        return False

    def record(self, ok: bool, now: float) -> None:
        self.trial_in_flight = False
        if ok:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = now


@dataclass
class PoolStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    circuit_rejections: int = 0
    coalesced: int = 0
    by_error: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.by_error[kind] = self.by_error.get(kind, 0) + 1


class OpenAIPool(Pool):
    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        timeout_s: float = 60.0,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        cache_dir: str | Path | None = None,
        forward_context: bool = False,
        seed: int | None = None,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
    ):
        if not endpoints:
            raise ValueError("pool.models: an openai pool needs at least one model")
        self.endpoints = {e.card.name: e for e in endpoints}
        self.cards = [e.card for e in endpoints]
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.forward_context = forward_context
        self.stats = PoolStats()
        self._inflight: dict[str, asyncio.Future] = {}
        self._rng = random.Random(seed)
        self._client: httpx.AsyncClient | None = None
        self._sems: dict[str, asyncio.Semaphore] = {}
        self.breaker_threshold, self.breaker_cooldown_s = breaker_threshold, breaker_cooldown_s
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, base_url: str) -> CircuitBreaker:
        if base_url not in self._breakers:
            self._breakers[base_url] = CircuitBreaker(self.breaker_threshold, self.breaker_cooldown_s)
        return self._breakers[base_url]

    def __repr__(self) -> str:
        return f"OpenAIPool(models={self.model_names}, timeout_s={self.timeout_s}, max_concurrency={self.max_concurrency})"

    # ---- plumbing -----------------------------------------------------------------------
    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=max(8, self.max_concurrency * len(self.endpoints)), max_keepalive_connections=64)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), limits=limits)
        return self._client

    def _sem(self, base_url: str) -> asyncio.Semaphore:
        if base_url not in self._sems:
            self._sems[base_url] = asyncio.Semaphore(self.max_concurrency)
        return self._sems[base_url]

    def _request_key(self, model: str, messages: list[Message], sampling: dict[str, Any], context: dict[str, Any] | None) -> str:
        """What makes two calls the same call: model, messages, sampling, and the task
        context when it is forwarded (then the server's answer depends on it too)."""
        return hashlib.sha256(json.dumps([model, messages, sampling, context if self.forward_context else None], sort_keys=True, default=str).encode()).hexdigest()

    def _cache_path(self, model: str, messages: list[Message], sampling: dict[str, Any], context: dict[str, Any] | None = None) -> Path | None:
        if self.cache_dir is None:
            return None
        key = self._request_key(model, messages, sampling, context)
        return self.cache_dir / key[:2] / f"{key}.json"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check(self) -> list[str]:
        """One GET /models per endpoint (free on every OpenAI-compatible server): reachable,
        key accepted, and the model served when the server lists its models."""
        problems = []
        for name, ep in self.endpoints.items():
            url = ep.base_url.rstrip("/") + "/models"
            try:
                resp = await asyncio.wait_for(self._get_client().get(url, headers=ep.headers()), min(self.timeout_s, 15.0))
            except (httpx.TimeoutException, asyncio.TimeoutError):
                problems.append(f"pool.models.{name}.base_url: {ep.base_url} did not answer within {min(self.timeout_s, 15.0):g}s -> start the server, or fix base_url")
                continue
            except httpx.TransportError as e:
                problems.append(f"pool.models.{name}.base_url: {ep.base_url} is not reachable ({type(e).__name__}) -> start the server, or fix base_url")
                continue
            if resp.status_code in (401, 403):
                problems.append(f"pool.models.{name}.api_key_env: {ep.base_url} refused the key (HTTP {resp.status_code}) -> export {ep.api_key_env or 'the key variable'} with a valid key")
            elif resp.status_code == 200:
                from rl_router.errors import ConfigError
                from rl_router.parsing import parse_json

                try:
                    served = [m.get("id") for m in parse_json(resp.content, "models").get("data", [])]
                except (ConfigError, AttributeError, TypeError):
                    served = []
                if served and ep.model_id not in served:
                    problems.append(f"pool.models.{name}.model_id: {ep.base_url} does not serve {ep.model_id!r} (it serves {served[:8]}) -> set model_id to one of them")
        return problems

    # ---- the call -----------------------------------------------------------------------
    async def complete(self, model: str, messages: list[Message], *, context: dict[str, Any] | None = None, **sampling: Any) -> Completion:
        """One chat completion. Identical deterministic calls in flight at the same time
        (same model, messages, sampling, context; temperature 0 or unset), as the episodes of
        one GRPO group often make, are coalesced into one HTTP request."""
        if sampling.get("temperature") not in (None, 0, 0.0):
            return await self._complete(model, messages, context=context, **sampling)
        key = self._request_key(model, messages, sampling, context)
        fut = self._inflight.get(key)
        if fut is not None:
            self.stats.coalesced += 1
            return dataclasses.replace(await asyncio.shield(fut))
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            comp = await self._complete(model, messages, context=context, **sampling)
            fut.set_result(comp)
            return comp
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._inflight[key]

    async def _complete(self, model: str, messages: list[Message], *, context: dict[str, Any] | None = None, **sampling: Any) -> Completion:
        ep = self.endpoints.get(model)
        if ep is None:
            return Completion("", error=f"unknown model {model!r}", model=model)
        cpath = self._cache_path(model, messages, sampling, context)
        if cpath is not None and cpath.exists():
            cached = _read_cache(cpath)
            if cached is not None:  # a damaged cache entry is a miss, never a crash
                self.stats.cache_hits += 1
                return cached

        payload: dict[str, Any] = {"model": ep.model_id, "messages": messages, **sampling}
        if self.forward_context and context:
            payload["rl_router_context"] = context
        url = ep.base_url.rstrip("/") + "/chat/completions"
        t0 = time.perf_counter()
        last_err = "no attempt"
        br = self.breaker(ep.base_url)
        if not br.allow(t0):
            self.stats.circuit_rejections += 1
            return Completion("", error=f"circuit open: {ep.base_url} failed {br.failures} calls in a row; retrying after {br.cooldown_s:g}s", model=model)
        async with self._sem(ep.base_url):
            for attempt in range(self.retry.max_retries + 1):
                self.stats.requests += 1
                retry_after: float | None = None
                try:
                    # an overall deadline too: httpx's timeout is per read, so a body that
                    # dribbles in slowly would otherwise never time out
                    resp = await asyncio.wait_for(self._post(url, payload, ep.headers()), self.timeout_s)
                except (httpx.TimeoutException, asyncio.TimeoutError):
                    last_err, retryable = "timeout", True
                except httpx.TransportError as e:
                    last_err, retryable = f"transport error ({type(e).__name__})", True
                except ReplyTooLarge as e:
                    last_err, retryable = str(e), False
                else:
                    if resp.status_code == 200:
                        comp = self._parse(resp, ep, messages)
                        if comp is not None:
                            comp.latency_s = time.perf_counter() - t0
                            comp.retries = attempt
                            if cpath is not None:
                                self._write_cache(cpath, comp)
                            br.record(True, time.perf_counter())
                            return comp
                        last_err, retryable = "malformed response body", True
                    else:
                        last_err = f"HTTP {resp.status_code}: {_error_message(resp)}"
                        retryable = resp.status_code in RETRY_STATUS or resp.status_code >= 500
                        retry_after = _retry_after(resp)
                self.stats.count(last_err.split(":")[0])
                if not retryable or attempt == self.retry.max_retries:
                    break
                self.stats.retries += 1
                await asyncio.sleep(self.retry.delay(attempt, retry_after, self._rng))
        self.stats.failures += 1
        br.record(False, time.perf_counter())
        return Completion("", error=self.redact(last_err), model=model, latency_s=time.perf_counter() - t0, retries=attempt)

    def redact(self, text: str) -> str:
        """`text` with the value of every endpoint's key replaced by ***: a server's error
        message may quote the Authorization header it got, and pool errors are printed."""
        for ep in self.endpoints.values():
            key = os.environ.get(ep.api_key_env or "") if ep.api_key_env else None
            if key and len(key) >= 4:
                text = text.replace(key, "***")
        return text

    async def _post(self, url: str, payload: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """POST, reading at most MAX_REPLY_BYTES of the body (a reply is capped before anything
        parses or tokenises it: a 30 MB reply once took 7.4 GB of memory)."""
        async with self._get_client().stream("POST", url, json=payload, headers=headers) as resp:
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
                raise ReplyTooLarge(f"reply of {int(declared)} bytes is over the {MAX_REPLY_BYTES // 2**20} MiB cap")
            chunks, n = [], 0
            async for chunk in resp.aiter_bytes():
                n += len(chunk)
                if n > MAX_REPLY_BYTES:
                    raise ReplyTooLarge(f"reply is over the {MAX_REPLY_BYTES // 2**20} MiB cap")
                chunks.append(chunk)
            return httpx.Response(resp.status_code, headers=resp.headers, content=b"".join(chunks), request=resp.request)

    def _parse(self, resp: httpx.Response, ep: Endpoint, messages: list[Message]) -> Completion | None:
        """A 200 reply as a Completion, or None (malformed: the caller retries, then reports a
        pool error). Whatever the JSON: the text is a string (content parts are joined), token
        counts are non-negative integers (ours, chars/4, where the server's are not), so the
        cost is finite and >= 0 and never hands budget back."""
        from rl_router.errors import ConfigError
        from rl_router.parsing import parse_json

        try:  # bounded: a reply nested 100k deep is a malformed reply, not a RecursionError that ends the rollout
            body = parse_json(resp.content, "reply")
        except ConfigError:
            return None
        text = reply_text(body)
        if text is None:
            return None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}  # body is a mapping: reply_text parsed it
        p = token_count(usage.get("prompt_tokens"), messages_tokens(messages))
        c = token_count(usage.get("completion_tokens"), approx_tokens(text))
        return Completion(text, p, c, ep.card.cost(p, c), model=ep.card.name)

    @staticmethod
    def _write_cache(path: Path, comp: Completion) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        d = {k: getattr(comp, k) for k in ("text", "prompt_tokens", "completion_tokens", "cost", "model")}
        tmp.write_text(json.dumps(d))
        os.replace(tmp, path)


#: the most of a reply body read from a server (beyond it the call is a pool error)
MAX_REPLY_BYTES = 2 * 2**20
#: the most reply text kept (a model's answer; beyond it the text is cut, as max_tokens would)
MAX_REPLY_CHARS = 200_000


class ReplyTooLarge(Exception):
    pass


def reply_text(body: Any) -> str | None:
    """`choices[0].message.content` as text: a string, null (empty), or a list of content parts
    (their text joined, as OpenAI's multi-part content); anything else is malformed (None)."""
    from pydantic import ValidationError

    from rl_router.schemas import ChatReply

    try:
        content = ChatReply.model_validate(body).choices[0].message.content
    except (ValidationError, RecursionError):
        return None
    if content is None:
        return ""
    if isinstance(content, list):
        parts = [p if isinstance(p, str) else p.text for p in content]
        if not all(isinstance(x, str) for x in parts):
            return None
        content = "".join(parts)
    return content[:MAX_REPLY_CHARS]


def token_count(v: Any, fallback: int) -> int:
    """A server's token count if it is a non-negative integer (or integral float), else ours:
    usage fields are data from the network, and a negative count would be a negative cost."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return fallback
    if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
        return fallback
    return int(v) if 0 <= v <= 10**9 else fallback


def _read_cache(path: Path) -> Completion | None:
    try:
        d = json.loads(path.read_text())  # our own file; any damage (RecursionError included) is a miss
        comp = Completion(str(d["text"]), int(d["prompt_tokens"]), int(d["completion_tokens"]), float(d["cost"]), model=str(d.get("model", "")), cached=True)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return comp if comp.cost >= 0 and math.isfinite(comp.cost) and comp.prompt_tokens >= 0 and comp.completion_tokens >= 0 else None


def _retry_after(resp: httpx.Response) -> float | None:
    v = resp.headers.get("retry-after")
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) and x >= 0 else None


def _error_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])[:200]
    except Exception:
        return resp.text[:200].replace("\n", " ")
