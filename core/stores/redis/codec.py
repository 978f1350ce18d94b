"""One entry per kind of operation: the function it calls, its keys and arguments, and how
its reply becomes the result.

The hot operations travel light: reserve and settle take flat arguments instead of a JSON
document, and reserve, commit and release answer with a compact array (integers as integers)
from which the results are built with what the operation already holds. The others send and
answer JSON documents.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidRequest
from ...ids import new_id
from ...models import (
    ApiKey,
    CommitResult,
    Decision,
    ExtendResult,
    FundResult,
    Outcome,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    ReservationStatus,
    TenantClosure,
    TenantInfo,
    TenantStatus,
    TransferResult,
)
from ...reports import report_rows
from ...scopes import parse_scope
from ...usage import UsagePage
from .. import operations as ops
from . import payloads as out
from . import replies as back
from .keys import api_keys_key, idempotency_key, none_key, reservation_key, tenant_keys

Encode = Callable[[Any, "Wire"], tuple[list[str], list[Any]]]
"""(operation, wire) → the call's keys and arguments."""
Result = Callable[[Any, dict[str, Any], "Wire"], Any]
"""(operation, JSON reply, wire) → the result."""
Compact = Callable[[Any, list[Any]], Any]
"""(operation, compact reply) → the result."""


@dataclass(frozen=True)
class Wire:
    """What every call carries besides its payload: the store's settings and, in tests, the
    clock that replaces Redis `TIME`."""

    settings: str
    clock: Callable[[], int] | None

    def args(self, first: Any, *rest: Any) -> list[Any]:
        """The arguments of a call: its document or operation name, the time, the settings,
        then any flat arguments."""
        now = "" if self.clock is None else str(self.clock())
        return [first, now, self.settings, *rest]


@dataclass(frozen=True)
class Codec:
    """How one kind of operation travels: `registers` adds a tenant's first such call to the
    sweeper's set; `durable` calls wait for disk or replicas under strict durability."""

    function: str
    encode: Encode
    result: Result
    compact: Compact | None = None
    registers: bool = False
    durable: bool = False


# -- reserve and settle: flat arguments, compact replies ---------------------------------------


def _reserve(op: ops.Reserve, wire: Wire) -> tuple[list[str], list[Any]]:
    tenant = op.tenant
    rid = new_id(tenant)
    keys = [*tenant_keys(tenant), reservation_key(tenant, rid),
            idempotency_key(tenant, "reserve", op.idempotency_key)]
    return keys, wire.args("reserve", rid, tenant, op.idempotency_key or "", op.fingerprint,
                           *out.flat_reserve(op))


def _settle(name: str, detail: Callable[[Any], str]) -> Encode:
    """Commit, release and extend: the reservation's key and one detail argument (a
    commit's token counts after it, when it carries them)."""
    def encode(op: Any, wire: Wire) -> tuple[list[str], list[Any]]:
        tenant, rid = op.tenant, op.reservation_id
        keys = [*tenant_keys(tenant), reservation_key(tenant, rid), none_key(tenant)]
        args = wire.args(name, rid, tenant, op.idempotency_key or "", op.fingerprint,
                         detail(op))
        usage = getattr(op, "usage", None)
        if usage is not None:
            args.append(",".join(map(str, usage)))
        return keys, args
    return encode


def _reserved(op: ops.Reserve, reply: list[Any]) -> ops.ReserveOutcome:
    """The subject, action, ttl of a reservation are those the fingerprint of a replay
    matched, so the reply leaves them out."""
    said, rid, created, estimate, rows, _ = reply
    decision = (Decision(Outcome.ALLOW) if said in (b"ALLOW", "ALLOW")
                else back.decision(json.loads(said)))
    info = None
    if rid is not None:
        info = ReservationInfo(
            back.text(rid), op.tenant, ReservationStatus.ACTIVE, op.subject, op.action,
            back.amounts(back.text(estimate)),
            tuple(dict.fromkeys(back.text(field).rsplit("|", 3)[0]
                                for field in back.flat_rows(rows)[0::8])),
            created, created + op.ttl_ms, op.grace_ms, 0, op.overage_policy, (), None)
    return ops.ReserveOutcome(decision, info, back.later(rows))


