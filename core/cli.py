"""The `allotment` command: `allotment serve` runs the HTTP server; the operators' commands
(`allotment.commands`) are registered here. Needs the `server` extra (click, uvicorn,
starlette, orjson, httpx)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("allotment.server")
STORE_ENV, ADMIN_ENV = "ALLOTMENT_STORE", "ALLOTMENT_ADMIN_KEY"
PLANS_ENV, WORKERS_ENV = "ALLOTMENT_PLANS", "ALLOTMENT_WORKERS"
ALLOW_ENV = "ALLOTMENT_WEBHOOK_ALLOW"
"""Networks (comma-separated) webhook destinations may resolve into besides public
addresses, e.g. "10.1.2.0/24" for an internal receiver."""
GRACEFUL_S = 30
"""On SIGTERM/SIGINT uvicorn stops accepting and lets in-flight requests finish for up to
this long."""


def main() -> None:
    """Entry point of the console script."""
    try:
        import click  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        sys.exit("allotment: the command needs the server extra: "
                 "pip install 'allotment[server]'")
    _cli()(prog_name="allotment")


def app_from_env() -> Any:
    """The app of one worker, built from the environment `serve` set (uvicorn calls this
    in each worker process)."""
    from .guard import Guard
    from .plans import Plan
    from .server import create_app
    from .server.sending import Sender
    from .webhooks import Dispatcher

    plans_file = os.environ.get(PLANS_ENV)
    plans = Plan.load_all(plans_file) if plans_file else None
    guard = Guard.from_url(os.environ.get(STORE_ENV, "memory://"))
    guard.start_sweeper()
    allow = [n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()]
    # one worker at a time sends what the outbox holds (see server/sending.py); what a
    # stopped server left there is sent once another runs
    dispatcher = Dispatcher(guard, allow=allow)
    Sender(guard, dispatcher).start()
    # each worker holds its own catalog: with several, plans come from the file only
    app = create_app(guard, admin_key=os.environ.get(ADMIN_ENV) or None, plans=plans,
                     define_plans=os.environ.get(WORKERS_ENV, "1") == "1",
                     dispatcher=dispatcher)
    return app


def command() -> Any:
    """The `allotment` click group itself (to embed it, or to run it with click's test
    runner: `CliRunner().invoke(command(), args, obj={"guard": guard})` runs the operator
    commands on that guard)."""
    return _cli()


def _cli() -> Any:
    import click

    @click.group(help="Per-tenant budgets, quotas and isolation for AI platforms.\n\n"
                      "Every operator command works on a store (--store URL, or "
                      "$ALLOTMENT_STORE) or on a running server (--server URL --key KEY). "
                      "Exit codes: 0 done; 1 refused or not found; 2 bad input (nothing "
                      "changed); 3 the store or server could not be reached.")
    def cli() -> None:
        pass

    @cli.command(help="Serve the Cycles protocol over HTTP (memory:// by default) and send "
                      "the store's webhooks.")
    @click.option("--store", envvar=STORE_ENV, default="memory://", show_default=True,
                  help=f"Store URL (memory://, redis://...); also ${STORE_ENV}.")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=7878, show_default=True, type=int)
    @click.option("--workers", default=1, show_default=True,
                  type=click.IntRange(1, 256), help="Worker processes (a shared store only).")
    @click.option("--plans", "plans_file", envvar=PLANS_ENV, default=None, metavar="FILE",
                  help="Tiers (YAML or TOML, a top-level `plans:` mapping) that "
                       f"PUT /v1/admin/tenants/{{id}}/plan assigns by name; also ${PLANS_ENV}.")
    @click.option("--webhook-allow", "webhook_allow", multiple=True, metavar="NETWORK",
                  help="A network webhook destinations may resolve into besides public "
                       f"addresses (repeat; e.g. 10.1.2.0/24); also ${ALLOW_ENV}.")
    def serve(store: str, host: str, port: int, workers: int, plans_file: str | None,
              webhook_allow: tuple[str, ...]) -> None:
        import uvicorn

        from .errors import InvalidRequest
        from .plans import Plan
        from .webhooks import allowed_networks

        networks = webhook_allow or tuple(
            n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip())
        try:
            allowed_networks(networks)
        except InvalidRequest as error:  # refused before any worker starts
            raise click.BadParameter(str(error), param_hint="--webhook-allow") from None
        os.environ[ALLOW_ENV] = ",".join(networks)

        if store.startswith("memory://"):
            if workers > 1:
                raise click.UsageError("--workers > 1 needs a shared store (redis://...): "
                                       "each worker would hold budgets of its own in memory")
            click.echo("allotment: memory:// store: all state (budgets, keys, reservations) "
                       "is lost when the server exits; use --store redis://... to keep it",
                       err=True)
        if not os.environ.get(ADMIN_ENV):
            click.echo(f"allotment: {ADMIN_ENV} is not set: no admin key, so no key or "
                       "budget can be created over HTTP", err=True)
        if plans_file:
            try:
                Plan.load_all(plans_file)  # checked once here, before any worker starts
            except InvalidRequest as error:
                raise click.UsageError(f"--plans: {error}") from None
            os.environ[PLANS_ENV] = os.path.abspath(plans_file)
        os.environ[STORE_ENV] = store
        os.environ[WORKERS_ENV] = str(workers)
        uvicorn.run("allotment.cli:app_from_env", factory=True, host=host, port=port,
                    workers=workers, timeout_graceful_shutdown=GRACEFUL_S,
                    log_level="info", access_log=False)

    from .commands import register

    register(cli)
    return cli


if __name__ == "__main__":
    main()
