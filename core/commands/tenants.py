"""`allotment tenants create|list|suspend|resume`: tenant records, the tenants a store
holds, and suspension.

The guard has no tenant status yet, so suspending a tenant freezes every budget it has
(each reservation is then refused BUDGET_FROZEN, at once, on every process sharing the
store) and `resume` unfreezes them; a tenant without budgets cannot be suspended this way.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from ..amounts import Unit
from ..scopes import parse_scope, tenant_name
from ._output import emit_json, table
from ._target import REFUSED, Failure, Target, handled, opened, target_options
from .balances import ledgers


@click.group(help="Register, list, suspend and resume tenants.")
def tenants() -> None:
    pass


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


@tenants.command("create", help="Register TENANT with a display name (nothing changes if it "
                                "exists under that name; another name is refused).")
@click.argument("tenant")
@click.option("--name", required=True, help="The display name, e.g. \"Acme Corp\".")
@target_options
@handled
def create(tenant: str, name: str, store: str | None, server: str | None, key: str | None,
           as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        if target.guard is not None:
            info, made = target.guard.register_tenant(tenant, name)
            if not made and info.name != name:
                raise Failure(f"tenant {info.tenant} exists with another name "
                              f"({info.name!r})", REFUSED)
            view = {"tenant_id": info.tenant, "name": info.name,
                    "created_at": _iso(info.created_at_ms), "created": made}
        else:
            assert target.server is not None
            view = target.server.call("POST", "/v1/admin/tenants", body={
                "tenant_id": tenant_name(tenant, "TENANT"), "name": name})
        if as_json:
            emit_json(view)
        else:
            click.echo(f"tenant {view['tenant_id']} ({view['name']}), registered "
                       f"{view['created_at']}")


@tenants.command("list", help="Every tenant the store holds, with its name and plan.")
@target_options
@handled
def list_tenants(store: str | None, server: str | None, key: str | None,
                 as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        views: list[dict[str, str | None]] = []
        if target.guard is not None:
            guard = target.guard
            for name in guard.tenants():
                info = guard.tenant_info(name)
                views.append({"tenant_id": name, "name": info.name if info else None,
                              "plan": guard.plan_of(name)})
        else:
            assert target.server is not None
            for row in target.server.call("GET", "/v1/admin/tenants")["tenants"]:
                name = row["tenant_id"]
                plan = target.server.call("GET", f"/v1/admin/tenants/{name}/plan")
                # a tenant without a record is listed under its id, without created_at
                views.append({"tenant_id": name,
                              "name": row["name"] if "created_at" in row else None,
                              "plan": plan.get("plan")})
        if as_json:
            emit_json({"tenants": views})
        elif views:
            click.echo(table(["tenant", "name", "plan"],
                             [[str(v["tenant_id"]), v["name"] or "-", v["plan"] or "-"]
                              for v in views]))
        else:
            click.echo("no tenants")


def _budgets(target: Target, tenant: str) -> list[tuple[str, Unit]]:
    """Each budget definition of the tenant as (standard scope, unit), once."""
    seen: dict[tuple[str, str], None] = {}
    for row in ledgers(target, tenant):
        seen[(parse_scope(row["scope"]).base, row["unit"])] = None
    if not seen:
        raise Failure(f"tenant {tenant_name(tenant, 'TENANT')} has no budgets to freeze "
                      "(suspending freezes its budgets: give it a plan or a budget first)",
                      REFUSED)
    return [(scope, Unit(unit)) for scope, unit in seen]


def _set_frozen(target: Target, tenant: str, frozen: bool, reason: str | None) -> list[str]:
    done = []
    for scope, unit in _budgets(target, tenant):
        if target.guard is not None:
            call = target.guard.freeze if frozen else target.guard.unfreeze
            call(scope, unit, actor="allotment tenants", reason=reason)
        else:
            assert target.server is not None
            target.server.call("POST", "/v1/admin/budgets/" + (
                "freeze" if frozen else "unfreeze"), params={
                "tenant_id": tenant_name(tenant, "TENANT"), "scope": scope,
                "unit": unit.value})
        done.append(f"{scope} {unit.value}")
    return done


def _status_command(frozen: bool) -> Any:

    @click.option("--reason", default=None, help="Why (kept on the audit records).")
    @target_options
    @handled
    def command(tenant: str, reason: str | None, store: str | None, server: str | None,
                key: str | None, as_json: bool) -> None:
        with opened(store, server, key, as_json) as target:
            done = _set_frozen(target, tenant, frozen, reason)
            name = tenant_name(tenant, "TENANT")
            if as_json:
                emit_json({"tenant_id": name, "suspended": frozen, "budgets": done})
            else:
                state = "frozen" if frozen else "active again"
                click.echo(f"tenant {name}: {len(done)} budget(s) {state}")
                for line in done:
                    click.echo(f"  {line}")

    return click.argument("tenant")(command)


tenants.command("suspend", help="Freeze every budget of TENANT: each reservation is refused "
                                "(BUDGET_FROZEN) until `tenants resume`.")(
    _status_command(True))
tenants.command("resume", help="Unfreeze every budget of TENANT.")(_status_command(False))