def _committed(op: ops.Commit, reply: list[Any]) -> CommitResult:
    charged, released, rows, _ = reply
    return CommitResult(op.reservation_id, ReservationStatus.COMMITTED,
                        back.amounts(back.text(charged)), back.amounts(back.text(released)),
                        back.later(rows))


def _released(op: ops.Release, reply: list[Any]) -> ReleaseResult:
    released, rows, _ = reply
    return ReleaseResult(op.reservation_id, ReservationStatus.RELEASED,
                         back.amounts(back.text(released)), back.later(rows))


# -- the rest: JSON documents --------------------------------------------------------------------


def _document(build: Callable[[Any], dict[str, Any]], kind: str = "",
              reservation: bool = False) -> Encode:
    """A JSON call: `kind` names a keyed operation's replay key, `reservation` declares the
    reservation's key."""
    def encode(op: Any, wire: Wire) -> tuple[list[str], list[Any]]:
        tenant = op.tenant
        payload = build(op)
        if kind:
            payload.update(key=op.idempotency_key, fp=op.fingerprint)
        payload["tenant"] = tenant
        keys = [*tenant_keys(tenant),
                reservation_key(tenant, op.reservation_id) if reservation else none_key(tenant),
                idempotency_key(tenant, kind, op.idempotency_key) if kind else none_key(tenant)]
        return keys, wire.args(out.compact_json(payload))
    return encode


def _record(op: ops.Record) -> dict[str, Any]:
    return {"op": "record", "scopes": list(op.scopes), "dims": [list(p) for p in op.dimensions],
            "subject": out.subject(op.subject), "action": out.action(op.action),
            "actual": out.pairs(op.actual), "policy": out.value(op.overage_policy),
            "shadow": op.shadow, "event_id": new_id(op.tenant),
            "usage": None if op.usage is None else list(op.usage)}


def _balances(op: ops.Balances) -> dict[str, Any]:
    path = parse_scope(op.scope)
    return {"op": "balances", "scope": path.path, "base": path.base,
            "dimension": list(path.dimension) if path.dimension else None,
            "children": op.include_children}


def _audit(op: ops.Audit) -> dict[str, Any]:
    return {"op": "audit", "since": op.since_ms, "until": op.until_ms, "limit": op.limit,
            "types": sorted(op.types) if op.types is not None else None}


def _fund(op: ops.Fund) -> dict[str, Any]:
    path = parse_scope(op.scope)
    return out.signed(op, {
        "op": "fund", "scope": path.path, "base": path.base,
        "per": path.dimension[0] if path.dimension else "", "unit": op.unit.value,
        "period": out.period_choice(op.period), "operation": op.operation.value,
        "amount": op.amount, "spent": op.spent})


def _transfer(op: ops.Transfer) -> dict[str, Any]:
    src, dst = parse_scope(op.source), parse_scope(op.destination)
    return out.signed(op, {
        "op": "transfer", "source": src.path, "source_base": src.base,
        "source_per": src.dimension[0] if src.dimension else "",
        "destination": dst.path, "destination_base": dst.base,
        "destination_per": dst.dimension[0] if dst.dimension else "",
        "unit": op.unit.value, "period": out.period_choice(op.period), "amount": op.amount})


def _report(op: ops.Report, body: dict[str, Any], wire: Wire) -> Any:
    flat = body["counts"]
    counts = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
    return report_rows(counts, op.period, int(body["at"]), op.by, op.top)


