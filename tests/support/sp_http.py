"""A real HTTP server for tests (importable as sp_http): 127.0.0.1, a free
port, a thread; routes answer with scripted replies and every request is
recorded."""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Reply:
    """What a route answers: `json` (sent as application/json) or `body`."""

    status: int = 200
    json: Any = None
    body: bytes | str = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0  # sleeps this long before answering


@dataclasses.dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    client_port: int
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Received], Reply]


class HttpServer:
    """Serves until `close()` (or the end of a `with` block).

    `route(path, ...)` answers one path: with a handler, or with replies given
    in order (the last one repeats). Unknown paths get a 404.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._routes: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, *replies: Reply | Handler) -> None:
        if len(replies) == 1 and callable(replies[0]):
            self._routes[path] = replies[0]  # type: ignore[assignment]
            return
        queue = list(replies)

        def next_reply(_request: Received) -> Reply:
            with self._lock:
                return queue.pop(0) if len(queue) > 1 else queue[0]  # type: ignore[return-value]

        self._routes[path] = next_reply

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: clients may pool connections

            def _serve(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Received(
                    method=self.command,
                    path=parts.path,
                    query=urllib.parse.parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    client_port=self.client_address[1],
                    at=time.monotonic(),
                )
                with owner._lock:
                    owner.requests.append(request)
                handler = owner._routes.get(parts.path)
                reply = handler(request) if handler else Reply(404, body="no such route")
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                headers = dict(reply.headers)
                if reply.json is not None:
                    payload = json.dumps(reply.json).encode()
                    headers.setdefault("Content-Type", "application/json")
                else:
                    payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
                    headers.setdefault("Content-Type", "text/plain; charset=utf-8")
                try:
                    self.send_response(reply.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout under test)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return _Handler


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
