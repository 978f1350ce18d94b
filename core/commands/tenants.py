"""`allotment tenants create|list|suspend|resume|close`: tenant records, the tenants a store
holds, suspension and closing.

Suspending a tenant freezes every open budget it has, in one step (`Guard.suspend_tenant`,
or `PATCH /v1/admin/tenants/{id}` over a server): each reservation is then refused
BUDGET_FROZEN, at once, on every process sharing the store. `resume` unfreezes them; budgets
closed one by one stay closed, and a tenant without an open budget cannot be suspended.
`close` is for good (`Guard.close_tenant`): it asks for `--yes`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from ..errors import NotFound
from ..scopes import tenant_name
from ._output import emit_json, table
from ._target import REFUSED, Failure, Target, handled, opened, target_options

_UNKNOWN = "1970-01-01T00:00:00Z"
"""The created_at the server answers for a tenant it has no record of."""


@click.group(help="Register, list, suspend, resume and close tenants.")
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


@tenants.command("list", help="Every tenant the store holds, with its name, plan and status "
                              "(ACTIVE, SUSPENDED or CLOSED), and when it was closed if it "
                              "was.")
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
                view = {"tenant_id": name, "name": info.name if info else None,
                        "plan": guard.plan_of(name), "status": guard.tenant_status(name).value}
                if info is not None and info.closed_at_ms is not None:
                    view["closed_at"] = _iso(info.closed_at_ms)
                views.append(view)
        else:
            assert target.server is not None
            for row in target.server.call("GET", "/v1/admin/tenants")["tenants"]:
                name = row["tenant_id"]
                plan = target.server.call("GET", f"/v1/admin/tenants/{name}/plan")
                # a tenant without a record is listed under its id, created at the epoch
                # (the server's stand-in for a time it does not know)
                recorded = row.get("created_at", _UNKNOWN) != _UNKNOWN
                view = {"tenant_id": name, "name": row["name"] if recorded else None,
                        "plan": plan.get("plan"), "status": row["status"]}
                if "closed_at" in row:
                    view["closed_at"] = row["closed_at"]
                views.append(view)
        if as_json:
            emit_json({"tenants": views})
        elif views:
            click.echo(table(["tenant", "name", "plan", "status", "closed"],
                             [[str(v["tenant_id"]), v["name"] or "-", v["plan"] or "-",
                               str(v["status"]), v.get("closed_at") or "-"] for v in views]))
        else:
            click.echo("no tenants")


def _set_frozen(target: Target, tenant: str, frozen: bool, reason: str | None) -> int | None:
    """Suspend (or resume) the tenant in one step: on a store `Guard.suspend_tenant` /
    `resume_tenant` (how many budgets changed), over a server `PATCH
    /v1/admin/tenants/{id}`, which makes that call there (None: it does not say how many)."""
    name = tenant_name(tenant, "TENANT")
    if target.guard is not None:
        call = target.guard.suspend_tenant if frozen else target.guard.resume_tenant
        try:
            return call(name, actor="allotment tenants", reason=reason)
        except NotFound as error:
            raise Failure(str(error), REFUSED) from None
    assert target.server is not None
    target.server.call("PATCH", f"/v1/admin/tenants/{name}",
                       body={"status": "SUSPENDED" if frozen else "ACTIVE"})
    return None


def _status_command(frozen: bool) -> Any:

    @click.option("--reason", default=None, help="Why (kept on the audit records).")
    @target_options
    @handled
    def command(tenant: str, reason: str | None, store: str | None, server: str | None,
                key: str | None, as_json: bool) -> None:
        with opened(store, server, key, as_json) as target:
            changed = _set_frozen(target, tenant, frozen, reason)
            name = tenant_name(tenant, "TENANT")
            if as_json:
                emit_json({"tenant_id": name, "suspended": frozen,
                           **({} if changed is None else {"changed": changed})})
            elif changed is None:
                click.echo(f"tenant {name}: {'suspended' if frozen else 'active again'}")
            else:
                state = "frozen" if frozen else "active again"
                click.echo(f"tenant {name}: {changed} budget(s) {state}")

    return click.argument("tenant")(command)


tenants.command("suspend", help="Freeze every open budget of TENANT: each reservation is "
                                "refused (BUDGET_FROZEN) until `tenants resume`.")(
    _status_command(True))
tenants.command("resume", help="Unfreeze every open budget of TENANT (closed ones stay "
                               "closed).")(_status_command(False))


@tenants.command("close", help="Close TENANT for good, in one step: its open reservations "
                               "released, budgets closed, API keys revoked, webhooks "
                               "disabled. It stays readable; nothing of it changes again.")
@click.argument("tenant")
@click.option("--reason", default=None, help="Why (kept on the audit record).")
@click.option("--yes", is_flag=True, help="Confirm: closing cannot be undone.")
@target_options
@handled
def close(tenant: str, reason: str | None, yes: bool, store: str | None, server: str | None,
          key: str | None, as_json: bool) -> None:
    name = tenant_name(tenant, "TENANT")
    if not yes:
        raise click.UsageError(f"closing {name} cannot be undone: add --yes to confirm")
    with opened(store, server, key, as_json) as target:
        if target.guard is not None:
            done = target.guard.close_tenant(name, actor="allotment tenants", reason=reason)
            assert done.info.closed_at_ms is not None
            view: dict[str, Any] = {
                "tenant_id": name, "status": "CLOSED", "closed_at": _iso(done.info.closed_at_ms),
                "released": done.released, "budgets_closed": done.budgets_closed,
                "keys_revoked": done.keys_revoked, "webhooks_disabled": done.webhooks_disabled}
        else:
            assert target.server is not None
            view = target.server.call("PATCH", f"/v1/admin/tenants/{name}",
                                      body={"status": "CLOSED"})
        if as_json:
            emit_json(view)
            return
        click.echo(f"tenant {name} closed at {view['closed_at']}")
        if "released" in view:
            click.echo(f"  {view['released']} reservation(s) released, "
                       f"{view['budgets_closed']} budget(s) closed, {view['keys_revoked']} "
                       f"key(s) revoked, {view['webhooks_disabled']} webhook(s) disabled")
