"""The ``statepipe`` command line (docs/cli.md).

Without ``--server`` (or ``STATEPIPE_SERVER``) each command runs a control
plane inside the CLI process, on the embedded Postgres under
``$STATEPIPE_HOME`` (statepipe/_local.py); with ``--server HOST:PORT`` it
talks gRPC to a running server. Both go through :class:`statepipe.client.Client`.

stdout carries only data (run ids, results, ``--json``); everything meant for
a person goes to stderr. Errors are one ``error: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from statepipe import __version__
from statepipe_api.lifecycle import CONTROLS, RUN_STATUSES

if TYPE_CHECKING:
    from control_plane.embed import PlanSummary
    from statepipe._cli_view import Follower, OutputFile, RunView
    from statepipe._local import LocalPlane, Registration
    from statepipe.client import Client, Run

F = TypeVar("F", bound=Callable[..., Any])

# Exit statuses (docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1  # a run did not succeed, or the server refused (unknown run id, wrong state)
EXIT_USAGE = 2  # unknown target, bad input, invalid spec, bad options
EXIT_UNREACHABLE = 3  # server unreachable, or the local control plane cannot start
EXIT_INTERRUPTED = 130  # Ctrl-C

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
#: Lines of a failed node's traceback `inspect` shows without --verbose (its end).
TRACEBACK_TAIL_LINES = 15
#: Set in a ``run --detach`` child: the file to write the run id to.
DETACH_ENV = "STATEPIPE_DETACHED_ID_FILE"


class CliError(Exception):
    """Printed as one ``error: <message>`` line; exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ------------------------------------------------------------------ settings


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # Kept on the root context, where _setting looks, whether the option came
    # before or after the command name; a value from the environment does not
    # replace one given on the command line (`statepipe --server X ls` with
    # STATEPIPE_SERVER set: the command's own --server reads the environment).
    if value is not None and param.name:
        root = ctx.find_root()
        if root.obj is None:
            root.obj = {}
        sources = root.obj.setdefault("_sources", {})
        source = ctx.get_parameter_source(param.name)
        typed = ParameterSource.COMMANDLINE
        if sources.get(param.name) == typed and source != typed:
            return value
        root.obj[param.name] = value
        sources[param.name] = source
    return value


_SERVER_HELP = (
    "Talk gRPC to the statepipe server at this address [env STATEPIPE_SERVER]. "
    "Without it, the CLI runs a control plane in-process on the embedded "
    "Postgres under $STATEPIPE_HOME (~/.statepipe)."
)
_DATABASE_HELP = (
    "PostgreSQL URL for the in-process control plane [env STATEPIPE_DATABASE_URL]; "
    "default: the embedded server under $STATEPIPE_HOME."
)


_EXECUTOR_HELP = (
    "Where nodes run: local (this process) or ray (a Ray cluster) [env STATEPIPE_EXECUTOR; "
    "default: ray when RAY_ADDRESS is set, else local]."
)


def _executor_options(f: F) -> F:
    """``--executor`` and ``--ray-address``, for commands that run nodes in-process."""
    f = click.option(
        "--ray-address",
        metavar="HOST:PORT",
        expose_value=False,
        callback=_remember,
        help="The Ray cluster to join [env RAY_ADDRESS]; default: start a local one.",
    )(f)
    f = click.option(
        "--executor",
        type=click.Choice(["local", "ray"], case_sensitive=False),
        envvar="STATEPIPE_EXECUTOR",
        expose_value=False,
        callback=_remember,
        help=_EXECUTOR_HELP,
    )(f)
    return f


_SERVER_DATABASE_HELP = (
    "PostgreSQL URL [env STATEPIPE_DATABASE_URL]; default: the embedded server "
    "under $STATEPIPE_HOME (~/.statepipe)."
)


def _database_option(f: F, help: str = _DATABASE_HELP) -> F:
    """``--database-url``, accepted before or after the command name (read it with
    ``_setting("database_url")``)."""
    return click.option(
        "--database-url",
        envvar="STATEPIPE_DATABASE_URL",
        metavar="URL",
        expose_value=False,
        callback=_remember,
        help=help,
    )(f)


def _server_database_option(f: F) -> F:
    """``--database-url`` of the commands that are the server (``server``, ``up``)."""
    return _database_option(f, _SERVER_DATABASE_HELP)


def _connection_options(f: F) -> F:
    """``--server`` and ``--database-url``, accepted before or after the command name."""
    f = _database_option(f)
    f = click.option(
        "--server",
        envvar="STATEPIPE_SERVER",
        metavar="HOST:PORT",
        expose_value=False,
        callback=_remember,
        help=_SERVER_HELP,
    )(f)
    return f


def _settings() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return (ctx.find_root().obj if ctx is not None else None) or {}


def _setting(name: str) -> str | None:
    value = _settings().get(name)
    return value or None


def _given(name: str) -> bool:
    """Whether the option `name` was typed on the command line (not from the environment)."""
    return _settings().get("_sources", {}).get(name) == ParameterSource.COMMANDLINE


def _connection_args() -> list[str]:
    """The connection options of this command, for a hint to copy: ``--server ADDR``
    (from the option or STATEPIPE_SERVER), or a ``--database-url`` typed on the
    command line."""
    server = _setting("server")
    if server:
        return ["--server", server]
    database_url = _setting("database_url")
    if database_url and _given("database_url"):
        return ["--database-url", database_url]
    return []


def _again(*words: str) -> str:
    """A statepipe command line to copy, with this command's connection options."""
    from statepipe._cli_view import command_line

    return command_line(*words, options=_connection_args())


# -------------------------------------------------------------------- errors


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    raise CliError(message, code)


def _unreachable(address: str, message: str) -> CliError:
    detail = message.split(" is unavailable: ", 1)[-1]
    for marker in ("Failed to connect to remote host: ", "last error: "):
        if marker in detail:
            detail = detail.rsplit(marker, 1)[-1]
    return CliError(
        f"cannot reach the statepipe server at {address} ({detail.strip()})", EXIT_UNREACHABLE
    )


