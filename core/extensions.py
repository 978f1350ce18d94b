"""allotment's extensions of the Cycles wire, shared by the server and the remote guard.

The Cycles v0 wire has no room for an estimate in several units, an elastic estimate, the
provider's token counts, or the whole of a result (every unit charged, a balance's period).
A request carries them in one optional body field, `allotment`, that a plain Cycles client
never sends; a read (GET) asks for them with the `X-Allotment-Extensions: 1` header. Only a
request that used an extension gets the extra answer field `allotment`; every other answer
keeps the Cycles shape exactly. `GET /v1/allotment` announces the server (see README).

Everything here is data and its conversions: request models (strict: a wrong type or an
unknown field is refused) and the full-fidelity shapes of results, both ways.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .amounts import Amount, Unit
from .errors import InvalidRequest
from .models import (
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
from .policy import Elastic
from .pricing import TokenUsage
from .scopes import Subject
from .usage import TokenCounts
from .validation import MAX_AMOUNT

FIELD = "allotment"
"""The body field of a request that uses an extension, and of its answer's extra part."""
HEADER = "X-Allotment-Extensions"
"""A GET that sends this header with the value "1" gets the extra answer field."""
ANNOUNCE_PATH = "/v1/allotment"
"""The route by which an allotment server announces itself and its extensions."""
SERVER = "allotment"
VERSION = 1
"""The version of the extensions; a server announces the one it speaks."""

UnitName = Literal["USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"]
_Count = Annotated[int, Field(ge=0, le=MAX_AMOUNT)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class XAmount(_Strict):
    unit: UnitName
    amount: _Count

    def value(self) -> Amount:
        return Amount(Unit(self.unit), self.amount)


Amounts = Annotated[list[XAmount], Field(min_length=1, max_length=len(Unit))]


class XElastic(_Strict):
    """An `al.Elastic`: `fixed` plus `per_mtok` per million output tokens, for up to
    `max_tokens` output tokens and no fewer than `floor`."""

    fixed: Annotated[list[XAmount], Field(max_length=len(Unit))] = []
    per_mtok: Amounts
    max_tokens: Annotated[int, Field(ge=1)]
    floor: Annotated[int, Field(ge=0)] = 1


class XUsage(_Strict):
    """An `al.TokenUsage`: the provider's token counts, for the usage export."""

    input_tokens: _Count = 0
    cache_read_tokens: _Count = 0
    cache_write_tokens: _Count = 0
    output_tokens: _Count = 0
    reasoning_tokens: _Count = 0


class EstimateExt(_Strict):
    """On reserve and decide: the whole estimate, in several units or elastic (one of the
    two); the Cycles `estimate` must be one of its amounts."""

    estimate: Amounts | None = None
    elastic: XElastic | None = None


class ActualExt(_Strict):
    """On commit and events: the whole actual in several units (the Cycles `actual` must be
    one of its amounts), and the provider's token counts."""

    actual: Amounts | None = None
    usage: XUsage | None = None


class AnswerExt(_Strict):
    """On release and extend: no data, only the request for the whole result."""


# -- requests: the extension's values -----------------------------------------------------

def _one_each(amounts: list[XAmount], field: str) -> dict[Unit, int]:
    by_unit: dict[Unit, int] = {}
    for item in amounts:
        unit = Unit(item.unit)
        if unit in by_unit:
            raise InvalidRequest(f"{field}: {unit.value} is given twice; give each unit once")
        by_unit[unit] = item.amount
    return by_unit


def _among(cycles: Amount, by_unit: dict[Unit, int], field: str, cycles_field: str) -> None:
    """The Cycles field must be one of the extension's amounts: a reader of the Cycles part
    alone sees a true part of the request."""
    if by_unit.get(cycles.unit) != cycles.amount:
        shown = ", ".join(f"{u.value} {a}" for u, a in by_unit.items())
        raise InvalidRequest(f"{cycles_field}: {cycles.unit.value} {cycles.amount} is not one "
                             f"of {FIELD}.{field} ({shown}); send one of those amounts as "
                             f"{cycles_field}")


def estimate(cycles: Amount, ext: EstimateExt | None) -> list[Amount] | Elastic | Amount:
    """The estimate a reserve or decide request asks for."""
    if ext is None or (ext.estimate is None and ext.elastic is None):
        return cycles
    if ext.estimate is not None and ext.elastic is not None:
        raise InvalidRequest(f"{FIELD}: give estimate or elastic, not both")
    if ext.estimate is not None:
        by_unit = _one_each(ext.estimate, f"{FIELD}.estimate")
        _among(cycles, by_unit, "estimate", "estimate")
        return [Amount(u, a) for u, a in by_unit.items()]
    assert ext.elastic is not None
    terms = ext.elastic
    fixed = _one_each(terms.fixed, f"{FIELD}.elastic.fixed")
    rates = _one_each(terms.per_mtok, f"{FIELD}.elastic.per_mtok")
    try:
        made = Elastic(fixed=[Amount(u, a) for u, a in fixed.items()],
                       per_mtok=[Amount(u, a) for u, a in rates.items()],
                       max_tokens=terms.max_tokens, floor=terms.floor)
    except ValueError as error:
        raise InvalidRequest(f"{FIELD}.elastic: {error}") from None
    _among(cycles, made.units(), "elastic.fixed", "estimate")
    return made


def actual(cycles: Amount, ext: ActualExt | None) -> list[Amount] | Amount:
    """The actual a commit or event request charges."""
    if ext is None or ext.actual is None:
        return cycles
    by_unit = _one_each(ext.actual, f"{FIELD}.actual")
    _among(cycles, by_unit, "actual", "actual")
    return [Amount(u, a) for u, a in by_unit.items()]


def usage(ext: ActualExt | None) -> TokenUsage | None:
    if ext is None or ext.usage is None:
        return None
    return TokenUsage(**ext.usage.model_dump())


def usage_body(counts: TokenCounts) -> dict[str, int]:
    """The extension's usage of the token counts an operation carries."""
    names = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
             "reasoning_tokens")
    return {name: count for name, count in zip(names, counts, strict=True) if count}


