"""Requests per second of `rl-router serve` under concurrent clients, measured in one run.

Starts the router server on 127.0.0.1 (a model folder or a training run; default: a freshly
built tiny router over the recorded GSM8K pool), then for each endpoint fires N requests
from C concurrent httpx clients and reports requests/s and p50 / p95 latency:
  GET  /v1/models            (the HTTP stack alone)
  POST /v1/chat/completions  (a full route loop: router generation + pool call)
then a bounded mixed load: while `--long` requests asking for a billion tokens (capped at the
episode's token budget) are in flight, the same model-list and short chat requests (max_tokens 4)
are measured again; then the malformed-request checks (bad Content-Length, oversized body) with
their status codes.

    python scripts/bench_serve.py [--checkpoint DIR] [--clients 8] [--requests 200] [--long 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx


async def fire(url: str, n: int, clients: int, make) -> dict:
    lat: list[float] = []
    codes: dict[int, int] = {}
    sem = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                r = await make(c, url, i)
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": n, "clients": clients, "req_per_s": n / wall, "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))], "codes": codes}


def raw(port: int, data: bytes) -> str:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return s.recv(200).decode(errors="replace").split("\r\n")[0]
    except OSError as e:
        return f"{type(e).__name__}"
    finally:
        s.close()


async def mixed(url: str, held: list, a: argparse.Namespace) -> dict:
    """Short requests measured while long ones run: the figures a long request must not spoil."""
    chat = lambda q, n: {"model": "bench", "messages": [{"role": "user", "content": q}], "max_tokens": n}  # noqa: E731
    async with httpx.AsyncClient(timeout=None) as c:
        longs = [asyncio.ensure_future(c.post(url + "/chat/completions", json=chat(held[-1 - i].question, 10**9))) for i in range(a.long)]
        await asyncio.sleep(0.5)  # let them start generating
        models = await fire(url, a.requests, a.clients, lambda c, u, i: c.get(u + "/models"))
        short = await fire(url, max(16, a.requests // 10), a.clients, lambda c, u, i: c.post(u + "/chat/completions", json=chat(held[i % len(held)].question, 4)))
        long_done_during = sum(f.done() for f in longs)
        t0 = time.perf_counter()
        codes = [r.status_code for r in await asyncio.gather(*longs)]
    return {"long_requests": a.long, "long_codes": codes, "long_finished_before_the_short_ones": long_done_during,
            "long_remaining_s": time.perf_counter() - t0, "GET /v1/models": models, "POST short chat (max_tokens 4)": short}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--long", type=int, default=1, help="long requests in flight during the mixed load")
    a = ap.parse_args()
    from rl_router.models import load_checkpoint
    from rl_router.recipe import load_recipe
    from rl_router.serving.router_server import RouterServer
    from rl_router.task_sources import recipe_pool, recipe_tasks
    from rl_router.tiny import build_tiny_router

    recipe = load_recipe(None, [])
    pool = recipe_pool(recipe)
    held = recipe_tasks(recipe, pool)[1]
    if a.checkpoint:
        model, tok = load_checkpoint(a.checkpoint)
    else:
        model, tok = build_tiny_router(save_dir=Path(tempfile.mkdtemp()) / "tiny")
    srv = RouterServer(model, tok, pool, recipe.env_config(), model_id="bench", max_new_tokens=recipe.rollout.max_new_tokens).start()
    port = int(srv.url.split(":")[-1].split("/")[0])
    try:
        res = {
            "GET /v1/models": asyncio.run(fire(srv.url, a.requests, a.clients, lambda c, u, i: c.get(u + "/models"))),
            "POST /v1/chat/completions": asyncio.run(fire(srv.url, max(16, a.requests // 10), a.clients, lambda c, u, i: c.post(u + "/chat/completions", json={"model": "bench", "messages": [{"role": "user", "content": held[i % len(held)].question}]}))),
        }
        res["mixed load"] = asyncio.run(mixed(srv.url, held, a))
        res["malformed"] = {
            "Content-Length: abc": raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"),
            "Content-Length: -1": raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}"),
            "Content-Length: 10 GB": raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{}"),
        }
    finally:
        srv.stop()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