def _translate(err: BaseException, address: str = "") -> CliError | None:
    """The one-line CLI error for an exception from the client, SDK or spec code.

    Nothing here may fail in turn: the error classes are only looked up in the
    modules that raised them (already imported), never imported here, so an
    error while importing statepipe's own packages is reported as it is.
    """
    if isinstance(err, CliError):
        return err
    StatepipeError = _loaded_class("statepipe.client", "StatepipeError")
    SpecError = _loaded_class("statepipe_api.convert", "SpecError")
    PlanError = _loaded_class("control_plane.embed", "PlanError")
    PlaneStartError = _loaded_class("control_plane.embed", "PlaneStartError")
    if isinstance(err, StatepipeError):
        name = err.code.name
        if name == "UNAVAILABLE":
            return _unreachable(address or "?", err.message)
        if name in ("INVALID_ARGUMENT", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED"):
            return CliError(err.message, EXIT_USAGE)
        if name == "DEADLINE_EXCEEDED" and address:
            return CliError(f"the statepipe server at {address} did not answer in time")
        return CliError(err.message, EXIT_FAILED)
    if isinstance(err, SpecError):
        return CliError(f"invalid workflow spec: {err}", EXIT_USAGE)
    if isinstance(err, PlanError):
        return CliError(str(err), EXIT_USAGE)
    if isinstance(err, PlaneStartError):
        return CliError(f"cannot start the local control plane: {err}", EXIT_UNREACHABLE)
    return None


class _NoSuchError(Exception):
    """Stands for an error class whose module is not loaded: nothing is an instance."""


def _loaded_class(module: str, name: str) -> type[BaseException]:
    """`module.name` if that module is already imported, else a class nothing is an
    instance of (an error can only come from a module that was imported)."""
    found = getattr(sys.modules.get(module), name, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return _NoSuchError


def _handle_errors(f: F) -> F:
    """Turns known errors into one ``error:`` line on stderr and an exit status."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # gRPC's C core logs at INFO to stderr (e.g. about fork() when the
        # embedded Postgres stops at exit); here stderr is for people. Set
        # before grpc is first imported (statepipe imports it lazily).
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        try:
            return f(*args, **kwargs)
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _stdout_closed()
        except Exception as err:
            cli_error = _translate(err, _setting("server") or "")
            if cli_error is None:
                raise
            click.echo(f"error: {cli_error.message}", err=True)
            sys.exit(cli_error.code)

    return wrapper  # type: ignore[return-value]


def _stdout_closed() -> NoReturn:
    """stdout's reader went away (``statepipe ls | head``): leave quietly, status 0.

    As a program killed by SIGPIPE would, but without the signal's status: a
    reader that stops early is not an error. stdout becomes /dev/null first, so
    the interpreter's last flush of what is still buffered does not fail (and
    print a traceback) on the way out.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    _exit(EXIT_OK)


def _one_line_message(text: str) -> str:
    """click's sentence as one of our lines: one line, lowercase start, no final period."""
    text = " ".join(text.split()).rstrip(".")
    return text[:1].lower() + text[1:]


class _Group(click.Group):
    """The command group; prints click's own errors (usage, bad values) as ours.

    One style for every error: ``error: <what>`` on one line (and, for a usage
    error where click would show the usage, the usage on a second line); usage
    errors exit 2 (EXIT_USAGE) as the errors the commands raise themselves.
    """

    # click answers a closed stdout with status 1; ours is _stdout_closed. Its
    # own output (--help, --version) is written while the context is made.
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            _stdout_closed()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _stdout_closed()

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            # Bare `statepipe`: the help as `--help` formats it (on stderr, status 2, as click).
            click.echo(err.ctx.get_help(), err=True, color=err.ctx.color)
            sys.exit(EXIT_USAGE)
        except click.UsageError as err:
            click.echo(f"error: {_one_line_message(err.format_message())}", err=True)
            if err.ctx is not None:
                usage = " ".join(err.ctx.get_usage().split()).removeprefix("Usage: ")
                click.echo(f"usage: {usage} ({err.ctx.command_path} --help for more)", err=True)
            sys.exit(EXIT_USAGE)
        except CliError as err:
            click.echo(f"error: {err.message}", err=True)
            sys.exit(err.code)
        except click.ClickException as err:
            click.echo(f"error: {_one_line_message(err.format_message())}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


# ---------------------------------------------------------------- connection


class Connection:
    """A client, plus the in-process control plane behind it (if any)."""

    def __init__(
        self,
        client: Client,
        address: str,
        *,
        plane: LocalPlane | None = None,
        registration: Registration | None = None,
        remote: bool = False,
        borrowed_pid: int | None = None,
    ) -> None:
        self.client = client
        self.address = address
        self.plane = plane
        self.registration = registration
        self.remote = remote
        self.borrowed_pid = borrowed_pid  # another local statepipe process serves us

    @property
    def in_process(self) -> bool:
        return self.plane is not None

    def track(self, run_ids: list[str]) -> None:
        """Tells other CLI processes that this one owns these runs."""
        if self.registration is not None:
            self.registration.add_runs(run_ids)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.registration is not None:
            self.registration.remove()
        if self.plane is not None:
            _stop_plane(self.plane)


def _stop_plane(plane: LocalPlane) -> None:
    """Stops it; a sync node that ignores ``ctx.cancelled`` would keep the interpreter
    from exiting (thread pools are joined at exit): give it a moment, then leave anyway."""
    plane.stop()
    if not plane.node_threads_ended(timeout_s=2.0):
        _hard_exit_later.set()


_hard_exit_later = threading.Event()


def _exit(code: int) -> NoReturn:
    """sys.exit, or, with stuck node threads, run the exit hooks and leave at once."""
    if _hard_exit_later.is_set():
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        atexit._run_exitfuncs()  # stops the embedded Postgres, flushes logging
        os._exit(code)
    sys.exit(code)


def _ping(address: str) -> bool:
    from statepipe.client import Client, StatepipeError

    with Client(address, timeout=2.0) as probe:
        try:
            probe.list_runs_page(limit=1)
        except StatepipeError:
            return False
    return True


def _executor_config() -> dict[str, Any]:
    """ServerConfig fields from --executor/--ray-address (unset: the server's defaults;
    an address alone means ray)."""
    return {name: _setting(name) for name in ("executor", "ray_address") if _setting(name)}


def _no_executor_with_server(server: str) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for name in ("executor", "ray_address"):
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            option = "--" + name.replace("_", "-")
            _fail(
                f"{option} applies to an in-process control plane; the server at {server} "
                "chose its executor when it started (statepipe server --executor)"
            )


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="statepipe: %(levelname)s %(name)s: %(message)s",
    )


#: The loggers of statepipe's own packages (`statepipe server --log-level` applies to them).
OWN_LOGGERS = ("statepipe", "control_plane", "executors", "statepipe_api", "core_rs", "ui")


def _configure_server_logging(level_name: str) -> None:
    """statepipe's loggers at `level_name`; other libraries' at warning or above
    (their INFO lines, e.g. the embedded Postgres's start-up, are noise to a
    server's operator) unless debug asks for everything."""
    level = getattr(logging, level_name.upper())
    if level > logging.DEBUG:
        # gRPC's C core logs at INFO to stderr (e.g. about fork() at exit).
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.basicConfig(
        level=level if level <= logging.DEBUG else max(level, logging.WARNING),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _refuse_server_option(command: str) -> None:
    """`up` and `server` are the server: a --server given on the command line makes
    no sense there (STATEPIPE_SERVER in the environment is ignored)."""
    if _setting("server") and _given("server"):
        raise click.UsageError(f"`{command}` starts a server itself; --server does not apply")


def _first_postgres_note(database_url: str | None) -> None:
    """On a terminal, says that the first start of the embedded Postgres takes a while."""
    from statepipe import _local

    if not (_local.home() / "postgres").exists() and not database_url and sys.stderr.isatty():
        click.echo(
            f"starting the embedded Postgres under {_local.home() / 'postgres'} "
            "(the first time takes a few seconds)",
            err=True,
        )


def _connect(purpose: str, run_id: str | None = None) -> Connection:
    """A connection for ``purpose``: "read", "control" or "execute".

    With ``--server``: a client of that server. In-process: "read" and
    "control" first look for a live local statepipe process serving the same
    database (the owner of ``run_id`` preferred; a control only works there);
    "execute" always runs its own control plane, unless a live process owns
    ``run_id`` already.
    """
    from statepipe import _local
    from statepipe.client import Client

    server = _setting("server")
    if server:
        _no_executor_with_server(server)
        return Connection(Client(server), server, remote=True)
    database_url = _setting("database_url")
    live = _local.live_servers(database_url)
    owners = [e for e in live if run_id and run_id in e.get("runs", ())]
    candidates = owners if purpose in ("execute", "control") else owners + live
    for entry in candidates:
        if _ping(entry["address"]):
            address = entry["address"]
            return Connection(Client(address), address, borrowed_pid=int(entry["pid"]))
    _configure_logging()
    _local.load_paths()
    _first_postgres_note(database_url)
    # Reading must not take over runs a killed process left: their nodes would
    # start and be cut off again when this command exits.
    plane = _local.LocalPlane(
        database_url=database_url, take_over=purpose != "read", **_executor_config()
    )
    registration = None
    if purpose == "execute":
        registration = _local.Registration(plane.address, database_url, role="run")
        registration.add_runs(plane.owned_runs())
    return Connection(Client(plane.address), plane.address, plane=plane, registration=registration)


@contextlib.contextmanager
def _connection(purpose: str, run_id: str | None = None) -> Iterator[Connection]:
    conn = _connect(purpose, run_id)
    try:
        yield conn
    except BrokenPipeError:
        # stdout's reader went away: we leave quietly (_stdout_closed). Stopping
        # an in-process plane under a stream just cut off can log shutdown noise
        # (psycopg's "query cancellation interrupted", grpc's poller finding its
        # event loop closed); none of it concerns the user who stopped reading.
        if conn.plane is not None:
            logging.disable(logging.CRITICAL)
        raise
    except Exception as err:
        code = getattr(getattr(err, "code", None), "name", "")
        if conn.borrowed_pid is not None and code == "UNAVAILABLE":
            raise CliError(
                f"the statepipe process {conn.borrowed_pid} serving this command went away; "
                "try again",
                EXIT_UNREACHABLE,
            ) from None
        cli_error = _translate(err, conn.address if conn.remote else "")
        if cli_error is not None and cli_error is not err:
            raise cli_error from None
        raise
    finally:
        conn.close()


# ------------------------------------------------------------------- helpers


# The input of a run started without --input (identity marks "not given").
_DEFAULT_INPUT: dict[str, Any] = {}


def _parse_json_input(text: str | None) -> Any:
    if text is None:
        return None
    where = "--input"
    if text.startswith("@"):
        path = text[1:]
        where = f"--input @{path}"
        try:
            text = Path(path).read_text()
        except OSError as err:
            _fail(f"{where}: cannot read the file: {err.strerror or err}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        _fail(f"{where} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})")


def _read_batch(path: str) -> list[tuple[int, Any]]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        _fail(f"--batch {path}: cannot read the file: {err.strerror or err}")
    inputs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            inputs.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            _fail(f"{path}:{number}: not valid JSON: {err.msg} (column {err.colno})")
    if not inputs:
        _fail(f"--batch {path}: no inputs (one JSON value a line)")
    return inputs


def _parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{label!r} is not KEY=VALUE", param_hint="--label")
        out[key.strip()] = value
    return out


def _target_file(target: str) -> Path | None:
    """The file a target names (``flow.py[:var]``, a spec file), if it is one."""
    head, sep, _ = target.rpartition(":")
    candidate = Path(head) if sep and head.endswith(".py") else Path(target)
    if candidate.suffix in (".py", *SPEC_SUFFIXES) and candidate.is_file():
        return candidate
    return None


def _load_target(target: str) -> tuple[dict[str, Any] | None, str]:
    from statepipe.sdk import TargetError, TargetWarning, load_target
    from statepipe_api.convert import SpecError, spec_to_proto

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TargetWarning)
            spec, name = load_target(target)
        for warning in caught:
            if issubclass(warning.category, TargetWarning):
                click.echo(f"warning: {warning.message}", err=True)
            else:  # the target's own warnings, as Python would show them
                warnings.showwarning(warning.message, warning.category, warning.filename,
                                     warning.lineno)  # fmt: skip
        if spec is not None:
            spec_to_proto(spec)
    except TargetError as err:
        _fail(str(err))
    except SpecError as err:
        where = "" if str(err).startswith(target) else f"{target}: "
        _fail(f"invalid workflow spec: {where}{err}")
    return spec, name


