"""Webhook subscriptions and the outbox of the embedded store, as outbox.lua and hooks.lua:
the events a subscription wants are appended under the store's lock, in the step that
produced them; nothing here runs unless a subscription exists."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import NotFound
from ...events import AuditType, Notification
from ..hooks import (
    DELIVERED,
    FAILED,
    FORECAST,
    GLOBAL,
    PENDING,
    PRUNE_BATCH,
    ClaimDeliveries,
    Claimed,
    Deliveries,
    FinishDelivery,
    GetWebhook,
    GetWebhookSecurity,
    ListWebhooks,
    RemoveWebhook,
    ReplayEvent,
    SetWebhookSecurity,
    SubscribeWebhook,
    UpdateWebhook,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
    WebhookSecurity,
    changed_fields,
    day_of,
    destination,
    event_id,
    forecast_at,
    owner_of,
    wanted,
)
from .state import Context, Held, Tenant, log

Member = tuple[str, str]  # (event id, webhook id)


@dataclass
class _Box:
    """One tenant's part: its subscriptions, events, due deliveries and their log."""

    subs: dict[str, Webhook] = field(default_factory=dict)
    events: dict[str, WebhookEvent] = field(default_factory=dict)
    pending: dict[Member, int] = field(default_factory=dict)  # due at (ms)
    log: dict[Member, WebhookDelivery] = field(default_factory=dict)
    seq: int = 0
    forecasted: dict[tuple[str, Any, Any], str] = field(default_factory=dict)  # → bucket
    wants: dict[str, list[str]] = field(default_factory=dict)
    done: dict[Member, int] = field(default_factory=dict)  # finished at (ms), for retention
    refs: dict[str, int] = field(default_factory=dict)  # event id -> deliveries kept


