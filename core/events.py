"""What happened, on the record: audit records (every change, written in the same atomic
step) and notifications (once per crossing per period); report rows live in reports.py."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .amounts import Amount, Unit
from .errors import InvalidRequest
from .reports import ReportRow as ReportRow  # its home is reports.py; kept importable here
from .scopes import Subject
from .validation import check_text

log = logging.getLogger("allotment")


class AuditType:
    """Audit record types (Cycles event names where one exists)."""

    RESERVED = "reservation.reserved"
    COMMITTED = "reservation.committed"
    RELEASED = "reservation.released"
    EXTENDED = "reservation.extended"
    EXPIRED = "reservation.expired"
    DENIED = "reservation.denied"
    OBSERVED_DENIED = "reservation.observed_denied"
    RECORDED = "event.recorded"
    BUDGET_SET = "budget.set"
    BUDGET_FUNDED = "budget.funded"
    BUDGET_TRANSFERRED = "budget.transferred"
    BUDGET_STATUS = "budget.status_changed"
    BUDGET_UPDATED = "budget.updated"
    QUOTA_SET = "quota.set"
    ACCESS_SET = "access.set"
    MODE_SET = "tenant.mode_set"
    TENANT_CLOSED = "tenant.closed"
    TENANT_SUSPENDED = "tenant.suspended"
    TENANT_REACTIVATED = "tenant.reactivated"
    PLAN_ASSIGNED = "plan.assigned"
    TENANT_CREATED = "tenant.created"
    """A tenant's record made (`register_tenant`); `detail["name"]` is its display name."""
    KEY_CREATED = "api_key.created"
    """An API key made; `detail` has its `key_id`, `name`, `permissions` and
    `expires_at_ms` (when it expires). Never its secret or the secret's hash."""
    KEY_REVOKED = "api_key.revoked"
    KEY_UPDATED = "api_key.updated"
    """A live key renamed or given other permissions; `detail` has what was given."""
    WEBHOOK_CREATED = "webhook.created"
    """One of the tenant's own webhook subscriptions made; `detail` has its `webhook_id`,
    `destination` (the URL's scheme, host and port: its path, query and user part may hold
    a token), `events`, `format` and `enabled`. Never its secret. (A global subscription
    belongs to no tenant's log.)"""
    WEBHOOK_UPDATED = "webhook.updated"
    """One changed; `detail` has its `webhook_id` and what was given (`destination`,
    `events`, `enabled`), and `secret_rotated` when a new secret was."""
    WEBHOOK_DELETED = "webhook.deleted"
    """One removed; `detail` has its `webhook_id`."""
    # Notifications about a budget (or a commit) that are also on record, in the step that
    # makes them: the event stream lists them (`detail` has the ledger's figures).
    THRESHOLD_CROSSED = "budget.threshold_crossed"
    EXHAUSTED = "budget.exhausted"
    OVER_LIMIT_ENTERED = "budget.over_limit_entered"
    OVER_LIMIT_EXITED = "budget.over_limit_exited"
    DEBT_INCURRED = "budget.debt_incurred"
    COMMIT_OVERAGE = "reservation.commit_overage"
    """A commit charged beyond its estimate: the record carries the estimate and the
    actual."""


@dataclass(slots=True)
class AuditRecord:
    """One change (or denial) of one tenant. `seq` orders records within the tenant."""

    seq: int
    at_ms: int
    type: str
    tenant: str
    scopes: tuple[str, ...] = ()
    subject: Subject | None = None
    action: str | None = None
    reservation_id: str | None = None
    idempotency_key: str | None = None
    estimate: tuple[Amount, ...] = ()
    actual: tuple[Amount, ...] = ()
    charged: tuple[Amount, ...] = ()
    reason: str | None = None
    """A denial's reason code; on an administrative change, the reason its maker gave."""
    detail: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    """Who made an administrative change, as its maker said (`actor=` on the call)."""


