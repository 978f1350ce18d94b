"""A guard bound to one tenant: every operation it runs must belong to that tenant, checked on
the operation itself (built from the checked, normalised arguments) before any store access,
so one customer's code can never read or settle another's."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from . import arguments as arg
from .budgets import BudgetCalls
from .calls import Flow, Stream, flow_twins, stream_twins
from .enforcement import EnforcementCalls
from .engine import Engine
from .errors import Forbidden, InvalidRequest, StoreUnavailable
from .events import AuditRecord
from .models import Balance, ReservationInfo, ReservationStatus
from .periods import Period
from .reads import (
    audit_op,
    balances_op,
    list_reservations_op,
    plan_of_op,
    report_op,
    usage_stream,
)
from .reports import ReportRow
from .reservation import Reservation
from .scopes import Subject, tenant_name
from .stores import hooks
from .stores import operations as ops
from .stores.operations import Gated, KeyProof, Op
from .usage import check_period
from .validation import check_int
from .webhook_calls import (
    enable_webhook_op,
    remove_webhook_op,
    replay_webhook_event_op,
    subscribe_webhook_op,
    update_webhook_flow,
    webhook_deliveries_op,
    webhooks_op,
    within_security,
)

R = TypeVar("R")
_SHARED = frozenset({hooks.GetWebhookSecurity})
"""Store-wide reads a tenant's own calls follow (nothing of another tenant's)."""


class TenantGuard(EnforcementCalls, BudgetCalls):
    """The guard's enforcement, budget and read calls for one tenant (`guard.tenant(name)`):
    what a tenant's own administrator or an API key bound to the tenant may do. Platform
    calls (modes, plans, sweeping) are not offered, and nothing here leads back to the
    unrestricted guard."""

    def __init__(self, engine: Engine, tenant: str) -> None:
        self._engine = engine
        self.name = tenant_name(tenant)
        self._proof: KeyProof | None = None

    @property
    def key_id(self) -> str | None:
        """The id of the API key this handle's operations carry (None: no key)."""
        return None if self._proof is None else self._proof.key_id

    def __repr__(self) -> str:
        if self._proof is not None:
            return f"<TenantGuard {self.name} key {self._proof.key_id}>"
        return f"<TenantGuard {self.name}>"

    def _run(self, op: Op[R]) -> R:
        return self._engine.store.execute(self._own(op))

    async def _arun(self, op: Op[R]) -> R:
        return await self._engine.store.aexecute(self._own(op))

    def _own(self, op: Op[R]) -> Op[R]:
        if op.tenant != self.name:
            if type(op) in _SHARED:  # checked only off the tenant's own path
                return op
            raise Forbidden(f"{type(op).__name__.lower()} for tenant {op.tenant!r} refused by "
                            f"the handle of tenant {self.name!r}")
        if self._proof is not None:  # checked by the store, in the operation's own step
            return Gated(op.tenant, op, self._proof)
        return op

    def _store_failed(self, op: ops.Reserve, error: StoreUnavailable) -> Reservation:
        """A guard that fails open lets a call through unguarded while the store is down;
        not one carrying an API key, which only the store can check: that fails closed."""
        if self._proof is None:
            return super()._store_failed(op, error)
        self._engine.store_failures += 1
        raise error

    def subject(self, subject: Subject | None = None, **fields: Any) -> Subject:
        """A subject of this tenant: the one given (checked), or one built from `fields`."""
        if subject is None:
            return Subject(tenant=self.name, **fields)
        subject = arg.subject(subject)
        if subject.tenant != self.name:
            raise Forbidden(f"subject of tenant {subject.tenant!r} given to the handle of "
                            f"{self.name!r}")
        return subject

    # -- reads of its own tenant ----------------------------------------------------------

    def _balances(self, scope: str | None = None, *,
                  include_children: bool = True) -> Flow[tuple[Balance, ...]]:
        """Balances at `scope` (default: the whole tenant) and below it."""
        rows: tuple[Balance, ...] = yield balances_op(
            scope or f"tenant:{self.name}", include_children=include_children)
        return rows

    balances, abalances = flow_twins(_balances)

    def _audit(self, *, since: int | datetime | None = None, types: Any = None,
               limit: int = 100, until: int | datetime | None = None
               ) -> Flow[tuple[AuditRecord, ...]]:
        """The tenant's audit records, newest last (see `Guard.audit`)."""
        records: tuple[AuditRecord, ...] = yield audit_op(self.name, since=since, types=types,
                                                          limit=limit, until=until)
        return records

    audit, aaudit = flow_twins(_audit)

    def _report(self, *, period: Period | str = "month", at: int | datetime | None = None,
                by: str | None = None, top: int | None = None
                ) -> Flow[tuple[ReportRow, ...]]:
        """The tenant's report rows for one period, per scope or per value of a dimension
        (see `Guard.report`)."""
        rows: tuple[ReportRow, ...] = yield report_op(self.name, period=period, at=at, by=by,
                                                      top=top)
        return rows

    report, areport = flow_twins(_report)

    def _list_reservations(self, *, status: ReservationStatus | str | None = None,
                           limit: int = 50, cursor: str | None = None
                           ) -> Flow[tuple[tuple[ReservationInfo, ...], str | None]]:
        """A page of the tenant's reservations and the next cursor (see
        `Guard.list_reservations`)."""
        page: tuple[tuple[ReservationInfo, ...], str | None] = yield list_reservations_op(
            self.name, status=status, limit=limit, cursor=cursor)
        return page

    list_reservations, alist_reservations = flow_twins(_list_reservations)

    def _plan_of(self) -> Flow[str | None]:
        """The name of the plan this tenant is on, None when it has none (see
        `Guard.plan_of`). A handle never lists other tenants."""
        plan: str | None = yield plan_of_op(self.name)
        return plan

    plan_of, aplan_of = flow_twins(_plan_of)

    def _usage(self, period: str | None = None) -> Stream:
        """The tenant's usage rows for invoicing, per scope, model and unit (see
        `Guard.usage`)."""
        return usage_stream(check_period(period), (self.name,))

    usage, ausage = stream_twins(_usage)

    # -- its own webhook subscriptions ------------------------------------------------------

    def _own_webhook(self, webhook_id: str) -> str:
        if hooks.owner_of(webhook_id, "webhook_id") != self.name:
            raise Forbidden(f"webhook {webhook_id!r} is not one of tenant {self.name!r}")
        return webhook_id

    def _subscribe_webhook(self, url: str, *, events: Any, secret: str | None = None,
                           enabled: bool = True, format: str = hooks.STANDARD,
                           actor: str | None = None, reason: str | None = None
                           ) -> Flow[hooks.Webhook]:
        """Send this tenant's `events` to `url` (see `Guard.subscribe_webhook`)."""
        return within_security(subscribe_webhook_op(
            url, events=events, tenant=self.name, secret=secret, enabled=enabled,
            format=format, actor=actor, reason=reason))

    subscribe_webhook, asubscribe_webhook = flow_twins(_subscribe_webhook)

    def _webhooks(self) -> Flow[tuple[hooks.Webhook, ...]]:
        """This tenant's own subscriptions (never the global ones)."""
        found: tuple[hooks.Webhook, ...] = yield webhooks_op(self.name)
        return found

    webhooks, awebhooks = flow_twins(_webhooks)

    def _remove_webhook(self, webhook_id: str, *, actor: str | None = None,
                        reason: str | None = None) -> Flow[bool]:
        """Remove one of this tenant's subscriptions."""
        gone: bool = yield remove_webhook_op(self._own_webhook(webhook_id), actor=actor,
                                             reason=reason)
        return gone

    remove_webhook, aremove_webhook = flow_twins(_remove_webhook)

    def _enable_webhook(self, webhook_id: str, enabled: bool = True, *,
                        actor: str | None = None, reason: str | None = None
                        ) -> Flow[hooks.Webhook]:
        """Pause or resume one of this tenant's subscriptions."""
        changed: hooks.Webhook = yield enable_webhook_op(
            self._own_webhook(webhook_id), enabled, actor=actor, reason=reason)
        return changed

    enable_webhook, aenable_webhook = flow_twins(_enable_webhook)

    def _update_webhook(self, webhook_id: str, *, url: str | None = None, events: Any = None,
                        secret: str | None = None, enabled: bool | None = None,
                        actor: str | None = None, reason: str | None = None
                        ) -> Flow[hooks.Webhook]:
        """Change one of this tenant's subscriptions (see `Guard.update_webhook`)."""
        return update_webhook_flow(self._own_webhook(webhook_id), url=url, events=events,
                                   secret=secret, enabled=enabled, actor=actor,
                                   reason=reason)

    update_webhook, aupdate_webhook = flow_twins(_update_webhook)

    def _webhook_deliveries(self, *, event_id: str | None = None,
                            webhook_id: str | None = None, limit: int = 100
                            ) -> Flow[tuple[hooks.WebhookDelivery, ...]]:
        """The delivery log of this tenant's own subscriptions."""
        if webhook_id is not None:
            self._own_webhook(webhook_id)
        if event_id is not None and hooks.owner_of(event_id, "event_id") != self.name:
            raise Forbidden(f"event {event_id!r} is not one of tenant {self.name!r}")
        check_int(limit, "limit", 1, 100_000)
        rows: tuple[hooks.WebhookDelivery, ...] = yield webhook_deliveries_op(
            event_id=event_id, webhook_id=webhook_id, tenant=self.name, limit=100_000)
        mine = [r for r in rows if r.webhook_id.startswith(self.name + "/")]
        return tuple(mine[-limit:])

    webhook_deliveries, awebhook_deliveries = flow_twins(_webhook_deliveries)

    def _replay_webhook_event(self, event_id: str, webhook_id: str | None = None
                              ) -> Flow[int]:
        """Send one of this tenant's events again, to one of its own subscriptions."""
        if hooks.owner_of(event_id, "event_id") != self.name:
            raise Forbidden(f"event {event_id!r} is not one of tenant {self.name!r}")
        if webhook_id is None:
            raise InvalidRequest("webhook_id: name the tenant's own subscription to send to")
        queued: int = yield replay_webhook_event_op(event_id, self._own_webhook(webhook_id))
        return queued

    replay_webhook_event, areplay_webhook_event = flow_twins(_replay_webhook_event)


def keyed_handle(engine: Engine, tenant: str, proof: KeyProof) -> TenantGuard:
    """A handle whose every operation carries an API key's proof (`Guard.tenant_for_key`;
    `tenant` is the checked name the key id gives, not checked again)."""
    handle = TenantGuard.__new__(TenantGuard)
    handle._engine, handle.name, handle._proof = engine, tenant, proof
    return handle
