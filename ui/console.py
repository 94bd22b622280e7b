"""The app-wide connection to the control plane (one gRPC channel for every browser tab)."""

from __future__ import annotations

import dataclasses

from statepipe.client import AsyncClient


@dataclasses.dataclass
class Console:
    """What every page needs: the control plane's address and a client on the app's loop.

    The client opens its channel lazily, on the first call, so it is created on the
    event loop NiceGUI runs; per-browser state (streams, models) lives in the pages.
    """

    server: str
    client: AsyncClient = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        # No deadline on unary calls beyond a sane one; streams have none.
        self.client = AsyncClient(self.server, timeout=15.0)

    async def close(self) -> None:
        await self.client.close()


async def probe(console: Console) -> None:
    """A cheap call that succeeds once the control plane is reachable again."""
    await console.client.list_workflows_page(limit=1)
