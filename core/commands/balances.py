"""`allotment balances TENANT`: the tenant's scope tree, each budget with allocated, spent,
reserved and remaining, and a bar of how much of it is used."""

from __future__ import annotations

from typing import Any

import click

from ..amounts import Unit
from ..scopes import parse_scope, tenant_name
from ._output import amount, balance_json, bar, emit_json, table
from ._target import Target, handled, opened, target_options


def ledgers(target: Target, tenant: str, scope: str | None = None) -> list[dict[str, Any]]:
    """The tenant's ledgers (at and below `scope`) as plain dicts of exact integers, read
    from the store or from the server's budget list, in tree order."""
    name = tenant_name(tenant, "TENANT")
    root = parse_scope(scope).path if scope else f"tenant:{name}"
    if target.guard is not None:
        rows = [balance_json(r) for r in target.guard.balances(root)]
    else:
        assert target.server is not None
        answer = target.server.call("GET", "/v1/admin/budgets",
                                    params={"tenant_id": name, "scope_prefix": root})
        rows = [from_wire(r) for r in answer["ledgers"]]
    return sorted(rows, key=lambda r: (r["scope"].split("/"), r["unit"], r["period"] or ""))


def period_of(row: dict[str, Any]) -> str | None:
    """A BudgetLedger's period: the third part of the server's `ledger_id`
    (`scope|unit|period`; the reference schema has no field of its own for it)."""
    parts = str(row.get("ledger_id", "")).split("|")
    return parts[2] if len(parts) > 2 else None


def from_wire(row: dict[str, Any]) -> dict[str, Any]:
    return {"scope": row["scope"], "unit": row["unit"], "period": period_of(row),
            "bucket": None, "allocated": row["allocated"]["amount"],
            "spent": row["spent"]["amount"], "reserved": row["reserved"]["amount"],
            "debt": row["debt"]["amount"], "remaining": row["remaining"]["amount"],
            "status": row["status"], "is_over_limit": row["is_over_limit"]}


def tree_text(rows: list[dict[str, Any]]) -> str:
    """One line per ledger in tree order, named relative to the nearest scope above it that
    has a line of its own (levels without a budget are folded into the name)."""
    depth: dict[str, int] = {}
    lines = []
    for r in rows:
        scope = r["scope"]
        parents = [s for s in depth if scope.startswith(s + "/")]
        parent = max(parents, key=len) if parents else None
        if scope not in depth:
            depth[scope] = 0 if parent is None else depth[parent] + 1
        label = scope if parent is None else scope[len(parent) + 1:]
        unit = Unit(r["unit"])
        period = r["period"] or "-"
        if r["status"] != "ACTIVE":
            period += f" {r['status'].lower()}"
        used = r["spent"] + r["reserved"] + r["debt"]
        lines.append(["  " * depth[scope] + label, period, amount(unit, r["allocated"]),
                      amount(unit, r["spent"]), amount(unit, r["reserved"]),
                      amount(unit, r["remaining"]), bar(used, r["allocated"])])
    return table(["scope", "period", "allocated", "spent", "reserved", "remaining", "used"],
                 lines)


@click.command(help="The tenant's budgets as a scope tree: allocated, spent, reserved, "
                    "remaining and a bar per budget (spent + reserved + debt of allocated).")
@click.argument("tenant")
@click.option("--scope", default=None, help="Only this scope and below (default: the tenant).")
@target_options
@handled
def balances(tenant: str, scope: str | None, store: str | None, server: str | None,
             key: str | None, as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        rows = ledgers(target, tenant, scope)
        if as_json:
            emit_json({"tenant": tenant_name(tenant, "TENANT"), "balances": rows})
        elif rows:
            click.echo(tree_text(rows))
        else:
            click.echo(f"no budgets for tenant {tenant_name(tenant, 'TENANT')}")
