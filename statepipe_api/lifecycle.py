"""The run and node lifecycles: every status, every legal transition, every control.

This is the one place that says which status may follow which, which statuses
are final, and which controls a run in a given status accepts. The scheduler
checks each transition it makes against these tables, the control plane refuses
controls with :func:`control_refusal` (FAILED_PRECONDITION), and the CLI and
the console read the same sets. docs/control-plane.md draws the same graph.

Run:  PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED;
      RUNNING ⇄ PAUSED; RUNNING | PAUSED → INTERRUPTED; INTERRUPTED | FAILED
      → RUNNING (resume, retry a node); CANCELLED is final.
Node: PENDING → QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED;
      RUNNING → RETRY_WAIT → QUEUED; PENDING → SKIPPED; an interrupt puts
      in-flight nodes back to PENDING; resume and retry put FAILED, CANCELLED
      and SKIPPED nodes back to PENDING.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ACTIVE_RUN",
    "CONTROLS",
    "FINAL_NODE",
    "FINAL_RUN",
    "IN_FLIGHT_NODE",
    "NODE_STATUSES",
    "NODE_TRANSITIONS",
    "RESETTABLE_NODE",
    "RUN_STATUSES",
    "RUN_TRANSITIONS",
    "STOP_FOLLOWING_RUN",
    "IllegalTransition",
    "check_node_transition",
    "check_run_transition",
    "control_refusal",
    "node_retry_refusal",
    "run_needs_actor",
]

RUN_STATUSES = ("PENDING", "RUNNING", "PAUSED", "INTERRUPTED", "SUCCEEDED", "FAILED", "CANCELLED")
NODE_STATUSES = (
    "PENDING",
    "QUEUED",
    "RUNNING",
    "RETRY_WAIT",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "SKIPPED",
)

#: Run statuses after which nothing more happens on its own (a FAILED run can
#: still be resumed by a person).
FINAL_RUN = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
#: Run statuses a scheduler must drive: such a run is leased by one control
#: plane and taken over by another when its owner dies.
ACTIVE_RUN = frozenset({"PENDING", "RUNNING"})
#: Where someone following a run stops: it ended, or waits for a person.
STOP_FOLLOWING_RUN = FINAL_RUN | {"INTERRUPTED"}

FINAL_NODE = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"})
#: Nodes that hold (or wait for) an executor slot.
IN_FLIGHT_NODE = frozenset({"QUEUED", "RUNNING", "RETRY_WAIT"})
#: Nodes a retry (of the node or of a FAILED run) puts back to PENDING.
RESETTABLE_NODE = frozenset({"FAILED", "CANCELLED", "SKIPPED"})

RUN_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "PENDING": frozenset({"RUNNING", "CANCELLED", "FAILED"}),
    # FAILED from PAUSED or INTERRUPTED only through an internal scheduler error.
    "RUNNING": frozenset({"PAUSED", "INTERRUPTED", "SUCCEEDED", "FAILED", "CANCELLED"}),
    "PAUSED": frozenset({"RUNNING", "INTERRUPTED", "CANCELLED", "FAILED"}),
    "INTERRUPTED": frozenset({"RUNNING", "CANCELLED", "FAILED"}),
    "FAILED": frozenset({"RUNNING"}),
    "SUCCEEDED": frozenset(),
    "CANCELLED": frozenset(),
}

NODE_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "PENDING": frozenset({"QUEUED", "SKIPPED", "CANCELLED"}),
    # A QUEUED node may fail before it runs (its params or condition cannot be
    # evaluated) or be skipped (its condition is false); interrupt sets it back.
    "QUEUED": frozenset({"RUNNING", "SKIPPED", "FAILED", "PENDING", "CANCELLED"}),
    # QUEUED again: the run was taken over or resumed while the node ran.
    "RUNNING": frozenset({"SUCCEEDED", "FAILED", "RETRY_WAIT", "CANCELLED", "PENDING", "QUEUED"}),
    "RETRY_WAIT": frozenset({"QUEUED", "FAILED", "CANCELLED", "PENDING"}),
    "SUCCEEDED": frozenset(),
    # A failed, cancelled or skipped node is reset to PENDING by a retry; a
    # FAILED one below a failure found on rebuild becomes SKIPPED.
    "FAILED": frozenset({"PENDING", "SKIPPED"}),
    "CANCELLED": frozenset({"PENDING", "SKIPPED"}),
    "SKIPPED": frozenset({"PENDING"}),
}


class IllegalTransition(RuntimeError):
    """A status change the lifecycle does not allow (a bug in the caller)."""

    def __init__(self, what: str, old: str, new: str) -> None:
        super().__init__(f"illegal {what} transition {old} -> {new}")
        self.what = what
        self.old = old
        self.new = new


def check_run_transition(old: str, new: str) -> None:
    """Raises IllegalTransition unless a run may go from `old` to `new` (or stays)."""
    if old != new and new not in RUN_TRANSITIONS[old]:
        raise IllegalTransition("run", old, new)


def check_node_transition(old: str, new: str) -> None:
    """Raises IllegalTransition unless a node may go from `old` to `new` (or stays)."""
    if old != new and new not in NODE_TRANSITIONS[old]:
        raise IllegalTransition("node", old, new)


def run_needs_actor(status: str) -> bool:
    """Whether a run in `status` needs a scheduler actor of its own.

    A paused run keeps its actor (its in-flight nodes finish); an interrupted,
    finished or never-started one does not, so whatever ends up in such a
    status gives its actor up on every path.
    """
    return status in ("PENDING", "RUNNING", "PAUSED")


#: Control → the run statuses it is allowed in.
CONTROLS: Mapping[str, frozenset[str]] = {
    "pause": frozenset({"RUNNING"}),
    "resume": frozenset({"PAUSED", "INTERRUPTED", "FAILED"}),
    "interrupt": frozenset({"RUNNING", "PAUSED"}),
    "cancel": frozenset(RUN_STATUSES) - FINAL_RUN,
    "retry_node": frozenset({"RUNNING", "PAUSED", "INTERRUPTED", "FAILED"}),
}

_ALLOWED_TEXT = {
    "pause": "RUNNING",
    "resume": "PAUSED, INTERRUPTED or FAILED",
    "interrupt": "RUNNING or PAUSED",
    "cancel": "not finished",
    "retry_node": "RUNNING, PAUSED, INTERRUPTED or FAILED",
}


def control_refusal(run_id: str, action: str, status: str) -> str | None:
    """None when `action` is allowed on a run in `status`, else why not (a
    message a person can act on). Raises KeyError for an unknown action."""
    if status in CONTROLS[action]:
        return None
    verb = action.replace("_", " ")
    return f"cannot {verb} run {run_id!r}: it is {status} (allowed when {_ALLOWED_TEXT[action]})"


def node_retry_refusal(node_id: str, status: str) -> str | None:
    """None when a node in `status` can be retried, else why not."""
    if status in RESETTABLE_NODE:
        return None
    return f"node {node_id!r} is {status}; only a FAILED, CANCELLED or SKIPPED node can be retried"