# -- results: the whole of each, both ways --------------------------------------------------

def amounts(values: tuple[Amount, ...]) -> list[dict[str, Any]]:
    return [{"unit": a.unit.value, "amount": a.amount} for a in values]


def amounts_of(body: list[dict[str, Any]]) -> tuple[Amount, ...]:
    return tuple(Amount(Unit(a["unit"]), int(a["amount"])) for a in body)


def caps(value: Caps) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("max_tokens", "cooldown_ms", "max_steps_remaining", "model"):
        if getattr(value, name) is not None:
            body[name] = getattr(value, name)
    for name in ("tool_allowlist", "tool_denylist"):
        if getattr(value, name) is not None:
            body[name] = list(getattr(value, name))
    return body


def caps_of(body: dict[str, Any]) -> Caps:
    allow, deny = body.get("tool_allowlist"), body.get("tool_denylist")
    return Caps(max_tokens=body.get("max_tokens"), cooldown_ms=body.get("cooldown_ms"),
                max_steps_remaining=body.get("max_steps_remaining"), model=body.get("model"),
                tool_allowlist=None if allow is None else tuple(allow),
                tool_denylist=None if deny is None else tuple(deny))


def decision(value: Decision) -> dict[str, Any]:
    body: dict[str, Any] = {"outcome": value.outcome.value}
    if value.caps is not None:
        body["caps"] = caps(value.caps)
    for name in ("reason", "scope", "remaining", "limit", "requested", "retry_after_ms"):
        if getattr(value, name) is not None:
            body[name] = getattr(value, name)
    if value.unit is not None:
        body["unit"] = value.unit.value
    if value.observed is not None:
        body["observed"] = decision(value.observed)
    if value.missing_dimensions:
        body["missing_dimensions"] = list(value.missing_dimensions)
    return body


def decision_of(body: dict[str, Any]) -> Decision:
    return Decision(
        Outcome(body["outcome"]),
        caps=caps_of(body["caps"]) if "caps" in body else None, reason=body.get("reason"),
        scope=body.get("scope"), unit=Unit(body["unit"]) if "unit" in body else None,
        remaining=body.get("remaining"), limit=body.get("limit"),
        requested=body.get("requested"), retry_after_ms=body.get("retry_after_ms"),
        observed=decision_of(body["observed"]) if "observed" in body else None,
        missing_dimensions=tuple(body.get("missing_dimensions", ())))


def subject(value: Subject) -> dict[str, Any]:
    body: dict[str, Any] = dict(value.levels())
    if value.dimensions:
        body["dimensions"] = dict(value.dimensions)
    return body


def action(value: Action) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": value.kind, "name": value.name}
    if value.tags:
        body["tags"] = list(value.tags)
    return body


def action_of(body: dict[str, Any]) -> Action:
    return Action(body["kind"], body["name"], tags=tuple(body.get("tags", ())))


def reservation(info: ReservationInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": info.id, "tenant": info.tenant, "status": info.status.value,
        "subject": subject(info.subject), "action": action(info.action),
        "estimate": amounts(info.estimate), "scopes": list(info.scopes),
        "created_at_ms": info.created_at_ms, "expires_at_ms": info.expires_at_ms,
        "grace_ms": info.grace_ms, "extensions": info.extensions,
        "charged": amounts(info.charged)}
    if info.overage_policy is not None:
        body["overage_policy"] = info.overage_policy.value
    if info.finalized_at_ms is not None:
        body["finalized_at_ms"] = info.finalized_at_ms
    return body


def reservation_of(body: dict[str, Any]) -> ReservationInfo:
    policy = body.get("overage_policy")
    return ReservationInfo(
        body["id"], body["tenant"], ReservationStatus(body["status"]),
        Subject(**body["subject"]), action_of(body["action"]), amounts_of(body["estimate"]),
        tuple(body["scopes"]), int(body["created_at_ms"]), int(body["expires_at_ms"]),
        int(body["grace_ms"]), int(body["extensions"]),
        OveragePolicy(policy) if policy else None, amounts_of(body.get("charged", [])),
        body.get("finalized_at_ms"))


def balance(row: Balance) -> dict[str, Any]:
    body: dict[str, Any] = {
        "scope": row.scope, "unit": row.unit.value, "bucket": row.bucket,
        "allocated": row.allocated, "reserved": row.reserved, "spent": row.spent,
        "debt": row.debt, "overdraft_limit": row.overdraft_limit,
        "is_over_limit": row.is_over_limit, "status": row.status.value}
    if row.period is not None:
        body["period"] = row.period
    return body


def balances(rows: tuple[Balance, ...]) -> list[dict[str, Any]]:
    return [balance(row) for row in rows]


def balance_of(body: dict[str, Any]) -> Balance:
    return Balance(body["scope"], Unit(body["unit"]), body.get("period"), body["bucket"],
                   int(body["allocated"]), int(body["reserved"]), int(body["spent"]),
                   int(body["debt"]), int(body["overdraft_limit"]),
                   bool(body["is_over_limit"]), BudgetStatus(body["status"]))


def balances_of(body: list[dict[str, Any]]) -> tuple[Balance, ...]:
    return tuple(balance_of(row) for row in body)


def announcement() -> dict[str, Any]:
    """What `GET /v1/allotment` answers."""
    return {"server": SERVER, "extensions": VERSION}
