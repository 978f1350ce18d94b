"""The JSON of the operators' routes: audit records, report rows, webhook subscriptions and
deliveries, and the way back to the library's types (the CLI over `--server` reads them back,
so its output is the same as over `--store`). Money stays an exact integer of its unit."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..amounts import Amount, Unit
from ..events import CYCLES_EVENT_TYPES, AuditRecord
from ..reports import ReportRow
from ..scopes import Subject
from ..stores.hooks import Webhook, WebhookDelivery


def iso_ms(ms: int) -> str:
    """An epoch-ms moment as ISO-8601 UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _amounts(values: tuple[Amount, ...]) -> list[dict[str, Any]]:
    return [{"unit": a.unit.value, "amount": a.amount} for a in values]


def _amounts_back(values: list[dict[str, Any]]) -> tuple[Amount, ...]:
    return tuple(Amount(Unit(v["unit"]), int(v["amount"])) for v in values)


def audit_json(r: AuditRecord) -> dict[str, Any]:
    """Every field of a record; amounts as `{"unit", "amount"}` with integer amounts."""
    return {
        "seq": r.seq, "at": iso_ms(r.at_ms), "at_ms": r.at_ms, "type": r.type,
        "tenant": r.tenant, "scopes": list(r.scopes),
        "subject": None if r.subject is None else r.subject.model_dump(exclude_none=True),
        "action": r.action, "reservation_id": r.reservation_id,
        "estimate": _amounts(r.estimate), "actual": _amounts(r.actual),
        "charged": _amounts(r.charged), "reason": r.reason, "detail": r.detail,
        "actor": r.actor}


def audit_from_json(d: dict[str, Any]) -> AuditRecord:
    """A record back from `audit_json` (the idempotency key is not sent)."""
    subject = d.get("subject")
    return AuditRecord(
        seq=int(d["seq"]), at_ms=int(d["at_ms"]), type=d["type"], tenant=d["tenant"],
        scopes=tuple(d.get("scopes") or ()),
        subject=None if subject is None else Subject(**subject), action=d.get("action"),
        reservation_id=d.get("reservation_id"), estimate=_amounts_back(d.get("estimate", [])),
        actual=_amounts_back(d.get("actual", [])), charged=_amounts_back(d.get("charged", [])),
        reason=d.get("reason"), detail=dict(d.get("detail") or {}), actor=d.get("actor"))


def report_json(row: ReportRow) -> dict[str, Any]:
    """A row: counts and amounts as integers, ratios as decimal strings (never floats)."""
    ratios = {unit.value: str(ratio) for unit in row.reserved
              if (ratio := row.committed_ratio(unit)) is not None}
    observed = sum(n for reason, n in row.denials.items() if reason.startswith("observed:"))
    return {"scope": row.scope, "period": row.period, "reservations": row.reservations,
            "commits": row.commits, "releases": row.releases, "expiries": row.expiries,
            "records": row.records, "denials": dict(row.denials),
            "would_deny": observed, "exhaustions": row.exhaustions,
            "reserved": {u.value: v for u, v in row.reserved.items()},
            "committed": {u.value: v for u, v in row.committed.items()},
            "committed_ratio": ratios}


def report_from_json(d: dict[str, Any]) -> ReportRow:
    """A row back from `report_json`."""
    return ReportRow(
        scope=d["scope"], period=d["period"], reservations=int(d["reservations"]),
        commits=int(d["commits"]), releases=int(d["releases"]), expiries=int(d["expiries"]),
        records=int(d["records"]), denials={k: int(v) for k, v in d["denials"].items()},
        reserved={Unit(k): int(v) for k, v in d["reserved"].items()},
        committed={Unit(k): int(v) for k, v in d["committed"].items()},
        exhaustions=int(d["exhaustions"]))


def webhook_json(hook: Webhook) -> dict[str, Any]:
    """A subscription; `tenant_id` only on a tenant's own, `secret` only when just made."""
    view: dict[str, Any] = {"webhook_id": hook.id, "url": hook.url,
                            "events": list(hook.events), "enabled": hook.enabled,
                            "created_at": iso_ms(hook.created_at_ms),
                            "created_at_ms": hook.created_at_ms}
    if hook.tenant:
        view["tenant_id"] = hook.tenant
    if hook.secret is not None:
        view["secret"] = hook.secret
    return view


def delivery_json(row: WebhookDelivery) -> dict[str, Any]:
    """One event's delivery to one subscription: its status, attempts and last answer."""
    view: dict[str, Any] = {"event_id": row.event_id, "webhook_id": row.webhook_id,
                            "event_type": row.event_type, "status": row.status,
                            "attempts": row.attempts, "updated_at_ms": row.updated_at_ms}
    for name in ("next_at_ms", "last_status", "last_error"):
        value = getattr(row, name)
        if value is not None:
            view[name] = value
    return view


ATTEMPT_STATUSES = ("PENDING", "RETRYING", "SUCCESS", "FAILED")
"""A delivery's status in the governance spec's WebhookDelivery."""


def attempt_status(row: WebhookDelivery) -> str:
    """Delivered: SUCCESS; given up: FAILED; pending: RETRYING once tried, else PENDING."""
    if row.status == "delivered":
        return "SUCCESS"
    if row.status == "failed":
        return "FAILED"
    return "RETRYING" if row.attempts else "PENDING"


def attempt_json(row: WebhookDelivery) -> dict[str, Any]:
    """One event's delivery to one subscription in the governance spec's WebhookDelivery
    shape: its id is `<subscription>:<event>`; `attempted_at` is when it last changed
    (queued, tried or finished); `event_type` only when it is one of the spec's."""
    status = attempt_status(row)
    view: dict[str, Any] = {"delivery_id": f"{row.webhook_id}:{row.event_id}",
                            "subscription_id": row.webhook_id, "event_id": row.event_id,
                            "status": status, "attempted_at": iso_ms(row.updated_at_ms),
                            "attempts": row.attempts}
    if row.event_type in CYCLES_EVENT_TYPES:
        view["event_type"] = row.event_type
    if status in ("SUCCESS", "FAILED"):
        view["completed_at"] = iso_ms(row.updated_at_ms)
    if row.last_status is not None:
        view["response_status"] = row.last_status
    if row.last_error is not None:
        view["error_message"] = row.last_error
    if status == "RETRYING" and row.next_at_ms is not None:
        view["next_retry_at"] = iso_ms(row.next_at_ms)
    return view
