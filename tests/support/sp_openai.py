"""An OpenAI-compatible stand-in server: real HTTP on 127.0.0.1, a scripted answer per request.

It speaks the wire protocol of ``POST /v1/chat/completions`` as OpenAI does:
with ``"stream": true`` a ``text/event-stream`` of ``chat.completion.chunk``
objects (a first delta with the role, one content delta per word, tool-call
deltas split over several chunks, a chunk with the finish reason, a usage chunk
when ``stream_options.include_usage`` is set, then ``data: [DONE]``); without
it one ``chat.completion`` object. Errors come as OpenAI sends them
(``{"error": {"message", "type", "code"}}`` with the status).

In a test::

    with OpenAIStandIn() as llm:
        llm.script(Reply(text="Hello world", usage=(12, 5)), Status(429, retry_after="1"))
        ... params {"base_url": llm.base_url, "model": "stand-in-1"} ...
        assert llm.requests[0].authorization == "Bearer sk-..."

Each request takes the next scripted answer; with none left it asks the rule
(``OpenAIStandIn(rule=fn)`` or ``.respond(fn)``: ``fn(body)`` returns an answer
or None), else it answers `DEFAULT_TEXT`. ``llm.url + "/tools/<name>"`` is an
HTTP endpoint that echoes what it gets, for agents' http tools.

As a process (for benchmarks and other processes)::

    python tests/support/sp_openai.py --port 0 --tokens 64 --chunk-delay-ms 0

prints ``listening http://127.0.0.1:PORT/v1`` as its first line, then answers
every request with a streamed completion of N tokens (``w0 w1 w2 ...``, one word
per content delta) plus usage, until SIGTERM or SIGINT. Its chunks are encoded
once, so the server adds next to nothing to what a benchmark measures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "stand-in-1"
DEFAULT_TEXT = "This is the stand-in's answer."
_WORD = re.compile(r"\s*\S+|\s+$")


# ------------------------------------------------------------------ answers


@dataclasses.dataclass(frozen=True)
class Reply:
    """A completion with text, streamed one word per content delta.

    Args:
        text: the completion.
        chunks: the content deltas, when not one per word (they join to the text).
        chunk_delay_ms: the wait before each delta after the first.
        first_delay_ms: the wait before the first content delta (after the role chunk).
        model: the model the response names.
        usage: (prompt_tokens, completion_tokens); None counts words.
        finish_reason: None ends the stream without one (a broken server).
        headers: extra response headers.
    """

    text: str = DEFAULT_TEXT
    chunks: Sequence[str] | None = None
    chunk_delay_ms: float = 0
    first_delay_ms: float = 0
    model: str = DEFAULT_MODEL
    usage: tuple[int, int] | None = None
    finish_reason: str | None = "stop"
    headers: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class ToolCalls:
    """A completion that asks for tool calls (finish_reason "tool_calls").

    Args:
        calls: (name, arguments) per call; arguments is an object (sent as
            JSON text) or the raw text to send (e.g. JSON that does not parse).
        text: content streamed before the calls ("" for none).
        pieces: how many deltas each call's ``arguments`` text is split into
            (the first delta carries the id and the name, no arguments).
        ids: the call ids; default ``call_<request>_<index>``.
    """

    calls: Sequence[tuple[str, Any]] = ()
    text: str = ""
    pieces: int = 3
    ids: Sequence[str] | None = None
    chunk_delay_ms: float = 0
    model: str = DEFAULT_MODEL
    usage: tuple[int, int] | None = None
    headers: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Status:
    """An error response: ``status`` with OpenAI's error body.

    Args:
        message: the error's message (default: the status's reason).
        body: the whole body instead (an object as JSON, text as is).
        retry_after: the ``Retry-After`` header (seconds or an HTTP date).
        retry_after_ms: the ``retry-after-ms`` header.
    """

    status: int
    message: str = ""
    body: Any = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    headers: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Cut:
    """A stream whose connection is dropped after `after_chunks` events
    (counting the role chunk); not streamed: half a body."""

    after_chunks: int = 3
    text: str = "one two three four five six seven eight"
    model: str = DEFAULT_MODEL


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A stream whose event after `after_chunks` good ones is not JSON (it then
    ends as usual); not streamed: a body that is not JSON."""

    after_chunks: int = 2
    text: str = "one two three four five six seven eight"
    model: str = DEFAULT_MODEL


