"""``kind: shell`` end to end: real programs under a real control plane, on
both executors where it matters; process groups checked with psutil."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from sp_testing import wait_for

from statepipe.client import Client, Run, StatepipeError

PY = sys.executable

# A program with a child; both say their pids once the child is ready, then
# wait. With "stubborn" both note SIGTERM in <marker>.term and go on.
FAMILY = r"""
import os, signal, subprocess, sys, time
marker, stubborn = sys.argv[1], len(sys.argv) > 2
CHILD = '''
import os, signal, sys, time
marker = sys.argv[1]
if len(sys.argv) > 2:
    def noted(*_):
        with open(marker + ".term", "a") as f:
            f.write(f"{os.getpid()} ")
    signal.signal(signal.SIGTERM, noted)
open(marker + ".child", "w").close()
while True:
    time.sleep(0.05)
'''
if stubborn:
    def noted(*_):
        with open(marker + ".term", "a") as f:
            f.write(f"{os.getpid()} ")
    signal.signal(signal.SIGTERM, noted)
child = subprocess.Popen([sys.executable, "-c", CHILD, *sys.argv[1:]])
while not os.path.exists(marker + ".child"):
    time.sleep(0.01)
with open(marker + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(marker + ".tmp", marker + ".pids")
print("family ready", flush=True)
while True:
    time.sleep(0.05)
"""


def shell(node_id: str, argv: Any, **params: Any) -> dict[str, Any]:
    """A shell node; `retry=`, `timeout_ms=` and `after=` go to the node."""
    node: dict[str, Any] = {"id": node_id, "kind": "shell"}
    for key in ("retry", "timeout_ms", "after"):
        if key in params:
            node[key] = params.pop(key)
    node["params"] = {"argv": argv, **params}
    return node


def run_nodes(client: Client, *nodes: dict[str, Any], run_input: Any = None) -> Run:
    run_id = client.start_run({"name": "shell-test", "nodes": list(nodes)}, run_input)
    return client.wait(run_id, timeout=60)


def logs(client: Client, run_id: str, node_id: str) -> list[tuple[str, str, str]]:
    """(stream, level, line) of each log event of the node, in order."""
    return [
        (e.data["stream"], e.level, e.message)
        for e in client.watch(run_id)
        if e.kind == "log" and e.node_id == node_id
    ]


def family_pids(marker: Path) -> list[int]:
    pids_file = marker.with_name(marker.name + ".pids")
    text = wait_for(lambda: pids_file.exists() and pids_file.read_text(), timeout=30)
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float = 15) -> float:
    """Waits until none of `pids` runs; returns when (time.monotonic())."""
    wait_for(lambda: not any(alive(p) for p in pids), timeout=timeout)
    return time.monotonic()


# ------------------------------------------------------------------ output


@pytest.mark.both_executors
def test_output_lines_arrive_as_log_events_in_order(client: Client) -> None:
    script = (
        "import sys\n"
        "for i in range(30):\n"
        "    print(f'out {i}', flush=True)\n"
        "    if i % 10 == 9:\n"
        "        print(f'err {i}', file=sys.stderr, flush=True)\n"
    )
    run = run_nodes(client, shell("sh", [PY, "-c", script]))
    node = run.node("sh")
    assert run.status == "SUCCEEDED", node.error
    out = node.output
    assert out["exit_code"] == 0
    assert out["stdout"] == "".join(f"out {i}\n" for i in range(30))
    assert out["stderr"] == "err 9\nerr 19\nerr 29\n"
    assert out["stdout_truncated"] is False and isinstance(out["duration_ms"], int)
    events = logs(client, run.run_id, "sh")
    assert [e for e in events if e[0] == "stdout"] == [
        ("stdout", "info", f"out {i}") for i in range(30)
    ]
    assert [e for e in events if e[0] == "stderr"] == [
        ("stderr", "warning", f"err {i}") for i in (9, 19, 29)
    ]


def test_stdin_and_long_output_are_capped(client: Client) -> None:
    script = "import sys; data = sys.stdin.read(); print('x' * 40000); print(data.upper())"
    run = run_nodes(
        client, shell("sh", [PY, "-c", script], stdin="hello\nworld", max_output_bytes=1000)
    )
    node = run.node("sh")
    assert run.status == "SUCCEEDED", node.error
    assert node.output["stdout"] == "x" * 1000
    assert node.output["stdout_truncated"] is True
    lines = [line for _, _, line in logs(client, run.run_id, "sh")]
    assert [len(line) for line in lines] == [16384, 16384, 40000 - 2 * 16384, 5, 5]
    assert lines[-2:] == ["HELLO", "WORLD"]


@pytest.mark.both_executors
def test_argv_items_are_passed_literally_without_a_shell(client: Client, tmp_path: Path) -> None:
    tricky = ["$(touch pwned)", "a; touch pwned", "|", "*", "`id`", "> out", "it's", "{x,y}"]
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    run = run_nodes(
        client,
        shell("sh", [PY, "-c", script, *tricky, "{{ input.word }}", 7], cwd=str(tmp_path)),
        run_input={"word": "$HOME && rm -rf /"},
    )
    assert run.status == "SUCCEEDED", run.node("sh").error
    printed = json.loads(run.node("sh").output["stdout"])
    assert printed == [*tricky, "$HOME && rm -rf /", "7"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.both_executors
def test_env_and_cwd(client: Client, tmp_path: Path) -> None:
    script = "import os; print(os.getcwd()); print(os.environ['SP_GREETING'])"
    run = run_nodes(
        client,
        shell("inherit", [PY, "-c", script], env={"SP_GREETING": "hello"}, cwd=str(tmp_path)),
        shell("bare", ["env"], env={"SP_GREETING": "hi", "SP_N": 3}, inherit_env=False),
    )
    assert run.status == "SUCCEEDED", [run.node("inherit").error, run.node("bare").error]
    assert run.node("inherit").output["stdout"] == f"{tmp_path}\nhello\n"
    names = sorted(line.split("=", 1)[0] for line in run.node("bare").output["stdout"].split())
    assert names == ["PATH", "SP_GREETING", "SP_N"]
    assert "SP_N=3\n" in run.node("bare").output["stdout"]


# ------------------------------------------------------------------ failures


@pytest.mark.both_executors
def test_a_non_zero_exit_fails_with_the_code_and_the_end_of_stderr(client: Client) -> None:
    script = (
        "import sys\n"
        "for i in range(8):\n"
        "    print(f'problem {i}', file=sys.stderr)\n"
        "print('', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    run = run_nodes(
        client, shell("sh", [PY, "-c", script], retry={"max_attempts": 2, "backoff_ms": 10})
    )
    node = run.node("sh")
    assert (run.status, node.attempt) == ("FAILED", 2)  # retryable: the policy applied
    assert node.error == (
        f"{PY!r} exited with code 3: problem 3 | problem 4 | problem 5 | problem 6 | problem 7"
    )


def test_a_death_by_signal_says_which(client: Client) -> None:
    run = run_nodes(client, shell("sh", [PY, "-c", "import os, signal; os.kill(os.getpid(), 10)"]))
    assert run.node("sh").error == f"{PY!r} was killed by SIGUSR1 (10)"


def test_a_missing_or_unexecutable_program_fails_at_once(client: Client, tmp_path: Path) -> None:
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    retry = {"max_attempts": 3, "backoff_ms": 10}
    run = run_nodes(
        client,
        shell("missing", ["sp-no-such-program", "--help"], retry=retry),
        shell("denied", [str(script)], retry=retry),
        shell("nowhere", ["true"], cwd=str(tmp_path / "absent"), retry=retry),
    )
    missing, denied, nowhere = run.node("missing"), run.node("denied"), run.node("nowhere")
    assert (missing.status, missing.attempt) == ("FAILED", 1)
    assert missing.error == "cannot run 'sp-no-such-program': not found (looked in PATH)"
    assert (denied.status, denied.attempt) == ("FAILED", 1)
    assert denied.error == f"cannot run {str(script)!r}: not executable (permission denied)"
    assert (nowhere.status, nowhere.attempt) == ("FAILED", 1)
    assert "params.cwd" in nowhere.error and "is not a directory" in nowhere.error


def test_argv_rendered_to_a_string_fails_at_once(client: Client) -> None:
    run = run_nodes(
        client,
        shell("sh", "{{ input.command }}", retry={"max_attempts": 3}),
        run_input={"command": "ls -l"},
    )
    node = run.node("sh")
    assert (node.status, node.attempt) == ("FAILED", 1)
    assert "params.argv must be a list of strings, not one string" in node.error


# ------------------------------------------------------------------ ending the group


@pytest.mark.both_executors
def test_an_interrupt_ends_the_process_group(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "fam"
    run_id = client.start_run(
        {"name": "shell-test", "nodes": [shell("sh", [PY, "-c", FAMILY, str(marker)])]}
    )
    pids = family_pids(marker)
    assert all(alive(p) for p in pids)
    # Its line was recorded (events not relayed yet when a node is stopped may be lost).
    wait_for(lambda: any(e.kind == "log" for e in client.list_events(run_id, limit=None)))
    client.interrupt(run_id)
    wait_gone(pids)
    wait_for(lambda: client.get_run(run_id).node("sh").status == "PENDING")
    client.cancel(run_id)
    client.wait(run_id, timeout=30)
    assert logs(client, run_id, "sh") == [("stdout", "info", "family ready")]


@pytest.mark.both_executors
def test_a_cancel_ends_the_process_group(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "fam"
    run_id = client.start_run(
        {"name": "shell-test", "nodes": [shell("sh", [PY, "-c", FAMILY, str(marker)])]}
    )
    pids = family_pids(marker)
    client.cancel(run_id)
    wait_gone(pids)
    run = client.wait(run_id, timeout=30)
    assert (run.status, run.node("sh").status) == ("CANCELLED", "CANCELLED")


@pytest.mark.both_executors
def test_a_process_ignoring_sigterm_is_killed_after_the_grace(
    client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "fam"
    node = shell("sh", [PY, "-c", FAMILY, str(marker), "stubborn"], term_grace_ms=700)
    run_id = client.start_run({"name": "shell-test", "nodes": [node]})
    pids = family_pids(marker)
    asked = time.monotonic()
    client.cancel(run_id)
    gone = wait_gone(pids)
    assert gone - asked >= 0.7
    # Both were sent SIGTERM (the group), and both noted it.
    term = marker.with_name("fam.term")
    assert sorted(int(p) for p in term.read_text().split()) == sorted(pids)
    assert client.wait(run_id, timeout=30).status == "CANCELLED"


@pytest.mark.both_executors
def test_the_node_timeout_ends_the_process_group(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "fam"
    run_id = client.start_run(
        {
            "name": "shell-test",
            "nodes": [shell("sh", [PY, "-c", FAMILY, str(marker)], timeout_ms=3000)],
        }
    )
    pids = family_pids(marker)
    run = client.wait(run_id, timeout=30)
    wait_gone(pids)
    assert run.status == "FAILED"
    assert run.node("sh").error == "timed out after 3000 ms"


def test_params_timeout_ends_the_process_group(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "fam2"
    node = {
        "id": "sh",
        "kind": "shell",
        "params": {"argv": [PY, "-c", FAMILY, str(marker)], "timeout_ms": 3000},
    }
    run_id = client.start_run({"name": "shell-test-param", "nodes": [node]})
    pids = family_pids(marker)
    run = client.wait(run_id, timeout=30)
    wait_gone(pids)
    assert run.node("sh").error == f"{PY!r} timed out after 3000 ms"


def test_what_a_program_leaves_behind_ends_with_it(client: Client, tmp_path: Path) -> None:
    pid_file = tmp_path / "orphan.pid"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('leaving')\n"
    )
    started = time.monotonic()
    run = run_nodes(client, shell("sh", [PY, "-c", script]))
    assert run.status == "SUCCEEDED", run.node("sh").error
    assert time.monotonic() - started < 10
    assert run.node("sh").output["stdout"] == "leaving\n"
    assert not alive(int(pid_file.read_text()))


# ------------------------------------------------------------------ bad specs


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "params.argv is required"),
        ({"argv": "ls -l /tmp"}, "params.argv must be a list of strings, not one string: split"),
        ({"argv": "echo {{ input.x }}"}, "params.argv must be a list of strings, not one string"),
        ({"argv": {"program": "ls"}}, "params.argv must be a list of strings, not dict"),
        ({"argv": 5}, "params.argv must be a list of strings, not int"),
        ({"argv": []}, "params.argv must not be empty"),
        ({"argv": ["ls", ["-l"]]}, "params.argv[1] must be a string, not list"),
        ({"argv": ["ls"], "env": ["A=1"]}, "params.env must be an object"),
        ({"argv": ["ls"], "env": {"A": {"b": 1}}}, "params.env.A must be a string"),
        ({"argv": ["ls"], "term_grace_ms": -1}, "params.term_grace_ms must be a non-negative"),
        ({"argv": ["ls"], "inherit_env": "no"}, "params.inherit_env must be true or false"),
        ({"argv": ["ls"], "args": ["-l"]}, "params.args is not a shell param"),
    ],
)
def test_bad_params_are_refused_at_registration(
    client: Client, params: dict[str, Any], message: str
) -> None:
    spec = {"name": "bad-shell", "nodes": [{"id": "sh", "kind": "shell", "params": params}]}
    with pytest.raises(StatepipeError) as info:
        client.start_run(spec)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message.startswith("node 'sh': ")
    assert message in info.value.message


def test_a_whole_template_argv_passes_registration(client: Client) -> None:
    run = run_nodes(
        client,
        shell("sh", "{{ input.argv }}"),
        run_input={"argv": [PY, "-c", "print('from input')"]},
    )
    assert run.node("sh").output["stdout"] == "from input\n"
