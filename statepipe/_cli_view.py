"""What the CLI shows: following a run's events, progress, tables and event lines.

Human output goes to stderr through a rich console (colour on a terminal,
plain text when piped); stdout gets only plain data (run ids, results, JSON).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from statepipe.client import Client, Event, NodeState, Run, StatepipeError
from statepipe_api.lifecycle import CONTROLS, FINAL_NODE, IN_FLIGHT_NODE, STOP_FOLLOWING_RUN

STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "CANCELLED": "magenta",
    "SKIPPED": "dim",
    "RUNNING": "cyan",
    "QUEUED": "blue",
    "PENDING": "dim",
    "RETRY_WAIT": "yellow",
    "PAUSED": "yellow",
    "INTERRUPTED": "yellow",
}
MARKS = {
    "SUCCEEDED": "✓",
    "FAILED": "✗",
    "CANCELLED": "⊘",
    "SKIPPED": "-",
    "RETRY_WAIT": "↻",
    "INTERRUPTED": "‖",
    "PAUSED": "‖",
}


#: Run statuses whose time counts as a run's running time: it holds its work
#: (PAUSED: nodes in flight finish, nothing new starts). Time FAILED or
#: INTERRUPTED (waiting for someone to resume it) or PENDING does not count.
RUNNING_TIME_STATUSES = frozenset({"RUNNING", "PAUSED"})


def command_line(*words: str, options: Sequence[str] = ()) -> str:
    """``statepipe <words> <options>``, quoted for a shell: a hint to copy."""
    return shlex.join(["statepipe", *words, *options])


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


class _StdoutConsole(Console):
    """A console on stdout whose closed pipe is an ordinary ``BrokenPipeError``.

    rich's own answer (``Console.on_broken_pipe``) is ``SystemExit(1)``; the CLI
    handles a closed stdout in one place, for every way of writing to it.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def stdout_console() -> Console:
    return _StdoutConsole(highlight=False, soft_wrap=True)


def status_text(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


def short(value: Any, limit: int = 80) -> str:
    """One line of JSON (or text), cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def span(start: _dt.datetime | None, end: _dt.datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or _dt.datetime.now(_dt.UTC)) - start).total_seconds()


def running_seconds(
    status_events: Iterable[Event], now: _dt.datetime | None = None
) -> float | None:
    """How long a run was RUNNING or PAUSED, from its run_status events (in seq order).

    A resumed run's time FAILED or INTERRUPTED is left out; a run still
    running counts up to `now`. None when it never ran.
    """
    total = 0.0
    since: _dt.datetime | None = None
    ran = False
    for event in status_events:
        if event.kind != "run_status" or event.ts is None:
            continue
        if event.status in RUNNING_TIME_STATUSES:
            if since is None:
                since, ran = event.ts, True
        elif since is not None:
            total += (event.ts - since).total_seconds()
            since = None
    if since is not None:
        total += ((now or _dt.datetime.now(_dt.UTC)) - since).total_seconds()
    return max(total, 0.0) if ran else None


def run_time(client: Client, run: Run) -> float | None:
    """:func:`running_seconds` of a run (one ListEvents call, run_status events only);
    the wall clock from start to finish if the events say nothing or cannot be read."""
    try:
        events = client.list_events(run.run_id, kinds=["run_status"], limit=None)
    except StatepipeError:
        events = []
    took = running_seconds(events)
    return took if took is not None else span(run.started_at, run.finished_at)


def node_traceback(node: NodeState) -> str:
    """A node's stored traceback ("" when none, or from a server that keeps none)."""
    return node.traceback


def traceback_text(traceback: str, *, limit: int | None = None, indent: str = "    ") -> Text:
    """A traceback, dim and indented; with `limit`, only its last lines (and how many
    were left out)."""
    lines = traceback.rstrip("\n").splitlines()
    out = Text(style="dim")
    if limit is not None and len(lines) > limit:
        left_out = len(lines) - limit
        out.append(f"{indent}… {left_out} earlier line{'s' * (left_out != 1)} "
                   "(--verbose shows all)\n")  # fmt: skip
        lines = lines[-limit:]
    out.append("\n".join(indent + line for line in lines))
    return out


def local_time(ts: _dt.datetime | None, *, date: bool = False) -> str:
    if ts is None:
        return "-"
    local = ts.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S.") + (
        "" if date else f"{local.microsecond // 1000:03d}"
    )


