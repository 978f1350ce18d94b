"""The Cycles v0 wire: strict request models and the response bodies built from the guard's
results. A body the spec defines never carries a `null` or a field it does not declare
(clients parse with `extra="forbid"`); absent optionals are left out."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..amounts import Amount, Unit
from ..models import (
    Action,
    Balance,
    Caps,
    Decision,
    Outcome,
    ReservationInfo,
    ReservationStatus,
)
from ..scopes import LEVELS, Subject
from ..validation import MAX_AMOUNT, shown
from .errors import bad_request, forbidden

MAX_DEPTH = 32
"""Nesting deeper than this (in metadata) is refused: no legitimate body needs it."""
UnitName = Literal["USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"]
PolicyName = Literal["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=256)]
Metadata = dict[str, Any]
KIND_PREFIX = "cycles."
"""Cycles allows any action kind; allotment's are <category>.<operation>. A one-word kind
(the Cycles clients' default "unknown") is kept as `cycles.<kind>` and shown as sent."""
_ONE_WORD = re.compile(r"[a-z0-9_]{1,32}")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


_M = TypeVar("_M", bound=_Strict)


class WireAmount(_Strict):
    unit: UnitName
    amount: int = Field(ge=0, le=MAX_AMOUNT)

    def amount_(self) -> Amount:
        return Amount(Unit(self.unit), self.amount)


class WireSubject(_Strict):
    tenant: str | None = Field(None, max_length=128)
    workspace: str | None = Field(None, max_length=128)
    app: str | None = Field(None, max_length=128)
    workflow: str | None = Field(None, max_length=128)
    agent: str | None = Field(None, max_length=128)
    toolset: str | None = Field(None, max_length=128)
    dimensions: dict[str, Annotated[str, Field(max_length=256)]] | None = Field(
        None, max_length=16)


class WireAction(_Strict):
    kind: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=256)
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=10)
    policy_keys: Any = None
    """A v0.1.26 field that servers of v0.1.25 must ignore without error."""


class NamedBody(_Strict):
    """What the calls that name a subject share: reserve, decide, events."""

    idempotency_key: IdempotencyKey
    subject: WireSubject
    action: WireAction


class ReserveBody(NamedBody):
    estimate: WireAmount
    ttl_ms: int | None = Field(None, ge=1_000, le=86_400_000)
    grace_period_ms: int | None = Field(None, ge=0, le=60_000)
    overage_policy: PolicyName | None = None
    dry_run: bool | None = None
    metadata: Metadata | None = None
    observe_mode: Any = None
    """A v0.1.26 field that servers of v0.1.25 must ignore without error."""


class DecideBody(NamedBody):
    estimate: WireAmount
    metadata: Metadata | None = None


class Metrics(_Strict):
    tokens_input: int | None = Field(None, ge=0)
    tokens_output: int | None = Field(None, ge=0)
    latency_ms: int | None = Field(None, ge=0)
    model_version: str | None = Field(None, max_length=128)
    custom: Metadata | None = None


class CommitBody(_Strict):
    idempotency_key: IdempotencyKey
    actual: WireAmount
    metrics: Metrics | None = None
    metadata: Metadata | None = None


class ReleaseBody(_Strict):
    idempotency_key: IdempotencyKey
    reason: str | None = Field(None, max_length=256)


class ExtendBody(_Strict):
    idempotency_key: IdempotencyKey
    extend_by_ms: int = Field(ge=1, le=86_400_000)
    metadata: Metadata | None = None


class EventBody(NamedBody):
    actual: WireAmount
    overage_policy: PolicyName | None = None
    metrics: Metrics | None = None
    client_time_ms: int | None = Field(None, ge=0)
    metadata: Metadata | None = None


# -- reading requests ------------------------------------------------------------------------

