"""Helpers for tests of the llm and agent runners (importable as sp_llm)."""

from __future__ import annotations

from typing import Any

import psycopg
from sp_openai import OpenAIStandIn

# A retry policy whose own backoff is short: a wait longer than 10 ms comes
# from the failure (a Retry-After).
FAST_RETRY = {"max_attempts": 3, "backoff_ms": 10, "strategy": "fixed"}


def llm_node(
    node_id: str,
    llm: OpenAIStandIn,
    *,
    kind: str = "llm",
    after: list[str] | None = None,
    retry: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """An llm (or agent) node talking to the stand-in; `params` fill its params
    (a prompt "Say hello." unless messages or a prompt are given)."""
    base: dict[str, Any] = {"base_url": llm.base_url, "model": "stand-in-1"}
    if "messages" not in params and "prompt" not in params:
        base["prompt"] = "Say hello."
    node: dict[str, Any] = {"id": node_id, "kind": kind, "params": {**base, **params}}
    if after:
        node["after"] = after
    if retry:
        node["retry"] = retry
    return node


def spec(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "nodes": list(nodes)}


def events(client: Any, run_id: str, kind: str | None = None) -> list[Any]:
    """Every event of a finished run (or those of one kind), in seq order."""
    return [e for e in client.watch(run_id) if kind is None or e.kind == kind]


def database_text(database_url: str) -> dict[str, str]:
    """The text of every row of every table of the database, by table."""
    tables: dict[str, str] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        names = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, table in names:
            rows = conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t').fetchall()
            tables[f"{schema}.{table}"] = "\n".join(row[0] for row in rows)
    return tables
