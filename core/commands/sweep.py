"""`allotment sweep`: expire overdue reservations now, across every tenant, in batches,
printing progress (the background sweeper of `allotment serve` does this continuously); on
a server, each batch is one `POST /v1/admin/sweep` (the admin key)."""

from __future__ import annotations

import click

from ._output import emit_json
from ._target import handled, opened, target_options


@click.command(help="Expire every overdue reservation now, across tenants, in batches of "
                    "--batch, printing the count after each batch.")
@click.option("--batch", default=1_000, show_default=True, type=click.IntRange(1, 100_000),
              help="Reservations per batch.")
@click.option("--max-batches", default=1_000, show_default=True, type=click.IntRange(1, None),
              help="Stop after this many batches even if more are overdue.")
@target_options
@handled
def sweep(batch: int, max_batches: int, store: str | None, server: str | None,
          key: str | None, as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        total, rounds = 0, 0
        while rounds < max_batches:
            if target.guard is not None:
                expired = target.guard.sweep(limit=batch)
            else:
                assert target.server is not None
                expired = int(target.server.call("POST", "/v1/admin/sweep",
                                                 body={"limit": batch})["expired"])
            total, rounds = total + expired, rounds + 1
            if not as_json and expired:
                click.echo(f"batch {rounds}: {expired} expired ({total} in all)", err=True)
            if expired < batch:
                break
        if as_json:
            emit_json({"expired": total, "batches": rounds})
        else:
            click.echo(f"{total} overdue reservation(s) expired")
