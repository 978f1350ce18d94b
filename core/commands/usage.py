"""`allotment usage export`: usage for invoicing, one row per tenant × scope × model × unit
of a month or day, as CSV or JSON Lines, streamed row by row as the store is read."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from ..usage import UsageRow, write_usage
from ._target import handled, opened, target_options


@click.group(help="Usage for invoicing.")
def usage() -> None:
    pass


@usage.command("export", help="One row per tenant, scope, model and unit of --period (a UTC "
                              "month 2026-11 or day 2026-11-28; default: this month): spend "
                              "(exact integers and a decimal amount), calls, denials, tokens. "
                              "CSV with a header line, or JSON Lines (--format json, or --json).")
@click.option("--period", default=None, metavar="YYYY-MM", help="The month (or day) to export.")
@click.option("--tenant", default=None, help="One tenant (default: every tenant, by name).")
@click.option("--format", "fmt", default="csv", show_default=True,
              type=click.Choice(["csv", "json"]), help="csv, or json (JSON Lines).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (default: stdout); progress goes to stderr.")
@target_options
@handled
def export(period: str | None, tenant: str | None, fmt: str, output: Path | None,
           store: str | None, server: str | None, key: str | None, as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        guard = target.need_guard("usage export")
        rows = guard.usage(period=period, tenant=tenant)
        form = "json" if as_json else fmt
        if output is None:
            write_usage(rows, sys.stdout, form)
            return
        with output.open("w", encoding="utf-8", newline="") as stream:
            written = write_usage(_progress(rows), stream, form)
        click.echo(f"{written} row(s) written to {output}", err=True)


def _progress(rows: Iterator[UsageRow]) -> Iterator[UsageRow]:
    """The rows as they come, naming each tenant on stderr as its rows start."""
    current = None
    for row in rows:
        if row.tenant != current:
            current = row.tenant
            click.echo(f"exporting {current} ...", err=True)
        yield row
