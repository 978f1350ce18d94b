"""The Cycles governance spec's admin webhook routes over allotment's subscriptions: make,
list, read, change (pause, resume, url, event types, secret rotation), test and remove
(`/v1/admin/webhooks...`), one subscription's deliveries (admin and tenant), and where
webhooks may go (`/v1/admin/config/webhook-security`), in the spec's shapes.

A subscription made here delivers as the Cycles dispatcher does (`hooks.CYCLES`: the spec's
Event, `X-Cycles-Signature`); those made under `/v1/webhooks` keep allotment's Standard
Webhooks format, and both are listed here alike; replay sends a window of the events that
went to a subscription again (bulk actions are in `bulk`). What the spec shows
of a subscription beyond its record (consecutive failures, the last success, failure and
attempt) is read from its delivery log."""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..events import CYCLES_EVENT_TYPES
from ..guard import Guard
from ..scopes import tenant_name
from ..stores.hooks import (
    CYCLES,
    CYCLES_TYPES,
    FAILED,
    SYSTEM,
    Webhook,
    WebhookDelivery,
    WebhookSecurity,
    event_time,
    owner_of,
)
from ..tenant import TenantGuard
from ..webhook_security import DEFAULT_BLOCKED
from ..webhooks import WebhookTest
from . import paging, wire
from .admin import require_admin, search_text
from .auth import ADMIN_ACTOR
from .context import body, empty_response, json_response
from .errors import bad_request, not_found
from .queries import only, since_ms
from .records import ATTEMPT_STATUSES, attempt_json, attempt_status, iso_ms
from .runtime import Settings

SENT_TYPES = sorted(CYCLES_TYPES)
"""The spec's event types allotment sends."""
Log = dict[str, list[WebhookDelivery]]
"""Deliveries by subscription id, newest first."""


async def delivery_logs(guard: Guard, tenants: Iterable[str]) -> Log:
    """Each subscription's deliveries (a global one's across the tenants it served), newest
    first; each tenant's delivery log is read once."""
    found: defaultdict[str, list[WebhookDelivery]] = defaultdict(list)
    for tenant in tenants:
        for row in await guard.awebhook_deliveries(tenant=tenant, limit=100_000):
            found[row.webhook_id].append(row)
    for rows in found.values():
        rows.sort(key=lambda row: row.updated_at_ms, reverse=True)
    return found


def failures(newest_first: list[WebhookDelivery]) -> int:
    """How many of a subscription's newest deliveries in a row were given up."""
    streak = 0
    for row in newest_first:
        if row.status != FAILED:
            break
        streak += 1
    return streak


def subscription_json(hook: Webhook, newest_first: list[WebhookDelivery]) -> dict[str, Any]:
    """A subscription in the spec's WebhookSubscription shape: paused (`enabled` false) is
    PAUSED; `event_types` the spec's types among those it receives; the times from its
    delivery log."""
    kinds = sorted(set(hook.events) & CYCLES_EVENT_TYPES)
    view: dict[str, Any] = {
        "subscription_id": hook.id, "tenant_id": hook.tenant or SYSTEM, "url": hook.url,
        "event_types": kinds, "status": "ACTIVE" if hook.enabled else "PAUSED",
        "created_at": iso_ms(hook.created_at_ms),
        "consecutive_failures": failures(newest_first)}
    for field, kept in (("last_triggered_at", lambda row: row.attempts > 0),
                        ("last_success_at", lambda row: attempt_status(row) == "SUCCESS"),
                        ("last_failure_at", lambda row: attempt_status(row) in (
                            "FAILED", "RETRYING"))):
        moment = next((row.updated_at_ms for row in newest_first if kept(row)), None)
        if moment is not None:
            view[field] = iso_ms(moment)
    return view


async def subscription(guard: Guard, webhook_id: str) -> Webhook:
    """One subscription (any tenant's, or a global one), without its secret; 404 if none."""
    for hook in await guard.awebhooks(owner_of(webhook_id, "webhook_id") or None):
        if hook.id == webhook_id:
            return hook
    raise not_found(f"no webhook {webhook_id}")


