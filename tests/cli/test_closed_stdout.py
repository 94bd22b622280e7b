"""A reader that stops early (``statepipe ls | head``) is not an error: every
command that writes to stdout leaves quietly with status 0 when the pipe closes.

Real pipes: the writer is ``python -m statepipe ...`` and the reader is
``head``, which reads a line (or a few bytes) and exits while the writer still
has far more than a pipe buffer (64 KiB) to write, so the writer's next write
fails as it would in a shell.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sp_cli import REPO

#: A run with plenty to print: 20,000 token events (`logs`), a 1 MB output
#: (`inspect`, `ls --json`, `run --json`).
CHATTY = """
from statepipe import Workflow

wf = Workflow("chatty")


@wf.node
def talk(ctx):
    for i in range(20_000):
        ctx.token(f"token {i} ")
    return "x" * 1_000_000
"""


def piped(env: dict[str, str], args: list[str], reader: list[str]) -> tuple[int, str, bytes]:
    """``python -m statepipe ARGS | READER``: the writer's status and stderr, what was read."""
    # Buffered as in a user's shell (PYTHONUNBUFFERED would let a partial write of
    # a long line pass unnoticed, moving the failure to the next write).
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}
    writer = subprocess.Popen(
        [sys.executable, "-m", "statepipe", *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdout is not None and writer.stderr is not None
    try:
        head = subprocess.run(reader, stdin=writer.stdout, capture_output=True, timeout=120)
        writer.stdout.close()  # the reader's end is the only one left
        stderr = writer.stderr.read().decode()
        code = writer.wait(120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
    return code, stderr, head.stdout


def quiet(code: int, stderr: str, args: list[str]) -> None:
    assert code == 0, (args, code, stderr)
    assert "Traceback" not in stderr and "Error" not in stderr, (args, stderr)


def test_commands_leave_quietly_when_the_reader_stops(env: dict[str, str], tmp_path: Path) -> None:
    flow = tmp_path / "chatty_flow.py"
    flow.write_text(CHATTY)
    # run --json: the finished run (1 MB on one line) into a reader that takes 100 bytes.
    code, stderr, head = piped(env, ["run", str(flow), "--json"], ["head", "-c", "100"])
    quiet(code, stderr, ["run", "--json"])
    assert head.startswith(b'{"run_id":"')
    assert "SUCCEEDED" in stderr  # the verdict on stderr came before the result
    run_id = json.loads(head.split(b",")[0] + b"}")["run_id"]

    for args, reader in [
        (["logs", run_id], ["head", "-n", "1"]),
        (["logs", run_id, "--json"], ["head", "-n", "1"]),
        (["logs", run_id, "--follow"], ["head", "-n", "1"]),
        (["inspect", run_id], ["head", "-n", "1"]),
        (["inspect", run_id, "--json"], ["head", "-n", "1"]),
        (["ls", "--json"], ["head", "-n", "1"]),
    ]:
        code, stderr, head = piped(env, args, reader)
        quiet(code, stderr, args)
        assert head.count(b"\n") == 1, (args, head[:200])


def test_a_batch_whose_reader_stops_leaves_quietly(env: dict[str, str], tmp_path: Path) -> None:
    flow = tmp_path / "chatty_batch.py"
    flow.write_text(CHATTY)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("{}\n{}\n{}\n")
    args = ["run", str(flow), "--batch", str(inputs), "--concurrency", "1", "--json"]
    # The first finished run's JSON is written from a worker thread.
    code, stderr, head = piped(env, args, ["head", "-c", "100"])
    quiet(code, stderr, args)
    assert head.startswith(b'{"run_id":"')
    assert "2 inputs of" in stderr and "not started" in stderr, stderr
