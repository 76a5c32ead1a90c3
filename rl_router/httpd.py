"""The pool server's HTTP layer (stdlib): lifecycle (a daemon thread for tests, the foreground
from the CLI; context manager), JSON replies, OpenAI-shaped errors, bearer auth, bounded
bodies. Why stdlib here, when `serve` runs on uvicorn: the pool server is a test and replay
tool whose fault injection (truncated, reset, dribbling bodies) needs the raw socket."""

from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ServerLifecycle:
    _httpd: Any
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> Any:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name=type(self).__name__)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def _on_stop(self) -> None:
        """Release what the subclass holds besides the socket."""

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._on_stop()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class JSONHandler(BaseHTTPRequestHandler):
    """JSON responses, OpenAI-shaped errors and optional bearer-token auth. Subclasses set
    `api_key` (None: open)."""

    protocol_version = "HTTP/1.1"
    api_key: str | None = None

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet; servers keep their own counts
        return

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if self.command != "HEAD" else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    max_body_bytes = 1 << 20

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 400 / 413 for a bad Content-Length (not a
        number, negative, over `max_body_bytes`): never a traceback, never a read that waits
        for bytes a client only claimed to send."""
        declared = self.headers.get("Content-Length")
        try:
            n = int(declared) if declared is not None else 0
        except ValueError:
            n = -1
        if n < 0:
            self._send(400, openai_error(f"invalid Content-Length {declared!r}", "invalid_request_error", 400))
            self.close_connection = True
            return None
        if n > self.max_body_bytes:
            self._send(413, openai_error(f"request body of {n} bytes is over the {self.max_body_bytes}-byte limit", "invalid_request_error", 413))
            self.close_connection = True
            return None
        return self.rfile.read(n)

    #: path -> the methods it answers; another method on one of them is a 405, an unknown path a 404
    routes: dict[str, tuple[str, ...]] = {}

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _not_allowed(self) -> None:
        """Any method a route does not answer: 405 naming the ones it does (404 for no route),
        as JSON; the body, if any, is not read, so the connection is closed after it."""
        allowed = self.routes.get(self._route())
        self.close_connection = True
        if allowed:
            self._send(405, openai_error(f"method {self.command} is not allowed on {self._route()}; use {', '.join(allowed)}", "invalid_request_error", 405), {"Allow": ", ".join(allowed)})
        else:
            self._send(404, openai_error(f"no route {self.command} {self._route()}", "invalid_request_error", 404))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib answers a malformed request line or an unknown method with an HTML page:
        answer JSON, in OpenAI's error shape, instead (an unknown method on a route is a 405)."""
        if code == 501 and self.command and self.path:
            self._not_allowed()
            return
        self.close_connection = True
        try:
            self._send(code, openai_error(message or "bad request", "invalid_request_error", code))
        except Exception:  # noqa: BLE001 (the request line itself was unreadable: nothing more to say)
            pass

    def _auth_ok(self) -> bool:
        # constant-time comparison: the time a wrong token takes to reject says nothing of the right one
        if self.api_key is None or hmac.compare_digest(self.headers.get("Authorization", "").encode(), f"Bearer {self.api_key}".encode()):
            return True
        self._send(401, openai_error("invalid or missing API key", "invalid_request_error", 401))
        return False


def openai_error(message: str, type_: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class QuietHTTPServer(ThreadingHTTPServer):
    """A client hanging up mid-request (what fault tests and impatient clients do) is normal:
    do not print a traceback for it."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def listen_error(host: str, port: int, e: BaseException) -> Any:
    """Why a server could not listen on host:port, as the ConfigError naming the option at fault:
    a host that does not resolve or is not this machine's is a --host problem, not a --port one."""
    import errno
    import socket

    from rl_router.errors import ConfigError

    if isinstance(e, OverflowError) or not 0 <= port <= 65535:
        return ConfigError("--port", f"{port} is not a port number", "use 1-65535 (0: any free port)")
    if isinstance(e, (socket.gaierror, UnicodeError)):
        return ConfigError("--host", f"{host!r} is not a host name or address this machine can resolve", "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    if isinstance(e, OSError) and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ConfigError("--host", f"{host} is not an address of this machine ({e.strerror or e})", "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    if isinstance(e, OSError) and e.errno == errno.EACCES:
        return ConfigError("--port", f"cannot listen on {host}:{port} ({e.strerror})", "ports below 1024 need privileges: pick a higher --port")
    return ConfigError("--port", f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})", "pick a free port with --port, or stop what holds it")
