"""Type stubs for the native module. Import from ``core_rs``, not from here."""

from collections.abc import Iterable, Mapping, Sequence

DEFAULT_CAPACITY: int

def encode_event(
    run_id: str,
    seq: int,
    ts_ns: int,
    kind: str,
    node_id: str = "",
    attempt: int = 0,
    status: str = "",
    message: str = "",
    level: str = "",
    data: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Encodes an event once for both of its destinations.

    Args:
        ts_ns: Unix time in nanoseconds.
        data: An encoded ``google.protobuf.Struct``, or None.

    Returns:
        ``(frame, copy_row)``: the ``statepipe.v1.Event`` protobuf bytes (what
        protobuf itself would write) framed as one element of
        ``EventBatch.events``, so that concatenated frames are an EventBatch;
        and one text-format row for
        ``COPY events (run_id, seq, ts, kind, node_id, body)``.
    """

def frame_event_batches(bodies: Sequence[bytes], limit: int = 1048576) -> list[bytes]:
    """Builds the EventBatch messages holding stored events, without decoding them.

    Each body gets its frame (``EventBatch.events``' field tag, then its length
    as a varint) and the frames are concatenated into batches. Nothing is
    decoded or re-encoded.

    Args:
        bodies: Encoded ``statepipe.v1.Event`` messages, as stored in
            PostgreSQL (``events.body``), in the order to send them.
        limit: The most bytes a batch holds. An event larger than ``limit`` is
            a batch of its own, never dropped or cut.

    Returns:
        Encoded ``statepipe.v1.EventBatch`` messages, in order; together they
        hold every event once. No bodies, no batches.

    Raises:
        TypeError: An item is not ``bytes``, or ``bodies`` is a single value.
        ValueError: ``limit`` is negative.
    """

def join_event_batches(frames: Sequence[bytes], limit: int = 1048576) -> list[bytes]:
    """Like :func:`frame_event_batches` for events that are framed already.

    Args:
        frames: Framed events, as :func:`encode_event` returns them and the
            event bus carries them; copied as they are.
        limit: The most bytes a batch holds; a larger event is a batch of its own.

    Returns:
        Encoded ``statepipe.v1.EventBatch`` messages, in order.

    Raises:
        TypeError: An item is not ``bytes``, or ``frames`` is a single value.
        ValueError: ``limit`` is negative.
    """

class DagError(Exception):
    """A graph is not a valid DAG."""

class CycleError(DagError):
    """The edges contain a cycle.

    Attributes:
        cycle: the cycle's node ids in edge order, first node not repeated;
            the message prints it as ``a -> b -> c -> a``.
    """

    cycle: list[str]

class UnknownNodeError(DagError):
    """A node id that is not in the DAG.

    Attributes:
        node_id: the unknown id.
        edge: the ``(before, after)`` edge that named it, if an edge did.
    """

    node_id: str
    edge: tuple[str, str] | None

class DuplicateNodeError(DagError):
    """The same node id was given twice (``node_id``)."""

    node_id: str

class FrontierError(Exception):
    """A transition the frontier does not allow (``node_id``, current ``status``)."""

    node_id: str
    status: str

class Lagged(Exception):
    """A subscriber fell behind its topic's ring.

    Attributes:
        topic: the topic.
        after_seq: the last seq the subscriber saw; replay from ``after_seq + 1``.
        oldest_seq: the oldest seq the ring still holds.
    """

    topic: str
    after_seq: int
    oldest_seq: int

class Dag:
    """A validated DAG. An edge ``(u, v)`` means u runs before v.

    Raises:
        DuplicateNodeError, UnknownNodeError, CycleError: the graph is invalid.
        TypeError: an id is not a str or an edge is not a pair.
    """

    def __init__(self, nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, node_id: object) -> bool: ...
    @property
    def nodes(self) -> list[str]:
        """Node ids in the order given."""
    @property
    def edge_count(self) -> int: ...
    def topological_order(self) -> list[str]:
        """Every node after its predecessors; ties keep the order given."""
    def levels(self) -> list[list[str]]:
        """Nodes by depth (longest chain of predecessors), each level in the order given."""
    def ancestors(self, node_id: str) -> list[str]:
        """Every node that must run before ``node_id``, in the order given."""
    def descendants(self, node_id: str) -> list[str]:
        """Every node that runs after ``node_id``, in the order given."""
    def predecessors(self, node_id: str) -> list[str]: ...
    def successors(self, node_id: str) -> list[str]: ...

class Frontier:
    """The scheduler's ready-set, built from the nodes' stored statuses.

    SUCCEEDED and SKIPPED nodes count as done; FAILED and CANCELLED ones block
    their descendants (unless listed in ``continue_on_failure``); PENDING,
    QUEUED, RUNNING and RETRY_WAIT nodes run (again) once their predecessors are
    done. A fresh start, a resume and crash recovery all build it this way.
    """

    def __init__(
        self,
        dag: Dag,
        statuses: Mapping[str, str] | None = None,
        continue_on_failure: Iterable[str] | None = None,
    ) -> None: ...
    @property
    def dag(self) -> Dag: ...
    @property
    def ready_count(self) -> int: ...
    @property
    def running_count(self) -> int: ...
    def pop_ready(self, limit: int | None = None) -> list[str]:
        """Hands out up to ``limit`` ready nodes (earliest given first) and marks them running."""
    def complete(self, node_id: str) -> list[str]:
        """A running node succeeded; returns the nodes that became ready."""
    def skip(self, node_id: str) -> list[str]:
        """A running node's condition was false; dependents treat it as done."""
    def fail(self, node_id: str) -> list[str]:
        """A running node failed for good; returns the descendants now skipped."""
    def cancel(self, node_id: str) -> list[str]:
        """A running node was cancelled; returns the descendants now skipped."""
    def requeue(self, node_id: str) -> None:
        """Puts a running node back to ready (a retry)."""
    def status(self, node_id: str) -> str: ...
    def statuses(self) -> dict[str, str]: ...
    def blocked(self) -> list[str]:
        """Every node skipped because an ancestor failed, including at build."""
    def is_finished(self) -> bool:
        """Nothing is ready and nothing is running."""

class EventBus:
    def __init__(self, capacity: int = ...) -> None: ...
    @property
    def capacity(self) -> int: ...
    def open(self, topic: str, last_seq: int = 0) -> int: ...
    def publish(self, topic: str, data: bytes) -> int: ...
    def publish_many(self, topic: str, items: Sequence[bytes]) -> int: ...
    def subscribe(self, topic: str, after_seq: int = 0) -> Subscription: ...
    def close(self, topic: str) -> bool: ...
    def last_seq(self, topic: str) -> int | None: ...
    def topics(self) -> list[str]: ...
    def buffered(self) -> int: ...

class Subscription:
    @property
    def topic(self) -> str: ...
    @property
    def position(self) -> int: ...
    def seek(self, after_seq: int) -> None: ...
    def poll(self, max_events: int = ...) -> list[tuple[int, bytes]] | None: ...
    def poll_or_park(
        self, max_events: int, notifier: Notifier, token: int
    ) -> list[tuple[int, bytes]] | None: ...
    def unpark(self, notifier: Notifier, token: int) -> None: ...
    def wait(self, timeout_ms: int) -> bool: ...

class Notifier:
    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def take(self) -> list[int]: ...
