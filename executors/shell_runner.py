"""``kind: shell``: runs a program from an argv list (never through a shell).

The program heads its own process group; whatever ends the node (an
interrupt, a cancel, a timeout, the program exiting and leaving children
behind) ends the whole group: SIGTERM, then SIGKILL after ``term_grace_ms``.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import math
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

from executors.base import NodeContext, NodeError, NodeTask

PARAMS = (
    "argv",
    "env",
    "inherit_env",
    "cwd",
    "stdin",
    "timeout_ms",
    "term_grace_ms",
    "max_output_bytes",
)
DEFAULT_TERM_GRACE_MS = 5000
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
MAX_LINE_CHARS = 16_384  # a longer line is logged in pieces of this size
READ_CHUNK = 65_536
TAIL_LINES = 5  # of stderr, in the error of a failed program
TAIL_CHARS = 1000
GROUP_POLL_S = 0.02
# Once the group is gone, how long the pipes may take to report their end
# (a process that left the group may still hold them).
PIPE_DRAIN_S = 2.0
KILL_WAIT_S = 5.0  # for the kernel to end what was sent SIGKILL
_ENDING: set[asyncio.Task[Any]] = set()


# ------------------------------------------------------------------ checks


def _is_whole_template(value: Any) -> bool:
    """A string that is one placeholder: it may render to any JSON value."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _is_whole(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value == int(value)


def check_params(params: Mapping[str, Any], *, templates: bool = True) -> None:
    """Raises ValueError naming the field when `params` cannot run.

    With `templates`, values still holding ``{{`` pass (they are checked
    again once rendered).
    """

    def loose(value: Any) -> bool:
        return templates and _is_template(value)

    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"params.{unknown[0]} is not a shell param; known: {', '.join(PARAMS)}")

    argv = params.get("argv")
    if argv is None:
        raise ValueError("params.argv is required: the program and its arguments, as a list")
    if isinstance(argv, str):
        if not (templates and _is_whole_template(argv)):
            raise ValueError(
                "params.argv must be a list of strings, not one string: split it into "
                "the program and its arguments, e.g. ['ls', '-l', 'some dir'] "
                "(no shell parses it)"
            )
    elif not isinstance(argv, list):
        raise ValueError(f"params.argv must be a list of strings, not {type(argv).__name__}")
    else:
        if not argv:
            raise ValueError("params.argv must not be empty: it starts with the program")
        for i, item in enumerate(argv):
            if not (isinstance(item, str) or _is_whole(item)):
                raise ValueError(f"params.argv[{i}] must be a string, not {type(item).__name__}")
        if argv[0] == "":
            raise ValueError("params.argv[0] must name the program")

    env = params.get("env")
    if env is not None and not loose(env):
        if not isinstance(env, Mapping):
            raise ValueError("params.env must be an object of variable names to values")
        for key, value in env.items():
            if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
                raise ValueError(f"params.env has a bad variable name {key!r}")
            if not (isinstance(value, str) or _is_whole(value)):
                raise ValueError(f"params.env.{key} must be a string")

    inherit = params.get("inherit_env")
    if inherit is not None and not loose(inherit) and not isinstance(inherit, bool):
        raise ValueError("params.inherit_env must be true or false")
    for key in ("cwd", "stdin"):
        value = params.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"params.{key} must be a string, not {type(value).__name__}")
    if params.get("cwd") == "":
        raise ValueError("params.cwd must not be empty (leave it out for the server's folder)")
    for key, least in (("timeout_ms", 1), ("term_grace_ms", 0), ("max_output_bytes", 1)):
        value = params.get(key)
        if value is not None and not loose(value) and (not _is_whole(value) or value < least):
            kind = "positive" if least else "non-negative"
            raise ValueError(f"params.{key} must be a {kind} whole number, not {value!r}")


def _text(value: Any) -> str:
    if isinstance(value, float) and _is_whole(value):
        return str(int(value))  # 5 crosses protobuf as 5.0
    return str(value)


# ------------------------------------------------------------------ the group


def _group_alive(pgid: int) -> bool:
    """True while a process of the group lives (zombies waiting for a parent
    that does not reap them do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def end_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM to the process group of `proc`, SIGKILL after `grace_s` to what
    is left; returns once the group is gone and `proc` has exited."""
    pgid = proc.pid
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(GROUP_POLL_S)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + KILL_WAIT_S
            while _group_alive(pgid) and time.monotonic() < deadline:
                await asyncio.sleep(GROUP_POLL_S)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # it left its group: it still is ours
        deadline = time.monotonic() + KILL_WAIT_S
        while proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(GROUP_POLL_S)


async def _wait_exit(proc: asyncio.subprocess.Process, readers: asyncio.Future[Any]) -> None:
    """Returns once `proc` has exited. Process.wait() also waits for its pipes
    to close, which a child it left behind may hold open for ever: so the
    pipes' end (the usual sign) or the exit status, whichever comes first."""
    while proc.returncode is None:
        done, _ = await asyncio.wait([readers], timeout=GROUP_POLL_S * 2)
        if done:
            readers.result()
            await proc.wait()  # the pipes are closed: returns at its exit


async def _settle(
    proc: asyncio.subprocess.Process, tasks: list[asyncio.Future[Any]], grace_s: float
) -> None:
    """Ends the group, then lets the readers finish what the pipes still hold."""
    await end_group(proc, grace_s)
    done, pending = await asyncio.wait(tasks, timeout=PIPE_DRAIN_S)
    for task in pending:  # a process that left the group holds a pipe
        task.cancel()
    for task in done:
        if not task.cancelled():
            task.exception()  # seen: the caller raises it when it matters


