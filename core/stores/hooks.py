"""Webhook subscriptions and the outbox, as operations both stores run.

A store appends the notifications a subscription wants to the tenant's outbox in the same
atomic step as the operation that produced them (one delivery per event and subscription),
so a crash or a restart loses none. A dispatcher claims due deliveries under a lease, sends
them, and records each attempt (`core/webhooks.py`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from ..amounts import Amount
from ..errors import InvalidRequest
from ..events import CYCLES_EVENT_TYPES, NOTIFICATION_TYPES, Notification, NotificationType
from ..periods import Period, bucket_end_ms, bucket_start_ms
from ..validation import check_name, shown
from .operations import Op

GLOBAL = ""
"""The `tenant` of an operation on global subscriptions or across tenants."""
SYSTEM = "__system__"
"""The tenant id a global subscription's events show where one tenant's would (the Cycles
spec's name for system events' tenant)."""
WEBHOOK_TYPES = NOTIFICATION_TYPES - {NotificationType.SPEND_UNRECORDED,
                                      NotificationType.SWEEP_TENANT_FAILED}
"""What a subscription may ask for: what a store produces inside an operation's step (a
commit the store never received, or a tenant the sweep skipped, has no step to ride on)."""
CYCLES_TYPES = WEBHOOK_TYPES & CYCLES_EVENT_TYPES
"""What a subscription in the Cycles format may ask for: the types the Cycles spec names."""
FORECAST = NotificationType.BURN_RATE_FORECAST
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
PRUNE_BATCH = 100


STANDARD, CYCLES = "standard", "cycles"
"""How a subscription's deliveries are signed and shaped: Standard Webhooks (headers
`webhook-id`, `-timestamp`, `-signature`; body `{type, timestamp, data}`), or as the Cycles
dispatcher sends (`X-Cycles-Signature: sha256=<hex HMAC of the body>`, the secret's own
bytes the key; body the spec's Event)."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """A subscription: `tenant` None for a global one (every tenant's events). `secret`
    (`whsec_...` for the standard format) is shown once, in the answer of
    `subscribe_webhook`; listings leave it out."""

    id: str
    url: str
    events: tuple[str, ...]
    tenant: str | None
    enabled: bool
    created_at_ms: int
    secret: str | None = None
    format: str = STANDARD


@dataclass(frozen=True, slots=True)
class WebhookSecurity:
    """Where webhooks may go (the Cycles spec's WebhookSecurityConfig): a destination that
    resolves into one of `blocked_cidr_ranges` is refused when sending (unless the
    dispatcher's `allow` names its network); a subscription made or changed must have a URL
    matching one of `allowed_url_patterns` (shell-style globs), when there are any, and an
    https:// one unless `allow_http`. See `webhook_security.py` for the defaults."""

    blocked_cidr_ranges: tuple[str, ...]
    allowed_url_patterns: tuple[str, ...] = ()
    allow_http: bool = True


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event of the outbox: a notification with a stable id (`<tenant>/evt_<hex>`)."""

    id: str
    type: str
    tenant: str
    at_ms: int
    notification: Notification


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event's delivery to one subscription: the delivery log's row."""

    event_id: str
    webhook_id: str
    event_type: str
    status: str  # pending, delivered, failed (gave up)
    attempts: int
    next_at_ms: int | None
    last_status: int | None = None
    last_error: str | None = None
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery due now, held by the claimer until `lease_until_ms`."""

    event: WebhookEvent
    webhook: Webhook  # with its secret
    attempts: int  # made before this one
    lease_until_ms: int


# -- operations -------------------------------------------------------------------------------

@dataclass
class SubscribeWebhook(Op[Webhook]):
    webhook_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    enabled: bool = True
    format: str = STANDARD
    actor: str | None = None  # who, and why: on the record of a tenant's own subscription
    reason: str | None = None


@dataclass
class UpdateWebhook(Op[Webhook]):
    """Change what is given (None: keep): the destination, the event types, the signing
    secret (a rotation), paused or not. Answers the subscription without its secret."""

    webhook_id: str
    url: str | None = None
    events: tuple[str, ...] | None = None
    secret: str | None = None
    enabled: bool | None = None
    actor: str | None = None
    reason: str | None = None


def changed_fields(op: UpdateWebhook) -> dict[str, Any]:
    """The fields of the subscription an update gives, by name (None: kept)."""
    return {name: value for name in ("url", "events", "secret", "enabled")
            if (value := getattr(op, name)) is not None}


@dataclass
class GetWebhook(Op[Webhook]):
    """One subscription with its signing secret, for a test send (`Dispatcher.test`);
    NotFound when there is none. No call of the guard answers it."""

    webhook_id: str


@dataclass
class RemoveWebhook(Op[bool]):
    webhook_id: str
    actor: str | None = None
    reason: str | None = None


@dataclass
class ListWebhooks(Op[tuple[Webhook, ...]]):
    """A tenant's own subscriptions, or (tenant GLOBAL) the global ones."""


@dataclass
class ClaimDeliveries(Op[tuple[Claimed, ...]]):
    """Across tenants: the due deliveries, each leased for `lease_ms`. First, each tenant
    drops up to PRUNE_BATCH deliveries finished more than `retention_ms` ago (and an event
    once none of its deliveries is kept)."""

    limit: int
    lease_ms: int
    retention_ms: int = 7 * 86_400_000


@dataclass
class FinishDelivery(Op[None]):
    """One attempt's outcome: delivered, retry in `retry_in_ms`, or given up (None)."""

    event_id: str
    webhook_id: str
    delivered: bool
    retry_in_ms: int | None
    status_code: int | None
    error: str | None


@dataclass
class Deliveries(Op[tuple[WebhookDelivery, ...]]):
    event_id: str | None
    webhook_id: str | None
    limit: int


@dataclass
class ReplayEvent(Op[int]):
    """Send an event again (to one subscription, or to every one it went to)."""

    event_id: str
    webhook_id: str | None


@dataclass
class GetWebhookSecurity(Op["WebhookSecurity | None"]):
    """The webhook security configuration set last; None when none ever was."""


@dataclass
class SetWebhookSecurity(Op[WebhookSecurity]):
    """Replace the webhook security configuration (for every tenant and process)."""

    security: WebhookSecurity


HOOK_OPS = frozenset({SubscribeWebhook, UpdateWebhook, RemoveWebhook, ListWebhooks,
                      GetWebhook, ClaimDeliveries, FinishDelivery, Deliveries, ReplayEvent,
                      GetWebhookSecurity, SetWebhookSecurity})


# -- what both stores share ---------------------------------------------------------------------

def new_webhook_id(tenant: str | None) -> str:
    token = "whk_" + os.urandom(12).hex()
    return token if tenant is None else f"{tenant}/{token}"


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells one: `whsec_` and 24 random bytes."""
    import base64

    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


_ID = re.compile(r"(?:([a-z0-9_.@-]{1,128})/)?(whk|evt)_[0-9a-f]{8,64}")


def destination(url: str) -> str:
    """What a record keeps of a webhook URL: its scheme, host and port. Its path, query and
    user part may hold a receiver's token (a secret), so no record keeps them."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}"


def owner_of(some_id: object, what: str) -> str:
    """The tenant a webhook or event id belongs to (GLOBAL for a global subscription);
    anything not shaped like such an id is refused before any store sees it."""
    prefix = "whk" if what == "webhook_id" else "evt"
    match = _ID.fullmatch(some_id) if isinstance(some_id, str) else None
    if match is None or match.group(2) != prefix:
        raise InvalidRequest(f"{what}: {shown(some_id)} is not a {what.replace('_', ' ')} "
                             f"([<tenant>/]{prefix}_<hex>)")
    return GLOBAL if match.group(1) is None else check_name(match.group(1), f"{what} tenant")


def event_id(tenant: str, now: int, seq: int) -> str:
    """Stable and unique per tenant: the time and the tenant's outbox counter."""
    return f"{tenant}/evt_{now:012x}{seq:08x}"


def event_time(some_id: str) -> int:
    """When an event happened (epoch ms), read back from its id (see `event_id`)."""
    return int(some_id.rpartition("/evt_")[2][:12], 16)


def wanted(subscriptions: list[Webhook]) -> dict[str, list[str]]:
    """Event type → the enabled subscriptions that want it (what an append looks up)."""
    found: dict[str, list[str]] = {}
    for sub in subscriptions:
        if sub.enabled:
            for kind in sub.events:
                found.setdefault(kind, []).append(sub.id)
    return found


def forecast_at(period: Period, allocated: int, used: int, now: int) -> int | None:
    """When the ledger runs out if spend goes on at this period's rate so far; None unless
    that falls inside the period. In doubles, as the Lua computes it (a forecast, not
    money): both stores agree to the bit."""
    if allocated <= 0 or used <= 0 or used >= allocated:
        return None
    start = bucket_start_ms(period, now)
    elapsed = now - start
    if elapsed <= 0:
        return None
    at = start + math.floor(float(allocated) * float(elapsed) / float(used))
    return at if at < bucket_end_ms(period, now) else None


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%d")


def notification_data(note: Notification) -> dict[str, Any]:
    """A notification as the JSON `data` of a webhook: exact integers, amounts per unit."""
    data: dict[str, Any] = {"tenant": note.tenant}
    for name in ("scope", "bucket", "threshold", "reason", "remaining", "allocated",
                 "reservation_id"):
        value = getattr(note, name)
        if value is not None:
            data[name] = value
    if note.unit is not None:
        data["unit"] = note.unit.value
    if note.amounts:
        data["amounts"] = [_amount(a) for a in note.amounts]
    data.update(note.detail)
    return data


def _amount(a: Amount) -> dict[str, Any]:
    return {"unit": a.unit.value, "amount": a.amount}