async def attempts(request: Request, handle: Guard | TenantGuard, webhook_id: str,
                   hooks: tuple[Webhook, ...]) -> Response:
    """One subscription's deliveries, `?status=&from=&to=&cursor=&limit=` (1-100, 50),
    newest first, in the spec's WebhookDelivery shape (see `records.attempt_json`). `hooks`
    are the caller's subscriptions of its owner; a tenant handle refuses another tenant's
    subscription (403) before its list is looked at."""
    only(request, "status", "from", "to", "cursor", "limit")
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in ATTEMPT_STATUSES:
        raise bad_request(f"status: {status!r} is not one of " + ", ".join(ATTEMPT_STATUSES))
    start, end = (since_ms(query.get(name), name) for name in ("from", "to"))
    size, after = paging.window(query, 100)
    if after is not None and after[:2] != ["deliveries", webhook_id]:
        raise bad_request("cursor: it was given for another list; start again without one")
    logged = await handle.awebhook_deliveries(webhook_id=webhook_id, limit=100_000)
    if all(hook.id != webhook_id for hook in hooks):
        raise not_found(f"no webhook {webhook_id}")
    rows = [row for row in logged if (status is None or attempt_status(row) == status)
            and (start is None or row.updated_at_ms >= start)
            and (end is None or row.updated_at_ms <= end)]
    page, more = paging.paged(
        rows, lambda row: ["deliveries", webhook_id, f"{row.updated_at_ms:015d}",
                           row.event_id], (size, after), descending=True)
    return json_response(request, {"deliveries": [attempt_json(row) for row in page], **more})


async def matching(guard: Guard, named: str | None, status: str | None, kind: str | None,
                   search: str | None) -> list[dict[str, Any]]:
    """The subscriptions a list (or a bulk action) filter selects, as the spec shows them:
    of tenant `named` (`__system__`: the global ones; None: all), in `status`, receiving
    `kind`, with `search` (lower case) in the id or url."""
    if status is not None and status not in ("ACTIVE", "PAUSED", "DISABLED"):
        raise bad_request(f"status: {status!r} is not one of ACTIVE, PAUSED, DISABLED")
    if kind is not None and kind not in CYCLES_EVENT_TYPES:
        raise bad_request(f"event_type: {kind!r} is not a Cycles event type (e.g. "
                          "budget.exhausted)")
    if named is not None and named != SYSTEM:  # one tenant's own
        owners = served = [tenant_name(named, "tenant_id")]
    else:  # the global ones (and every tenant's), whose deliveries span the tenants
        served = list(await guard.atenants())
        owners = [""] if named == SYSTEM else ["", *served]
    hooks = [hook for owner in owners for hook in await guard.awebhooks(owner or None)]
    logs = await delivery_logs(guard, served)
    return [view for view in (subscription_json(hook, logs[hook.id]) for hook in hooks)
            if (status is None or view["status"] == status)
            and (kind is None or kind in view["event_types"])
            and (search is None or search in f"{view['subscription_id']} "
                                             f"{view['url']}".lower())]


class CreateBody(wire._Strict):
    """The part of the spec's WebhookCreateRequest kept here; name, description, headers,
    thresholds, retry policy, scope filter and metadata are not (400 names the field)."""

    url: str = Field(min_length=1, max_length=2_048)
    event_types: list[str] = Field(min_length=1, max_length=64)
    event_categories: list[str] = Field(default_factory=list, max_length=16)
    signing_secret: str | None = Field(None, max_length=256)


class UpdateBody(wire._Strict):
    """The part of the spec's WebhookUpdateRequest kept here (the rest is refused, as on
    create): pause or resume, a new url, new event selectors (replacing the types it
    receives), a new signing secret."""

    status: Literal["ACTIVE", "PAUSED"] | None = None
    url: str | None = Field(None, min_length=1, max_length=2_048)
    event_types: list[str] | None = Field(None, max_length=64)
    event_categories: list[str] | None = Field(None, max_length=16)
    signing_secret: str | None = Field(None, max_length=256)


def selected(event_types: list[str], event_categories: list[str]) -> list[str]:
    """The types a subscription's selectors name, each one this server sends (else 400)."""
    for kind in event_types:
        if kind not in CYCLES_TYPES:
            raise bad_request(f"event_types: {kind!r} is not one this server sends; it "
                              "sends " + ", ".join(SENT_TYPES))
    for category in event_categories:
        if not any(kind.startswith(category + ".") for kind in CYCLES_TYPES):
            raise bad_request(f"event_categories: {category!r}: this server sends no "
                              "event of it; it sends budget, reservation and tenant ones")
    return sorted({*event_types, *(kind for kind in CYCLES_TYPES
                                   if kind.partition(".")[0] in event_categories)})


class SecurityBody(wire._Strict):
    """The spec's WebhookSecurityConfig; a part left out takes allotment's default (see
    `webhook_security.DEFAULT`)."""

    blocked_cidr_ranges: list[str] = Field(default_factory=lambda: list(DEFAULT_BLOCKED),
                                           max_length=256)
    allowed_url_patterns: list[str] = Field(default_factory=list, max_length=100)
    allow_http: bool = True


