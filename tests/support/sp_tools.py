"""Tool functions for agent nodes in tests (importable as sp_tools:<name>)."""

from __future__ import annotations

import asyncio
from typing import Any

FORECASTS = {"Paris": "sunny", "Oslo": "snow"}


def get_weather(city: str) -> dict[str, Any]:
    """A sync tool (it runs in a thread)."""
    return {"city": city, "forecast": FORECASTS.get(city, "rain"), "celsius": 21}


async def add(a: float, b: float) -> float:
    """An async tool (it runs on the event loop)."""
    await asyncio.sleep(0)
    return a + b


def explode(reason: str = "boom") -> None:
    """A tool that raises."""
    raise RuntimeError(f"the tool broke: {reason}")