def _unknown_target(target: str) -> CliError:
    return CliError(
        f"unknown target {target!r}: not a .py, .yaml, .yml or .json file, "
        "and no workflow of that name is registered",
        EXIT_USAGE,
    )


def _check(spec: Any, what: str) -> PlanSummary:
    """Validates a spec as the server would (kinds, dependencies, cycles, templates)."""
    from control_plane.embed import PlanError, check_spec
    from statepipe_api.convert import spec_to_proto

    proto = spec_to_proto(spec) if isinstance(spec, dict) else spec
    try:
        return check_spec(proto)
    except PlanError as err:
        _fail(f"{what}: {err}")


def _open_output(path: str) -> OutputFile:
    """``--output PATH``, its missing folders created; one error line if it cannot be."""
    from statepipe._cli_view import OutputFile

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return OutputFile(path)
    except OSError as err:
        in_the_way = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        if in_the_way is not None:
            reason = f"{in_the_way} is a file, not a folder"
        else:
            reason = err.strerror or str(err)
        _fail(f"--output {path}: cannot create the file: {reason}")


def _write_json(value: Any, *, indent: int | None = None) -> None:
    from statepipe._cli_view import write_json

    write_json(value, indent=indent)


def _out(line: str) -> None:
    from statepipe._cli_view import stdout_line

    stdout_line(line)


def _print_result(run: Run, as_json: bool) -> None:
    """A finished run on stdout: its JSON, or its output."""
    if as_json:
        _write_json(run.to_dict())
    elif run.output is not None:
        _write_json(run.output, indent=2 if sys.stdout.isatty() else None)


