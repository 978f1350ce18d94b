"""`allotment keys create|list|revoke`: API keys bound to one tenant. A new key's secret is
printed once; the store keeps only its hash."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from ..keys import PERMISSIONS, RUNTIME
from ..models import ApiKey
from ..scopes import tenant_name
from ._output import emit_json, table
from ._target import USAGE, Failure, handled, opened, target_options


@click.group(help="Create, list and revoke API keys (each bound to one tenant).")
def keys() -> None:
    pass


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def _view(key: ApiKey) -> dict[str, Any]:
    """The server's key shape, so --json reads the same on a store and on a server."""
    view: dict[str, Any] = {"key_id": key.key_id, "tenant_id": key.tenant, "name": key.name,
                            "permissions": list(key.permissions),
                            "created_at": _iso(key.created_at_ms),
                            "status": "REVOKED" if key.revoked else "ACTIVE"}
    if key.expires_at_ms is not None:
        view["expires_at"] = _iso(key.expires_at_ms)
    return view


def _expires(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Failure(f"--expires {text!r}: give an ISO-8601 time, e.g. "
                      "2027-01-01T00:00:00Z", USAGE) from None
    if moment.tzinfo is None:
        raise Failure("--expires: give a time zone (e.g. 2027-01-01T00:00:00Z)", USAGE)
    return int(moment.timestamp() * 1000)


@keys.command("create", help="A new key for TENANT; its secret is printed this once.")
@click.argument("tenant")
@click.option("--name", default="default", show_default=True, help="A label for the key.")
@click.option("--permission", "permissions", multiple=True, metavar="NAME",
              help="A Cycles permission (repeat the option); default: the runtime plane ("
                   + ", ".join(RUNTIME) + "). One of: " + ", ".join(sorted(PERMISSIONS)))
@click.option("--expires", default=None, help="ISO-8601 expiry (default: none).")
@target_options
@handled
def create(tenant: str, name: str, permissions: tuple[str, ...], expires: str | None,
           store: str | None, server: str | None, key: str | None, as_json: bool) -> None:
    granted = list(permissions) or list(RUNTIME)
    until = _expires(expires)
    with opened(store, server, key, as_json) as target:
        if target.guard is not None:
            made = target.guard.create_key(tenant, permissions=granted, expires=until,
                                           name=name)
            view = {**_view(made.key), "key_secret": made.secret}
        else:
            assert target.server is not None
            body: dict[str, Any] = {"tenant_id": tenant_name(tenant, "TENANT"),
                                    "name": name, "permissions": granted}
            if expires is not None:
                body["expires_at"] = expires
            view = target.server.call("POST", "/v1/admin/api-keys", body=body)
        if as_json:
            emit_json(view)
        else:
            click.echo(f"key {view['key_id']} for tenant {view['tenant_id']} "
                       f"({', '.join(view['permissions'])})")
            click.echo(f"secret (shown once, keep it now): {view['key_secret']}")


@keys.command("list", help="Every key of TENANT, revoked and expired ones included.")
@click.argument("tenant")
@target_options
@handled
def list_keys(tenant: str, store: str | None, server: str | None, key: str | None,
              as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        if target.guard is not None:
            views = [_view(k) for k in target.guard.keys(tenant)]
        else:
            assert target.server is not None
            views = target.server.call("GET", "/v1/admin/api-keys", params={
                "tenant_id": tenant_name(tenant, "TENANT")})["keys"]
        if as_json:
            emit_json({"keys": views})
        elif views:
            click.echo(table(["key_id", "name", "status", "created", "expires", "permissions"],
                             [[v["key_id"], v["name"], v["status"], v["created_at"],
                               v.get("expires_at") or "-", ",".join(v["permissions"])]
                              for v in views]))
        else:
            click.echo(f"no keys for tenant {tenant_name(tenant, 'TENANT')}")


@keys.command("revoke", help="Revoke KEY_ID for good: it never authenticates again.")
@click.argument("key_id")
@target_options
@handled
def revoke(key_id: str, store: str | None, server: str | None, key: str | None,
           as_json: bool) -> None:
    with opened(store, server, key, as_json) as target:
        if target.guard is not None:
            view = _view(target.guard.revoke_key(key_id))
        else:
            assert target.server is not None
            view = target.server.call("DELETE", f"/v1/admin/api-keys/{key_id}")
        if as_json:
            emit_json(view)
        else:
            click.echo(f"revoked {view['key_id']} ({view['name']}) of tenant "
                       f"{view['tenant_id']}")