class Outbox:
    """All webhook state of one memory store; every method runs under the store's lock."""

    def __init__(self, cx: Context, owned: Callable[[str], Tenant]) -> None:
        self._cx = cx
        self._owned = owned  # a tenant's state, made if new: its own subscriptions' record
        self._global: dict[str, Webhook] = {}
        self._boxes: dict[str, _Box] = {}
        self.active = False
        """Whether any subscription exists: the store skips `append` otherwise."""
        self.security: WebhookSecurity | None = None
        """The webhook security configuration, once one is set."""

    # -- the hooks in other operations' steps --------------------------------------------------

    def append(self, notes: list[Notification], now: int) -> None:
        """Put each notification a subscription wants in its tenant's outbox."""
        for note in notes:
            box = self._boxes.get(note.tenant)
            if box is None and self._global:
                box = self._box(note.tenant)
            subs = box.wants.get(note.type) if box is not None else None
            if not subs or box is None:
                continue
            box.seq += 1
            eid = event_id(note.tenant, now, box.seq)
            box.events[eid] = WebhookEvent(eid, note.type, note.tenant, now, note)
            box.refs[eid] = len(subs)
            for sub in subs:
                box.pending[(eid, sub)] = now
                box.log[(eid, sub)] = WebhookDelivery(eid, sub, note.type, PENDING, 0, now,
                                                      updated_at_ms=now)

    def forecast(self, t: Tenant, changed: Held, now: int) -> None:
        """After a commit or a record: a burn-rate forecast, once per ledger and period,
        when the projection first falls inside the period (as `forecasts` in hooks.lua)."""
        box = self._boxes.get(t.name)
        if box is None and self._global:
            box = self._box(t.name)
        if box is None or FORECAST not in box.wants:
            return
        for key, _, state in changed:
            period = key[2]
            if period is None or box.forecasted.get(key[:3]) == key[3]:
                continue
            at = forecast_at(period, state.allocated, state.spent + state.debt, now)
            if at is None:
                continue
            box.forecasted[key[:3]] = key[3]
            self._cx.notes.append(Notification(
                FORECAST, t.name, now, scope=key[0], unit=key[1], bucket=key[3],
                remaining=state.remaining, allocated=state.allocated,
                detail={"exhausts_on": day_of(at), "exhausts_at_ms": at}))

    # -- the webhook operations ----------------------------------------------------------------

    def execute(self, op: Any, now: int, tenants: Iterable[str]) -> Any:
        """Run one webhook operation (the store holds its lock)."""
        if isinstance(op, SubscribeWebhook):
            sub = Webhook(op.webhook_id, op.url, op.events, op.tenant or None, op.enabled, now,
                          op.secret, op.format)
            self._subs(op.tenant)[sub.id] = sub
            self._rewire(op.tenant)
            self._log(op, now, AuditType.WEBHOOK_CREATED, {
                "webhook_id": sub.id, "destination": destination(sub.url),
                "events": list(sub.events), "format": sub.format, "enabled": sub.enabled})
            return sub
        if isinstance(op, UpdateWebhook):
            subs = self._subs(op.tenant)
            sub = self._found(subs, op.webhook_id)
            subs[sub.id] = sub = replace(sub, **changed_fields(op))
            self._rewire(op.tenant)
            self._log(op, now, AuditType.WEBHOOK_UPDATED, changes(op))
            return replace(sub, secret=None)
        if isinstance(op, RemoveWebhook):
            gone = self._subs(op.tenant).pop(op.webhook_id, None) is not None
            self._rewire(op.tenant)
            if gone:
                self._log(op, now, AuditType.WEBHOOK_DELETED, {"webhook_id": op.webhook_id})
            return gone
        if isinstance(op, GetWebhookSecurity):
            return self.security
        if isinstance(op, SetWebhookSecurity):
            self.security = op.security
            return op.security
        if isinstance(op, GetWebhook):
            return self._found(self._subs(op.tenant), op.webhook_id)
        if isinstance(op, ListWebhooks):
            return tuple(replace(s, secret=None) for s in self._subs(op.tenant).values())
        if isinstance(op, ClaimDeliveries):
            return self._claim(op, now)
        if isinstance(op, FinishDelivery):
            return self._finish(op, now)
        if isinstance(op, Deliveries):
            return self._deliveries(op)
        if isinstance(op, ReplayEvent):
            return self._replay(op, now)
        raise TypeError(type(op).__name__)

    def _claim(self, op: ClaimDeliveries, now: int) -> tuple[Claimed, ...]:
        for box in self._boxes.values():
            if box.done:
                _prune(box, now - op.retention_ms)
        due = sorted((at, f"{eid}|{sub}", tenant)
                     for tenant, box in self._boxes.items()
                     for (eid, sub), at in box.pending.items() if at <= now)
        claimed: list[Claimed] = []
        for _, member, tenant in due:
            if len(claimed) >= op.limit:
                break
            box = self._boxes[tenant]
            eid, _, sub_id = member.partition("|")
            sub = self._subs(owner_of(sub_id, "webhook_id")).get(sub_id)
            if sub is None:  # removed since: nothing to send it to
                del box.pending[(eid, sub_id)]
                box.log[(eid, sub_id)] = replace(box.log[(eid, sub_id)], status=FAILED,
                                                 next_at_ms=None, updated_at_ms=now,
                                                 last_error="subscription removed")
                box.done[(eid, sub_id)] = now
                continue
            if not sub.enabled:
                continue
            box.pending[(eid, sub_id)] = now + op.lease_ms
            claimed.append(Claimed(box.events[eid], sub, box.log[(eid, sub_id)].attempts,
                                   now + op.lease_ms))
        return tuple(claimed)

    def _finish(self, op: FinishDelivery, now: int) -> None:
        box = self._boxes.get(op.tenant)
        member = (op.event_id, op.webhook_id)
        row = box.log.get(member) if box is not None else None
        if box is None or row is None:
            raise NotFound(f"no delivery of {op.event_id} to {op.webhook_id}")
        if row.status != PENDING:
            return  # finished already (a lease that ran out, and another claimer)
        status = DELIVERED if op.delivered else PENDING if op.retry_in_ms is not None else FAILED
        due = now + (op.retry_in_ms or 0)
        box.log[member] = replace(row, status=status, attempts=row.attempts + 1,
                                  next_at_ms=due if status == PENDING else None,
                                  last_status=op.status_code, last_error=op.error,
                                  updated_at_ms=now)
        if status == PENDING:
            box.pending[member] = due
        else:
            box.pending.pop(member, None)
            box.done[member] = now

    def _deliveries(self, op: Deliveries) -> tuple[WebhookDelivery, ...]:
        boxes = self._boxes.values() if op.tenant == GLOBAL else (
            [self._boxes[op.tenant]] if op.tenant in self._boxes else [])
        rows = sorted((row for box in boxes for row in box.log.values()
                       if (op.event_id is None or row.event_id == op.event_id)
                       and (op.webhook_id is None or row.webhook_id == op.webhook_id)),
                      key=lambda r: (r.event_id, r.webhook_id))
        return tuple(rows[-op.limit:])

    def _replay(self, op: ReplayEvent, now: int) -> int:
        box = self._boxes.get(op.tenant)
        if box is None or op.event_id not in box.events:
            raise NotFound(f"no event {op.event_id} (never sent, or not kept)")
        event = box.events[op.event_id]
        targets = [sub for (eid, sub) in box.log if eid == op.event_id]
        if op.webhook_id is not None:
            sub = self._subs(owner_of(op.webhook_id, "webhook_id")).get(op.webhook_id)
            if sub is None:
                raise NotFound(f"no webhook {op.webhook_id}")
            targets = [op.webhook_id]
        for sub_id in targets:
            member = (op.event_id, sub_id)
            if member in box.log:
                box.done.pop(member, None)
            else:
                box.refs[op.event_id] = box.refs.get(op.event_id, 0) + 1
            box.pending[member] = now
            box.log[member] = WebhookDelivery(op.event_id, sub_id, event.type, PENDING, 0, now,
                                              updated_at_ms=now)
        return len(targets)

    def close(self, tenant: str) -> int:
        """Disable the tenant's own subscriptions (its tenant was closed); how many were on."""
        subs = self._subs(tenant)
        enabled = [sub for sub in subs.values() if sub.enabled]
        for sub in enabled:
            subs[sub.id] = replace(sub, enabled=False)
        self._rewire(tenant)
        return len(enabled)

    # -- subscriptions ----------------------------------------------------------------------

    def _log(self, op: SubscribeWebhook | UpdateWebhook | RemoveWebhook, now: int, kind: str,
             detail: dict[str, Any]) -> None:
        """A tenant's own subscription changed: on its record, with who and why (as `audit`
        in outbox.lua)."""
        if op.tenant != GLOBAL:
            log(self._owned(op.tenant), now, kind, detail=detail, actor=op.actor,
                reason=op.reason)

    def _box(self, tenant: str) -> _Box:
        box = self._boxes.get(tenant)
        if box is None:
            box = self._boxes[tenant] = _Box()
            box.wants = wanted(list(self._global.values()))
        return box

    def _subs(self, tenant: str) -> dict[str, Webhook]:
        return self._global if tenant == GLOBAL else self._box(tenant).subs

    @staticmethod
    def _found(subs: dict[str, Webhook], webhook_id: str) -> Webhook:
        sub = subs.get(webhook_id)
        if sub is None:
            raise NotFound(f"no webhook {webhook_id}")
        return sub

    def _rewire(self, tenant: str) -> None:
        """Recompute what the appends look up, for one tenant or (GLOBAL) for all."""
        glob = list(self._global.values())
        for name, box in self._boxes.items():
            if tenant in (GLOBAL, name):
                box.wants = wanted(glob + list(box.subs.values()))
        self.active = bool(self._global) or any(box.subs for box in self._boxes.values())
        wants_forecast = any(FORECAST in s.events for s in glob) or any(
            FORECAST in box.wants for box in self._boxes.values())
        self._cx.forecast = self.forecast if self.active and wants_forecast else None


def changes(op: UpdateWebhook) -> dict[str, Any]:
    """What an update's record says: the subscription and what was given (of a URL, its
    destination), never a secret."""
    detail: dict[str, Any] = {"webhook_id": op.webhook_id}
    if op.url is not None:
        detail["destination"] = destination(op.url)
    if op.events is not None:
        detail["events"] = list(op.events)
    if op.enabled is not None:
        detail["enabled"] = op.enabled
    if op.secret is not None:
        detail["secret_rotated"] = True
    return detail


def _prune(box: _Box, before: int) -> None:
    """Drop the oldest deliveries finished before `before` (at most PRUNE_BATCH), and each
    event none of whose deliveries is kept any more (as `prune` in outbox.lua)."""
    old = sorted((at, f"{eid}|{sub}") for (eid, sub), at in box.done.items() if at < before)
    for _, text in old[:PRUNE_BATCH]:
        eid, _, sub = text.partition("|")
        member = (eid, sub)
        del box.done[member]
        box.log.pop(member, None)
        box.refs[eid] = box.refs.get(eid, 1) - 1
        if box.refs[eid] <= 0:
            del box.refs[eid]
            box.events.pop(eid, None)
