"""``kind: http``: one HTTP request through httpx, its response as the output.

`http_call` and `check_request` are public: other runners (the agent's tool
calls) make their requests through them, with the same checks, events,
errors and connection pool.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from executors.base import NodeContext, NodeError, NodeTask

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
REQUEST_KEYS = (
    "method",
    "url",
    "headers",
    "headers_from_env",
    "query",
    "json",
    "body",
    "timeout_ms",
    "expect",
    "max_body_bytes",
    "follow_redirects",
)
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
ERROR_BODY_CHARS = 200  # of a refused response's body, in its error
MAX_RETRY_AFTER_MS = 3_600_000  # a Retry-After beyond an hour is not honoured as is
_TEXT_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "csv")


# ------------------------------------------------------------------ checks


def check_request(request: Mapping[str, Any], where: str = "params") -> None:
    """Raises ValueError naming the field (``params.url is required``) when
    `request` is not a request `http_call` can make.

    Values may still be templates (strings holding ``{{``): they are rendered
    before the call, and `http_call` checks them again then.
    """
    _check(request, where, templates=True)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _check(request: Mapping[str, Any], where: str, *, templates: bool) -> None:
    if not isinstance(request, Mapping):
        raise ValueError(f"{where} must be an object, not {type(request).__name__}")

    def loose(value: Any) -> bool:  # a template to check once rendered
        return templates and _is_template(value)

    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]} is not a request field; known: {', '.join(REQUEST_KEYS)}"
        )

    method = request.get("method", "GET")
    if not loose(method):
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ValueError(
                f"{where}.method {method!r} is not an HTTP method; use one of {', '.join(METHODS)}"
            )

    url = request.get("url")
    if url is None or url == "":
        raise ValueError(f"{where}.url is required")
    if not isinstance(url, str):
        raise ValueError(f"{where}.url must be a string, not {type(url).__name__}")
    if not loose(url):
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{where}.url {url!r} must be an http:// or https:// URL")

    headers = request.get("headers")
    if headers is not None and not loose(headers):
        _check_strings(headers, f"{where}.headers", templates=templates, scalars=True)
    from_env = request.get("headers_from_env")
    if from_env is not None and not loose(from_env):
        _check_strings(from_env, f"{where}.headers_from_env", templates=False, scalars=False)
        if isinstance(headers, Mapping):
            both = {str(k).lower() for k in headers} & {str(k).lower() for k in from_env}
            if both:
                raise ValueError(
                    f"{where}.headers and {where}.headers_from_env both set {sorted(both)[0]!r}"
                )

    query = request.get("query")
    if query is not None and not loose(query):
        if not isinstance(query, Mapping):
            raise ValueError(f"{where}.query must be an object of parameters")
        for key, value in query.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if not (_is_scalar(item) or loose(item)):
                    raise ValueError(
                        f"{where}.query.{key} must be a string, number or boolean, "
                        "or a list of them"
                    )

    if "json" in request and "body" in request:
        raise ValueError(f"{where}.json and {where}.body are exclusive; give one of them")
    body = request.get("body")
    if body is not None and not isinstance(body, str):
        raise ValueError(f"{where}.body must be text (use {where}.json for structured data)")

    timeout_ms = request.get("timeout_ms")
    if timeout_ms is not None and not loose(timeout_ms):
        _check_count(timeout_ms, f"{where}.timeout_ms")
    max_body = request.get("max_body_bytes")
    if max_body is not None and not loose(max_body):
        _check_count(max_body, f"{where}.max_body_bytes")

    expect = request.get("expect")
    if expect is not None and not loose(expect):
        statuses = expect if isinstance(expect, list) else [expect]
        if not statuses:
            raise ValueError(f"{where}.expect must list at least one status")
        for status in statuses:
            if not loose(status) and not (_is_whole(status) and 100 <= status <= 599):
                raise ValueError(f"{where}.expect: {status!r} is not an HTTP status (100-599)")

    follow = request.get("follow_redirects")
    if follow is not None and not loose(follow) and not isinstance(follow, bool):
        raise ValueError(f"{where}.follow_redirects must be true or false")


def _check_strings(value: Any, where: str, *, templates: bool, scalars: bool) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be an object of header names to values")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where} has a header name that is not text")
        ok = isinstance(item, str) or (scalars and _is_scalar(item))
        if not ok and not (templates and _is_template(item)):
            raise ValueError(f"{where}.{key} must be a string")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _is_whole(value: Any) -> bool:
    # Numbers in params cross protobuf as floats: 404.0 is 404.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value == int(value)


def _check_count(value: Any, where: str) -> None:
    if not _is_whole(value) or value <= 0:
        raise ValueError(f"{where} must be a positive whole number, not {value!r}")


# ------------------------------------------------------------ the connection pool

# One client per event loop: its connections belong to that loop.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_CLIENTS_LOCK = threading.Lock()
_CLOSING: set[asyncio.Task[None]] = set()


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                timeout=DEFAULT_TIMEOUT_MS / 1000,
            )
            _CLIENTS[loop] = client
        return client


def close_clients() -> None:
    """Closes the pooled clients (from any thread; those of loops that are
    gone are dropped)."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.items())
        _CLIENTS.clear()
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, client in clients:
        if loop.is_closed() or client.is_closed:
            continue
        if loop is current:
            task = loop.create_task(client.aclose())
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)
        elif loop.is_running():
            future = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout=2)