def _report(run: Run, console: Any, client: Client) -> None:
    """The one-line verdict on stderr, with a hint on what to do next.

    The time is the run's running time: a resumed run's time FAILED or
    INTERRUPTED is not counted (``inspect`` shows both).
    """
    from rich.text import Text

    from statepipe._cli_view import duration, node_traceback, run_time, status_text

    line = Text(f"run {run.run_id} ")
    line.append_text(status_text(run.status))
    if run.started_at is not None and run.finished_at is not None:
        took = run_time(client, run)
        if took is not None:
            line.append(f" in {duration(took)}")
    if run.error:
        line.append(f": {run.error}")
    console.print(line)
    if any(node_traceback(n) for n in run.nodes if n.status == "FAILED"):
        console.print(Text(f"see the traceback with: {_again('inspect', run.run_id)}", style="dim"))
    if run.status in CONTROLS["resume"]:
        verb = "run the failed nodes again" if run.status == "FAILED" else "resume"
        console.print(Text(f"{verb} with: {_again('resume', run.run_id)}", style="dim"))


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM is handled like Ctrl-C while a run is followed."""

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _second_interrupt_exits() -> None:
    def leave(signum: int, frame: Any) -> None:
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, leave)
    signal.signal(signal.SIGTERM, leave)


def _interrupt(client: Client, run_ids: list[str], console: Any) -> list[str]:
    """Interrupts the runs (resumable); says how to resume each."""
    from statepipe.client import StatepipeError

    interrupted = []
    for run_id in run_ids:
        try:
            client.interrupt(run_id, reason="Ctrl-C in statepipe run")
        except StatepipeError as err:
            if err.code.name != "FAILED_PRECONDITION":  # already finished: nothing to do
                console.print(f"could not interrupt run {run_id}: {err.message}", markup=False)
            continue
        interrupted.append(run_id)
        console.print(
            f"interrupted run {run_id}; resume with: {_again('resume', run_id)}", markup=False
        )
    return interrupted


# ----------------------------------------------------------------- the group


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="statepipe")
@_connection_options
def main() -> None:
    """Run LLM agent workflows as DAGs and watch them live.

    \b
      statepipe up --demo          # everything, the web console on http://127.0.0.1:8080
      statepipe run flow.py --input '{"url": "https://example.com"}'
      statepipe ls
      statepipe inspect RUN_ID
      statepipe logs RUN_ID --follow
      statepipe resume RUN_ID

    Without --server (or STATEPIPE_SERVER) every command runs the control plane
    in-process, on the embedded PostgreSQL under $STATEPIPE_HOME (~/.statepipe),
    so a run started today can be inspected or resumed tomorrow. With --server
    HOST:PORT the commands talk gRPC to a running `statepipe server`; they behave
    the same either way.

    Data (run ids, results, --json) goes to stdout; progress and messages to
    stderr. Exit status: 0 ok, 1 a run did not succeed or the server refused,
    2 bad target/input/usage, 3 server unreachable, 130 interrupted (Ctrl-C).
    """


# ----------------------------------------------------------------------- run


@main.command(context_settings={"max_content_width": 100})
@click.argument("target")
@click.option(
    "--input",
    "input_text",
    metavar="JSON|@FILE",
    help="The run's input: JSON text, or @file.json to read it from a file.",
)
@click.option(
    "--batch",
    metavar="INPUTS.JSONL",
    help="Start one run per line of this file (each line a JSON input).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=4,
    show_default=True,
    help="With --batch: at most this many runs at once.",
)
@click.option(
    "--output",
    "output_path",
    metavar="RESULTS.JSONL",
    help="Write results as they happen: a line per finished node and per finished run.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the workflow and input, print the plan as topological levels, run nothing.",
)
@click.option("--verbose", "-v", is_flag=True, help="Print every event (logs, tokens, ...).")
@click.option(
    "--inspect",
    "live",
    is_flag=True,
    help="Show a live table of node states while it runs (on a terminal).",
)
@_executor_options
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Label the run (repeatable); `ls` and the API filter on labels.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Print the run id and return at once; the run goes on in the background.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print each finished run as JSON (one per line)."
)
@_connection_options
@_handle_errors
def run(
    target: str,
    input_text: str | None,
    batch: str | None,
    concurrency: int,
    output_path: str | None,
    dry_run: bool,
    verbose: bool,
    live: bool,
    labels: tuple[str, ...],
    detach: bool,
    as_json: bool,
) -> None:
    """Run a workflow and follow it to the end.

    \b
    TARGET is one of:
      path/flow.py[:NAME]      a Python file defining a statepipe Workflow (NAME:
                               its variable, or the workflow's name as `ls` shows it)
      spec.yaml|.yml|.json     a workflow spec file
      NAME                     a workflow registered on the server

    File targets are registered (name + version) before they run. The run id is
    printed on stdout as the run starts, and the run's output when it succeeds.
    Exit status 0 only if every run SUCCEEDED.

    Ctrl-C interrupts the run (it stays resumable) and tells how to resume it;
    a second Ctrl-C exits at once.

    In-process, the directory of a .py or spec-file target is recorded in
    $STATEPIPE_HOME/paths.txt and put on sys.path by every later statepipe
    command, so `statepipe resume` in a new process can import the node
    functions again. With --server, the server must be able to import them.
    """
    if batch is not None and input_text is not None:
        raise click.UsageError("give either --input or --batch, not both")
    if batch is not None and detach:
        raise click.UsageError("--detach cannot be combined with --batch")
    label_map = _parse_labels(labels)
    # Without --input a run gets {} (an empty object satisfies most input schemas).
    single = _DEFAULT_INPUT if input_text is None else _parse_json_input(input_text)
    inputs = _read_batch(batch) if batch is not None else [(0, single)]

    spec, name = _load_target(target)
    server = _setting("server")
    if spec is not None and not server:
        file = _target_file(target)
        if file is not None:
            from statepipe import _local

            _local.remember_path(file.resolve().parent)

    if dry_run:
        checked = inputs if batch is not None or input_text is not None else []
        _dry_run(target, spec, name, checked, batch, as_json)
        return
    if detach and not server and not os.environ.get(DETACH_ENV):
        if output_path:
            _open_output(output_path).close()  # say so here, not in the background's log
        sys.exit(_spawn_detached())

    from statepipe._cli_view import stderr_console

    console = stderr_console()
    output = _open_output(output_path) if output_path else None
    try:
        with _connection("execute") as conn:
            ref = _register(conn.client, spec, name, target, console)
            if batch is not None:
                if spec is None:  # validate every line before starting any run
                    plan = _check(conn.client.get_workflow(name).proto.spec, name)
                else:
                    plan = _check(spec, target)
                _validate_inputs(plan, inputs, batch)
                code = _run_batch(conn, ref, inputs, label_map, concurrency, output, verbose,
                                  as_json, console, batch)  # fmt: skip
            else:
                code = _run_one(conn, ref, inputs[0][1], label_map, output, verbose, live,
                                as_json, detach, console, target)  # fmt: skip
    finally:
        if output is not None:
            output.close()
    _exit(code)


def _register(
    client: Client, spec: dict[str, Any] | None, name: str, target: str, console: Any
) -> tuple[str, str | None] | dict[str, Any]:
    """Registers a file target's workflow; what to start runs of."""
    from statepipe.client import StatepipeError

    if spec is None:
        return (name, None)
    try:
        workflow = client.register_workflow(spec)
    except StatepipeError as err:
        if err.code.name == "ALREADY_EXISTS":
            console.print(
                f"warning: {err.message}; running this spec without registering it "
                "(give it a new version to register it)",
                markup=False,
            )
            return spec
        if err.code.name == "INVALID_ARGUMENT":
            raise CliError(f"{target}: {err.message}") from None
        raise
    return (workflow.name, workflow.version)


def _start(
    client: Client,
    ref: tuple[str, str | None] | dict[str, Any],
    value: Any,
    labels: dict[str, str],
) -> str:
    from statepipe.client import StatepipeError

    try:
        if isinstance(ref, tuple):
            return client.start_run(ref[0], value, version=ref[1], labels=labels)
        return client.start_run(ref, value, labels=labels)
    except StatepipeError as err:
        if err.code.name == "NOT_FOUND" and isinstance(ref, tuple) and ref[1] is None:
            raise _unknown_target(ref[0]) from None
        if err.code.name == "INVALID_ARGUMENT" and value is _DEFAULT_INPUT:
            raise CliError(f"{err.message} (no --input was given)") from None
        raise


def _validate_inputs(plan: PlanSummary, inputs: list[tuple[int, Any]], batch: str | None) -> None:
    from control_plane.embed import PlanError

    for number, value in inputs:
        try:
            plan.validate_input(value)
        except PlanError as err:
            _fail(f"{batch}:{number}: {err}" if batch else str(err))


def _dry_run(
    target: str,
    spec: dict[str, Any] | None,
    name: str,
    inputs: list[tuple[int, Any]],
    batch: str | None,
    as_json: bool,
) -> None:
    if spec is None:
        from statepipe.client import StatepipeError

        with _connection("read") as conn:
            try:
                proto = conn.client.get_workflow(name).proto.spec
            except StatepipeError as err:
                if err.code.name == "NOT_FOUND":
                    raise _unknown_target(target) from None
                raise
        plan = _check(proto, name)
    else:
        plan = _check(spec, target)
    _validate_inputs(plan, inputs, batch)
    levels = plan.levels
    if as_json:
        _write_json(
            {
                "workflow": plan.name,
                "version": plan.version,
                "nodes": plan.node_count,
                "levels": levels,
                "inputs_checked": len(inputs),
            }
        )
        return
    count = plan.node_count
    _out(
        f"workflow {plan.name} (version {plan.version}): {count} node{'s' * (count != 1)} "
        f"in {len(levels)} level{'s' * (len(levels) != 1)}"
    )
    for index, level in enumerate(levels, 1):
        _out(f"  level {index}: {', '.join(level)}")
    what = f"workflow and {len(inputs)} inputs are" if batch else "workflow and input are"
    if not inputs:
        what = "workflow is"
    click.echo(f"dry run: {what} valid; nothing was run", err=True)


def _run_one(
    conn: Connection,
    ref: tuple[str, str | None] | dict[str, Any],
    value: Any,
    labels: dict[str, str],
    output: OutputFile | None,
    verbose: bool,
    live: bool,
    as_json: bool,
    detach: bool,
    console: Any,
    target: str,
) -> int:
    client = conn.client
    run_id = _start(client, ref, value, labels)
    try:
        conn.track([run_id])
        if not as_json:
            try:
                _out(run_id)
            except BrokenPipeError:  # no one reads: do not leave the run running unfollowed
                _interrupt(client, [run_id], console)
                raise
        _tell_detached_parent(run_id)
        if detach:  # with --server: the server runs it
            if as_json:
                _write_json(client.get_run(run_id).to_dict())
            console.print(f"follow with: {_again('logs', run_id, '--follow')}", markup=False,
                          style="dim")  # fmt: skip
            return EXIT_OK
    except KeyboardInterrupt:
        # Ctrl-C before the run is followed: it is interrupted all the same.
        _second_interrupt_exits()
        console.print("")
        _interrupt(client, [run_id], console)
        return EXIT_INTERRUPTED
    return _follow(conn, run_id, output, verbose, live, as_json, console)


def _follow(
    conn: Connection,
    run_id: str,
    output: OutputFile | None,
    verbose: bool,
    live: bool,
    as_json: bool,
    console: Any,
    *,
    run: Run | None = None,
    after_seq: int = 0,
) -> int:
    """Follows a started run to its end; Ctrl-C (or SIGTERM) interrupts it, from the
    moment it started (`run`: as already fetched)."""
    view: RunView | None = None
    follower: Follower | None = None
    try:
        # Imported inside: a Ctrl-C during the first import interrupts the run too.
        from statepipe._cli_view import Follower, RunView

        with _signals_interrupt():
            if run is None:
                run = conn.client.get_run(run_id)
            view = RunView(console, verbose=verbose, live=live, total=len(run.nodes),
                           again=_again)  # fmt: skip
            follower = Follower(conn.client, run, view, output, after_seq=after_seq)
            view.attach(follower)
            final = follower.follow()
    except (KeyboardInterrupt, BrokenPipeError) as err:
        # Ctrl-C, or the reader of --output went away (a pipe): the run stays resumable.
        _second_interrupt_exits()
        if follower is not None:
            follower.stop()
        if view is not None:
            view.close()
        if isinstance(err, BrokenPipeError):
            _interrupt(conn.client, [run_id], console)
            raise
        console.print("")
        _interrupt(conn.client, [run_id], console)
        if output is not None:
            output.run(conn.client.get_run(run_id))
        return EXIT_INTERRUPTED
    finally:
        if view is not None:
            view.close()
    if output is not None:
        output.run(final)
    _report(final, console, conn.client)
    _print_result(final, as_json)
    return EXIT_OK if final.status == "SUCCEEDED" else EXIT_FAILED


def _run_batch(
    conn: Connection,
    ref: tuple[str, str | None] | dict[str, Any],
    inputs: list[tuple[int, Any]],
    labels: dict[str, str],
    concurrency: int,
    output: OutputFile | None,
    verbose: bool,
    as_json: bool,
    console: Any,
    batch: str,
) -> int:
    from statepipe._cli_view import BatchView, Follower
    from statepipe.client import StatepipeError

    client = conn.client
    pending = collections.deque(inputs)
    lock = threading.Lock()
    stop = threading.Event()
    followers: dict[str, Follower] = {}
    finals: list[Run] = []
    errors: list[str] = []
    view = BatchView(console, len(inputs), verbose=verbose)

    def finish(run: Run) -> None:
        view.run_finished(run)
        if output is not None:
            output.run(run)
        with lock:
            finals.append(run)
            if as_json:
                _write_json(run.to_dict())

    stdout_closed = threading.Event()

    def worker() -> None:
        try:
            work()
        except BrokenPipeError:  # stdout's (or --output's) reader went away
            stdout_closed.set()
            stop.set()

    def work() -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                number, value = pending.popleft()
            try:
                run_id = _start(client, ref, value, labels)
            except (CliError, StatepipeError) as err:
                message = err.message
                with lock:
                    errors.append(f"{batch}:{number}: {message}")
                if isinstance(err, StatepipeError) and err.code.name == "UNAVAILABLE":
                    stop.set()
                continue
            conn.track([run_id])
            with lock:
                if not as_json:
                    _out(run_id)
            try:
                run = client.get_run(run_id)
                view.run_started(run, f"{batch}:{number}")
                follower = Follower(client, run, view, output)
                with lock:
                    followers[run_id] = follower
                    stopping = stop.is_set()
                if stopping:  # Ctrl-C came while this run was starting
                    _interrupt(client, [run_id], console)
                    finish(client.get_run(run_id))
                    return
                final = follower.follow()
            except StatepipeError as err:
                with lock:
                    errors.append(f"{batch}:{number}: run {run_id}: {err.message}")
                continue
            finally:
                with lock:
                    followers.pop(run_id, None)
            finish(final)

    threads = [
        threading.Thread(target=worker, name=f"statepipe-batch-{i}", daemon=True)
        for i in range(min(concurrency, len(inputs)))
    ]
    for thread in threads:
        thread.start()
    try:
        with _signals_interrupt():
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.1)
                if stdout_closed.is_set():
                    raise BrokenPipeError
    except (KeyboardInterrupt, BrokenPipeError) as err:
        # Ctrl-C, or no one reads the results any more: the runs in flight stay resumable.
        _second_interrupt_exits()
        stop.set()
        with lock:
            active = dict(followers)
        view.close()
        if not isinstance(err, BrokenPipeError):
            console.print("")
        _interrupt(client, list(active), console)
        for follower in active.values():
            follower.stop()
        for thread in threads:
            thread.join(10)
        left = len(pending)
        if left:
            console.print(f"{left} input{'s' * (left != 1)} of {batch} not started", markup=False)
        if isinstance(err, BrokenPipeError):
            raise
        return EXIT_INTERRUPTED
    finally:
        view.close()
    counts = collections.Counter(run.status for run in finals)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(f"{len(finals)} run{'s' * (len(finals) != 1)}: {summary or 'none'}", markup=False)
    for message in errors:
        console.print(f"error: {message}", markup=False)
    ok = not errors and len(finals) == len(inputs) and set(counts) <= {"SUCCEEDED"}
    return EXIT_OK if ok else EXIT_FAILED


