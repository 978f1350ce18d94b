"""`allotment budgets set|list`: create or change one budget; list a tenant's ledgers."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import click

from ..amounts import Unit, usd_to_microcents
from ..scopes import parse_scope
from ._output import amount, emit_json, table
from ._target import USAGE, Failure, Target, handled, opened, target_options
from .balances import from_wire, ledgers


@click.group(help="Create, change and list budgets.")
def budgets() -> None:
    pass


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise Failure(f"--usd {text!r}: give dollars as a decimal number, e.g. 25 or 0.50",
                      USAGE) from None
    return value


@budgets.command("set", help="Create or change the budget of SCOPE in one unit (and period); "
                             "a change keeps what was spent. Prints the budget's balances.")
@click.argument("scope")
@click.option("--usd", default=None, help="Dollars (a decimal, e.g. 2000 or 0.25).")
@click.option("--tokens", type=int, default=None, help="Tokens.")
@click.option("--credits", type=int, default=None, help="Credits.")
@click.option("--period", default=None, help="day, week, month, year (default: never resets).")
@click.option("--per", default=None, help="A dimension (run, session, user): one ledger per "
                                          "value, each with this allocation.")
@click.option("--overdraft", default=None,
              help="Overdraft limit in the budget's unit (dollars for --usd).")
@click.option("--policy", default="ALLOW_IF_AVAILABLE", show_default=True,
              type=click.Choice(["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"]),
              help="What a commit above the estimate does.")
@click.option("--actor", default=None, help="Who makes the change (kept on the audit record).")
@click.option("--reason", default=None, help="Why (kept on the audit record).")
@target_options
@handled
def set_budget(scope: str, usd: str | None, tokens: int | None, credits: int | None,
               period: str | None, per: str | None, overdraft: str | None, policy: str,
               actor: str | None, reason: str | None, store: str | None,
               server: str | None, key: str | None, as_json: bool) -> None:
    given = [n for n, v in (("--usd", usd), ("--tokens", tokens), ("--credits", credits))
             if v is not None]
    if len(given) != 1:
        raise Failure(f"give exactly one of --usd, --tokens or --credits (got "
                      f"{', '.join(given) or 'none'})", USAGE)
    with opened(store, server, key, as_json) as target:
        if target.guard is not None:
            limit: dict[str, Any] = ({"usd": _usd(usd)} if usd is not None else
                                     {"tokens": tokens} if tokens is not None else
                                     {"credits": credits})
            od: Any = 0 if overdraft is None else (
                _usd(overdraft) if usd is not None else _int(overdraft))
            target.guard.set_budget(scope, **limit, period=period, per=per,
                                    overdraft_limit=od, overage_policy=policy, actor=actor,
                                    reason=reason)
            path = parse_scope(scope)
            rows = [r for r in ledgers(target, path.tenant, path.path)
                    if r["scope"] == path.path]
        else:
            rows = [_over_server(target, scope, usd, tokens, credits, period, per,
                                 overdraft, policy)]
        if as_json:
            emit_json({"scope": parse_scope(scope).path, "balances": rows})
        elif rows:
            click.echo(_flat(rows))
        else:
            click.echo(f"budget set at {parse_scope(scope).path} per {per}: each value gets "
                       "its ledger on first use")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Failure(f"--overdraft {text!r}: give a whole number in the budget's unit",
                      USAGE) from None


def _over_server(target: Target, scope: str, usd: str | None, tokens: int | None,
                 credits: int | None, period: str | None, per: str | None,
                 overdraft: str | None, policy: str) -> dict[str, Any]:
    """POST /v1/admin/budgets: the Cycles shape creates a budget that never resets; a
    change, a period or a per-dimension template needs --store for now."""
    assert target.server is not None
    if period or per:
        raise Failure("--period and --per are not available over --server yet (the Cycles "
                      "budget shape has neither); use --store", USAGE)
    path = parse_scope(scope)
    if usd is not None:
        unit, value = Unit.USD_MICROCENTS, usd_to_microcents(_usd(usd), "usd")
    else:
        unit = Unit.TOKENS if tokens is not None else Unit.CREDITS
        value = int(tokens if tokens is not None else credits or 0)
    body: dict[str, Any] = {"tenant_id": path.tenant, "scope": path.path, "unit": unit.value,
                            "allocated": {"unit": unit.value, "amount": value},
                            "commit_overage_policy": policy}
    if overdraft is not None:
        od = usd_to_microcents(_usd(overdraft), "overdraft") if usd is not None else _int(
            overdraft)
        body["overdraft_limit"] = {"unit": unit.value, "amount": od}
    try:
        row = target.server.call("POST", "/v1/admin/budgets", body=body)
    except Failure as failure:
        if "409" in str(failure):
            raise Failure(f"{failure}; changing an existing budget is not available over "
                          "--server yet (no budget PATCH); use --store", failure.code) from None
        raise
    return from_wire(row)


def _flat(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        unit = Unit(r["unit"])
        lines.append([r["scope"], r["unit"], r["period"] or "-", r["status"],
                      amount(unit, r["allocated"]), amount(unit, r["spent"]),
                      amount(unit, r["reserved"]), amount(unit, r["debt"]),
                      amount(unit, r["remaining"])])
    return table(["scope", "unit", "period", "status", "allocated", "spent", "reserved",
                  "debt", "remaining"], lines)


@budgets.command("list", help="Every ledger of TENANT (or under --scope), one line each.")
@click.argument("tenant")
@click.option("--scope", default=None, help="Only this scope and below.")
@target_options
@handled
def list_budgets(tenant: str, scope: str | None, store: str | None, server: str | None,
                 key: str | None, as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        rows = ledgers(target, tenant, scope)
        if as_json:
            emit_json({"budgets": rows})
        else:
            click.echo(_flat(rows) if rows else "no budgets")