def _usage(op: ops.Usage, body: dict[str, Any], wire: Wire) -> UsagePage:
    flat = body["entries"] or []  # an empty Lua table comes as {}
    width = back.USAGE_WIDTH
    return UsagePage(body["period"], body["next"],
                     tuple(back.usage_entry(flat[i:i + width])
                           for i in range(0, len(flat), width)))


def _balances_of(op: Any, body: dict[str, Any], wire: Wire) -> Any:
    return back.balances(body["balances"])


def _nothing(op: Any, body: dict[str, Any], wire: Wire) -> None:
    return None


def _key_call(build: Callable[[Any], dict[str, Any]]) -> Encode:
    """A call of keys.lua: the tenant's key hash declared in slot 11."""
    def encode(op: Any, wire: Wire) -> tuple[list[str], list[Any]]:
        tenant = op.tenant
        keys = [*tenant_keys(tenant), api_keys_key(tenant), none_key(tenant)]
        return keys, wire.args(out.compact_json({**build(op), "tenant": tenant}))
    return encode


def _create_key(op: ops.CreateKey) -> dict[str, Any]:
    return {"op": "create_key", "key_id": op.key_id, "name": op.name,
            "permissions": list(op.permissions),
            "expires": "" if op.expires_at_ms is None else str(op.expires_at_ms),
            "hash": op.secret_hash}


def _update_key(op: ops.UpdateKey) -> dict[str, Any]:
    """Only the terms that change: an absent one is kept."""
    changed: dict[str, Any] = {"op": "update_key", "key_id": op.key_id}
    if op.name is not None:
        changed["name"] = op.name
    if op.permissions is not None:
        changed["permissions"] = list(op.permissions)
    return changed


def _api_key(tenant: str, body: dict[str, Any]) -> ApiKey:
    expires = body["expires"]
    return ApiKey(body["key_id"], tenant, body["name"], tuple(body["permissions"]),
                  int(body["created"]), int(expires) if expires else None, bool(body["revoked"]))


def _found_key(op: ops.FindKey, body: dict[str, Any], wire: Wire) -> ops.KeyMatch | None:
    if "key" not in body:
        return None
    return ops.KeyMatch(_api_key(op.tenant, body["key"]), body["hash"], int(body["now"]))


def _list(op: ops.ListReservations) -> dict[str, Any]:
    scan, sep, skip = (op.cursor or "0:0").partition(":")
    if not (sep and scan.isdigit() and skip.isdigit()):
        raise InvalidRequest("cursor: not a cursor of this store")
    return {"op": "list", "status": op.status.value if op.status else "", "limit": op.limit,
            "scan": scan, "skip": int(skip)}


def _listed(op: Any, body: dict[str, Any], wire: Wire) -> Any:
    rows = tuple(back.info(row) for row in (body["rows"] or []))
    return rows, body["cursor"] or None


def _tenant_info(op: Any, body: dict[str, Any]) -> TenantInfo:
    closed = body.get("closed")  # false (Lua's nil) when open
    return TenantInfo(op.tenant, body["name"], int(body["created"]),
                      int(closed) if closed else None)


def _closure(op: ops.CloseTenant, body: dict[str, Any], wire: Wire) -> TenantClosure:
    return TenantClosure(_tenant_info(op, body), int(body["released"]), int(body["budgets"]),
                         int(body["keys"]), int(body["hooks"]), bool(body["changed"]))


_DEFINITION = Codec("admin", _document(out.definition), _nothing, registers=True)
_SETTLED: dict[str, Result] = {
    "commit": lambda op, b, w: CommitResult(
        b["reservation_id"], ReservationStatus.COMMITTED, back.amounts(b["charged"]),
        back.amounts(b["released"]), back.balances(b["balances"])),
    "release": lambda op, b, w: ReleaseResult(
        b["reservation_id"], ReservationStatus.RELEASED, back.amounts(b["released"]),
        back.balances(b["balances"]))}
"""A commit or release answered in JSON: the replay of an earlier version's reply."""