def _tell_detached_parent(run_id: str) -> None:
    path = os.environ.pop(DETACH_ENV, None)
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(run_id)
        tmp.replace(path)


def _statepipe_command(*args: str) -> list[str]:
    """The command line of a ``statepipe`` child process.

    ``-P`` (safe_path): ``-m`` would put the working directory first on the
    child's sys.path, and from a source checkout its ``core_rs/`` (without the
    compiled ``_core`` of an installed package) or ``control_plane/`` would
    shadow the installed packages. The child imports what the ``statepipe``
    console script does: the installed packages, PYTHONPATH, and the target
    folders of paths.txt.
    """
    return [sys.executable, "-P", "-m", "statepipe", *args]


def _spawn_detached() -> int:
    """``run --detach`` in-process: the same command runs on in a background process."""
    from statepipe import _local

    logs = _local.home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = logs / f"run-{stamp}-{os.getpid()}.log"
    id_path = logs / f".detach-{os.getpid()}-{time.monotonic_ns()}.id"
    args = [a for a in sys.argv[1:] if a != "--detach"]
    env = dict(os.environ, **{DETACH_ENV: str(id_path)})
    with open(log_path, "w") as log_file:
        child = subprocess.Popen(
            _statepipe_command(*args),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if id_path.exists():
            run_id = id_path.read_text().strip()
            id_path.unlink(missing_ok=True)
            _out(run_id)
            click.echo(
                f"running in the background (pid {child.pid}, log {log_path}); "
                f"follow with: {_again('logs', run_id, '--follow')}",
                err=True,
            )
            return EXIT_OK
        code = child.poll()
        if code is not None:
            lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error: ")]
            message = (errors or lines or [f"the background run exited with status {code}"])[-1]
            _fail(message.removeprefix("error: "), code or EXIT_FAILED)
        time.sleep(0.05)
    _fail(f"the background run did not start in time (log {log_path})", EXIT_FAILED)


# -------------------------------------------------------------------- resume


@main.command(context_settings={"max_content_width": 100})
@click.argument("run_id")
@click.option("--verbose", "-v", is_flag=True, help="Print every event.")
@click.option("--inspect", "live", is_flag=True, help="Show a live table of node states.")
@click.option(
    "--output",
    "output_path",
    metavar="RESULTS.JSONL",
    help="Write a line per finished node and one for the run (as `run --output`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the finished run as JSON.")
@_executor_options
@_connection_options
@_handle_errors
def resume(run_id: str, verbose: bool, live: bool, output_path: str | None, as_json: bool) -> None:
    """Resume a paused, interrupted or failed run and follow it to the end.

    A run left RUNNING by a CLI that was killed is taken over by this process
    and followed. After FAILED, only the failed and skipped nodes run again;
    succeeded nodes never run twice. Exit status 0 only if the run SUCCEEDED.
    Ctrl-C interrupts it again.
    """
    from statepipe._cli_view import stderr_console

    console = stderr_console()
    output = _open_output(output_path) if output_path else None
    try:
        with _connection("execute", run_id) as conn:
            client = conn.client
            run = client.get_run(run_id)
            if run.status == "SUCCEEDED":
                console.print(f"run {run_id} already SUCCEEDED", markup=False)
                _print_result(run, as_json)
                code = EXIT_OK
            elif run.status == "CANCELLED":
                _fail(f"run {run_id} is CANCELLED; a cancelled run cannot be resumed", EXIT_FAILED)
            else:
                if run.status in CONTROLS["resume"]:
                    client.resume(run_id, reason="statepipe resume")
                    console.print(f"resumed run {run_id} (was {run.status})", markup=False)
                else:
                    console.print(f"run {run_id} is {run.status}; following it", markup=False)
                conn.track([run_id])
                code = _follow(conn, run_id, output, verbose, live, as_json, console,
                               run=run, after_seq=run.last_seq)  # fmt: skip
    finally:
        if output is not None:
            output.close()
    _exit(code)


# ------------------------------------------------------------ inspect and ls


@main.command(context_settings={"max_content_width": 100})
@click.argument("run_id")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the run as JSON (docs/json-shapes.md)."
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help=f"Whole tracebacks of failed nodes (else their last {TRACEBACK_TAIL_LINES} lines).",
)
@_connection_options
@_handle_errors
def inspect(run_id: str, as_json: bool, verbose: bool) -> None:
    """Show a run: status, times, input, output, every node's attempts and output
    or error, the child runs its workflow and map nodes started, and the
    tracebacks of failed nodes. A child run names its parent run and node.

    The duration is the time the run was running (or paused); a resumed run's
    time FAILED or INTERRUPTED is left out (and the wall clock shown too).
    """
    from statepipe._cli_view import print_run, run_time, stdout_console

    with _connection("read", run_id) as conn:
        run = conn.client.get_run(run_id)
        running_s = None if as_json else run_time(conn.client, run)
        children = [] if as_json else _children(conn.client, run_id)
    if as_json:
        _write_json(run.to_dict(), indent=2)
    else:
        tail = None if verbose else TRACEBACK_TAIL_LINES
        print_run(
            stdout_console(),
            run,
            running_s=running_s,
            traceback_lines=tail,
            again=_again,
            children=children,
        )


