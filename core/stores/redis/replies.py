"""Values as the scripts answer them: balance rows (compact or JSON), amounts, decisions,
reservations, audit entries, notifications and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from ...amounts import Amount, Unit
from ...clock import system_ms
from ...errors import AllotmentError, BudgetExceeded, Denied, by_code
from ...events import AuditRecord, Notification
from ...models import (
    Action,
    Balance,
    BudgetStatus,
    Caps,
    Decision,
    Outcome,
    OveragePolicy,
    ReservationInfo,
    ReservationStatus,
)
from ...scopes import Subject
from ...usage import Tally, UsageEntry

UNITS: dict[Any, Unit] = {key: u for u in Unit for key in (u.value, u.value.encode())}
STATUSES: dict[Any, BudgetStatus] = {key: s for s in BudgetStatus
                                     for key in (s.value, s.value.encode())}


def now_ms(clock: Callable[[], int] | None) -> int:
    """The store's clock when a test hands one in, the system's otherwise."""
    return clock() if clock is not None else system_ms()


def text(reply: Any) -> str:
    """A reply string, whether the client decodes responses or not."""
    return reply.decode() if isinstance(reply, bytes) else reply


def flat_rows(rows: list[Any]) -> list[Any]:
    """The balance rows of a compact reply, eight items each, one after another in one
    list (a replay snapshot of an earlier version holds them as a list per row)."""
    if rows and isinstance(rows[0], list):
        return [item for row in rows for item in row]
    return rows


def _rows(rows: list[Any]) -> tuple[Balance, ...]:
    """Balance rows of a compact reply: the ledger field ("path|unit|period|bucket"), then
    integers as integers (the store's own clients decode strings; one handed in may not)."""
    out = []
    flat = flat_rows(rows)
    for i in range(0, len(flat), 8):
        field, a, r, sp, debt, od, over, status = flat[i:i + 8]
        scope, unit, period, bucket = text(field).rsplit("|", 3)
        out.append(Balance(scope, UNITS[unit], period or None, bucket, a, r, sp, debt, od,
                           over == 1, STATUSES[status]))
    return tuple(out)


def later(rows: list[Any]) -> Callable[[], tuple[Balance, ...]]:
    """Balance rows built when first read: most callers never read them."""
    return partial(_rows, rows)


_AMOUNTS: dict[str, tuple[Amount, ...]] = {}
"""Packed amounts already read (amounts are immutable; the same few come back call after
call), bounded."""


def amounts(packed: str) -> tuple[Amount, ...]:
    """Amounts packed as "UNIT=amount,..." (see payloads.packed)."""
    found = _AMOUNTS.get(packed)
    if found is not None:
        return found
    out = []
    for part in filter(None, packed.split(",")):
        unit, _, amount = part.partition("=")
        out.append(Amount.trusted(UNITS[unit], int(amount)))
    if len(_AMOUNTS) >= 1024:
        _AMOUNTS.clear()
    found = _AMOUNTS[packed] = tuple(out)
    return found


def balance(row: list[Any]) -> Balance:
    """A balance of a JSON reply: integers as decimal strings, exact past 2^53."""
    scope, unit, period, bucket, a, r, sp, debt, od, over, status = row
    return Balance(scope, Unit(unit), period or None, bucket, int(a), int(r), int(sp), int(debt),
                   int(od), bool(int(over)), BudgetStatus(status))


def balances(rows: list[Any] | None) -> tuple[Balance, ...]:
    """The balances of a JSON reply, none when it has none."""
    return tuple(balance(row) for row in rows or [])


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def decision(body: dict[str, Any]) -> Decision:
    """A decision a script explained (refusals, caps, and what shadow mode observed)."""
    caps = body.get("caps")
    observed = body.get("observed")
    return Decision(
        Outcome(body["outcome"]),
        None if not caps else Caps(
            max_tokens=caps.get("max_tokens"),
            tool_allowlist=tuple(caps["tool_allowlist"]) if "tool_allowlist" in caps else None,
            tool_denylist=tuple(caps["tool_denylist"]) if "tool_denylist" in caps else None,
            cooldown_ms=caps.get("cooldown_ms"), model=caps.get("model")),
        body.get("reason"), body.get("scope"),
        Unit(body["unit"]) if body.get("unit") else None, _int(body.get("remaining")),
        _int(body.get("limit")), _int(body.get("requested")), _int(body.get("retry_after_ms")),
        None if not observed else decision(observed),
        tuple(body.get("missing_dimensions") or ()))


def info(row: list[Any]) -> ReservationInfo:
    """A reservation as `get` and JSON replays answer it."""
    (rid, tenant, status, subject, action, estimate, scopes, created, expires, grace, ext,
     policy, charged, finalized) = row
    fields = json.loads(subject)
    fields.pop("scope_path", None)
    act = json.loads(action)
    return ReservationInfo(
        rid, tenant, ReservationStatus(status), Subject(**fields),
        Action(act["kind"], act["name"], tags=tuple(act.get("tags") or ())),
        amounts(estimate), tuple(scopes) if isinstance(scopes, list) else (),
        int(created), int(expires), int(grace), int(ext),
        OveragePolicy(policy) if policy else None, amounts(charged), _int(finalized))


def error(body: dict[str, Any]) -> AllotmentError:
    """The error a script answered: a refusal carries its decision, the rest their code."""
    code, message = body["error"], body.get("message", "")
    refusal = body.get("decision")
    if refusal:
        found = decision(refusal)
        if code in ("BUDGET_NOT_FOUND", "DIMENSION_REQUIRED"):
            return Denied(found)
        return BudgetExceeded(found)
    return by_code(code, message)


def note(tenant: str, row: list[Any], clock: Callable[[], int] | None,
         at: int | None = None) -> Notification:
    """A notification row of a reply, stamped with the store's time."""
    kind, scope, unit, bucket, threshold, remaining, allocated, rid = row[:8]
    detail = dict(row[9]) if len(row) > 9 and isinstance(row[9], dict) else {}
    packed = detail.pop("amounts", None)
    if "exhausts_at_ms" in detail:
        detail["exhausts_at_ms"] = int(detail["exhausts_at_ms"])
    return Notification(kind, tenant, now_ms(clock) if at is None else at, scope=scope,
                        unit=Unit(unit) if unit else None, bucket=bucket,
                        threshold=None if threshold is None else float(threshold),
                        reason=row[8] if len(row) > 8 else None,
                        remaining=_int(remaining), allocated=_int(allocated),
                        reservation_id=rid or None,
                        amounts=amounts(packed) if packed else (), detail=detail)


def record(tenant: str, flat: list[str]) -> AuditRecord:
    """An audit entry: the stream entry's field/value list, empty values left out."""
    f = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    subject = None
    if f.get("subject"):
        fields = json.loads(f["subject"])
        fields.pop("scope_path", None)
        subject = Subject(**fields)
    return AuditRecord(
        int(f["seq"]), int(f["at"]), f["type"], tenant,
        scopes=tuple(json.loads(f["scopes"])) if "scopes" in f else (), subject=subject,
        action=f.get("action"), reservation_id=f.get("reservation_id"),
        idempotency_key=f.get("idempotency_key") or None,
        estimate=amounts(f.get("estimate", "")), actual=amounts(f.get("actual", "")),
        charged=amounts(f.get("charged", "")), reason=f.get("reason"),
        detail=_detail(f.get("detail")), actor=f.get("actor"))


INTEGER_DETAILS = frozenset({"limit", "remaining", "requested", "retry_after_ms",
                             "max_tokens", "by_ms", "expires_at_ms", "overdraft_limit",
                             "allocated", "debt_incurred"})
"""Detail values the scripts send as strings: integers past cjson's 14 digits stay exact
(and a threshold, a double, as "%.17g")."""


_USAGE_UNITS = tuple(Unit)
"""The units of a usage entry's fields, in the order the read answers them (USAGE_TAGS in
common.lua: denials, five token counts, then one field per unit)."""
USAGE_WIDTH = 2 + 6 + len(_USAGE_UNITS)
"""Items per usage entry in a read's reply: its name, its name's value, its other fields."""


def usage_entry(items: list[Any]) -> UsageEntry:
    """One usage entry as the read answers it (USAGE_WIDTH items): "u|day|scope|model", then
    the calls (or, left by an earlier version, the packed counts "calls,denials,<5 token
    counts>,UNIT=spend,..."), then the denials, token counts and spend per unit, each an
    integer or absent (false: no such count yet)."""
    _, _, scope, model = items[0].split("|", 3)
    head = items[1]
    if head.lstrip("-").isdigit():
        tally = Tally()
        tally.numbers[0] = int(head)
    else:
        tally = Tally.unpacked(head)
    for i, value in enumerate(items[2:8], 1):
        if value:
            tally.numbers[i] += int(value)
    for unit, value in zip(_USAGE_UNITS, items[8:], strict=True):
        if value:
            tally.spend[unit] = tally.spend.get(unit, 0) + int(value)
    return UsageEntry(scope, model, tally)


def _detail(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    detail = json.loads(raw)
    if not isinstance(detail, dict):
        return {}
    return {k: (int(v) if k in INTEGER_DETAILS else float(v) if k == "threshold" else v)
            if isinstance(v, str) else v for k, v in detail.items()}


__all__ = ["USAGE_WIDTH", "amounts", "balance", "balances", "decision", "error", "flat_rows",
           "info", "later", "note", "now_ms", "record", "text", "usage_entry"]