CODECS: dict[type[ops.Op[Any]], Codec] = {
    ops.Reserve: Codec(
        "reserve", _reserve, lambda op, b, w: ops.ReserveOutcome(
            back.decision(b["decision"]),
            None if b.get("reservation") is None else back.info(b["reservation"]),
            back.balances(b.get("balances"))),
        _reserved, registers=True),
    ops.Commit: Codec("settle", _settle("commit", lambda op: out.packed(op.actual)),
                      _SETTLED["commit"], _committed, durable=True),
    ops.Release: Codec("settle", _settle("release", lambda op: op.reason),
                       _SETTLED["release"], _released),
    ops.Extend: Codec("settle", _settle("extend", lambda op: str(op.by_ms)),
                      lambda op, b, w: ExtendResult(b["reservation_id"],
                                                    int(b["expires_at_ms"]),
                                                    int(b["extensions"]))),
    ops.Record: Codec("record", _document(_record, "record"),
                      lambda op, b, w: RecordResult(b["event_id"], back.amounts(b["charged"]),
                                                    back.balances(b["balances"])),
                      durable=True),
    ops.Get: Codec("read", _document(lambda op: {"op": "get", "rid": op.reservation_id},
                                     reservation=True),
                   lambda op, b, w: back.info(b["reservation"])),
    ops.Balances: Codec("read", _document(_balances), _balances_of),
    ops.ListReservations: Codec("read", _document(_list), _listed),
    ops.Audit: Codec("read", _document(_audit),
                     lambda op, b, w: tuple(back.record(op.tenant, fields)
                                            for fields in reversed(b["records"]))),
    ops.Report: Codec("read", _document(lambda op: {
        "op": "report", "period": op.period.value, "at": op.at_ms, "by": op.by}), _report),
    ops.Usage: Codec("read", _document(lambda op: {
        "op": "usage", "period": op.period, "index": op.index, "limit": op.limit}), _usage),
    ops.PlanOf: Codec("read", _document(lambda op: {"op": "plan"}),
                      lambda op, b, w: b.get("plan")),
    ops.StatusOf: Codec("read", _document(lambda op: {"op": "status"}),
                        lambda op, b, w: TenantStatus(b["status"])),
    ops.Fund: Codec("admin", _document(_fund, "fund"),
                    lambda op, b, w: FundResult(back.balance(b["before"]),
                                                back.balance(b["after"])), registers=True),
    ops.Transfer: Codec("admin", _document(_transfer, "transfer"),
                        lambda op, b, w: TransferResult(back.balance(b["source"]),
                                                        back.balance(b["destination"])),
                        registers=True),
    ops.SetBudget: Codec("admin", _document(out.definition), _balances_of, registers=True),
    ops.SetStatus: Codec("admin", _document(out.definition),
                         lambda op, b, w: int(b["changed"]), registers=True),
    ops.SetBudgetTerms: Codec("admin", _document(out.definition),
                              lambda op, b, w: int(b["changed"]), registers=True),
    ops.RemoveBudget: Codec("admin", _document(out.definition),
                            lambda op, b, w: int(b["removed"]), registers=True),
    ops.SuspendTenant: Codec("admin", _document(lambda op: out.signed(op, {
        "op": "suspend_tenant", "suspended": op.suspended})),
        lambda op, b, w: int(b["changed"]), registers=True),
    ops.CloseTenant: Codec("admin", _document(lambda op: out.signed(op, {"op": "close_tenant"})),
                           _closure, registers=True),
    ops.SetQuota: _DEFINITION, ops.SetAccess: _DEFINITION, ops.SetMode: _DEFINITION,
    ops.ApplyPlan: _DEFINITION,
    ops.CreateKey: Codec("keys", _key_call(_create_key),
                         lambda op, b, w: _api_key(op.tenant, b["key"])),
    ops.ListKeys: Codec("keys", _key_call(lambda op: {"op": "list_keys"}),
                        lambda op, b, w: tuple(_api_key(op.tenant, k)
                                               for k in (b["keys"] or []))),
    ops.RevokeKey: Codec("keys", _key_call(lambda op: {"op": "revoke_key",
                                                       "key_id": op.key_id}),
                         lambda op, b, w: _api_key(op.tenant, b["key"])),
    ops.UpdateKey: Codec("keys", _key_call(_update_key),
                         lambda op, b, w: (_api_key(op.tenant, b["key"]), bool(b["changed"]))),
    ops.FindKey: Codec("keys", _key_call(lambda op: {"op": "find_key", "key_id": op.key_id}),
                       _found_key),
    ops.RegisterTenant: Codec("keys", _key_call(lambda op: {"op": "register_tenant",
                                                            "name": op.name}),
                              lambda op, b, w: (_tenant_info(op, b), bool(b["made"])),
                              registers=True),
    ops.GetTenant: Codec("keys", _key_call(lambda op: {"op": "get_tenant"}),
                         lambda op, b, w: _tenant_info(op, b) if "name" in b else None),
}
"""Every operation but the sweep, which calls one tenant at a time (`sweep_call`), and the
list of tenants, which reads the registry (`flow.Flows._tenants`)."""


