"""Who drives a run: actor registration follows the lifecycle, leases are fenced,
and a surviving control plane claims a dead or expired owner's runs while it runs."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import psycopg
import pytest
from sp_testing import py, wait_for

from statepipe.client import Client


def _row(database_url: str, run_id: str) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT status, lease_owner, lease_expires_at FROM runs WHERE run_id = %s", (run_id,)
        )
        status, owner, expires = cur.fetchone()
    return {"status": status, "lease_owner": owner, "lease_expires_at": expires}


def _events(client: Client, run_id: str) -> list[Any]:
    return list(client.list_events(run_id))


def _watch_ends(client: Client, run_id: str, timeout: float) -> bool:
    """Whether a watch of the run (not following forever) ends by itself."""
    done = threading.Event()

    def follow() -> None:
        for _ in client.watch(run_id):
            pass
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    return done.wait(timeout)


def test_cancel_of_a_paused_run_no_process_holds_releases_it(
    make_server: Any, database_url: str
) -> None:
    first = make_server()
    with Client(first.address) as client:
        run_id = client.start_run(
            {
                "name": "paused",
                "nodes": [
                    py("a", "sleep", args={"seconds": 0.3}),
                    py("b", "echo", after=["a"]),
                ],
            }
        )
        client.pause(run_id)
        wait_for(lambda: client.get_run(run_id).node("a").status == "SUCCEEDED")
    first.stop()  # a restart: the PAUSED run is left with no actor anywhere
    assert _row(database_url, run_id)["status"] == "PAUSED"

    second = make_server()
    with Client(second.address) as client:
        cancelled = client.cancel(run_id, reason="no longer needed")
        assert cancelled.status == "CANCELLED"
        assert run_id not in second.plane.scheduler.actors
        assert _watch_ends(client, run_id, timeout=10), "watch() of the cancelled run hangs"
        final = client.get_run(run_id)
        assert final.status == "CANCELLED"
        assert final.node("b").status == "CANCELLED"
        assert _row(database_url, run_id)["lease_owner"] is None
        # The same holds for an interrupt of a paused run nobody holds.
        other_id = client.start_run(
            {"name": "paused2", "nodes": [py("a", "sleep", args={"seconds": 30})]}
        )
        client.pause(other_id)
    second.stop()
    third = make_server()
    with Client(third.address) as client:
        assert client.get_run(other_id).status == "PAUSED"
        assert client.interrupt(other_id).status == "INTERRUPTED"
        assert other_id not in third.plane.scheduler.actors
        assert client.resume(other_id).status == "RUNNING"
        assert other_id in third.plane.scheduler.actors
        client.cancel(other_id)
        wait_for(lambda: other_id not in third.plane.scheduler.actors, timeout=10)


def test_an_expired_lease_is_claimed_while_the_survivor_runs_and_the_old_owner_is_fenced(
    make_server: Any, database_url: str, tmp_path: Any
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    # A renews rarely; B checks for orphaned runs five times a second.
    slow = make_server(lease_ms=60_000)
    fast = make_server(lease_ms=600)
    with Client(slow.address) as a_client, Client(fast.address) as b_client:
        run_id = a_client.start_run(
            {
                "name": "fenced",
                "nodes": [
                    py("a", "record", args={"marker_dir": str(marks), "seconds": 1.5}),
                    py("b", "chatty", after=["a"], args={"tokens": 20}),
                ],
            }
        )
        wait_for(lambda: a_client.get_run(run_id).node("a").status == "RUNNING")
        a_owner = _row(database_url, run_id)["lease_owner"]
        assert a_owner == slow.plane.scheduler.owner
        # A stalls past its lease (as a paused VM or a long GC would): it expires.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s",
                (run_id,),
            )
        wait_for(
            lambda: _row(database_url, run_id)["lease_owner"] == fast.plane.scheduler.owner,
            timeout=5,
        )
        final = b_client.wait(run_id, timeout=30)
        assert final.status == "SUCCEEDED", final.error
        # A noticed at its next write and stopped driving the run.
        wait_for(lambda: run_id not in slow.plane.scheduler.actors, timeout=5)
        events = _events(b_client, run_id)
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), "seqs collide or have gaps"
        succeeded = collections.Counter(
            e.node_id for e in events if e.kind == "node_status" and e.status == "SUCCEEDED"
        )
        assert succeeded == {"a": 1, "b": 1}
        assert any(
            e.kind == "log" and f"taken over by {fast.plane.scheduler.owner}" in e.message
            for e in events
        )
        # After the takeover nothing of A's reached the run: B's attempt 2 of
        # "a" is the one recorded, and b's tokens all come from B's attempt.
        assert final.node("a").attempt == 2
        assert sum(1 for e in events if e.kind == "token") == 20
        assert _row(database_url, run_id)["lease_owner"] is None
        # A keeps serving its own new runs.
        again_id = a_client.start_run({"name": "after", "nodes": [py("x", "echo")]})
        assert a_client.wait(again_id, timeout=10).status == "SUCCEEDED"


def test_a_run_of_a_dead_owner_is_claimed_without_a_restart(
    make_server: Any, database_url: str
) -> None:
    """A RUNNING run whose owner process is gone (pid on this host no longer
    exists) is taken over by a live control plane at its next lease round."""
    survivor = make_server(lease_ms=600)
    with Client(survivor.address) as client:
        run_id = client.start_run(
            {"name": "orphan", "nodes": [py("a", "sleep", args={"seconds": 20})]}
        )
        wait_for(lambda: client.get_run(run_id).node("a").status == "RUNNING")
        with psycopg.connect(database_url, autocommit=True) as conn:
            # Hand the run to an owner on this host whose process cannot exist.
            conn.execute(
                "UPDATE runs SET lease_owner = %s, lease_expires_at = now() + interval '1 hour'"
                " WHERE run_id = %s",
                (f"{_hostname()}:999999999:deadbeef", run_id),
            )
        # The survivor lost the lease at its next round, then claimed the run back
        # from the dead owner: the node runs again as attempt 2.
        wait_for(lambda: client.get_run(run_id).node("a").attempt == 2, timeout=10)
        assert _row(database_url, run_id)["lease_owner"] == survivor.plane.scheduler.owner
        client.cancel(run_id)


def _hostname() -> str:
    import socket

    return socket.gethostname()


@pytest.mark.parametrize("action", ["resume", "cancel", "interrupt", "retry_node"])
def test_a_control_on_a_run_another_live_owner_holds_is_refused(
    make_server: Any, database_url: str, action: str
) -> None:
    holder = make_server()
    other = make_server()
    with Client(holder.address) as client, Client(other.address) as other_client:
        run_id = client.start_run(
            {"name": "held", "nodes": [py("a", "sleep", args={"seconds": 20})]}
        )
        client.pause(run_id)
        kwargs = {"node_id": "a"} if action == "retry_node" else {}
        from statepipe.client import StatepipeError

        with pytest.raises(StatepipeError) as err:
            getattr(other_client, action)(run_id, **kwargs)
        assert err.value.code.name == "FAILED_PRECONDITION"
        if action == "retry_node":
            assert "RUNNING; only a FAILED, CANCELLED or SKIPPED node can be retried" in str(
                err.value
            )
        else:
            assert "on another control plane" in str(err.value)
        assert run_id not in other.plane.scheduler.actors
        client.cancel(run_id)


def test_after_a_takeover_every_node_succeeds_exactly_once(
    make_server: Any, database_url: str, tmp_path: Any
) -> None:
    """Many runs change hands at once and the new owner finishes them: no run
    is claimed back while its last commit is still on the way (which ran its
    last node again after the run had SUCCEEDED)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    slow = make_server(lease_ms=60_000)
    fast = make_server(lease_ms=150)  # a lease round every 50 ms
    with Client(slow.address) as a_client, Client(fast.address) as b_client:
        run_ids = []
        for i in range(40):
            nodes = [py("n0", "record", args={"marker_dir": str(marks / str(i)), "seconds": 0.4})]
            nodes += [
                py(f"n{j}", "record", after=[f"n{j - 1}"],
                   args={"marker_dir": str(marks / str(i)), "seconds": 0.05})
                for j in range(1, 6)
            ]  # fmt: skip
            (marks / str(i)).mkdir()
            run_ids.append(a_client.start_run({"name": f"chain{i}", "nodes": nodes}))
        time.sleep(0.2)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE runs SET lease_expires_at = now() - interval '1 second'"
                " WHERE status = 'RUNNING'"
            )
        last_seqs = {}
        for run_id in run_ids:
            final = b_client.wait(run_id, timeout=60)
            assert final.status == "SUCCEEDED", final.error
            events = _events(b_client, run_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            succeeded = collections.Counter(
                e.node_id for e in events if e.kind == "node_status" and e.status == "SUCCEEDED"
            )
            assert succeeded == {f"n{j}": 1 for j in range(6)}, (run_id, succeeded)
            ends = [e.status for e in events if e.kind == "run_status" and e.status != "RUNNING"]
            assert ends == ["SUCCEEDED"], (run_id, ends)
            last_seqs[run_id] = events[-1].seq
        # Nothing happens after the fact: give a late claim a few lease rounds.
        time.sleep(1.0)
        for run_id in run_ids:
            assert b_client.get_run(run_id).last_seq == last_seqs[run_id]
            assert run_id not in fast.plane.scheduler.actors
            assert _row(database_url, run_id)["lease_owner"] is None