# The console a progress bar or live table is drawing on, if any: data for
# stdout goes through it when stdout is that same terminal, so the display
# is not torn. (rich's own stdout redirection is off: it would send stdout to
# stderr even when stdout is a file.)
_live_console: Console | None = None


def _set_live_console(console: Console | None) -> None:
    global _live_console
    _live_console = console


def stdout_line(text: str) -> None:
    """One line of data on stdout."""
    console = _live_console
    if console is not None and sys.stdout.isatty():
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def write_json(value: Any, *, indent: int | None = None) -> None:
    """A JSON value on stdout (compact on one line unless ``indent``)."""
    separators = None if indent else (",", ":")
    stdout_line(json.dumps(value, indent=indent, separators=separators))


# ------------------------------------------------------------------- events


def event_detail(event: Event) -> Text:
    """What an event says, on one line (kind-specific)."""
    kind, data = event.kind, event.data or {}
    if kind in ("run_status", "node_status"):
        text = status_text(event.status)
        if event.message:
            text.append(f" {short(event.message, 200)}")
        return text
    if kind == "log":
        style = {"error": "red", "warning": "yellow", "debug": "dim"}.get(event.level, "")
        return Text(f"[{event.level or 'info'}] {event.message}", style=style)
    if kind == "token":
        return Text(json.dumps(event.message))
    if kind == "progress":
        current, total = data.get("current"), data.get("total")
        where = f"{current}/{total}" if total is not None else f"{current}"
        return Text(f"{where} {event.message}".strip())
    if kind == "output" and "output" in data:
        return Text(short(data["output"], 200))
    if kind == "hook_error":
        return Text(event.message, style="red")
    parts = [event.message] if event.message else []
    if data:
        parts.append(short(data, 200))
    return Text(" ".join(parts))


def event_line(event: Event) -> Text:
    """``  seq time  who  kind  detail``, as ``logs`` and ``run --verbose`` print it.

    ``who`` is ``node#N`` for a node's events: N is the attempt the event
    belongs to (the attempt a QUEUED node waits to become, the one that
    RUNNING starts, the one a RETRY_WAIT or FAILED ends). A failure's
    traceback follows on its own lines, dim and indented.
    """
    who = event.node_id or "run"
    if event.node_id and event.attempt:
        who += f"#{event.attempt}"
    line = Text(f"{event.seq:>5} {local_time(event.ts)} ")
    line.append(f"{who:<18} ", style="bold" if event.node_id else "")
    line.append(f"{event.kind:<11} ", style="dim")
    line.append_text(event_detail(event))
    traceback = (event.data or {}).get("traceback") if event.kind == "node_status" else None
    if traceback and isinstance(traceback, str):
        line.append("\n")
        line.append_text(traceback_text(traceback, indent=" " * 8))
    return line


#: How ``run`` marks a warning, an error log or a failing hook between its node lines.
NOTICE_MARK = "⚠"


def notice_line(event: Event) -> Text:
    """``  ⚠ node: message`` for a warning or error log or a hook error while a run
    is followed (yellow for warnings, red for errors; plain when piped)."""
    who = event.node_id or "run"
    if event.node_id and event.attempt > 1:
        who += f"#{event.attempt}"
    style = "yellow" if event.kind == "log" and event.level == "warning" else "red"
    message = event.message.rstrip("\n").replace("\n", "\n      ")
    line = Text("  ")
    line.append(NOTICE_MARK, style=style)
    line.append(f" {who}: ", style="bold" if event.node_id else "")
    line.append(message, style=style)
    return line