# ------------------------------------------------------------------ the call


async def http_call(ctx: NodeContext | None, request: Mapping[str, Any]) -> dict[str, Any]:
    """Makes one HTTP request and returns the response as JSON.

    `request` holds the fields `check_request` accepts: method (GET), url,
    headers, headers_from_env ({header: environment variable}, read here and
    never recorded), query, json or body, timeout_ms (30000), expect (the
    accepted statuses; any 2xx), max_body_bytes (1 MiB), follow_redirects
    (false). With a `ctx`, one ``api_call`` event tells of the request.

    Returns:
        {"status", "headers", "body", "body_base64", "elapsed_ms", "url",
        "truncated"}: body is the parsed JSON when the response is JSON, else
        text, else (bytes that are not text) base64 with body_base64 true.

    Raises:
        NodeError: the request is malformed (not retryable); it could not be
            made or timed out (retryable); the status is not expected
            (retryable for 5xx and 429, with the Retry-After wait; else not).
    """
    try:
        _check(request, "params", templates=False)
    except ValueError as err:
        raise NodeError(str(err), retryable=False) from None
    method = str(request.get("method", "GET")).upper()
    url = str(request["url"])
    line = f"{method} {url}"
    timeout_ms = int(request.get("timeout_ms") or DEFAULT_TIMEOUT_MS)
    max_body = int(request.get("max_body_bytes") or DEFAULT_MAX_BODY_BYTES)
    follow = bool(request.get("follow_redirects", False))
    expect = request.get("expect")
    accepted = (
        None
        if expect is None
        else {int(s) for s in (expect if isinstance(expect, list) else [expect])}
    )

    headers = {k: _header_text(v) for k, v in (request.get("headers") or {}).items()}
    secrets: list[str] = []
    for header, variable in (request.get("headers_from_env") or {}).items():
        value = os.environ.get(variable)
        if value is None:
            raise NodeError(
                f"params.headers_from_env.{header}: environment variable {variable!r} is not "
                "set where this node runs",
                retryable=False,
            )
        headers[header] = value
        if len(value) >= 4:  # scrubbed from error texts (a shorter one would garble them)
            secrets.append(value)

    query = request.get("query") or None
    if query is not None:
        query = {
            k: [_query_text(i) for i in v] if isinstance(v, list) else _query_text(v)
            for k, v in query.items()
        }

    event: dict[str, Any] = {
        "method": method,
        "url": url,
        "status": None,
        "duration_ms": 0,
        "request_bytes": 0,
        "response_bytes": 0,
        "error": None,
    }
    started = time.monotonic()
    try:
        client = _client()
        try:
            built = client.build_request(
                method,
                url,
                headers=headers,
                params=query,
                json=request.get("json") if "json" in request else None,
                content=request.get("body"),
                timeout=timeout_ms / 1000,
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError) as err:
            raise NodeError(
                f"{line}: cannot make the request: {_scrub(str(err), secrets)}", retryable=False
            ) from None
        url = str(built.url)
        event["url"] = url
        line = f"{method} {url}"
        event["request_bytes"] = len(built.content)
        # The whole exchange within timeout_ms (httpx's own timeout is per phase).
        async with asyncio.timeout(timeout_ms / 1000):
            response = await client.send(built, stream=True, follow_redirects=follow)
            try:
                content, truncated = await _read_capped(response, max_body)
            finally:
                await response.aclose()
    except NodeError as err:
        event["error"] = str(err)
        _emit(ctx, line, event, started)
        raise
    except (TimeoutError, httpx.TimeoutException):
        message = f"{line}: timed out after {timeout_ms} ms"
        event["error"] = message
        _emit(ctx, line, event, started)
        raise NodeError(message, retryable=True) from None
    except (httpx.TooManyRedirects, httpx.LocalProtocolError, httpx.UnsupportedProtocol) as err:
        # Another attempt makes the same request: a bad header value, a loop.
        message = f"{line}: {_scrub(str(err), secrets)}"
        event["error"] = message
        _emit(ctx, line, event, started)
        raise NodeError(message, retryable=False) from None
    except httpx.HTTPError as err:
        reason = _scrub(str(err) or type(err).__name__, secrets)
        verb = "cannot connect" if isinstance(err, httpx.ConnectError) else "request failed"
        message = f"{line}: {verb}: {_one_line(reason)}"
        event["error"] = message
        _emit(ctx, line, event, started)
        raise NodeError(message, retryable=True) from None
    except asyncio.CancelledError:
        event["error"] = "cancelled"
        _emit(ctx, line, event, started)
        raise

    status = response.status_code
    event["status"] = status
    event["response_bytes"] = len(content)
    elapsed_ms = _ms_since(started)
    ok = (200 <= status < 300) if accepted is None else status in accepted
    if not ok:
        err = _status_error(line, response, content, secrets, follow)
        event["error"] = str(err)
        _emit(ctx, line, event, started)
        raise err
    _emit(ctx, line, event, started)
    body, as_base64 = _decode_body(response, content, truncated)
    return {
        "status": status,
        "headers": dict(response.headers.items()),
        "body": body,
        "body_base64": as_base64,
        "elapsed_ms": elapsed_ms,
        "url": str(response.url),
        "truncated": truncated,
    }


