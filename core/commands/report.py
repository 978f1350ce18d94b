"""`allotment report TENANT`: the numbers that size a limit, for one day, week, month or
year: reservations and commits, how tight estimates are (committed ÷ reserved), denials by
reason (`observed:REASON` is what shadow mode would have denied), exhaustions."""

from __future__ import annotations

from typing import Any

import click

from ..amounts import Unit
from ..reports import ReportRow
from ..scopes import tenant_name
from ._output import amount, emit_json, table
from ._target import handled, opened, target_options


def row_json(row: ReportRow) -> dict[str, Any]:
    """A row for scripts: counts and amounts as integers, ratios as decimal strings."""
    ratios = {unit.value: str(row.committed_ratio(unit)) for unit in row.reserved
              if row.committed_ratio(unit) is not None}
    observed = sum(n for reason, n in row.denials.items() if reason.startswith("observed:"))
    return {"scope": row.scope, "period": row.period, "reservations": row.reservations,
            "commits": row.commits, "releases": row.releases, "expiries": row.expiries,
            "records": row.records, "denials": dict(row.denials),
            "would_deny": observed, "exhaustions": row.exhaustions,
            "reserved": {u.value: v for u, v in row.reserved.items()},
            "committed": {u.value: v for u, v in row.committed.items()},
            "committed_ratio": ratios}


def _denials(row: ReportRow, observed: bool) -> str:
    picked = {r: n for r, n in row.denials.items() if r.startswith("observed:") == observed}
    return ", ".join(f"{r.removeprefix('observed:')} {n}" for r, n in sorted(picked.items()))


def _text(rows: tuple[ReportRow, ...]) -> str:
    lines = []
    for row in rows:
        usd = Unit.USD_MICROCENTS
        ratio = row.committed_ratio(usd)
        lines.append([row.scope, str(row.reservations), str(row.commits),
                      amount(usd, row.committed.get(usd, 0)),
                      "-" if ratio is None else str(ratio), _denials(row, False) or "-",
                      _denials(row, True) or "-", str(row.exhaustions)])
    return table(["scope", "reservations", "commits", "committed", "ratio", "denials",
                  "would deny (shadow)", "exhaustions"], lines)


@click.command(help="Activity of TENANT in one period, one row per scope (or per value of a "
                    "dimension with --by): reservations, commits, committed $, committed ÷ "
                    "reserved, denials by reason, shadow mode's would-be denials, exhaustions.")
@click.argument("tenant")
@click.option("--period", default="month", show_default=True,
              type=click.Choice(["day", "week", "month", "year"]))
@click.option("--at", "at_ms", default=None, type=int,
              help="A moment in the period (epoch ms; default: now).")
@click.option("--by", default=None, help="Rows per value of a dimension (user, run, session), "
                                         "busiest first.")
@click.option("--top", default=None, type=click.IntRange(1, None),
              help="Only the busiest N rows.")
@target_options
@handled
def report(tenant: str, period: str, at_ms: int | None, by: str | None, top: int | None,
           store: str | None, server: str | None, key: str | None, as_json: bool) -> None:
    name = tenant_name(tenant, "TENANT")
    with opened(store, server, key, as_json) as target:
        guard = target.need_guard("report")
        rows = guard.report(name, period=period, at=at_ms, by=by, top=top)
        if as_json:
            emit_json({"tenant": name, "period": period, "by": by,
                       "rows": [row_json(r) for r in rows]})
        elif rows:
            click.echo(_text(rows))
        else:
            click.echo(f"no activity for tenant {name} this {period}")