async def _settle_surely(
    proc: asyncio.subprocess.Process, tasks: list[asyncio.Future[Any]], grace_s: float
) -> None:
    """_settle, finished even when the caller is cancelled (again) meanwhile:
    the wait is bounded by the grace."""
    task = asyncio.ensure_future(_settle(proc, tasks, grace_s))
    _ENDING.add(task)
    task.add_done_callback(_ENDING.discard)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


# ------------------------------------------------------------------ streams


class _Stream:
    """One of the program's output streams: logged line by line as it comes,
    its first `cap` bytes kept for the output, its last lines for errors."""

    def __init__(self, name: str, level: str, cap: int) -> None:
        self.name, self.level, self.cap = name, level, cap
        self.kept = bytearray()
        self.truncated = False
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    async def pump(self, reader: asyncio.StreamReader, ctx: NodeContext) -> None:
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                break
            self._keep(chunk)
            self._lines(self._decoder.decode(chunk), ctx)
            await ctx.room()  # the pipe fills, and the program waits, meanwhile
        self._lines(self._decoder.decode(b"", final=True), ctx)
        if self._partial:
            self._line(self._partial, ctx)
            self._partial = ""

    def _keep(self, chunk: bytes) -> None:
        room = self.cap - len(self.kept)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.kept += chunk[:room]

    def _lines(self, text: str, ctx: NodeContext) -> None:
        if not text:
            return
        *lines, rest = (self._partial + text).split("\n")
        for line in lines:
            self._line(line, ctx)
        while len(rest) > MAX_LINE_CHARS:
            self._line(rest[:MAX_LINE_CHARS], ctx)
            rest = rest[MAX_LINE_CHARS:]
        self._partial = rest

    def _line(self, line: str, ctx: NodeContext) -> None:
        line = line.removesuffix("\r")
        for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
            piece = line[start : start + MAX_LINE_CHARS]
            ctx.log(piece, self.level, stream=self.name)
            if piece.strip():
                self.tail.append(piece)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Writes stdin and closes it (a program that stops reading early is fine)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.close()
        await writer.wait_closed()


# ------------------------------------------------------------------ the runner


class ShellRunner:
    """``kind: shell``: runs ``params.argv`` and returns its exit code and output."""

    kind = "shell"

    def validate(self, params: Mapping[str, Any]) -> None:
        check_params(params)

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        params = task.params
        try:
            check_params(params, templates=False)
        except ValueError as err:
            raise NodeError(str(err), retryable=False) from None
        argv = [_text(item) for item in params["argv"]]
        program = argv[0]
        env = dict(os.environ) if params.get("inherit_env", True) else {}
        env.setdefault("PATH", os.environ.get("PATH", os.defpath))
        env.update({k: _text(v) for k, v in (params.get("env") or {}).items()})
        cwd = params.get("cwd")
        if cwd is not None and not os.path.isdir(cwd):
            raise NodeError(
                f"params.cwd {cwd!r} is not a directory where this node runs", retryable=False
            )
        stdin = params.get("stdin")
        grace_s = int(params.get("term_grace_ms", DEFAULT_TERM_GRACE_MS)) / 1000
        cap = int(params.get("max_output_bytes", DEFAULT_MAX_OUTPUT_BYTES))
        timeout_ms = params.get("timeout_ms")

        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group, to end as a whole
            )
        except FileNotFoundError:
            where = "" if os.sep in program else " (looked in PATH)"
            raise NodeError(f"cannot run {program!r}: not found{where}", retryable=False) from None
        except PermissionError:
            raise NodeError(
                f"cannot run {program!r}: not executable (permission denied)", retryable=False
            ) from None
        except OSError as err:
            raise NodeError(
                f"cannot run {program!r}: {err.strerror or err}", retryable=False
            ) from None

        out = _Stream("stdout", "info", cap)
        errs = _Stream("stderr", "warning", cap)
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.ensure_future(
            asyncio.gather(out.pump(proc.stdout, ctx), errs.pump(proc.stderr, ctx))
        )
        tasks: list[asyncio.Future[Any]] = [readers]
        if stdin is not None:
            assert proc.stdin is not None
            tasks.append(asyncio.ensure_future(_feed(proc.stdin, stdin.encode())))
        timed_out = False
        try:
            try:
                async with asyncio.timeout(int(timeout_ms) / 1000 if timeout_ms else None):
                    await _wait_exit(proc, readers)
            except TimeoutError:
                timed_out = True
        finally:
            # Whatever the way out (an exit, a timeout, a cancel), the group
            # ends: what the program left running too, letting go of the pipes.
            await _settle_surely(proc, tasks, grace_s)
        if timed_out:
            raise NodeError(f"{program!r} timed out after {int(timeout_ms)} ms")
        if readers.done() and not readers.cancelled():
            readers.result()  # a failure to deliver its output

        code = proc.returncode
        duration_ms = round((time.monotonic() - started) * 1000)
        if code:
            tail = " | ".join(errs.tail)
            if len(tail) > TAIL_CHARS:
                tail = "..." + tail[-TAIL_CHARS:]
            if code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f"signal {-code}"
                what = f"{program!r} was killed by {name} ({-code})"
            else:
                what = f"{program!r} exited with code {code}"
            raise NodeError(f"{what}: {tail}" if tail else what, retryable=True)
        return {
            "exit_code": code,
            "stdout": out.text(),
            "stderr": errs.text(),
            "stdout_truncated": out.truncated,
            "stderr_truncated": errs.truncated,
            "duration_ms": duration_ms,
        }
