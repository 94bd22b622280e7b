"""Times and durations as the console shows them (one place for every page and view)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

TOKEN_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")


def parse_time(ts: str | None) -> datetime | None:
    """An RFC 3339 string (``...Z``) as an aware datetime; None stays None."""
    if not ts:
        return None
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_ms(ts: str | None) -> float | None:
    """Milliseconds since the epoch of an RFC 3339 string (None stays None)."""
    moment = parse_time(ts)
    return None if moment is None else moment.timestamp() * 1000.0


def now_ms() -> float:
    return datetime.now(UTC).timestamp() * 1000.0


def duration_ms(start: str | None, end: str | None) -> float | None:
    """Milliseconds from ``start`` to ``end``; None unless both are set."""
    a, b = parse_ms(start), parse_ms(end)
    return None if a is None or b is None else round(b - a, 3)


def since_ms(start: str) -> float:
    """Milliseconds from ``start`` until now."""
    return now_ms() - (parse_ms(start) or now_ms())


def format_duration(ms: float | None, empty: str = "—") -> str:
    """A duration for people: ``850 ms``, ``4.20 s``, ``3m 07s``, ``2h 05m``."""
    if ms is None:
        return empty
    ms = max(ms, 0.0)
    if ms < 1000:
        return f"{ms:.0f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    m, r = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {r:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def tokens_of(usage: dict[str, Any] | None) -> int | float | None:
    """Input plus output tokens of a usage (OpenTelemetry GenAI names); None if none."""
    total = sum(v for k, v in (usage or {}).items() if k in TOKEN_KEYS and _number(v))
    return total or None


def cost_of(usage: dict[str, Any] | None) -> float | None:
    """The first cost-like value of a usage (``cost_usd``, ...); None if none."""
    return next((v for k, v in (usage or {}).items() if "cost" in k and _number(v)), None)


def one_line(value: Any, limit: int, *, separators: tuple[str, str] = (",", ":")) -> str:
    """A JSON value on one line, cut to ``limit`` characters with an ellipsis."""
    text = json.dumps(value, ensure_ascii=False, separators=separators, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
