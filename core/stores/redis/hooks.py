"""The Redis flows of the webhook operations (outbox.lua does each tenant's part).

Global subscriptions live in `al:hooks` (outside every tenant's slot), with a version that
moves on each change; a change is wired into every known tenant (what its calls' appends
look up), and a tenant a process registers is wired once then, so a tenant first seen after
a global subscription gets its events too. A wiring older than the tenant's is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import asdict, replace
from typing import Any

from ...events import Notification
from .. import hooks as h
from ..operations import Op
from . import replies
from .keys import TENANTS_KEY, none_key, tenant_keys

GLOBAL_HOOKS = "al:hooks"
"""HASH webhook id -> global subscription JSON, and VERSION -> its version."""
SECURITY = "al:hooks:security"
"""STRING: the webhook security configuration as JSON (absent: the defaults apply)."""
VERSION = "~v"

Step = Any
Flow = Generator[Step, Any, Any]


def _encode(sub: h.Webhook) -> dict[str, Any]:
    return {"id": sub.id, "url": sub.url, "events": list(sub.events), "tenant": sub.tenant,
            "enabled": sub.enabled, "created": str(sub.created_at_ms), "secret": sub.secret,
            "format": sub.format}


def _webhook(raw: str | dict[str, Any], secret: bool = False) -> h.Webhook:
    d = json.loads(raw) if isinstance(raw, str) else raw
    return h.Webhook(d["id"], d["url"], tuple(d["events"]), d.get("tenant") or None,
                     bool(d["enabled"]), int(d["created"]), d.get("secret") if secret else None,
                     d.get("format") or h.STANDARD)  # none: kept before there was a choice


def _globals(reply: Any) -> tuple[int, list[h.Webhook]]:
    found = dict(reply or {})
    version = int(found.pop(VERSION, 0))
    return version, [_webhook(raw, secret=True) for raw in found.values()]


def _wiring(subs: list[h.Webhook]) -> list[dict[str, Any]]:
    return [{"id": s.id, "events": list(s.events), "enabled": s.enabled} for s in subs]


class HookFlows:
    """Builds the flow of each webhook operation; `call` runs one tenant's outbox.lua."""

    def __init__(self, flows: Any) -> None:
        self._flows = flows

    def _call(self, tenant: str, payload: dict[str, Any]) -> Flow:
        from .flow import Call

        payload["tenant"] = tenant
        keys = [*tenant_keys(tenant), none_key(tenant), none_key(tenant)]
        args = self._flows.wire.args(json.dumps(payload, separators=(",", ":")))
        reply = yield from self._flows._loading(Call(self._flows.names["outbox"], keys, args))
        body = json.loads(reply)
        if "error" in body:
            raise replies.error(body)
        return body

    def _read_globals(self) -> Flow:
        from .flow import Command

        reply = yield Command(("HGETALL", GLOBAL_HOOKS))
        return _globals(reply)

    def _tenants(self) -> Flow:
        from .flow import Command

        found: list[str] = []
        cursor = 0
        while True:
            cursor, page = yield Command(("SSCAN", TENANTS_KEY, cursor, "COUNT", 500))
            found.extend(map(replies.text, page))
            if not int(cursor):
                return sorted(set(found))

    def registered(self, tenant: str) -> Flow:
        """A tenant this process registers: wire the global subscriptions into it."""
        version, subs = yield from self._read_globals()
        if subs:
            yield from self._call(tenant, {"op": "wire", "globals": _wiring(subs),
                                           "version": version})

    def run(self, op: Op[Any]) -> Flow:
        """The flow of one webhook operation."""
        from .flow import Command

        if op.tenant == h.GLOBAL and isinstance(op, (h.SubscribeWebhook, h.UpdateWebhook,
                                                     h.RemoveWebhook)):
            return (yield from self._global_change(op))
        if isinstance(op, h.GetWebhookSecurity):
            raw = yield Command(("GET", SECURITY))
            return None if raw is None else _security(raw)
        if isinstance(op, h.SetWebhookSecurity):
            yield Command(("SET", SECURITY, json.dumps(asdict(op.security))))
            return op.security
        if op.tenant == h.GLOBAL and isinstance(op, h.GetWebhook):
            _, subs = yield from self._read_globals()
            return _one(subs, op.webhook_id)
        if isinstance(op, h.ListWebhooks) and op.tenant == h.GLOBAL:
            _, subs = yield from self._read_globals()
            return tuple(sorted((_strip(s) for s in subs), key=lambda s: s.created_at_ms))
        version, subs = yield from self._read_globals()
        wiring = {"globals": _wiring(subs), "version": version}
        if isinstance(op, h.SubscribeWebhook):
            made = h.Webhook(op.webhook_id, op.url, op.events, op.tenant, op.enabled,
                             (yield from self._flows.now()), op.secret, op.format)
            yield from self._call(op.tenant, {"op": "subscribe", "sub": _encode(made),
                                              "destination": h.destination(op.url),
                                              **_signed(op), **wiring})
            yield Command(("SADD", TENANTS_KEY, op.tenant))
            return made
        if isinstance(op, h.UpdateWebhook):
            body = yield from self._call(op.tenant, {
                "op": "update", "id": op.webhook_id, "set": h.changed_fields(op), **_signed(op),
                **({} if op.url is None else {"destination": h.destination(op.url)}),
                **wiring})
            return _webhook(body["webhook"])
        if isinstance(op, h.GetWebhook):
            body = yield from self._call(op.tenant, {"op": "get", "id": op.webhook_id})
            return _webhook(body["webhook"], secret=True)
        if isinstance(op, h.RemoveWebhook):
            body = yield from self._call(op.tenant, {"op": "remove", "id": op.webhook_id,
                                                     **_signed(op), **wiring})
            return bool(body["removed"])
        if isinstance(op, h.ListWebhooks):
            body = yield from self._call(op.tenant, {"op": "list"})
            return tuple(sorted((_webhook(raw) for raw in body["webhooks"]),
                                key=lambda s: s.created_at_ms))
        if isinstance(op, h.ClaimDeliveries):
            return (yield from self._claim(op, {s.id: s for s in subs}))
        if isinstance(op, h.FinishDelivery):
            yield from self._call(op.tenant, {
                "op": "finish", "eid": op.event_id, "sub": op.webhook_id,
                "delivered": op.delivered, "retry_in": op.retry_in_ms,
                "code": op.status_code, "error": op.error})
            return None
        if isinstance(op, h.Deliveries):
            return (yield from self._deliveries(op))
        if isinstance(op, h.ReplayEvent):
            body = yield from self._call(op.tenant, {
                "op": "replay", "eid": op.event_id, "sub": op.webhook_id,
                "global_exists": any(s.id == op.webhook_id for s in subs)})
            return int(body["queued"])
        raise TypeError(type(op).__name__)

    def _global_change(self, op: Any) -> Flow:
        from .flow import Command

        version, subs = yield from self._read_globals()
        result: Any
        if isinstance(op, h.SubscribeWebhook):
            result = h.Webhook(op.webhook_id, op.url, op.events, None, op.enabled,
                               (yield from self._flows.now()), op.secret, op.format)
            yield Command(("HSET", GLOBAL_HOOKS, op.webhook_id, json.dumps(_encode(result))))
        elif isinstance(op, h.UpdateWebhook):
            result = _webhook({**_encode(_one(subs, op.webhook_id)), **h.changed_fields(op)},
                              secret=True)
            yield Command(("HSET", GLOBAL_HOOKS, op.webhook_id, json.dumps(_encode(result))))
            result = _strip(result)
        else:
            result = bool((yield Command(("HDEL", GLOBAL_HOOKS, op.webhook_id))))
        version = int((yield Command(("HINCRBY", GLOBAL_HOOKS, VERSION, 1))))
        _, subs = yield from self._read_globals()
        wiring = {"op": "wire", "globals": _wiring(subs), "version": version}
        for tenant in (yield from self._tenants()):
            yield from self._call(tenant, dict(wiring))
        return result

    def _claim(self, op: h.ClaimDeliveries, subs: dict[str, h.Webhook]) -> Flow:
        claimed: list[h.Claimed] = []
        enabled = {i: s.enabled for i, s in subs.items()}
        for tenant in (yield from self._tenants()):
            if len(claimed) >= op.limit:
                break
            body = yield from self._call(tenant, {
                "op": "claim", "limit": op.limit - len(claimed), "lease": op.lease_ms,
                "retention": op.retention_ms, "prune": h.PRUNE_BATCH,
                "globals": enabled})
            for eid, sub_id, raw, attempts, sub, until in body["claimed"]:
                event = json.loads(raw)
                at = int(event["at"])
                note: Notification = replies.note(tenant, event["row"], None, at)
                webhook = _webhook(sub, secret=True) if sub else subs[sub_id]
                claimed.append(h.Claimed(h.WebhookEvent(eid, note.type, tenant, at, note),
                                         webhook, int(attempts), int(until)))
        return tuple(claimed)

    def _deliveries(self, op: h.Deliveries) -> Flow:
        tenants = (yield from self._tenants()) if op.tenant == h.GLOBAL else [op.tenant]
        rows = []
        for tenant in tenants:
            body = yield from self._call(tenant, {"op": "deliveries"})
            flat = body["log"]
            for i in range(0, len(flat), 2):
                eid, _, sub = flat[i].partition("|")
                if (op.event_id is not None and eid != op.event_id) or (
                        op.webhook_id is not None and sub != op.webhook_id):
                    continue
                d = json.loads(flat[i + 1])
                rows.append(h.WebhookDelivery(
                    eid, sub, d["type"], d["status"], int(d["attempts"]),
                    None if d.get("next") is None else int(d["next"]),
                    None if d.get("code") is None else int(d["code"]), d.get("error"),
                    int(d["updated"])))
        rows.sort(key=lambda r: (r.event_id, r.webhook_id))
        return tuple(rows[-op.limit:])


def _strip(sub: h.Webhook) -> h.Webhook:
    return replace(sub, secret=None)


def _security(raw: str | bytes) -> h.WebhookSecurity:
    d = json.loads(raw)
    return h.WebhookSecurity(tuple(d["blocked_cidr_ranges"]), tuple(d["allowed_url_patterns"]),
                             bool(d["allow_http"]))


def _signed(op: h.SubscribeWebhook | h.UpdateWebhook | h.RemoveWebhook) -> dict[str, str]:
    """Who made a change and why, as far as given (for the tenant's record)."""
    return {name: value for name in ("actor", "reason")
            if (value := getattr(op, name)) is not None}


def _one(subs: list[h.Webhook], webhook_id: str) -> h.Webhook:
    for sub in subs:
        if sub.id == webhook_id:
            return sub
    from ...errors import NotFound

    raise NotFound(f"no webhook {webhook_id}")
