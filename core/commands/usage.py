"""`allotment usage export`: usage for invoicing, one row per tenant × scope × model × unit
of a month or day, as CSV or JSON Lines, streamed row by row as the store is read."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ..usage import UsageRow, read_usage, write_usage
from ._target import Target, handled, opened, target_options


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
    form = "json" if as_json else fmt
    with opened(store, server, key, as_json) as target, \
            _rows(target, period, tenant, form) as rows:
        if output is None:
            write_usage(rows, sys.stdout, form)
            return
        with output.open("w", encoding="utf-8", newline="") as stream:
            written = write_usage(_progress(rows), stream, form)
        click.echo(f"{written} row(s) written to {output}", err=True)


@contextmanager
def _rows(target: Target, period: str | None, tenant: str | None,
          form: str) -> Iterator[Iterator[UsageRow]]:
    """The rows from the store, or streamed from the server's usage route (read back line
    by line as they arrive, so the output is the same bytes either way). A refusal comes
    before anything is written."""
    if target.guard is not None:
        yield target.guard.usage(period=period, tenant=tenant)
        return
    assert target.server is not None
    params = {k: v for k, v in {"period": period, "tenant": tenant, "format": form}.items()
              if v is not None}
    with target.server.lines("/v1/usage", params) as lines:
        yield read_usage(lines, form)


def _progress(rows: Iterator[UsageRow]) -> Iterator[UsageRow]:
    """The rows as they come, naming each tenant on stderr as its rows start."""
    current = None
    for row in rows:
        if row.tenant != current:
            current = row.tenant
            click.echo(f"exporting {current} ...", err=True)
        yield row