def _children(client: Client, run_id: str) -> list[Run]:
    """A run's child runs, oldest first (without nodes)."""
    runs = client.list_runs(parent=run_id, order_by="created_at", limit=None)
    # A server older than child runs ignores the filter and lists every run.
    return [r for r in runs if r.parent_run_id == run_id]


@main.command("ls", context_settings={"max_content_width": 100})
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(RUN_STATUSES, case_sensitive=False),
    help="Only runs in this status (repeatable).",
)
@click.option("--workflow", "-w", metavar="NAME", help="Only runs of this workflow.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1),
    metavar="N",
    default=20,
    show_default=True,
    help="Most runs to list.",
)
@click.option(
    "--parent",
    metavar="RUN_ID",
    help="Only the child runs of this run (started by its workflow and map nodes).",
)
@click.option(
    "--all",
    "all_runs",
    is_flag=True,
    help="Child runs too (by default only the runs a client started).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of runs.")
@_connection_options
@_handle_errors
def ls(
    statuses: tuple[str, ...],
    workflow: str | None,
    limit: int,
    parent: str | None,
    all_runs: bool,
    as_json: bool,
) -> None:
    """List runs, newest first: the runs a client started, or with --all child
    runs too (the runs a workflow or map node started), or with --parent RUN_ID
    the children of that run."""
    from statepipe._cli_view import print_runs, stdout_console

    with _connection("read") as conn:
        # One more than asked for tells whether the list is cut.
        runs = conn.client.list_runs(
            status=[s.upper() for s in statuses] or None,
            workflow=workflow,
            limit=limit + 1,
            parent=parent or None,
            roots_only=not (all_runs or parent),
        )
        if parent and not runs:
            conn.client.get_run(parent)  # an unknown run is NOT_FOUND, not an empty list
    more, runs = len(runs) > limit, runs[:limit]
    if as_json:
        _write_json([r.to_dict() for r in runs], indent=2)
    elif runs:
        print_runs(
            stdout_console(),
            runs,
            parent_node=bool(parent) or any(r.parent_run_id for r in runs),
            parent_run=not parent and any(r.parent_run_id for r in runs),
        )
        if more:
            shown = f"{limit} runs" if limit != 1 else "run"
            click.echo(f"the newest {shown} shown; there are more (--limit N shows N)", err=True)
    elif parent:
        click.echo(f"run {parent} has no child runs", err=True)
    else:
        click.echo("no runs", err=True)


# ---------------------------------------------------------------------- logs


@main.command(context_settings={"max_content_width": 100})
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends.")
@click.option(
    "--after",
    "after_seq",
    type=click.IntRange(min=0),
    default=0,
    metavar="SEQ",
    help="Only events after this seq.",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Only events of this kind: node_status, log, token, ... (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One event a line as JSON.")
@_connection_options
@_handle_errors
def logs(run_id: str, follow: bool, after_seq: int, kinds: tuple[str, ...], as_json: bool) -> None:
    """Print a run's events, one a line.

    With --follow, new events are printed as they happen until the run is
    SUCCEEDED, FAILED or CANCELLED; Ctrl-C stops following (the run goes on).
    """
    from statepipe._cli_view import event_line, stdout_console

    console = stdout_console()

    def emit(event: Any) -> None:
        if as_json:
            _write_json(event.to_dict())
        else:
            console.print(event_line(event))

    with _connection("read", run_id) as conn:
        client = conn.client
        client.get_run(run_id)  # NOT_FOUND for an unknown run
        if follow:
            with client.watch(run_id, after_seq=after_seq, kinds=list(kinds) or None) as stream:
                for event in stream:
                    emit(event)
            return
        after = after_seq
        while True:
            page = client.list_events(run_id, after_seq=after, kinds=list(kinds) or None,
                                      limit=1000)  # fmt: skip
            for event in page:
                emit(event)
            if len(page) < 1000:
                break
            after = page[-1].seq


# ------------------------------------------------------------------ controls


def _control(action: str, run_id: str, reason: str, as_json: bool) -> None:
    from statepipe.client import StatepipeError
    from statepipe_api.lifecycle import control_refusal

    with _connection("control", run_id) as conn:
        client = conn.client
        try:
            run = getattr(client, action)(run_id, reason=reason)
        except StatepipeError as err:
            if err.code.name == "FAILED_PRECONDITION" and not conn.remote:
                # Refused although the run's status allows it: another process owns the run.
                current = client.get_run(run_id).status
                if control_refusal(run_id, action, current) is None:
                    _fail(
                        f"run {run_id} is {current} in another statepipe process that this "
                        "CLI cannot reach; use --server with that server's address",
                        EXIT_FAILED,
                    )
            raise
    if as_json:
        _write_json(run.to_dict())
    else:
        _out(f"run {run_id} is {run.status}")


def _control_command(action: str, doc: str) -> None:
    @main.command(action, help=doc, context_settings={"max_content_width": 100})
    @click.argument("run_id")
    @click.option("--reason", default="", help="Recorded with the run's status event.")
    @click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
    @_connection_options
    @_handle_errors
    def command(run_id: str, reason: str, as_json: bool) -> None:
        _control(action, run_id, reason, as_json)


_control_command(
    "pause",
    "Pause a running run: no new node starts, nodes in flight finish.\n\n"
    "Resume it with `statepipe resume RUN_ID`.",
)
_control_command(
    "interrupt",
    "Interrupt a run now: nodes in flight are cancelled and will run again on resume.\n\n"
    "The run stays resumable: `statepipe resume RUN_ID`.",
)
_control_command(
    "cancel",
    "Cancel a run for good: nodes in flight are cancelled, nothing more runs.",
)


# -------------------------------------------------------------------- server


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:7420",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to serve gRPC on (port 0 picks a free port).",
)
@_server_database_option
@click.option(
    "--max-concurrency",
    default=256,
    show_default=True,
    help="Nodes running at once across all runs.",
)
@_executor_options
@click.option(
    "--path",
    "paths",
    multiple=True,
    metavar="DIR",
    envvar="STATEPIPE_PATH",
    type=click.Path(file_okay=False),
    help="A folder node code is imported from (python nodes' callables, hooks), e.g. the "
    "folder of the workflow file; repeatable [env STATEPIPE_PATH, separated by "
    f"{os.pathsep!r}].",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="statepipe's own log lines from this level on; other libraries' (the embedded "
    "Postgres, Ray, ...) from warning on, or everything with debug.",
)
def server(
    listen: str,
    max_concurrency: int,
    paths: tuple[str, ...],
    log_level: str,
) -> None:
    """Start the control plane (gRPC API, scheduler, and the local or Ray executor).

    SIGTERM or Ctrl-C shuts it down gracefully; runs in flight are taken over
    at the next start.
    """
    _refuse_server_option("server")
    _configure_server_logging(log_level)
    from control_plane import embed

    config = embed.ServerConfig(
        listen=listen,
        database_url=_setting("database_url"),
        max_concurrency=max_concurrency,
        paths=[str(Path(p).resolve()) for p in paths],
        **_executor_config(),
    )
    try:
        embed.serve(config)
    except embed.PlaneStartError as err:
        raise CliError(f"cannot start the server: {err}", EXIT_UNREACHABLE) from None


# ------------------------------------------------------------------- console

#: The control plane's address unless told otherwise (`server --listen`, `up --grpc-port`).
DEFAULT_GRPC_PORT = 7420
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_GRPC_PORT}"
#: Where the web console (`ui`, `up`) listens unless told otherwise.
CONSOLE_HOST = "127.0.0.1"
CONSOLE_PORT = 8080


