"""Concurrency slots: global, per workflow, per run, per concurrency key."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control_plane.plan import Plan


class Limits:
    """Counts running nodes against the limits; wakes blocked runs when a slot frees."""

    def __init__(self, global_max: int) -> None:
        self.global_max = global_max
        self.running = 0
        self.per_workflow: collections.Counter[str] = collections.Counter()
        self.per_run: collections.Counter[str] = collections.Counter()
        self.per_key: collections.Counter[tuple[str, str]] = collections.Counter()
        # The wake events of runs that found a limit full.
        self._blocked: set[asyncio.Event] = set()

    def why_not(self, plan: Plan, run_id: str, key: str) -> str | None:
        """None when a node may start, else which limit is full ("key" or "run")."""
        limits = plan.spec.concurrency
        if self.global_max and self.running >= self.global_max:
            return "run"
        if limits.per_workflow and self.per_workflow[plan.name] >= limits.per_workflow:
            return "run"
        if limits.per_run and self.per_run[run_id] >= limits.per_run:
            return "run"
        if key and self.per_key[(plan.name, key)] >= limits.per_key.get(key, 1):
            return "key"
        return None

    def acquire(self, plan: Plan, run_id: str, key: str) -> None:
        self.running += 1
        self.per_workflow[plan.name] += 1
        self.per_run[run_id] += 1
        if key:
            self.per_key[(plan.name, key)] += 1

    def release(self, plan: Plan, run_id: str, key: str) -> None:
        self.running -= 1
        self.per_workflow[plan.name] -= 1
        self.per_run[run_id] -= 1
        if not self.per_run[run_id]:
            del self.per_run[run_id]
        if key:
            self.per_key[(plan.name, key)] -= 1
        blocked, self._blocked = self._blocked, set()
        for wake in blocked:
            wake.set()

    def wait_for_slot(self, wake: asyncio.Event) -> None:
        """`wake` is set the next time any slot is released."""
        self._blocked.add(wake)
