"""statepipe's native core: DAG ordering, the scheduling frontier, the event bus
and the encoding of events.

This package is the only importer of the native module ``core_rs._core``; it
re-exports the Rust classes and functions and adds the asyncio side of
subscriptions.
"""

from __future__ import annotations

from core_rs._bus import EventBus, Subscription
from core_rs._core import (
    DEFAULT_CAPACITY,
    CycleError,
    Dag,
    DagError,
    DuplicateNodeError,
    Frontier,
    FrontierError,
    Lagged,
    UnknownNodeError,
    encode_event,
    frame_event_batches,
    join_event_batches,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "CycleError",
    "Dag",
    "DagError",
    "DuplicateNodeError",
    "EventBus",
    "Frontier",
    "FrontierError",
    "Lagged",
    "Subscription",
    "UnknownNodeError",
    "encode_event",
    "frame_event_batches",
    "join_event_batches",
]