def security_json(security: WebhookSecurity) -> dict[str, Any]:
    return {"blocked_cidr_ranges": list(security.blocked_cidr_ranges),
            "allowed_url_patterns": list(security.allowed_url_patterns),
            "allow_http": security.allow_http}


def test_json(sent: WebhookTest) -> dict[str, Any]:
    """A test send in the spec's WebhookTestResponse shape."""
    view: dict[str, Any] = {"success": sent.delivered, "response_time_ms": sent.elapsed_ms,
                            "event_id": sent.event_id}
    if sent.status is not None:
        view["response_status"] = sent.status
    if sent.error is not None:
        view["error_message"] = sent.error
    return view


class ReplayBody(wire._Strict):
    """The spec's replay request: a window of event times (both ends included), types, and
    the most events it may select (1-1000, 100)."""

    from_: str | None = Field(None, alias="from", max_length=64)
    to: str | None = Field(None, max_length=64)
    event_types: list[str] = Field(default_factory=list, max_length=64)
    max_events: int = Field(100, ge=1, le=1_000)


_SORTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "consecutive_failures": lambda view: f"{view['consecutive_failures']:09d}",
    "url": lambda view: str(view["url"]), "tenant_id": lambda view: str(view["tenant_id"]),
    "status": lambda view: str(view["status"])}
_LIST_QUERY = ("tenant_id", "status", "event_type", "search", "sort_by", "sort_dir", "cursor",
               "limit")