def parse(model: type[_M], raw: bytes) -> _M:
    """The body as `model`, or a 400 that says what was wrong with it."""
    if not raw:
        raise bad_request("the request needs a JSON body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"malformed JSON: {error}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
    # depth ≤ 1 + the number of brackets: the walk runs only when nesting could be too deep
    if raw.count(b"{") + raw.count(b"[") >= MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise bad_request(f"the body is nested more than {MAX_DEPTH} levels deep")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise bad_request(_explain(error)) from None


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _explain(error: ValidationError) -> str:
    """One line per broken rule, naming the field, what it needs and what came."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "body"
        kind, message = item["type"], item["msg"]
        if kind == "extra_forbidden":
            lines.append(f"{field}: unknown field")
            continue
        if kind == "missing":
            lines.append(f"{field}: required")
            continue
        if kind in ("int_type", "int_from_float"):
            message = "expected a JSON integer (no floats, strings or booleans)"
        lines.append(f"{field}: {message} (got {shown(item.get('input'))})")
    return "; ".join(lines)


MAX_CACHED = 4096
"""Subjects and actions kept per process, each under the wire values it was built from
(then the lot is dropped and rebuilt on demand)."""
_SUBJECTS: dict[tuple[Any, ...], Subject] = {}
_ACTIONS: dict[tuple[Any, ...], Action] = {}


def _remember(cache: dict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[key] = value


def subject(wire: WireSubject, tenant: str) -> Subject:
    """The subject of the key's tenant; one that names another tenant is forbidden.

    `Subject` and `Action` are frozen values whose checks depend on their fields alone, so
    the one built for the same wire values (the tenant being the key's) is reused: most
    requests name a handful of subjects. A value that fails its checks is never kept."""
    named = wire.tenant
    levels = (wire.workspace, wire.app, wire.workflow, wire.agent, wire.toolset)
    if named is None and levels.count(None) == len(levels):
        raise bad_request("subject: give at least one of " + ", ".join(LEVELS)
                          + " (dimensions alone do not name a scope)")
    if named is not None and named.lower() != tenant:
        raise forbidden(f"subject.tenant {shown(named)} is not the tenant of this key")
    dimensions = wire.dimensions
    key = (tenant, *levels, tuple(dimensions.items()) if dimensions else None)
    made = _SUBJECTS.get(key)
    if made is None:
        fields = wire.model_dump(exclude_none=True)
        fields["tenant"] = tenant
        made = Subject(**fields)
        _remember(_SUBJECTS, key, made)
    return made


def action(wire: WireAction) -> Action:
    """The action the wire names (a one-word kind kept as `cycles.<kind>`), reused as
    `subject` is."""
    tags = tuple(wire.tags) if wire.tags else ()
    key = (wire.kind, wire.name, tags)
    made = _ACTIONS.get(key)
    if made is None:
        kind = wire.kind
        if _ONE_WORD.fullmatch(kind):
            kind = KIND_PREFIX + kind
        made = Action(kind, wire.name, tags=tags)
        _remember(_ACTIONS, key, made)
    return made


# -- building responses ------------------------------------------------------------------------

def amount(value: Amount) -> dict[str, Any]:
    return {"unit": value.unit.value, "amount": value.amount}


def _unit_amount(unit: str, value: int) -> dict[str, Any]:
    return {"unit": unit, "amount": value}


def balance(row: Balance) -> dict[str, Any]:
    """A ledger as a Cycles Balance: `scope` is its last segment, `scope_path` the whole."""
    unit = row.unit.value  # an enum's .value is a descriptor call: read it once per row
    body: dict[str, Any] = {
        "scope": row.scope.rsplit("/", 1)[-1], "scope_path": row.scope,
        "remaining": {"unit": unit, "amount": row.remaining},
        "reserved": {"unit": unit, "amount": row.reserved},
        "spent": {"unit": unit, "amount": row.spent},
        "allocated": {"unit": unit, "amount": row.allocated},
        "debt": {"unit": unit, "amount": row.debt}}
    if row.overdraft_limit:
        body["overdraft_limit"] = _unit_amount(unit, row.overdraft_limit)
    if row.is_over_limit:
        body["is_over_limit"] = True
    return body


def balances(rows: tuple[Balance, ...]) -> list[dict[str, Any]]:
    return [balance(row) for row in rows]


def caps(value: Caps) -> dict[str, Any]:
    """The caps Cycles carries (a degrade rule's cheaper model has no field there)."""
    body: dict[str, Any] = {}
    for name in ("max_tokens", "max_steps_remaining", "cooldown_ms"):
        number = getattr(value, name)
        if number is not None:
            body[name] = number
    for name in ("tool_allowlist", "tool_denylist"):
        names = getattr(value, name)
        if names is not None:
            body[name] = list(names)
    return body


def decision(value: Decision, scopes: tuple[str, ...]) -> dict[str, Any]:
    """A DecisionResponse (decide, and the evaluation part of a dry run)."""
    body: dict[str, Any] = {"decision": value.outcome.value}
    if value.outcome is Outcome.ALLOW_WITH_CAPS and value.caps is not None:
        body["caps"] = caps(value.caps)
    elif value.outcome is Outcome.ALLOW_WITH_CAPS:
        body["decision"] = Outcome.ALLOW.value
    if value.outcome is Outcome.DENY:
        body["reason_code"] = value.reason or "DENIED"
        if value.retry_after_ms is not None:
            body["retry_after_ms"] = value.retry_after_ms
    body["affected_scopes"] = list(scopes)
    return body


def wire_subject(value: Subject) -> dict[str, Any]:
    body: dict[str, Any] = {level: v for level, v in value.levels()}
    if value.dimensions:
        body["dimensions"] = dict(value.dimensions)
    return body


def wire_action(value: Action) -> dict[str, Any]:
    kind = value.kind
    if kind.startswith(KIND_PREFIX) and _ONE_WORD.fullmatch(kind[len(KIND_PREFIX):]):
        kind = kind[len(KIND_PREFIX):]
    body: dict[str, Any] = {"kind": kind, "name": value.name}
    if value.tags:
        body["tags"] = list(value.tags)
    return body


def reservation(info: ReservationInfo) -> dict[str, Any]:
    """A ReservationDetail (and the rows of a list)."""
    body: dict[str, Any] = {
        "reservation_id": info.id, "status": info.status.value,
        "subject": wire_subject(info.subject), "action": wire_action(info.action),
        "reserved": amount(info.estimate[0]), "created_at_ms": info.created_at_ms,
        "expires_at_ms": info.expires_at_ms, "scope_path": info.subject.scope_path,
        "affected_scopes": list(info.subject.scopes())}
    if info.status is ReservationStatus.COMMITTED and info.charged:
        body["committed"] = amount(info.charged[0])
    if info.status in (ReservationStatus.COMMITTED, ReservationStatus.RELEASED) and (
            info.finalized_at_ms is not None):
        body["finalized_at_ms"] = info.finalized_at_ms
    return body


def error_body(code: str, message: str, request_id: str, trace_id: str,
               details: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message, "request_id": request_id,
                            "trace_id": trace_id}
    if details:
        body["details"] = {k: v for k, v in details.items() if v is not None}
    return body