# ------------------------------------------------------------- output file


class OutputFile:
    """``--output results.jsonl``: node lines as nodes finish, a run line as runs finish."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "w")
        self._lock = threading.Lock()

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()

    def node(self, run_id: str, node: NodeProgress) -> None:
        self._write(
            {
                "type": "node",
                "run_id": run_id,
                "node_id": node.node_id,
                "status": node.status,
                "attempt": node.attempt,
                "output": node.output,
                "error": node.error,
            }
        )

    def run(self, run: Run) -> None:
        self._write({"type": "run", **run.to_dict()})

    def close(self) -> None:
        with self._lock:
            self._file.close()


# ---------------------------------------------------------------- following


class NodeProgress:
    __slots__ = ("attempt", "error", "finished", "node_id", "output", "started", "status")

    def __init__(self, node_id: str, status: str = "PENDING", attempt: int = 0) -> None:
        self.node_id = node_id
        self.status = status
        self.attempt = attempt
        self.output: Any = None
        self.error = ""
        self.started: _dt.datetime | None = None
        self.finished: _dt.datetime | None = None


class View:
    """Receives what happens to one or more runs; shows it (or not)."""

    def run_started(self, run: Run, label: str) -> None: ...
    def event(self, run_id: str, event: Event) -> None: ...
    def node_finished(self, run_id: str, node: NodeProgress) -> None: ...
    def run_status(self, run_id: str, status: str, message: str) -> None: ...
    def run_finished(self, run: Run) -> None: ...
    def close(self) -> None: ...


class Follower:
    """Follows one run's events to its end (or until interrupted).

    ``follow()`` returns the run as it ended: SUCCEEDED, FAILED, CANCELLED or
    INTERRUPTED. ``stop()`` (from another thread) ends it early.
    """

    def __init__(
        self,
        client: Client,
        run: Run,
        view: View,
        output: OutputFile | None = None,
        *,
        after_seq: int = 0,
    ) -> None:
        self.client = client
        self.run_id = run.run_id
        self.view = view
        self.output = output
        self.after = after_seq
        self.nodes = {n.node_id: NodeProgress(n.node_id, n.status, n.attempt) for n in run.nodes}
        for state in run.nodes:
            node = self.nodes[state.node_id]
            node.started, node.finished = state.started_at, state.finished_at
            node.output, node.error = state.output, state.error
        self.status = run.status
        self._stream: Any = None
        self._stopped = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._stream is not None:
                self._stream.close()

    def follow(self) -> Run:
        while not self._stopped:
            with self._lock:
                if self._stopped:
                    break
                self._stream = self.client.watch(self.run_id, after_seq=self.after)
            ended = False
            try:
                for event in self._stream:
                    self.after = max(self.after, event.seq)
                    self._handle(event)
                    if event.kind == "run_status" and event.status in STOP_FOLLOWING_RUN:
                        ended = event.status == "INTERRUPTED"
                        if ended:
                            break
            finally:
                self._stream.close()
            run = self.client.get_run(self.run_id)
            if ended or run.status in STOP_FOLLOWING_RUN:
                return run
            time.sleep(0.2)  # the stream ended early (a server going away): watch again
        return self.client.get_run(self.run_id)

    def _handle(self, event: Event) -> None:
        self.view.event(self.run_id, event)
        if event.kind == "run_status":
            self.status = event.status
            self.view.run_status(self.run_id, event.status, event.message)
            return
        if not event.node_id:
            return
        node = self.nodes.get(event.node_id)
        if node is None:
            node = self.nodes[event.node_id] = NodeProgress(event.node_id)
        if event.kind == "output" and event.data and "output" in event.data:
            node.output = event.data["output"]
        elif event.kind == "node_status":
            node.status = event.status
            node.attempt = event.attempt
            if event.status == "RUNNING":
                node.started, node.finished = event.ts, None
                node.output, node.error = None, ""
            elif event.status in ("FAILED", "RETRY_WAIT"):
                node.error = event.message
            if event.status in FINAL_NODE:
                node.finished = event.ts
                if event.status != "SUCCEEDED":
                    node.output = None
                    node.error = event.message if event.status == "FAILED" else node.error
                if self.output is not None:
                    self.output.node(self.run_id, node)
                self.view.node_finished(self.run_id, node)


# -------------------------------------------------------------------- views


def _node_line(node: NodeProgress, prefix: str = "") -> Text:
    line = Text(prefix + "  ")
    line.append(MARKS.get(node.status, "•"), style=STYLES.get(node.status, ""))
    line.append(f" {node.node_id}")
    if node.status == "SUCCEEDED":
        took = span(node.started, node.finished)
        if took is not None:
            line.append(f"  {duration(took)}", style="dim")
        if node.attempt > 1:
            line.append(f"  (attempt {node.attempt})", style="dim")
    elif node.status == "FAILED":
        line.append(f"  failed (attempt {node.attempt}): {short(node.error, 200)}", style="red")
    elif node.status == "RETRY_WAIT":
        line.append(f"  attempt {node.attempt} failed, retrying: {short(node.error, 160)}")
    else:
        line.append(f"  {node.status.lower()}", style=STYLES.get(node.status, ""))
    return line


class RunView(View):
    """One run: node completions as lines (or every event with ``verbose``), a
    progress bar on a terminal, or a live table of node states (``live``)."""

    def __init__(
        self,
        console: Console,
        *,
        verbose: bool = False,
        live: bool = False,
        total: int = 0,
        again: Callable[..., str] = command_line,
    ) -> None:
        """`again` makes a statepipe command line for a hint (with the connection
        options the command was given)."""
        self.console = console
        self.verbose = verbose
        self.again = again
        self.total = total
        self.done = 0
        self.follower: Follower | None = None
        self._live: Live | None = None
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_render = 0.0
        self._closed = False
        if console.is_terminal and live:
            self._live = Live(
                console=console,
                get_renderable=self._table,
                refresh_per_second=4,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
            _set_live_console(console)
        elif console.is_terminal and not verbose:
            self._progress = _progress(console, "nodes")
            self._task = self._progress.add_task("running", total=total or None)
            self._progress.start()
            _set_live_console(console)

    def attach(self, follower: Follower) -> None:
        self.follower = follower
        self.total = len(follower.nodes) or self.total
        self.done = sum(1 for n in follower.nodes.values() if n.status in FINAL_NODE)
        if self._progress is not None:
            self._progress.update(self._task, total=self.total or None, completed=self.done)
        self._render(force=True)

    def print(self, renderable: Any) -> None:
        if self._live is not None:
            self._live.console.print(renderable)
        elif self._progress is not None:
            self._progress.console.print(renderable)
        else:
            self.console.print(renderable)

    def event(self, run_id: str, event: Event) -> None:
        if self.verbose:
            self.print(event_line(event))
        elif event.kind == "node_status" and event.status == "RETRY_WAIT":
            if self._live is None and self.follower is not None:
                node = self.follower.nodes.get(event.node_id)
                if node is not None:
                    retry = NodeProgress(node.node_id, "RETRY_WAIT", event.attempt)
                    retry.error = event.message
                    self.print(_node_line(retry))
        elif event.kind == "log" and event.level in ("warning", "error"):
            self.print(notice_line(event))
        elif event.kind == "hook_error":
            self.print(notice_line(event))
        if self._live is not None and event.kind in ("node_status", "run_status"):
            self._render()

    def node_finished(self, run_id: str, node: NodeProgress) -> None:
        if self.follower is not None:
            self.done = sum(1 for n in self.follower.nodes.values() if n.status in FINAL_NODE)
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
        if not self.verbose and self._live is None:
            self.print(_node_line(node))

    def run_status(self, run_id: str, status: str, message: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=status.lower())
        if status == "PAUSED" and not self.verbose:
            note = Text(f"run {run_id} is PAUSED", style=STYLES[status])
            if message and message.lower() != "paused":
                note.append(f": {message}")
            note.append(f"; resume with: {self.again('resume', run_id)}")
            self.print(note)

    def _table(self) -> Any:
        if self.follower is None:
            return Text("")
        return node_table(self.follower, max_rows=max(5, self.console.height - 4))

    def _render(self, force: bool = False) -> None:
        if self._live is None or self.follower is None:
            return
        now = time.monotonic()
        if not force and now - self._last_render < 0.1:
            return
        self._last_render = now
        self._live.refresh()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
        if self._progress is not None:
            self._progress.stop()
        _set_live_console(None)


#: Nodes the live table keeps when not all fit: the ones in flight, and the failed.
SHOWN_FIRST_NODE = IN_FLIGHT_NODE | {"FAILED"}


def node_table(follower: Follower, max_rows: int = 1000) -> Group:
    """The live view: a header with counts, then the nodes (the active and failed
    ones first when they do not all fit)."""
    nodes = list(follower.nodes.values())
    shown = nodes
    if len(nodes) > max_rows:
        keep = {n.node_id for n in nodes if n.status in SHOWN_FIRST_NODE}
        for node in nodes:
            if len(keep) >= max_rows - 1:
                break
            keep.add(node.node_id)
        shown = [n for n in nodes if n.node_id in keep][: max_rows - 1]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NODE", "STATUS", "ATTEMPT", "TIME", "OUTPUT / ERROR"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for node in shown:
        took = span(node.started, node.finished) if node.started else None
        what = short(node.error, 60) if node.error else ""
        if node.status == "SUCCEEDED" and node.output is not None:
            what = short(node.output, 60)
        table.add_row(
            node.node_id,
            status_text(node.status),
            str(node.attempt or ""),
            duration(took),
            what,
        )
    if len(shown) < len(nodes):
        table.add_row(Text(f"… {len(nodes) - len(shown)} more", style="dim"), "", "", "", "")
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.status] = counts.get(node.status, 0) + 1
    header = Text(f"run {follower.run_id}  ")
    header.append_text(status_text(follower.status))
    header.append("  " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    return Group(header, table)


def _progress(console: Console, unit: str) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )


class BatchView(View):
    """Many runs: a progress bar of runs (on a terminal) and one line per finished run."""

    def __init__(self, console: Console, total: int, *, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.total = total
        self.counts: dict[str, int] = {}
        self._labels: dict[str, str] = {}
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = _progress(console, "runs")
            self._task = self._progress.add_task("batch", total=total)
            self._progress.start()
            _set_live_console(console)

    def print(self, renderable: Any) -> None:
        (self._progress.console if self._progress is not None else self.console).print(renderable)

    def run_started(self, run: Run, label: str) -> None:
        self._labels[run.run_id] = label
        if self.verbose:
            self.print(Text(f"{label}: started run {run.run_id}"))

    def event(self, run_id: str, event: Event) -> None:
        if self.verbose:
            line = Text(f"{run_id[:8]} ")
            line.append_text(event_line(event))
            self.print(line)

    def run_finished(self, run: Run) -> None:
        self.counts[run.status] = self.counts.get(run.status, 0) + 1
        if self._progress is not None:
            done = sum(self.counts.values())
            summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.counts.items()))
            self._progress.update(self._task, completed=done, description=summary)
        line = Text("  ")
        line.append(MARKS.get(run.status, "•"), style=STYLES.get(run.status, ""))
        line.append(f" {self._labels.get(run.run_id, '')} run {run.run_id} ")
        line.append_text(status_text(run.status))
        took = span(run.started_at, run.finished_at)
        if took is not None and run.finished_at is not None:
            line.append(f"  {duration(took)}", style="dim")
        if run.error:
            line.append(f": {short(run.error, 200)}")
        self.print(line)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        _set_live_console(None)


# ------------------------------------------------------------------- tables

Cell = str | Text


def print_table(console: Console, headers: list[str], rows: list[list[Cell]]) -> None:
    """A table: rich (colour, fitted to the width) on a terminal; plain aligned
    columns when piped, never cut, no trailing spaces."""
    if console.is_terminal:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for index, header in enumerate(headers):
            last = index == len(headers) - 1
            table.add_column(header, no_wrap=not last, overflow="fold" if last else "ellipsis")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    plain = [headers, *[[c.plain if isinstance(c, Text) else c for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in plain) for i in range(len(headers))]
    for row in plain:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        console.print(line.rstrip(), markup=False)


def print_runs(
    console: Console,
    runs: Iterable[Run],
    *,
    parent_run: bool = False,
    parent_node: bool = False,
) -> None:
    """``ls``: a row per run. WALL TIME is first start to finish (or to now),
    time a resumed run sat FAILED or INTERRUPTED included; ``inspect`` tells the
    running time.

    Args:
        console: Where to print.
        runs: The runs.
        parent_run: Add a PARENT column: a child run's parent run id.
        parent_node: Add a PARENT NODE column: the parent's node that started
            a child run (``<map>[<i>]`` for a map item).
    """
    headers = ["RUN ID", "WORKFLOW", "STATUS", "NODES", "CREATED", "WALL TIME"]
    headers += ["PARENT"] * parent_run + ["PARENT NODE"] * parent_node
    rows: list[list[Cell]] = []
    for run in runs:
        counts = run.node_counts
        done = sum(v for k, v in counts.items() if k in FINAL_NODE)
        row: list[Cell] = [
            run.run_id,
            f"{run.workflow_name}@{run.workflow_version}",
            status_text(run.status),
            f"{done}/{sum(counts.values())}",
            local_time(run.created_at, date=True),
            duration(span(run.started_at, run.finished_at)),
        ]
        if parent_run:
            row.append(run.parent_run_id or "")
        if parent_node:
            row.append(run.parent_node_id or "")
        rows.append(row)
    print_table(console, headers, rows)


#: Child runs ``inspect`` lists (the rest: a count and ``ls --parent``).
CHILDREN_SHOWN = 20
_DIGITS = re.compile(r"(\d+)")


def _natural(text: str) -> list[tuple[int, int, str]]:
    """A sort key putting ``map[2]`` before ``map[10]``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(text)]


