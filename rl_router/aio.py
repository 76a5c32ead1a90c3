"""One long-lived asyncio loop in a daemon thread, for calling async pools from sync code.

Why: async HTTP clients are bound to the loop that created them. Running each env step with
`asyncio.run` would create a new loop per call and break pooled connections. Every sync
entry point (env.step, the rollout engine, the CLI) submits coroutines here instead.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "rl-router-aio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("run_sync called from inside the background loop; await the coroutine instead")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


_default: BackgroundLoop | None = None
_lock = threading.Lock()


def default_loop() -> BackgroundLoop:
    global _default
    with _lock:
        if _default is None:
            _default = BackgroundLoop()
        return _default


def run_sync(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run `coro` on the shared background loop and wait for its result."""
    return default_loop().run(coro, timeout)


def gather_sync(coros: list[Awaitable[Any]]) -> list[Any]:
    async def _all() -> list[Any]:
        return list(await asyncio.gather(*coros))

    return run_sync(_all())