class NotificationType:
    """The notification types, with the Cycles protocol's event names."""

    THRESHOLD_CROSSED = "budget.threshold_crossed"
    EXHAUSTED = "budget.exhausted"
    OVER_LIMIT_ENTERED = "budget.over_limit_entered"
    OVER_LIMIT_EXITED = "budget.over_limit_exited"
    """A budget's over-limit flag cleared: its debt was repaid below the overdraft limit, or
    the limit raised above it (fund, transfer, set_budget, set_budget_terms)."""
    DEBT_INCURRED = "budget.debt_incurred"
    """A commit or record added debt to a ledger (ALLOW_WITH_OVERDRAFT, or shadow mode);
    `amounts` is the debt added."""
    RESERVATION_DENIED = "reservation.denied"
    SPEND_UNRECORDED = "spend.unrecorded"
    """A commit that failed on every try: the amounts the store never received."""
    SWEEP_TENANT_FAILED = "sweep.tenant_failed"
    """A tenant the sweep could not read: reported and skipped, the others still swept."""
    RESERVATION_EXPIRED = "reservation.expired"
    """A reservation past its ttl and grace: its estimate went back to the budgets."""
    COMMIT_OVERAGE = "reservation.commit_overage"
    """A commit charged more than its estimate in some unit; `amounts` is the excess."""
    MODE_CHANGED = "tenant.mode_changed"
    """A tenant's mode was set, or changed by a plan assigned to it; `reason` is the new mode
    ("" when left to the guard)."""
    TENANT_CLOSED = "tenant.closed"
    """The tenant was closed for good (`Guard.close_tenant`); `reason` is the one given
    ("" when none)."""
    TENANT_SUSPENDED = "tenant.suspended"
    """Every open budget of the tenant was frozen in one step (`Guard.suspend_tenant`);
    `reason` is the one given ("" when none)."""
    TENANT_REACTIVATED = "tenant.reactivated"
    """Every open budget of a suspended tenant was unfrozen in one step
    (`Guard.resume_tenant`); `reason` is the one given ("" when none)."""
    BURN_RATE_FORECAST = "budget.burn_rate_forecast"
    """At the spend rate so far this period, the ledger runs out before the period ends;
    `detail` has `exhausts_on` (the UTC day) and `exhausts_at_ms`. Once per ledger and
    period, and only while a webhook subscription asks for it."""


def _names(kinds: type) -> frozenset[str]:
    return frozenset(v for k, v in vars(kinds).items() if k.isupper() and isinstance(v, str))


AUDIT_TYPES = _names(AuditType)
NOTIFICATION_TYPES = _names(NotificationType)

CYCLES_EVENT_TYPES = frozenset(f"{category}.{name}" for category, names in {
    "budget": "created updated funded debited reset reset_spent debt_repaid frozen unfrozen "
              "closed closed_via_tenant_cascade threshold_crossed exhausted "
              "over_limit_entered over_limit_exited debt_incurred burn_rate_anomaly",
    "reservation": "denied denial_rate_spike expired expiry_rate_spike commit_overage "
                   "released_via_tenant_cascade",
    "tenant": "created updated suspended reactivated closed settings_changed",
    "webhook": "created updated paused resumed disabled deleted disabled_via_tenant_cascade",
    "api_key": "created revoked revoked_via_tenant_cascade expired permissions_changed "
               "auth_failed auth_failure_rate_spike",
    "policy": "created updated deleted",
    "system": "store_connection_lost store_connection_restored high_latency "
              "webhook_delivery_failed webhook_test"}.items() for name in names.split())
"""The Cycles governance spec's event types (v0.1.25): what its wire may name (an event
list's filter, a delivery's `event_type`)."""


def check_type(value: object, field: str, known: frozenset[str]) -> str:
    """One of `known`: a misspelt type would otherwise be accepted and match nothing."""
    name = check_text(value, field)
    if name in known:
        return name
    near = difflib.get_close_matches(name, known, n=3)
    if not near:  # a bare "denied" for "reservation.denied"
        tails = {k: k.rpartition(".")[2] for k in known}
        close = difflib.get_close_matches(name.rpartition(".")[2], set(tails.values()), n=3)
        near = sorted((k for k, tail in tails.items() if tail in close),
                      key=lambda k: close.index(tails[k]))[:3]
    hint = (f"did you mean {' or '.join(map(repr, near))}?" if near
            else f"known: {', '.join(sorted(known))}")
    raise InvalidRequest(f"{field}: unknown type {name!r}; {hint}")


@dataclass(slots=True)
class Notification:
    type: str
    tenant: str
    at_ms: int
    scope: str | None = None
    unit: Unit | None = None
    bucket: str | None = None
    threshold: float | None = None
    reason: str | None = None
    remaining: int | None = None
    allocated: int | None = None
    reservation_id: str | None = None
    amounts: tuple[Amount, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    """Ships notifications elsewhere (a queue, a webhook sender). Called after the store
    step, outside any lock; an exception is logged and never reaches the caller."""

    def emit(self, notification: Notification) -> None:
        """Deliver one notification (after the atomic step that caused it)."""


Subscriber = Callable[[Notification], Any]


def dispatch(notifications: list[Notification], subscribers: dict[str, list[Subscriber]],
             sinks: list[Sink]) -> None:
    """Deliver to `guard.on(...)` subscribers and sinks; a failure never breaks enforcement."""
    for note in notifications:
        for callback in subscribers.get(note.type, []) + subscribers.get("*", []):
            try:
                callback(note)
            except Exception:
                log.exception("notification subscriber failed on %s", note.type)
        for sink in sinks:
            try:
                sink.emit(note)
            except Exception:
                log.exception("notification sink failed on %s", note.type)
