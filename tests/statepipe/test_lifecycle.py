"""The lifecycle tables (statepipe_api.lifecycle): complete, consistent, and
the refusals a person reads."""

from __future__ import annotations

import pytest

from statepipe_api import lifecycle as lc
from statepipe_api.v1 import statepipe_pb2 as pb


def test_statuses_match_the_api_enums() -> None:
    assert [f"RUN_{s}" for s in lc.RUN_STATUSES] == pb.RunStatus.keys()[1:]
    assert [f"NODE_{s}" for s in lc.NODE_STATUSES] == pb.NodeStatus.keys()[1:]


def test_every_status_has_a_row_and_targets_are_statuses() -> None:
    assert set(lc.RUN_TRANSITIONS) == set(lc.RUN_STATUSES)
    assert set(lc.NODE_TRANSITIONS) == set(lc.NODE_STATUSES)
    for targets in lc.RUN_TRANSITIONS.values():
        assert targets <= set(lc.RUN_STATUSES)
    for targets in lc.NODE_TRANSITIONS.values():
        assert targets <= set(lc.NODE_STATUSES)


def test_final_statuses_lead_nowhere_but_a_retry() -> None:
    assert lc.RUN_TRANSITIONS["SUCCEEDED"] == lc.RUN_TRANSITIONS["CANCELLED"] == frozenset()
    assert lc.RUN_TRANSITIONS["FAILED"] == {"RUNNING"}  # resume
    assert lc.NODE_TRANSITIONS["SUCCEEDED"] == frozenset()
    for status in lc.RESETTABLE_NODE:
        assert "PENDING" in lc.NODE_TRANSITIONS[status]


@pytest.mark.parametrize(
    ("old", "new"),
    [("SUCCEEDED", "RUNNING"), ("CANCELLED", "RUNNING"), ("PENDING", "SUCCEEDED")],
)
def test_illegal_run_transitions_raise(old: str, new: str) -> None:
    with pytest.raises(lc.IllegalTransition, match=f"illegal run transition {old} -> {new}"):
        lc.check_run_transition(old, new)


def test_illegal_node_transitions_raise() -> None:
    with pytest.raises(lc.IllegalTransition) as err:
        lc.check_node_transition("SUCCEEDED", "RUNNING")
    assert (err.value.what, err.value.old, err.value.new) == ("node", "SUCCEEDED", "RUNNING")
    lc.check_node_transition("RUNNING", "RUNNING")  # staying is no transition


def test_every_control_target_is_a_legal_transition() -> None:
    targets = {
        "pause": "PAUSED",
        "resume": "RUNNING",
        "interrupt": "INTERRUPTED",
        "cancel": "CANCELLED",
    }
    for action, allowed in lc.CONTROLS.items():
        for status in allowed:
            if action in targets:
                lc.check_run_transition(status, targets[action])


def test_refusals_name_the_state_and_what_is_allowed() -> None:
    assert lc.control_refusal("r1", "pause", "RUNNING") is None
    assert lc.control_refusal("r1", "pause", "PAUSED") == (
        "cannot pause run 'r1': it is PAUSED (allowed when RUNNING)"
    )
    assert lc.control_refusal("r1", "cancel", "SUCCEEDED") == (
        "cannot cancel run 'r1': it is SUCCEEDED (allowed when not finished)"
    )
    assert lc.control_refusal("r1", "retry_node", "SUCCEEDED") == (
        "cannot retry node run 'r1': it is SUCCEEDED"
        " (allowed when RUNNING, PAUSED, INTERRUPTED or FAILED)"
    )
    assert lc.node_retry_refusal("n", "FAILED") is None
    assert lc.node_retry_refusal("n", "RUNNING") == (
        "node 'n' is RUNNING; only a FAILED, CANCELLED or SKIPPED node can be retried"
    )
    with pytest.raises(KeyError):
        lc.control_refusal("r1", "explode", "RUNNING")


def test_which_runs_need_an_actor() -> None:
    assert {s for s in lc.RUN_STATUSES if lc.run_needs_actor(s)} == {
        "PENDING",
        "RUNNING",
        "PAUSED",
    }
    assert lc.ACTIVE_RUN <= {s for s in lc.RUN_STATUSES if lc.run_needs_actor(s)}
    assert lc.STOP_FOLLOWING_RUN == lc.FINAL_RUN | {"INTERRUPTED"}