def print_children(
    console: Console,
    run_id: str,
    children: Sequence[Run],
    *,
    again: Callable[..., str] = command_line,
) -> None:
    """``inspect``'s children section: a header with their count by status, then
    the first :data:`CHILDREN_SHOWN` by parent node (map items in index order)."""
    counts: dict[str, int] = {}
    for child in children:
        counts[child.status] = counts.get(child.status, 0) + 1
    header = Text("children", style="bold")
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    header.append(f" ({len(children)}: {summary})")
    console.print(header)
    shown = sorted(children[:CHILDREN_SHOWN], key=lambda c: _natural(c.parent_node_id or ""))
    rows: list[list[Cell]] = [
        [
            child.parent_node_id or "",
            status_text(child.status),
            f"{child.workflow_name}@{child.workflow_version}",
            child.run_id,
        ]
        for child in shown
    ]
    print_table(console, ["NODE", "STATUS", "WORKFLOW", "RUN ID"], rows)
    left = len(children) - len(shown)
    if left:
        hint = again("ls", "--parent", run_id, "--limit", str(len(children)))
        console.print(Text(f"… and {left} more ({hint})", style="dim"))


TABLE_ERROR_CHARS = 120  # of a node's error in inspect's table (in full below it)


def print_run(
    console: Console,
    run: Run,
    *,
    running_s: float | None = None,
    traceback_lines: int | None = None,
    again: Callable[..., str] = command_line,
    children: Sequence[Run] = (),
) -> None:
    """``inspect``'s human view of a run: its fields (a child run's parent among
    them), a table of its nodes, its child runs, then the tracebacks of failed
    nodes.

    Args:
        console: Where to print.
        run: The run, with its nodes.
        running_s: Its running time (:func:`run_time`); None: the wall clock.
        traceback_lines: Show only the last lines of a traceback (None: all).
        again: Makes the command line of a hint (with the connection options).
        children: Its child runs, oldest first (:func:`print_children`).
    """
    fields: list[tuple[str, Cell]] = [
        ("run", run.run_id),
        ("workflow", f"{run.workflow_name} (version {run.workflow_version})"),
        ("status", status_text(run.status)),
    ]
    if run.parent_run_id:
        parent = f"child of run {run.parent_run_id}"
        if run.parent_node_id:
            parent += f" node {run.parent_node_id}"
        fields.append(("parent", parent))
    fields.append(("created", local_time(run.created_at, date=True)))
    if run.started_at:
        fields.append(("started", local_time(run.started_at, date=True)))
    if run.finished_at:
        fields.append(("finished", local_time(run.finished_at, date=True)))
    wall = span(run.started_at, run.finished_at)
    took = wall if running_s is None else running_s
    if took is not None:
        stopped_a_while = wall is not None and wall - took >= max(1.0, 0.05 * wall)
        text = duration(took) + (" running" if stopped_a_while else "")
        text += "" if run.finished_at else " so far"
        if stopped_a_while:
            text += f" ({duration(wall)} since it first started)"
        fields.append(("duration", text))
    if run.labels:
        fields.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(run.labels.items()))))
    if run.input is not None:
        fields.append(("input", short(run.input, 400)))
    if run.output is not None:
        fields.append(("output", short(run.output, 400)))
    if run.error:
        fields.append(("error", Text(run.error, style="red")))
    if run.status in CONTROLS["resume"]:
        fields.append(("resume", again("resume", run.run_id)))
    for name, value in fields:
        line = Text(f"{name:<9} ", style="bold")
        line.append_text(value if isinstance(value, Text) else Text(value))
        console.print(line)
    console.print("")
    rows: list[list[Cell]] = []
    for node in run.nodes:
        what: Cell = ""
        if node.error:
            what = Text(
                short(node.error, TABLE_ERROR_CHARS),
                style="red" if node.status == "FAILED" else "",
            )
        elif node.output is not None:
            what = short(node.output, 120)
        rows.append(
            [
                node.node_id,
                node.kind,
                status_text(node.status),
                str(node.attempt or "-"),
                duration(span(node.started_at, node.finished_at)) if node.started_at else "",
                what,
            ]
        )
    print_table(console, ["NODE", "KIND", "STATUS", "ATTEMPT", "TIME", "OUTPUT / ERROR"], rows)
    if children:
        console.print("")
        print_children(console, run.run_id, children, again=again)
    for node in run.nodes:
        traceback = node_traceback(node) if node.status in ("FAILED", "RETRY_WAIT") else ""
        if traceback:
            console.print("")
            console.print(Text(f"traceback of {node.node_id} (attempt {node.attempt}):",
                               style="bold"))  # fmt: skip
            console.print(traceback_text(traceback, limit=traceback_lines))
        elif node.status == "FAILED" and len(node.error) > TABLE_ERROR_CHARS:
            # The table shows its start; an error without a traceback (an import
            # error, say) is read in full here.
            console.print("")
            console.print(Text(f"error of {node.node_id} (attempt {node.attempt}):", style="bold"))
            console.print(Text(f"    {node.error}", style="red"))


__all__ = [
    "BatchView",
    "Follower",
    "OutputFile",
    "RunView",
    "StatepipeError",
    "View",
    "command_line",
    "event_line",
    "node_table",
    "node_traceback",
    "notice_line",
    "print_children",
    "print_run",
    "print_runs",
    "print_table",
    "run_time",
    "running_seconds",
    "stderr_console",
    "stdout_console",
    "stdout_line",
    "write_json",
]
