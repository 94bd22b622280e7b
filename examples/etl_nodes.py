"""Node functions of examples/etl.yaml (imported by the server as ``etl_nodes:<name>``).

The data is a fixed list of orders, so every run gives the same report; money
is in integer cents to keep the sums exact.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

Order = dict[str, Any]

ORDERS: list[Order] = [
    {"id": 1, "region": "eu", "product": "kettle", "qty": 2, "unit_cents": 2_500},
    {"id": 2, "region": "us", "product": "toaster", "qty": 1, "unit_cents": 4_000},
    {"id": 3, "region": "eu", "product": "toaster", "qty": 3, "unit_cents": 4_000},
    {"id": 4, "region": "apac", "product": "kettle", "qty": 5, "unit_cents": 2_500},
    {"id": 5, "region": "us", "product": "blender", "qty": 0, "unit_cents": 6_000},
    {"id": 6, "region": "", "product": "kettle", "qty": 1, "unit_cents": 2_500},
    {"id": 7, "region": "us", "product": "blender", "qty": 2, "unit_cents": 6_000},
    {"id": 8, "region": "apac", "product": "toaster", "qty": 1, "unit_cents": 4_000},
    {"id": 9, "region": "eu", "product": "blender", "qty": 1, "unit_cents": -100},
    {"id": 10, "region": "us", "product": "kettle", "qty": 4, "unit_cents": 2_500},
]


def _problem(order: Order) -> str | None:
    if not order.get("region"):
        return "missing region"
    if order.get("qty", 0) <= 0:
        return "non-positive quantity"
    if order.get("unit_cents", 0) <= 0:
        return "non-positive price"
    return None


def _valid(orders: list[Order]) -> list[Order]:
    return [o for o in orders if _problem(o) is None]


def extract(ctx: Any) -> dict[str, Any]:
    """Reads the raw orders (a fixed list standing in for a source system)."""
    ctx.log(f"extracted {len(ORDERS)} orders")
    return {"orders": [dict(o) for o in ORDERS]}


def revenue_by_region(ctx: Any, orders: list[Order]) -> dict[str, int]:
    """transform_a: revenue in cents per region, valid orders only."""
    totals: dict[str, int] = defaultdict(int)
    for order in _valid(orders):
        totals[order["region"]] += order["qty"] * order["unit_cents"]
    return dict(sorted(totals.items()))


def units_by_product(ctx: Any, orders: list[Order]) -> list[dict[str, Any]]:
    """transform_b: units sold per product, most sold first (ties by name)."""
    units: Counter[str] = Counter()
    for order in _valid(orders):
        units[order["product"]] += order["qty"]
    ranked = sorted(units.items(), key=lambda item: (-item[1], item[0]))
    return [{"product": product, "units": count} for product, count in ranked]


def quality(ctx: Any, orders: list[Order]) -> dict[str, Any]:
    """transform_c: which rows were rejected, and why."""
    rejected = []
    for order in orders:
        problem = _problem(order)
        if problem is not None:
            rejected.append({"id": order["id"], "problem": problem})
            ctx.log(f"order {order['id']} rejected: {problem}", level="warning")
    return {"rows": len(orders), "valid": len(orders) - len(rejected), "rejected": rejected}


def load(
    ctx: Any,
    revenue: dict[str, int],
    products: list[dict[str, Any]],
    quality: dict[str, Any],
) -> dict[str, Any]:
    """Shapes the results as warehouse tables (kept in the output: no database needed)."""
    tables = {
        "revenue_by_region": [{"region": r, "cents": c} for r, c in revenue.items()],
        "units_by_product": products,
        "rejected_orders": quality["rejected"],
    }
    rows = sum(len(t) for t in tables.values())
    ctx.log(f"loaded {rows} rows into {len(tables)} tables")
    return {"tables": tables, "rows_loaded": rows}


def report(ctx: Any, loaded: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
    """A summary of the day."""
    tables = loaded["tables"]
    revenue = tables["revenue_by_region"]
    total = sum(row["cents"] for row in revenue)
    best = max(revenue, key=lambda row: row["cents"])["region"] if revenue else None
    top = tables["units_by_product"][0]["product"] if tables["units_by_product"] else None
    summary = (
        f"{quality['valid']}/{quality['rows']} orders valid, revenue {total / 100:.2f}, "
        f"best region {best}, top product {top}"
    )
    ctx.log(summary)
    return {
        "total_cents": total,
        "best_region": best,
        "top_product": top,
        "rows_loaded": loaded["rows_loaded"],
        "rejected": len(tables["rejected_orders"]),
        "summary": summary,
    }
