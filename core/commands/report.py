"""`allotment report TENANT`: the numbers that size a limit, for one day, week, month or
year: reservations and commits, how tight estimates are (committed ÷ reserved), denials by
reason (`observed:REASON` is what shadow mode would have denied), exhaustions."""

from __future__ import annotations

import click

from ..amounts import Unit
from ..reports import ReportRow
from ..scopes import tenant_name
from ..server.records import report_from_json, report_json
from ._output import amount, emit_json, table
from ._target import Target, handled, opened, target_options


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
        rows = _rows(target, name, period, at_ms, by, top)
        if as_json:
            emit_json({"tenant": name, "period": period, "by": by,
                       "rows": [report_json(r) for r in rows]})
        elif rows:
            click.echo(_text(rows))
        else:
            click.echo(f"no activity for tenant {name} this {period}")


def _rows(target: Target, name: str, period: str, at_ms: int | None, by: str | None,
          top: int | None) -> tuple[ReportRow, ...]:
    """The report from the store, or from the server's report route."""
    if target.guard is not None:
        return target.guard.report(name, period=period, at=at_ms, by=by, top=top)
    assert target.server is not None
    params = {k: v for k, v in {"tenant": name, "period": period, "at": at_ms, "by": by,
                                "top": top}.items() if v is not None}
    answer = target.server.call("GET", "/v1/reports", params=params)
    return tuple(report_from_json(r) for r in answer["rows"])
