"""Who owns a run: owner ids, and the loop that renews, checks and claims leases.

A run in an active status (statepipe_api.lifecycle.ACTIVE_RUN) is driven by
the one control plane whose id is in its row's lease_owner. The owner renews
all its leases with one statement; every write it makes is fenced on the lease
(control_plane.store commits only rows of runs the writer still owns), so an
owner whose lease was taken over loses its writes and stops the run's actor.
Every renewal period each control plane also claims the active runs whose
owner's lease expired or whose process on this host is gone, so a surviving
server takes over a dead peer's runs while it runs, not only at its own start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable

from control_plane.store import Store

log = logging.getLogger(__name__)


def owner_id() -> str:
    """host:pid:random: unique per control-plane instance, and the host and pid
    let a peer on the same host see that the process is gone."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True for an owner on this host whose process is gone."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def dead_owners(store: Store) -> list[str]:
    """Lease owners of active runs whose process on this host is gone."""
    return [o for o in await store.lease_owners() if owner_is_dead(o)]


class LeaseKeeper:
    """Renews this owner's leases, notices lost ones, claims orphaned runs.

    Args:
        store: the database.
        owner: this control plane's owner id.
        lease_ms: how long a lease lasts; the loop runs every third of it.
        held: the run ids this owner drives right now.
        on_lost: called with run ids this owner drives but no longer holds.
        on_claimed: awaited with run ids claimed from a dead or expired owner.
    """

    def __init__(
        self,
        store: Store,
        owner: str,
        lease_ms: int,
        *,
        held: Callable[[], Collection[str]],
        on_lost: Callable[[list[str]], None],
        on_claimed: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_ms = lease_ms
        self._held = held
        self._on_lost = on_lost
        self._on_claimed = on_claimed
        # Off for read-only tools: they renew their own leases but take no runs.
        self.claim_orphans = True
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def claim(self, exclude: Iterable[str] = ()) -> list[str]:
        """Claims active runs left by dead or expired owners (not this one's)."""
        return await self.store.claim_runs(
            self.owner, self.lease_ms, await dead_owners(self.store), exclude=list(exclude)
        )

    async def tick(self) -> None:
        """One round: renew, report lost leases, claim orphans."""
        held = list(self._held())
        renewed = set(await self.store.renew_leases(self.owner, self.lease_ms, held))
        missing = [run_id for run_id in held if run_id not in renewed]
        if missing:
            # A run this owner drives but did not renew: lost if its row names
            # another owner (or none); a row not committed yet is not lost.
            holders = await self.store.lease_holders(missing)
            lost = [r for r in missing if r in holders and holders[r] != self.owner]
            if lost:
                log.warning("lost the lease of %d runs: %s", len(lost), lost[:10])
                self._on_lost(lost)
        if not self.claim_orphans:
            return
        claimed = await self.claim(exclude=self._held())
        if claimed:
            log.info("took over %d runs: %s", len(claimed), claimed[:10])
            await self._on_claimed(claimed)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease round failed; trying again next period")