class Refused(Exception):
    """A script's error and what its step notified before refusing (a reservation it
    expired first): the flow hands the notifications on, then raises the error."""

    def __init__(self, error: Exception, notes: list[Any] | None) -> None:
        super().__init__(error)
        self.error, self.notes = error, notes


def decode(op: ops.Op[Any], reply: Any, wire: Wire) -> tuple[Any, list[Any] | None]:
    """The result of a reply (a compact array or a JSON document) and the notification rows
    it carries; a script's error is raised."""
    codec = CODECS[type(op)]
    if isinstance(reply, list):
        assert codec.compact is not None, type(op).__name__  # only these answer arrays
        notes = reply[-1]
        return codec.compact(op, reply), json.loads(notes) if notes else None
    body = json.loads(reply)
    if "error" in body:
        raise Refused(back.error(body), body.get("notes"))
    return codec.result(op, body, wire), body.get("notes")


def sweep_call(tenant: str, limit: int, wire: Wire) -> tuple[list[str], list[Any]]:
    """Keys and arguments of one tenant's sweep, expiring at most `limit` reservations."""
    keys = [*tenant_keys(tenant), none_key(tenant), none_key(tenant)]
    return keys, wire.args(out.compact_json({"op": "sweep", "limit": limit, "tenant": tenant}))


def sweep_reads(tenant: str, now: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """What says whether a tenant's sweep has anything to do now (`sweep_due`): a
    reservation past its deadline (as reap finds them), and where its pruning stands."""
    keys = tenant_keys(tenant)
    return (("ZRANGEBYSCORE", keys[7], "-inf", f"({now}", "LIMIT", 0, 1),
            ("HMGET", keys[6], "prune_ledgers", "prune_runs", "prune_at"))


def sweep_due(overdue: Any, pruning: Any, now: int) -> bool:
    """Something to expire, a pruning pass under way, or one due (as sweep.lua decides).
    Read without a lock: a tenant found idle is swept next time, and its own next
    operation reaps what fell due meanwhile."""
    if overdue:
        return True
    ledgers, runs, due_at = (None if v is None else back.text(v) for v in pruning)
    if (ledgers or "0") != "0" or (runs or "0") != "0":
        return True
    return due_at is None or now >= int(due_at)


def swept(reply: Any) -> tuple[int, list[Any] | None]:
    """How many reservations one tenant's sweep expired, and their notifications."""
    body = json.loads(reply)
    return int(body["expired"]), body.get("notes") or None


__all__ = ["CODECS", "Codec", "Wire", "decode", "sweep_call", "sweep_due", "sweep_reads",
           "swept"]