class Subscriptions:
    """The spec's admin webhook routes over one guard (the admin key's only)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def routes(self) -> list[Route]:
        one = "/v1/admin/webhooks/{webhook_id:path}"
        return [  # the deliveries first: an id may hold a `/`, and `path` takes the rest
            Route("/v1/admin/webhooks", self.listed, methods=["GET"]),
            Route("/v1/admin/webhooks", self.made, methods=["POST"]),
            Route(one + "/deliveries", self.deliveries, methods=["GET"]),
            Route(one + "/replay", self.replayed, methods=["POST"]),
            Route(one + "/test", self.tested, methods=["POST"]),
            Route(one, self.one, methods=["GET"]),
            Route(one, self.changed, methods=["PATCH"]),
            Route(one, self.removed, methods=["DELETE"]),
            Route("/v1/admin/config/webhook-security", self.security, methods=["GET"]),
            Route("/v1/admin/config/webhook-security", self.secured, methods=["PUT"]),
        ]

    async def _hooks(self, owner: str) -> tuple[Webhook, ...]:
        return await self.s.guard.awebhooks(owner or None)

    async def _viewed(self, hook: Webhook) -> dict[str, Any]:
        tenants = [hook.tenant] if hook.tenant else list(await self.s.guard.atenants())
        return subscription_json(hook, (await delivery_logs(self.s.guard, tenants))[hook.id])

    async def _found(self, request: Request) -> Webhook:
        return await subscription(self.s.guard, request.path_params["webhook_id"])

    async def listed(self, request: Request) -> Response:
        """`?tenant_id=` (`__system__`: the global ones) `&status=&event_type=&search=`
        (in the id or url) `&sort_by=&sort_dir=&cursor=&limit=` (1-200, 50): most
        consecutive failures first unless sorted otherwise."""
        require_admin(self.s, request)
        only(request, *_LIST_QUERY)
        query = request.query_params
        named, status, kind = (query.get(name) or None
                               for name in ("tenant_id", "status", "event_type"))
        # up to 200 a page: the dashboard's overview asks that
        head, size, after = paging.sorting(query, "webhooks", _SORTS, "consecutive_failures")
        field = _SORTS[head[1]]
        views = await matching(self.s.guard, named, status, kind, search_text(query))
        page, more = paging.paged(
            views, lambda view: [*head, field(view), str(view["subscription_id"])],
            (size, after), descending=head[2] == "desc")
        return json_response(request, {"subscriptions": page, **more})

    async def made(self, request: Request) -> Response:
        """`?tenant_id=` (none or `__system__`: a global subscription): a subscription in
        the Cycles format (`hooks.CYCLES`) to `event_types` and every type of
        `event_categories` that allotment sends; 201 with the signing secret, shown once."""
        require_admin(self.s, request)
        only(request, "tenant_id")
        named = request.query_params.get("tenant_id") or None
        tenant = None if named in (None, SYSTEM) else tenant_name(named, "tenant_id")
        req = wire.parse(CreateBody, await body(request, self.s.max_body))
        hook = await self.s.guard.asubscribe_webhook(
            req.url, events=selected(req.event_types, req.event_categories), tenant=tenant,
            secret=req.signing_secret, format=CYCLES, actor=ADMIN_ACTOR)
        return json_response(request, {"subscription": subscription_json(hook, []),
                                       "signing_secret": hook.secret}, 201)

    async def one(self, request: Request) -> Response:
        require_admin(self.s, request)
        only(request)
        return json_response(request, await self._viewed(await self._found(request)))

    async def changed(self, request: Request) -> Response:
        """`status` PAUSED pauses, ACTIVE resumes; `url`; `event_types` and
        `event_categories` (either or both given: the types they name replace those it
        receives; naming none is 400); `signing_secret` rotates the secret (not shown
        again). All in one change, or none of it."""
        require_admin(self.s, request)
        only(request)
        req = wire.parse(UpdateBody, await body(request, self.s.max_body))
        kinds = None
        if req.event_types is not None or req.event_categories is not None:
            kinds = selected(req.event_types or [], req.event_categories or [])
            if not kinds:
                raise bad_request("event_types: with event_categories, they would select no "
                                  "event; name at least one type or category")
        hook = await self._found(request)
        changed = await self.s.guard.aupdate_webhook(
            hook.id, url=req.url, events=kinds, secret=req.signing_secret,
            enabled=None if req.status is None else req.status == "ACTIVE", actor=ADMIN_ACTOR)
        return json_response(request, await self._viewed(changed))

    async def tested(self, request: Request) -> Response:
        """Send a `system.webhook_test` event to the subscription now, signed as its
        deliveries are; 200 with what the receiver answered (see `test_json`). It is not
        logged and does not count as a delivery."""
        require_admin(self.s, request)
        only(request)
        webhook_id = request.path_params["webhook_id"]  # a missing one: NotFound, 404
        return json_response(request, test_json(await self.s.dispatcher.atest(webhook_id)))

    async def removed(self, request: Request) -> Response:
        require_admin(self.s, request)
        hook = await self._found(request)
        await self.s.guard.aremove_webhook(hook.id, actor=ADMIN_ACTOR)
        return empty_response(request)

    async def replayed(self, request: Request) -> Response:
        """Send again every event in the window that went to this subscription and is still
        kept (the outbox's retention; events from before it existed never went to it), in
        the order they happened: all of them, or 400 when more than `max_events` are
        selected. 202 with how many deliveries were queued."""
        require_admin(self.s, request)
        only(request)
        req = wire.parse(ReplayBody, await body(request, self.s.max_body))
        start, end = since_ms(req.from_, "from"), since_ms(req.to, "to")
        for kind in req.event_types:
            if kind not in CYCLES_EVENT_TYPES:
                raise bad_request(f"event_types: {kind!r} is not a Cycles event type")
        hook = await self._found(request)
        rows = await self.s.guard.awebhook_deliveries(webhook_id=hook.id, limit=100_000)
        chosen = sorted({row.event_id for row in rows
                         if (not req.event_types or row.event_type in req.event_types)
                         and (start is None or event_time(row.event_id) >= start)
                         and (end is None or event_time(row.event_id) <= end)},
                        key=lambda some: (event_time(some), some))
        if len(chosen) > req.max_events:
            raise bad_request(f"max_events: the window holds {len(chosen)} events, more than "
                              f"{req.max_events}; narrow from/to or raise max_events (at "
                              "most 1000)")
        queued = 0
        for some in chosen:
            queued += await self.s.guard.areplay_webhook_event(some, hook.id)
        return json_response(request, {"replay_id": f"rpl_{secrets.token_hex(12)}",
                                       "events_queued": queued}, 202)

    async def security(self, request: Request) -> Response:
        """Where webhooks may go: the configuration set, or the defaults."""
        require_admin(self.s, request)
        only(request)
        return json_response(request, security_json(await self.s.guard.awebhook_security()))

    async def secured(self, request: Request) -> Response:
        """Replace the configuration (what is left out takes its default): subscriptions
        made or changed from now on are checked against it, and every send against its
        blocked ranges; existing subscriptions are not checked again."""
        require_admin(self.s, request)
        only(request)
        req = wire.parse(SecurityBody, await body(request, self.s.max_body))
        return json_response(request, security_json(await self.s.guard.aset_webhook_security(
            blocked_cidr_ranges=req.blocked_cidr_ranges,
            allowed_url_patterns=req.allowed_url_patterns, allow_http=req.allow_http)))

    async def deliveries(self, request: Request) -> Response:
        """Any subscription's deliveries (see `attempts`)."""
        require_admin(self.s, request)
        webhook_id = request.path_params["webhook_id"]
        return await attempts(request, self.s.guard, webhook_id,
                              await self._hooks(owner_of(webhook_id, "webhook_id")))