def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and _is_whole(value):
        return str(int(value))
    return str(value)


_query_text = _header_text


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The body up to `limit` bytes (decoded, so a compressed bomb stops too)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        room = limit - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _decode_body(response: httpx.Response, content: bytes, truncated: bool) -> tuple[Any, bool]:
    """(body, is_base64): JSON parsed when the response says JSON (and is whole)."""
    kind = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    is_json = kind == "application/json" or kind.endswith("+json")
    if is_json and content and not truncated:
        try:
            return json.loads(content), False
        except ValueError:
            pass  # served as JSON but is not: give the text
    if kind.startswith("text/") or any(t in kind for t in _TEXT_TYPES):
        return content.decode(response.encoding or "utf-8", errors="replace"), False
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        if truncated:  # the cut may split a character: text if all else is
            with contextlib.suppress(UnicodeDecodeError):
                text = content[:-3].decode("utf-8") + content[-3:].decode("utf-8", "ignore")
                if "\x00" not in text:
                    return text, False
        return base64.b64encode(content).decode("ascii"), True
    if "\x00" in text:
        return base64.b64encode(content).decode("ascii"), True
    return text, False


def _status_error(
    line: str, response: httpx.Response, content: bytes, secrets: list[str], follow: bool
) -> NodeError:
    status = response.status_code
    start = _one_line(content[: ERROR_BODY_CHARS * 4].decode("utf-8", errors="replace"))
    start = _scrub(start, secrets)
    if len(start) > ERROR_BODY_CHARS:
        start = start[:ERROR_BODY_CHARS] + "..."
    message = f"{line}: HTTP {status} {response.reason_phrase}".rstrip()
    if 300 <= status < 400 and not follow and response.headers.get("location"):
        message += f" to {response.headers['location']} (set follow_redirects: true to follow)"
    if start:
        message += f": {start}"
    if status >= 500 or status == 429:
        wait = retry_after_ms(response.headers.get("retry-after"))
        return NodeError(message, retryable=True, retry_after_ms=wait)
    return NodeError(message, retryable=False)


def retry_after_ms(value: str | None, now: datetime | None = None) -> int:
    """A Retry-After header (seconds, or an HTTP date) in milliseconds; 0 when absent."""
    if not value:
        return 0
    value = value.strip()
    try:
        wait = float(value) * 1000
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        wait = (when - (now or datetime.now(UTC))).total_seconds() * 1000
    if not math.isfinite(wait):
        return 0
    return int(min(max(wait, 0), MAX_RETRY_AFTER_MS))


def _emit(ctx: NodeContext | None, line: str, event: dict[str, Any], started: float) -> None:
    event["duration_ms"] = _ms_since(started)
    if ctx is not None:
        ctx.emit("api_call", message=line, **event)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------ the runner


class HttpRunner:
    """``kind: http``: makes the request in ``params`` (see `http_call`) and
    returns the response."""

    kind = "http"

    def validate(self, params: Mapping[str, Any]) -> None:
        check_request(params)

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        return await http_call(ctx, task.params)

    def close(self) -> None:
        close_clients()