class _Stop(BaseException):
    """SIGINT or SIGTERM reached a command that serves (``ui``, ``up``): stop, status 0.

    A BaseException, as KeyboardInterrupt is: an ``except Exception`` on the way (around
    an example that fails to load, say) must not swallow it.
    """


def _console_web_server() -> Any:
    """The console's uvicorn server once NiceGUI has made it (None before)."""
    module = sys.modules.get("nicegui.server")
    return getattr(getattr(module, "Server", None), "instance", None)


#: A signal this long after the first one makes the console's web server stop at once.
FORCE_STOP_AFTER_S = 3.0


class _EarlyStop:
    """Remembers a SIGINT or SIGTERM that comes while something that cannot be cut
    short starts (the embedded Postgres, a gRPC channel), so it is acted on right
    after, instead of being lost inside that start."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True


def _stop_on_signals() -> None:
    """From now on SIGINT and SIGTERM stop the command: they raise :class:`_Stop` in the
    main thread, or, once the console's web server exists, ask it to stop gracefully
    (NiceGUI's shutdown handlers run; ``run_console`` then returns).

    A _Stop raised inside uvicorn's event loop would cut that shutdown short and can
    leave the loop waiting on its tasks for ever. The console's startup puts these
    handlers back in place of uvicorn's, whose second Ctrl-C forces the exit at once
    (skipping NiceGUI's shutdown, with a traceback); here only a signal more than
    FORCE_STOP_AFTER_S after the first does, for a shutdown that hangs.
    """
    first: list[float] = []

    def stop(signum: int, frame: Any) -> None:
        web = _console_web_server()
        if web is None:
            raise _Stop
        if not first:
            first.append(time.monotonic())
        elif time.monotonic() - first[0] > FORCE_STOP_AFTER_S:
            web.force_exit = True
        web.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM wait (their handlers run after the block); a thread started in
    the block keeps them blocked, so they always reach the main thread."""
    both = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, both)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)


def _ignore_signals() -> None:
    """While stopping: another Ctrl-C or SIGTERM does not cut the clean-up short."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)


def _console_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _check_console_port(host: str, port: int) -> None:
    """One error line (exit 3) if the console cannot listen on host:port (in use, say),
    before anything else starts."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            # As uvicorn binds: a port some closed connection left in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            reason = "the port is in use (choose another with --port)"
        else:
            reason = err.strerror or str(err)
        _fail(f"cannot serve the console on {host}:{port}: {reason}", EXIT_UNREACHABLE)


def _wait_listening(host: str, port: int, done: threading.Event) -> bool:
    """Waits until something accepts connections on host:port; False if `done` comes first."""
    import socket

    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    while not done.is_set():
        try:
            with socket.create_connection((target, port), timeout=0.5):
                return True
        except OSError:
            done.wait(0.05)
    return False


def _console_environment() -> None:
    """The environment NiceGUI reads (at import and in ``ui.run``), for a real console.

    NiceGUI takes PYTEST_CURRENT_TEST (which a statepipe started from a test inherits)
    for its own test mode, in which ``ui.run`` serves another port; and it keeps its
    storage under ./.nicegui unless told: under $STATEPIPE_HOME/console here.
    """
    from statepipe import _local

    for name in ("PYTEST_CURRENT_TEST", "NICEGUI_USER_SIMULATION"):
        os.environ.pop(name, None)
    os.environ.setdefault("NICEGUI_STORAGE_PATH", str(_local.home() / "console"))


def _serve_console(
    server: str, host: str, port: int, show: bool, listening: threading.Event | None = None
) -> None:
    """Serves the console for the control plane at `server` until SIGINT or SIGTERM.

    Prints ``console: http://HOST:PORT`` on stdout once it listens, and sets `listening`.
    Returns once a signal stopped it (after :func:`_stop_on_signals`).

    Raises:
        _Stop: A signal came before its web server was made.
        CliError: Its web server did not start (exit 3).
    """
    _console_environment()
    from nicegui import app

    from ui.main import run_console

    # Runs in uvicorn's event loop, after uvicorn put in its own signal handlers.
    app.on_startup(_stop_on_signals)
    done = threading.Event()

    def announce() -> None:
        if not _wait_listening(host, port, done):
            return
        with contextlib.suppress(OSError):  # no one reads stdout: the console serves all the same
            _out(f"console: {_console_url(host, port)}")
        if listening is not None:
            listening.set()

    watcher = threading.Thread(target=announce, name="statepipe-console-ready", daemon=True)
    try:
        with _signals_blocked():
            watcher.start()
        run_console(server, host, port, show=show)
    except SystemExit as err:
        # NiceGUI exits with a status when its web server did not start (the port was
        # taken after _check_console_port looked, say); uvicorn has logged why.
        if err.code:
            raise CliError(f"cannot serve the console on {host}:{port}", EXIT_UNREACHABLE) from None
        raise
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join(2)


def _console_server() -> str:
    """The control plane `ui` shows: --server (STATEPIPE_SERVER), else the `statepipe up`
    running on this machine, else 127.0.0.1:7420."""
    server = _setting("server")
    if server:
        return server
    from statepipe import _local

    for entry in _local.live_servers(os.environ.get("STATEPIPE_DATABASE_URL") or None):
        if entry.get("role") == "up":
            return str(entry["address"])
    return DEFAULT_SERVER


def _unreachable_reason(address: str) -> str | None:
    """Why the control plane at `address` cannot be reached now (None: it answers)."""
    from statepipe.client import Client, StatepipeError

    try:
        with Client(address, timeout=2.0) as probe:
            probe.list_runs_page(limit=1)
    except StatepipeError as err:
        if err.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return _unreachable(address, err.message).message
    except Exception as err:  # an address grpc refuses outright
        return f"cannot reach the statepipe server at {address} ({_one_line_message(str(err))})"
    return None


def _console_options(f: F) -> F:
    """``--host``, ``--port`` and ``--open`` of the commands that serve the console."""
    f = click.option(
        "--open", "show", is_flag=True, help="Open the console in a browser tab once it is up."
    )(f)
    f = click.option(
        "--port",
        type=click.IntRange(1, 65535),
        default=CONSOLE_PORT,
        show_default=True,
        metavar="N",
        help="Port the console listens on.",
    )(f)
    f = click.option(
        "--host",
        default=CONSOLE_HOST,
        show_default=True,
        metavar="HOST",
        help="Interface the console listens on (0.0.0.0: every interface).",
    )(f)
    return f


