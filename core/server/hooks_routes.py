"""Webhook subscriptions over HTTP: subscribe, list, read, change (pause/resume, url, events,
secret rotation), test, remove, the delivery log and replay. The admin key manages the
global subscriptions (and any tenant's, named with `tenant_id`); a tenant key manages its
own tenant's only: `webhooks:read` to list and read the log, `webhooks:write` to change or
replay. The signing secret is in the answer that makes the subscription, and never again.
Where a destination may resolve is checked when sending (private and loopback addresses are
refused unless the dispatcher allows them)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..clock import system_ms
from ..guard import Guard
from ..scopes import tenant_name
from ..stores.hooks import owner_of
from ..tenant import TenantGuard
from . import wire
from .auth import ADMIN_ACTOR, admin_key, own_tenant, tenant_key
from .context import body, json_response
from .errors import ApiError, forbidden, not_found
from .queries import only, query_int
from .records import delivery_json, webhook_json
from .runtime import Settings
from .subscriptions import attempts, subscription, test_json

EventName = Annotated[str, Field(min_length=1, max_length=64)]
TESTS_PER_MINUTE = 10
"""Test sends a tenant key may ask for per minute (each is a request from this server to a
URL the tenant chose), counted per server process; the admin key's are not counted."""


class _Probes:
    """The tenants' test sends of the current minute, in this process."""

    def __init__(self) -> None:
        self._minute, self._counts = -1, Counter[str]()

    def take(self, tenant: str, now_ms: int) -> None:
        """Count one, or refuse it (429) when the tenant had its minute's share."""
        minute = now_ms // 60_000
        if minute != self._minute:
            self._minute, self._counts = minute, Counter()
        if self._counts[tenant] >= TESTS_PER_MINUTE:
            wait = str(60 - now_ms // 1000 % 60)
            raise ApiError(429, "LIMIT_EXCEEDED", f"at most {TESTS_PER_MINUTE} test sends a "
                           f"minute per tenant; try again in {wait} s",
                           headers={"Retry-After": wait})
        self._counts[tenant] += 1


class SubscribeBody(wire._Strict):
    url: str = Field(min_length=1, max_length=2_048)
    events: list[EventName] = Field(min_length=1, max_length=64)
    secret: str | None = Field(None, max_length=256)
    enabled: bool = True
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    """With the admin key: the tenant whose subscription this is (none: a global one)."""


class UpdateBody(wire._Strict):
    """What to change (at least one): paused or not, where to, which events, a new
    signing secret (not shown again)."""

    enabled: bool | None = None
    url: str | None = Field(None, min_length=1, max_length=2_048)
    events: list[EventName] | None = Field(None, min_length=1, max_length=64)
    secret: str | None = Field(None, max_length=256)


class ReplayBody(wire._Strict):
    event_id: str = Field(min_length=1, max_length=256)
    webhook_id: str | None = Field(None, min_length=1, max_length=256)


class Hooks:
    """The webhook routes over one guard."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._probes = _Probes()

    def routes(self) -> list[Route]:
        return [
            Route("/v1/webhooks", self.subscribe, methods=["POST"]),
            Route("/v1/webhooks", self.listed, methods=["GET"]),
            Route("/v1/webhooks/deliveries", self.deliveries, methods=["GET"]),
            Route("/v1/webhooks/replay", self.replay, methods=["POST"]),
            Route("/v1/webhooks/{webhook_id:path}/deliveries", self.tenant_attempts,
                  methods=["GET"]),
            Route("/v1/webhooks/{webhook_id:path}/test", self.test, methods=["POST"]),
            Route("/v1/webhooks/{webhook_id:path}", self.one, methods=["GET"]),
            Route("/v1/webhooks/{webhook_id:path}", self.change, methods=["PATCH"]),
            Route("/v1/webhooks/{webhook_id:path}", self.remove, methods=["DELETE"]),
        ]

    async def _caller(self, request: Request, permission: str) -> TenantGuard | None:
        """None for the admin key, else the handle of the tenant key (holding
        `permission`): who is asking is settled before the request is read further."""
        if admin_key(self.s.admin_key, request):
            request.state.actor = ADMIN_ACTOR
            return None
        caller = await tenant_key(self.s.guard, request, permission)
        request.state.actor = f"key:{caller.key_id}"  # on the record of what it changes
        return caller.tenant

    def _acting(self, caller: TenantGuard | None, named: str | None
                ) -> tuple[Guard | TenantGuard, str | None]:
        """The admin key's guard and the tenant it names (None: the global
        subscriptions), or a tenant key's own handle; a tenant key naming another tenant
        is 403 before anything is read."""
        if caller is None:
            return self.s.guard, None if named is None else tenant_name(named, "tenant_id")
        own_tenant(caller.name, named, "tenant_id")
        return caller, caller.name

    async def subscribe(self, request: Request) -> Response:
        caller = await self._caller(request, "webhooks:write")
        req = wire.parse(SubscribeBody, await body(request, self.s.max_body))
        handle, tenant = self._acting(caller, req.tenant_id)
        options: dict[str, Any] = {"events": req.events, "secret": req.secret,
                                   "enabled": req.enabled, "actor": request.state.actor}
        if isinstance(handle, TenantGuard):
            made = await handle.asubscribe_webhook(req.url, **options)
        else:
            made = await handle.asubscribe_webhook(req.url, tenant=tenant, **options)
        return json_response(request, webhook_json(made), 201)

    async def listed(self, request: Request) -> Response:
        """`?tenant_id=`: with the admin key, that tenant's subscriptions (none: the
        global ones); a tenant key lists its own. Secrets are never listed."""
        caller = await self._caller(request, "webhooks:read")
        only(request, "tenant_id")
        handle, tenant = self._acting(caller, request.query_params.get("tenant_id"))
        if isinstance(handle, TenantGuard):
            found = await handle.awebhooks()
        else:
            found = await handle.awebhooks(tenant)
        return json_response(request, {"webhooks": [webhook_json(h) for h in found]})

    async def _own(self, request: Request, permission: str
                   ) -> tuple[Guard | TenantGuard, str]:
        """The caller's handle and the path's subscription id, after the caller's right to
        it, before the body is read: any for the admin key, its own tenant's for a tenant
        key (another's is 403, existing or not)."""
        caller = await self._caller(request, permission)
        webhook_id = str(request.path_params["webhook_id"])
        if caller is None:
            return self.s.guard, webhook_id
        if owner_of(webhook_id, "webhook_id") != caller.name:
            raise forbidden("webhook_id is not a subscription of this API key's tenant")
        return caller, webhook_id

    async def one(self, request: Request) -> Response:
        """One subscription (its secret left out)."""
        _, webhook_id = await self._own(request, "webhooks:read")
        only(request)
        return json_response(request, webhook_json(await subscription(self.s.guard,
                                                                       webhook_id)))

    async def change(self, request: Request) -> Response:
        """Body with any of `enabled` (false pauses, true resumes), `url`, `events`
        (replacing them) and `secret` (a rotation): all of it changes, or nothing."""
        handle, webhook_id = await self._own(request, "webhooks:write")
        req = wire.parse(UpdateBody, await body(request, self.s.max_body))
        changed = await handle.aupdate_webhook(
            webhook_id, url=req.url, events=req.events, secret=req.secret,
            enabled=req.enabled, actor=request.state.actor)
        return json_response(request, webhook_json(changed))

    async def test(self, request: Request) -> Response:
        """Send a test event to the subscription now (`webhooks:write`), as
        `POST /v1/admin/webhooks/{id}/test` does; a tenant key at most `TESTS_PER_MINUTE`
        times a minute."""
        handle, webhook_id = await self._own(request, "webhooks:write")
        only(request)
        if isinstance(handle, TenantGuard):
            self._probes.take(handle.name, system_ms())
        return json_response(request, test_json(await self.s.dispatcher.atest(webhook_id)))

    async def remove(self, request: Request) -> Response:
        handle, webhook_id = await self._own(request, "webhooks:write")
        if not await handle.aremove_webhook(webhook_id, actor=request.state.actor):
            raise not_found(f"no webhook {webhook_id}")
        return json_response(request, {"webhook_id": webhook_id, "removed": True})

    async def deliveries(self, request: Request) -> Response:
        """`?event_id=&webhook_id=&tenant_id=&limit=`: the log, oldest event first; a
        tenant key sees only its own subscriptions' deliveries."""
        caller = await self._caller(request, "webhooks:read")
        only(request, "event_id", "webhook_id", "tenant_id", "limit")
        query = request.query_params
        handle, tenant = self._acting(caller, query.get("tenant_id"))
        limit = query_int(request, "limit")
        options: dict[str, Any] = {"event_id": query.get("event_id"),
                                   "webhook_id": query.get("webhook_id"),
                                   "limit": 100 if limit is None else limit}
        if isinstance(handle, TenantGuard):
            rows = await handle.awebhook_deliveries(**options)
        else:
            rows = await handle.awebhook_deliveries(tenant=tenant, **options)
        return json_response(request, {"deliveries": [delivery_json(r) for r in rows]})

    async def tenant_attempts(self, request: Request) -> Response:
        """The governance spec's delivery list of one of the key's own subscriptions
        (`webhooks:read`); another tenant's is 403, whether it exists or not."""
        caller = await tenant_key(self.s.guard, request, "webhooks:read")
        return await attempts(request, caller.tenant, request.path_params["webhook_id"],
                              await caller.tenant.awebhooks())

    async def replay(self, request: Request) -> Response:
        """Body `{"event_id", "webhook_id"}`: send the event again now (a tenant key names
        one of its own subscriptions; the admin key may leave it out: every one it went
        to). Answers how many deliveries were queued."""
        handle, _ = self._acting(await self._caller(request, "webhooks:write"), None)
        req = wire.parse(ReplayBody, await body(request, self.s.max_body))
        queued = await handle.areplay_webhook_event(req.event_id, req.webhook_id)
        return json_response(request, {"event_id": req.event_id, "queued": queued})