Answer = Reply | ToolCalls | Status | Cut | Malformed
Rule = Callable[[dict[str, Any]], "Answer | None"]


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request the stand-in received."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # the parsed JSON body (None when there was none or it was not JSON)
    received: float  # time.time()

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("messages") or [])


# ------------------------------------------------------------------ encoding


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _words(text: str) -> list[str]:
    return _WORD.findall(text) if text else []


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    count = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            count += len(content.split())
        elif content is not None:
            count += len(json.dumps(content).split())
    return count


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Chunks:
    """Builds the chunk objects of one streamed completion."""

    def __init__(self, completion_id: str, model: str, created: int) -> None:
        self.head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_stand_in",
        }

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**self.head, "choices": [choice]})

    def usage(self, prompt: int, completion: int) -> bytes:
        return _sse({**self.head, "choices": [], "usage": _usage(prompt, completion)})


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _split(text: str, pieces: int) -> list[str]:
    pieces = max(1, min(pieces, len(text) or 1))
    size = -(-len(text) // pieces) if text else 0
    return [text[i : i + size] for i in range(0, len(text), size)] if text else [""]


def _call_ids(answer: ToolCalls, number: int) -> list[str]:
    if answer.ids is not None:
        return list(answer.ids)
    return [f"call_{number}_{i}" for i in range(len(answer.calls))]


def stream_frames(
    answer: Reply | ToolCalls, body: Mapping[str, Any], number: int
) -> tuple[list[bytes], int]:
    """(the SSE events of `answer` as bytes, the index of the first content or
    tool delta): the role chunk, the deltas, the finish, usage, [DONE]."""
    chunks = _Chunks(f"chatcmpl-standin-{number}", answer.model, int(time.time()))
    frames = [chunks.delta({"role": "assistant", "content": ""})]
    first = len(frames)
    if isinstance(answer, Reply):
        pieces = list(answer.chunks) if answer.chunks is not None else _words(answer.text)
        frames += [chunks.delta({"content": piece}) for piece in pieces]
        finish = answer.finish_reason
        completion = len(pieces)
    else:
        pieces = _words(answer.text)
        frames += [chunks.delta({"content": piece}) for piece in pieces]
        completion = len(pieces)
        for index, ((name, arguments), call_id) in enumerate(
            zip(answer.calls, _call_ids(answer, number), strict=False)
        ):
            opening = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            frames.append(chunks.delta({"tool_calls": [opening]}))
            for piece in _split(_arguments_text(arguments), answer.pieces):
                frames.append(
                    chunks.delta(
                        {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                    )
                )
                completion += 1
        finish = "tool_calls"
    if finish is not None:
        frames.append(chunks.delta({}, finish))
    options = body.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage"):
        prompt, completion = answer.usage or (_prompt_tokens(body), completion)
        frames.append(chunks.usage(prompt, completion))
    frames.append(DONE)
    return frames, first


def completion_object(answer: Reply | ToolCalls, body: Mapping[str, Any], number: int) -> dict:
    """The ``chat.completion`` object of `answer` (a request without streaming)."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    completion = len(_words(answer.text))
    if isinstance(answer, ToolCalls):
        finish: str | None = "tool_calls"
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": _arguments_text(arguments)},
            }
            for (name, arguments), call_id in zip(
                answer.calls, _call_ids(answer, number), strict=False
            )
        ]
        completion += sum(answer.pieces for _ in answer.calls)
    else:
        finish = answer.finish_reason
    prompt, completion = answer.usage or (_prompt_tokens(body), completion)
    return {
        "id": f"chatcmpl-standin-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "system_fingerprint": "fp_stand_in",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(prompt, completion),
    }


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_response(answer: Status) -> web.Response:
    reason = _reason(answer.status)
    headers = dict(answer.headers or {})
    if answer.retry_after is not None:
        headers["Retry-After"] = answer.retry_after
    if answer.retry_after_ms is not None:
        headers["retry-after-ms"] = answer.retry_after_ms
    if isinstance(answer.body, str):
        return web.Response(
            status=answer.status, text=answer.body, headers=headers, content_type="text/plain"
        )
    body = answer.body
    if body is None:
        body = {
            "error": {
                "message": answer.message or reason,
                "type": _ERROR_TYPES.get(answer.status, "server_error"),
                "param": None,
                "code": None,
            }
        }
    return web.json_response(body, status=answer.status, headers=headers)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# ------------------------------------------------------------------ the server


class _Handler:
    """The aiohttp application's logic, shared by the in-test server and the process."""

    def __init__(self, pick: Callable[[dict[str, Any], int], Answer], record: bool) -> None:
        self._pick = pick
        self._record = record
        self.requests: list[Recorded] = []
        # (request number, time.time()) of each stream the client left before its end.
        self.disconnects: list[tuple[int, float]] = []
        self.lock = threading.Lock()
        self._numbers = itertools.count(1)
        # The process's one answer, encoded once per kind of request.
        self.fixed: Reply | None = None
        self._fixed_frames: dict[bool, tuple[list[bytes], int]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_route("*", "/tools/{name}", self.tool)
        return app

    async def tool(self, request: web.Request) -> web.Response:
        """An HTTP endpoint for agents' http tools: echoes what it got."""
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self._remember(request, body)
        return web.json_response(
            {
                "tool": request.match_info["name"],
                "method": request.method,
                "query": dict(request.query),
                "json": body,
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        self._remember(request, None)
        return web.json_response(
            {"object": "list", "data": [{"id": DEFAULT_MODEL, "object": "model", "owned_by": "sp"}]}
        )

    def _remember(self, request: web.Request, body: Any) -> None:
        if not self._record:
            return
        entry = Recorded(
            request.method,
            request.path,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            time.time(),
        )
        with self.lock:
            self.requests.append(entry)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self._remember(request, body)
        if not isinstance(body, dict):
            return error_response(Status(400, "the request body must be a JSON object"))
        number = next(self._numbers)
        stream = bool(body.get("stream"))
        if self.fixed is not None:
            return await self._fixed(request, body)
        answer = self._pick(body, number)
        if isinstance(answer, Status):
            return error_response(answer)
        if not stream:
            return self._whole(request, answer, body, number)
        if isinstance(answer, Cut | Malformed):
            frames, _ = stream_frames(Reply(text=answer.text, model=answer.model), body, number)
            good = frames[: answer.after_chunks]
            return await self._broken(request, good, isinstance(answer, Cut))
        frames, first = stream_frames(answer, body, number)
        delay = answer.chunk_delay_ms / 1000
        first_delay = getattr(answer, "first_delay_ms", 0) / 1000
        return await self._stream(
            request, frames, first, delay, first_delay, answer.headers, number
        )

    def _whole(
        self, request: web.Request, answer: Answer, body: dict[str, Any], number: int
    ) -> web.StreamResponse:
        if isinstance(answer, Cut | Malformed):
            text = json.dumps(completion_object(Reply(text=answer.text), body, number))
            if isinstance(answer, Malformed):
                return web.Response(text=text[: len(text) // 2], content_type="application/json")
            return _HalfBody(text.encode())
        assert isinstance(answer, Reply | ToolCalls)
        return web.json_response(
            completion_object(answer, body, number), headers=dict(answer.headers or {})
        )

    async def _fixed(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert self.fixed is not None
        if not body.get("stream"):
            return web.json_response(completion_object(self.fixed, body, 0))
        options = body.get("stream_options")
        usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        encoded = self._fixed_frames.get(usage)
        if encoded is None:
            encoded = self._fixed_frames[usage] = stream_frames(self.fixed, body, 0)
        frames, first = encoded
        delay = self.fixed.chunk_delay_ms / 1000
        return await self._stream(request, frames, first, delay, 0.0, None, 0)

    async def _stream(
        self,
        request: web.Request,
        frames: list[bytes],
        first: int,
        delay: float,
        first_delay: float,
        headers: Mapping[str, str] | None,
        number: int,
    ) -> web.StreamResponse:
        response = _event_stream(headers)
        try:
            await response.prepare(request)
            if not delay and not first_delay:
                await response.write(b"".join(frames))  # one write: the fastest there is
            else:
                await response.write(b"".join(frames[:first]))
                if first_delay:
                    await asyncio.sleep(first_delay)
                for i, frame in enumerate(frames[first:]):
                    if i and delay:
                        await asyncio.sleep(delay)
                    await response.write(frame)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            # The client went away (a cancelled node): nothing to finish.
            if self._record:
                with self.lock:
                    self.disconnects.append((number, time.time()))
        return response

    async def _broken(
        self, request: web.Request, good: list[bytes], cut: bool
    ) -> web.StreamResponse:
        response = _event_stream(None)
        try:
            await response.prepare(request)
            await response.write(b"".join(good))
            if cut:
                await asyncio.sleep(0.02)  # let the good chunks reach the client first
                if request.transport is not None:
                    request.transport.abort()  # no last chunk: an incomplete chunked body
                return response
            await response.write(b'data: {"id": "chatcmpl-broken", "choices": [{"delta"\n\n')
            await response.write(DONE)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return response


def _event_stream(headers: Mapping[str, str] | None) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            **(headers or {}),
        },
    )
    response.enable_chunked_encoding()
    return response


class _HalfBody(web.StreamResponse):
    """A response that announces its whole length and sends half of it."""

    def __init__(self, content: bytes) -> None:
        super().__init__(status=200, headers={"Content-Type": "application/json"})
        self.content_length = len(content)
        self._content = content

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)
        await self.write(self._content[: len(self._content) // 2])
        await asyncio.sleep(0.02)
        if request.transport is not None:
            request.transport.abort()
        return writer


class OpenAIStandIn:
    """The stand-in on its own event-loop thread, listening on 127.0.0.1.

    Args:
        rule: answers requests once the script is used up: ``rule(body)``
            returns an answer, or None for the default one.
        port: 0 for any free one.

    Attributes:
        base_url: ``http://127.0.0.1:PORT/v1`` once started.
    """

    def __init__(self, rule: Rule | None = None, *, port: int = 0) -> None:
        self._rule = rule
        self._port = port
        self._script: list[Answer] = []
        self._handler = _Handler(self._next_answer, record=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""
        self.port = 0

    # -- the script
    def script(self, *answers: Answer) -> OpenAIStandIn:
        """Appends answers; each request takes the next one."""
        with self._handler.lock:
            self._script.extend(answers)
        return self

    def respond(self, rule: Rule | None) -> OpenAIStandIn:
        """Sets the rule for requests after the script (None: the default answer)."""
        self._rule = rule
        return self

    @property
    def remaining(self) -> int:
        """Scripted answers not used yet."""
        with self._handler.lock:
            return len(self._script)

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, in order (a copy)."""
        with self._handler.lock:
            return list(self._handler.requests)

    @property
    def disconnects(self) -> list[tuple[int, float]]:
        """(request number from 1, time.time()) of each stream the client
        closed before its end (noticed at the next write)."""
        with self._handler.lock:
            return list(self._handler.disconnects)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: ``url + "/tools/<name>"`` echoes requests as JSON."""
        return self.base_url.removesuffix("/v1")

    @property
    def chat_requests(self) -> list[Recorded]:
        """The requests to /chat/completions."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _next_answer(self, body: dict[str, Any], number: int) -> Answer:
        with self._handler.lock:
            if self._script:
                return self._script.pop(0)
        rule = self._rule
        answer = rule(body) if rule is not None else None
        return answer if answer is not None else Reply()

    # -- start and stop
    def start(self) -> OpenAIStandIn:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as err:
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=serve, name="sp-openai", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    async def _open(self) -> None:
        self._runner = web.AppRunner(
            self._handler.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self.port = _bound_port(self._runner)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> OpenAIStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the stand-in is not listening")


# ------------------------------------------------------------------ the process


def fixed_reply(tokens: int, chunk_delay_ms: float) -> Reply:
    """The process's answer: `tokens` words ``w0 w1 ...``, one per content delta."""
    chunks = [f"w{i}" if i == 0 else f" w{i}" for i in range(tokens)]
    return Reply(
        text="".join(chunks),
        chunks=chunks,
        chunk_delay_ms=chunk_delay_ms,
        usage=(tokens, tokens),
    )


async def _serve_forever(port: int, tokens: int, chunk_delay_ms: float) -> None:
    handler = _Handler(lambda body, number: Reply(), record=False)
    handler.fixed = fixed_reply(tokens, chunk_delay_ms)
    runner = web.AppRunner(handler.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening http://127.0.0.1:{_bound_port(runner)}/v1", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible stand-in server")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--tokens", type=int, default=16, help="content deltas per completion")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="wait between deltas")
    args = parser.parse_args(argv)
    if args.tokens < 0:
        parser.error("--tokens must not be negative")
    asyncio.run(_serve_forever(args.port, args.tokens, args.chunk_delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