@main.command("ui", context_settings={"max_content_width": 100})
@click.option(
    "--server",
    envvar="STATEPIPE_SERVER",
    metavar="HOST:PORT",
    expose_value=False,
    callback=_remember,
    help="The control plane to show [env STATEPIPE_SERVER]; default: the `statepipe up` "
    f"running on this machine, else {DEFAULT_SERVER}.",
)
@_console_options
@_handle_errors
def console_command(host: str, port: int, show: bool) -> None:
    """Serve the web console for a running control plane (`statepipe server` or `up`).

    Prints `console: http://HOST:PORT` on stdout once it listens. A control plane
    that cannot be reached yet is a warning on stderr, not an error: the console
    starts anyway, shows a banner and connects once the server answers. Ctrl-C or
    SIGTERM stops it (status 0).
    """
    early = _EarlyStop()
    server = _console_server()
    _check_console_port(host, port)
    problem = _unreachable_reason(server)
    if problem:
        click.echo(f"warning: {problem}; the console starts anyway and connects once it answers",
                   err=True)  # fmt: skip
    try:
        _stop_on_signals()
        if early.requested:
            raise _Stop
        _serve_console(server, host, port, show)
    except _Stop:
        pass
    _exit(EXIT_OK)


# ------------------------------------------------------------------------ up

#: What `up --demo` starts once up: (workflow name, input), for the examples registered.
DEMO_RUNS: list[tuple[str, Any]] = [
    ("storyteller", {"topic": "the sea", "words": 400}),
    ("montecarlo", {"samples": 400_000, "seed": 1}),
    ("etl", {}),
    ("agent", {"question": "what is (17 + 4) * 3?"}),
    ("montecarlo", {"samples": 2_000_000, "seed": 2}),
    ("agent", {"question": "who wrote dune?"}),
]
DEMO_LABELS = {"demo": "true"}


def _examples_dir() -> Path | None:
    """examples/ of the source checkout statepipe is run from (None when it is installed
    from a wheel and not run from a checkout)."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        directory = root / "examples"
        checkout = (root / "pyproject.toml").is_file() and (root / "statepipe").is_dir()
        if checkout and directory.is_dir():
            return directory
    return None


def _register_examples(client: Client) -> list[tuple[str, str]]:
    """Registers every workflow of examples/; returns their (name, version).

    One that fails to load or register is a warning line and skipped; a module holding
    only node code (etl_nodes.py) is skipped quietly.
    """
    from statepipe import _local
    from statepipe.sdk import TargetError, load_target

    directory = _examples_dir()
    if directory is None:
        click.echo("note: no examples/ folder (not a source checkout): no example workflows "
                   "registered", err=True)  # fmt: skip
        return []
    _local.remember_path(directory)  # the examples' node modules, for this and later processes
    registered = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".py", *SPEC_SUFFIXES) or path.name.startswith(("_", ".")):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spec, _ = load_target(str(path))
            if spec is None:
                continue
            workflow = client.register_workflow(spec)
        except TargetError as err:
            if not str(err).endswith("defines no statepipe Workflow"):
                click.echo(f"warning: example {path.name} skipped: {err}", err=True)
            continue
        except Exception as err:
            reason = getattr(err, "message", None) or _one_line_message(str(err))
            click.echo(f"warning: example {path.name} skipped: {reason or type(err).__name__}",
                       err=True)  # fmt: skip
            continue
        registered.append((workflow.name, workflow.version))
    if registered:
        names = ", ".join(f"{name}@{version}" for name, version in registered)
        click.echo(f"registered examples: {names}", err=True)
    return registered


def _start_demo_runs(address: str, registered: list[tuple[str, str]]) -> list[str]:
    """Starts DEMO_RUNS of the registered examples; returns their run ids."""
    from statepipe.client import Client, StatepipeError

    versions = dict(registered)
    run_ids = []
    with Client(address) as client:
        for name, value in DEMO_RUNS:
            if name not in versions:
                continue
            try:
                run_ids.append(client.start_run(name, value, version=versions[name],
                                                labels=DEMO_LABELS))  # fmt: skip
            except StatepipeError as err:
                click.echo(f"warning: demo run of {name} not started: {err.message}", err=True)
    if run_ids:
        click.echo(f"started {len(run_ids)} demo runs (label demo=true)", err=True)
    else:
        click.echo("note: no demo runs: no example workflows registered", err=True)
    return run_ids


def _keep_up(
    plane: LocalPlane,
    registration: Registration,
    demo: list[tuple[str, str]] | None,
    listening: threading.Event,
    stopping: threading.Event,
) -> None:
    """`up`'s helper thread: starts the demo runs once the console listens, and keeps
    this process's entry in $STATEPIPE_HOME/servers listing the runs it owns (so controls
    from other terminals come here)."""
    try:
        registration.add_runs(plane.owned_runs())
        if demo is not None:
            while not listening.wait(0.1):
                if stopping.is_set():
                    return
            registration.add_runs(_start_demo_runs(plane.address, demo))
        while not stopping.wait(1.0):
            registration.add_runs(plane.owned_runs())
    except Exception as err:
        if not stopping.is_set():
            click.echo(f"warning: {_one_line_message(str(err)) or type(err).__name__}", err=True)


@main.command(context_settings={"max_content_width": 100})
@click.option(
    "--demo",
    is_flag=True,
    help="Once up, start a few runs of the examples (label demo=true), so the console "
    "has something to show.",
)
@_console_options
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_GRPC_PORT,
    show_default=True,
    metavar="N",
    help="Port the control plane serves gRPC on, on 127.0.0.1 (0 picks a free port).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    metavar="DIR",
    envvar="STATEPIPE_PATH",
    type=click.Path(file_okay=False),
    help="A folder node code is imported from (as `statepipe server --path`); repeatable "
    f"[env STATEPIPE_PATH, separated by {os.pathsep!r}].",
)
@click.option(
    "--examples/--no-examples",
    default=True,
    show_default=True,
    help="Register the example workflows (examples/ of a source checkout).",
)
@_executor_options
@_server_database_option
@_handle_errors
def up(
    demo: bool,
    host: str,
    port: int,
    show: bool,
    grpc_port: int,
    paths: tuple[str, ...],
    examples: bool,
) -> None:
    """Start everything on this machine: embedded Postgres, the control plane with the
    example workflows, and the web console, in this one process.

    \b
    stdout: statepipe server listening on 127.0.0.1:7420   (gRPC, --grpc-port)
            console: http://127.0.0.1:8080                  (once it listens)

    Other statepipe commands on this machine find the control plane by themselves;
    `--server 127.0.0.1:7420` reaches it too. Ctrl-C or SIGTERM stops all of it,
    the embedded Postgres included; runs in flight are taken over at the next start.
    """
    from statepipe import _local
    from statepipe.client import Client

    _refuse_server_option("up")
    if demo and not examples:
        raise click.UsageError("--demo runs the examples; it cannot go with --no-examples")
    database_url = _setting("database_url")
    _check_console_port(host, port)
    _configure_logging()
    _local.load_paths()
    _first_postgres_note(database_url)
    early = _EarlyStop()
    plane = _local.LocalPlane(
        listen=f"127.0.0.1:{grpc_port}",
        database_url=database_url,
        paths=[str(Path(p).resolve()) for p in paths],
        **_executor_config(),
    )
    registration = _local.Registration(plane.address, database_url, role="up")
    stopping, listening = threading.Event(), threading.Event()
    helper: threading.Thread | None = None
    try:
        # Before saying it listens: a SIGTERM right after that line stops it cleanly.
        _stop_on_signals()
        if early.requested:
            raise _Stop
        registered = []
        if examples:
            with Client(plane.address) as client:
                registered = _register_examples(client)
        _out(f"statepipe server listening on {plane.address}")
        thread = threading.Thread(
            target=_keep_up,
            args=(plane, registration, registered if demo else None, listening, stopping),
            name="statepipe-up",
            daemon=True,
        )
        with _signals_blocked():  # a _Stop now would leave it started but not joined
            thread.start()
            helper = thread
        click.echo("Ctrl-C stops it all", err=True)
        _serve_console(plane.address, host, port, show, listening)
    except _Stop:
        pass
    finally:
        _ignore_signals()
        stopping.set()
        if helper is not None:
            helper.join(10)
        registration.remove()
        _stop_plane(plane)
    _exit(EXIT_OK)
