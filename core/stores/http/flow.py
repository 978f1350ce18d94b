"""The HTTP steps of each operation, written once for the sync and the async driver.

A flow is a generator: it yields each request (`Call`), receives its `Reply` and returns the
operation's result. The first operation asks the server whether it is allotment
(`GET /v1/allotment`); against allotment every operation uses the wire extensions
(`allotment.extensions`) and keeps every semantic, against another Cycles server an operation
that needs what its wire lacks is refused before anything is sent, naming the feature.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from ... import extensions as x
from ...amounts import Amount, Unit, Units, trusted_amounts
from ...errors import Denied, InvalidRequest, StoreUnavailable, denied
from ...ids import id_tenant
from ...models import (
    CommitResult,
    Decision,
    ExtendResult,
    Outcome,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    ReservationStatus,
)
from ...scopes import Subject, parse_scope
from .. import operations as ops
from . import answers

_REMEMBERED = 65_536
"""How many ids of another Cycles server are remembered as it wrote them (the oldest go
first; an id not remembered is sent in the UUID form)."""
PAGE = 200
"""The largest page the Cycles list and balance routes give."""
ADMIN = ("is not carried by the runtime wire: a remote guard enforces; administration, "
         "audit, reports and usage go through the server's admin API (/v1/admin/..., with "
         "the admin key) or the `allotment` command line")


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request to the server: a JSON body for POST, a query for GET; `whole` asks
    a read for allotment's whole result (the extensions header)."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    query: Mapping[str, str] | None = None
    whole: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


Flow = Generator[Call, Reply, Any]


def _key(op: ops.Keyed) -> str:
    """The op's idempotency key; the wire needs one on every write, so a call without one
    gets a fresh key, kept on the operation: a retry of it (a commit after a lost answer)
    replays on the server instead of applying twice."""
    if op.idempotency_key is None:
        op.idempotency_key = f"al-{uuid.uuid4().hex}"
    return op.idempotency_key


def _amount(unit: Unit, value: int) -> dict[str, Any]:
    return {"unit": unit.value, "amount": value}


def _subject(value: Subject) -> dict[str, Any]:
    return x.subject(value)


class Flows:
    """Builds the flow of each operation; remembers what the server said it is."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.allotment: bool | None = None
        """Whether the server announced allotment's extensions (None: not asked yet)."""
        self._wire_ids: dict[str, str] = {}
        """Another server's ids of the reservations made here, by the library's id."""
        self._flows: dict[type[Any], Callable[[Any], Flow]] = {
            ops.Reserve: self._reserve, ops.Commit: self._commit,
            ops.Release: self._release, ops.Extend: self._extend, ops.Record: self._record,
            ops.Get: self._get, ops.ListReservations: self._list,
            ops.Balances: self._balances}

    def run(self, op: ops.Op[Any]) -> Flow:
        flow = self._flows.get(type(op))
        if flow is None:
            raise _refused(op)
        if self.allotment is None:
            self.allotment = _announced((yield Call("GET", x.ANNOUNCE_PATH)), self.url)
        return (yield from flow(op))

    # -- what a plain Cycles server cannot carry ---------------------------------------------

    def _needs(self, feature: str) -> None:
        """Refuse a feature the plain Cycles wire lacks, unless the server is allotment."""
        if not self.allotment:
            raise InvalidRequest(
                f"{feature} needs an allotment server: the Cycles server at {self.url} does "
                "not announce allotment's wire extensions (GET /v1/allotment), and its wire "
                "has no room for it; nothing was sent")

    def _checked(self, reply: Reply, settling: bool = False) -> Any:
        """The body of a successful answer, or the library's error for a failed one. A
        closed tenant refuses a reservation (a denial) but fails a commit, release,
        extension or recorded spend (`settling`: the TenantClosed error), as in process."""
        if reply.status >= 400:
            found = answers.denial(reply.status, reply.body, reply.headers,
                                   settling) if isinstance(reply.body, dict) else None
            if found is not None:
                raise denied(found)
            raise answers.error(reply.status, reply.body, self.url)
        if not isinstance(reply.body, dict):
            raise StoreUnavailable(f"{self.url} answered HTTP {reply.status} without a JSON "
                                   "object")
        return reply.body

    def _whole(self, body: dict[str, Any]) -> dict[str, Any]:
        part = body.get(x.FIELD)
        if not isinstance(part, dict):
            raise StoreUnavailable(f"{self.url} announced allotment but answered without "
                                   f"the `{x.FIELD}` part")
        return part

    # -- ids ---------------------------------------------------------------------------------

    def _wire_id(self, rid: str) -> str:
        """The server's id of a reservation: allotment's ids travel as they are; another
        server's UUIDs are held as `<tenant>:<hex>` (the library's id shape), and sent back
        as the server wrote them."""
        if self.allotment:
            return rid
        known = self._wire_ids.get(rid)
        return known if known is not None else str(uuid.UUID(rid.partition(":")[2]))

    def _local_id(self, wire_id: str, tenant: str) -> str:
        try:
            local = wire_id if id_tenant(wire_id) == tenant else None
        except InvalidRequest:
            local = None
        if local is None:
            try:
                local = f"{tenant}:{uuid.UUID(wire_id).hex}"
            except ValueError:
                raise StoreUnavailable(f"{self.url} answered reservation id {wire_id!r}, "
                                       "neither allotment's nor a UUID") from None
        while len(self._wire_ids) >= _REMEMBERED:  # the oldest go (threads may race here)
            try:
                self._wire_ids.pop(next(iter(self._wire_ids)), None)
            except (StopIteration, RuntimeError):
                break
        self._wire_ids[local] = wire_id
        return local

    # -- reserve and decide ------------------------------------------------------------------

    def _reserve(self, op: ops.Reserve) -> Flow:
        if op.shadow:
            raise InvalidRequest("mode='shadow' on a remote guard: a tenant's mode is the "
                                 "server's setting (set_mode with the admin API or the "
                                 "`allotment` command line); nothing was sent")
        if op.default_plan is not None:
            raise InvalidRequest(f"default_plan on a remote guard {ADMIN}; nothing was sent")
        if op.elastic is not None:
            self._needs("an elastic estimate (al.Elastic)")
        if len(op.estimate) > 1:
            self._needs("an estimate in several units")
        unit, value = op.estimate[0]
        body: dict[str, Any] = {
            "idempotency_key": _key(op) if not op.dry_run else f"al-{uuid.uuid4().hex}",
            "subject": _subject(op.subject), "action": x.action(op.action),
            "estimate": _amount(unit, value)}
        if self.allotment:
            body[x.FIELD] = _estimate_ext(op)
        if op.dry_run:
            return (yield from self._decide(op, body))
        body.update(ttl_ms=op.ttl_ms, grace_period_ms=op.grace_ms)
        if op.overage_policy is not None:
            body["overage_policy"] = op.overage_policy.value
        reply = yield Call("POST", "/v1/reservations", body)
        try:
            answer = self._checked(reply)
        except Denied as refusal:
            return ops.ReserveOutcome(refusal.decision, None, ())
        if self.allotment:
            whole = self._whole(answer)
            return ops.ReserveOutcome(x.decision_of(whole["decision"]),
                                      x.reservation_of(whole["reservation"]),
                                      x.balances_of(whole["balances"]))
        found = answers.decision(answer)
        if found.outcome is Outcome.DENY:
            return ops.ReserveOutcome(found, None, ())
        rid = self._local_id(answer["reservation_id"], op.tenant)
        expires = int(answer["expires_at_ms"])
        info = ReservationInfo(
            rid, op.tenant, ReservationStatus.ACTIVE, op.subject, op.action,
            (answers.amount(answer["reserved"]),), op.scopes, expires - op.ttl_ms, expires,
            op.grace_ms, 0, op.overage_policy)
        return ops.ReserveOutcome(found, info, answers.balances(answer.get("balances", [])))

    def _decide(self, op: ops.Reserve, body: dict[str, Any]) -> Flow:
        reply = yield Call("POST", "/v1/decide", body)
        try:
            answer = self._checked(reply)
        except Denied as refusal:
            return ops.ReserveOutcome(refusal.decision, None, ())
        found: Decision = (x.decision_of(self._whole(answer)["decision"]) if self.allotment
                           else answers.decision(answer))
        return ops.ReserveOutcome(found, None, ())

    # -- settling ----------------------------------------------------------------------------

    def _actual(self, actual: Units, usage: Any, what: str) -> dict[str, Any]:
        """The Cycles `actual` (and metrics) of a commit or event, and allotment's part."""
        if len(actual) > 1:
            self._needs(f"{what} in several units")
        unit, value = actual[0]
        body: dict[str, Any] = {"actual": _amount(unit, value)}
        if self.allotment:
            part: dict[str, Any] = {}
            if len(actual) > 1:
                part["actual"] = [_amount(u, a) for u, a in actual]
            if usage is not None:
                part["usage"] = x.usage_body(usage)
            body[x.FIELD] = part
        elif usage is not None:  # the Cycles wire's place for token counts
            given, cache_read, cache_write, output, reasoning = usage
            body["metrics"] = {"tokens_input": given, "tokens_output": output, "custom": {
                "cache_read_tokens": cache_read, "cache_write_tokens": cache_write,
                "reasoning_tokens": reasoning}}
        return body

    def _commit(self, op: ops.Commit) -> Flow:
        body = {"idempotency_key": _key(op), **self._actual(op.actual, op.usage, "a commit")}
        path = f"/v1/reservations/{self._wire_id(op.reservation_id)}/commit"
        answer = self._checked((yield Call("POST", path, body)), settling=True)
        if self.allotment:
            whole = self._whole(answer)
            return CommitResult(op.reservation_id, ReservationStatus.COMMITTED,
                                x.amounts_of(whole["charged"]), x.amounts_of(whole["released"]),
                                x.balances_of(whole["balances"]))
        charged = answers.amount(answer["charged"])
        released = (answers.amount(answer["released"]) if "released" in answer
                    else Amount(charged.unit, 0))
        return CommitResult(op.reservation_id, ReservationStatus.COMMITTED, (charged,),
                            (released,), answers.balances(answer.get("balances", [])))

    def _release(self, op: ops.Release) -> Flow:
        body: dict[str, Any] = {"idempotency_key": _key(op), "reason": op.reason}
        if self.allotment:
            body[x.FIELD] = {}
        path = f"/v1/reservations/{self._wire_id(op.reservation_id)}/release"
        answer = self._checked((yield Call("POST", path, body)), settling=True)
        if self.allotment:
            whole = self._whole(answer)
            return ReleaseResult(op.reservation_id, ReservationStatus.RELEASED,
                                 x.amounts_of(whole["released"]),
                                 x.balances_of(whole["balances"]))
        return ReleaseResult(op.reservation_id, ReservationStatus.RELEASED,
                             (answers.amount(answer["released"]),),
                             answers.balances(answer.get("balances", [])))

    def _extend(self, op: ops.Extend) -> Flow:
        body: dict[str, Any] = {"idempotency_key": _key(op), "extend_by_ms": op.by_ms}
        if self.allotment:
            body[x.FIELD] = {}
        path = f"/v1/reservations/{self._wire_id(op.reservation_id)}/extend"
        answer = self._checked((yield Call("POST", path, body)), settling=True)
        if self.allotment:
            whole = self._whole(answer)
            return ExtendResult(op.reservation_id, int(whole["expires_at_ms"]),
                                int(whole["extensions"]))
        return ExtendResult(op.reservation_id, int(answer["expires_at_ms"]), 0)

    def _record(self, op: ops.Record) -> Flow:
        if op.shadow:
            raise InvalidRequest("mode='shadow' on a remote guard: a tenant's mode is the "
                                 "server's setting; nothing was sent")
        body: dict[str, Any] = {
            "idempotency_key": _key(op), "subject": _subject(op.subject),
            "action": x.action(op.action), **self._actual(op.actual, op.usage, "an event")}
        if op.overage_policy is not None:
            body["overage_policy"] = op.overage_policy.value
        answer = self._checked((yield Call("POST", "/v1/events", body)), settling=True)
        if self.allotment:
            whole = self._whole(answer)
            return RecordResult(str(answer["event_id"]), x.amounts_of(whole["charged"]),
                                x.balances_of(whole["balances"]))
        charged = (answers.amount(answer["charged"]) if "charged" in answer
                   else trusted_amounts(op.actual)[0])
        return RecordResult(str(answer["event_id"]), (charged,),
                            answers.balances(answer.get("balances", [])))

    # -- reads -------------------------------------------------------------------------------

    def _get(self, op: ops.Get) -> Flow:
        path = f"/v1/reservations/{self._wire_id(op.reservation_id)}"
        answer = self._checked((yield Call("GET", path, whole=bool(self.allotment))))
        if self.allotment:
            return x.reservation_of(self._whole(answer)["reservation"])
        return answers.reservation(answer, op.reservation_id, op.tenant)

    def _list(self, op: ops.ListReservations) -> Flow:
        query = {"tenant": op.tenant, "limit": str(min(op.limit, PAGE))}
        if op.status is not None:
            query["status"] = op.status.value
        if op.cursor is not None:
            query["cursor"] = op.cursor
        answer = self._checked((yield Call("GET", "/v1/reservations", query=query,
                                           whole=bool(self.allotment))))
        cursor = answer.get("next_cursor") if answer.get("has_more") else None
        if self.allotment:
            rows = tuple(x.reservation_of(row)
                         for row in self._whole(answer)["reservations"])
        else:
            rows = tuple(answers.reservation(
                row, self._local_id(row["reservation_id"], op.tenant), op.tenant)
                for row in answer.get("reservations", []))
        return rows, cursor

    def _balances(self, op: ops.Balances) -> Flow:
        """Every page of the scope's balances (the library's call answers them all)."""
        path = parse_scope(op.scope)
        if self.allotment:
            query = {"scope": op.scope, "include_children": str(op.include_children).lower()}
        else:
            if path.dimension is not None:
                self._needs("balances of a dimension scope")
            query = dict(level.split(":", 1) for level in path.base.split("/"))
        query["limit"] = str(PAGE)
        rows: list[Any] = []
        while True:
            answer = self._checked((yield Call("GET", "/v1/balances", query=query,
                                               whole=bool(self.allotment))))
            if self.allotment:
                rows += x.balances_of(self._whole(answer)["balances"])
            else:
                rows += answers.balances(answer.get("balances", []))
            if not answer.get("has_more"):
                break
            query = {**query, "cursor": str(answer["next_cursor"])}
        if not self.allotment:  # the Cycles filter matches levels anywhere: keep the scope's
            below = op.scope + "/"
            rows = [row for row in rows if row.scope == op.scope
                    or (op.include_children and row.scope.startswith(below))]
        return tuple(rows)


def _announced(reply: Reply, url: str) -> bool:
    """Whether the announcement names allotment. A server that answers the route with
    something else, or not at all (404, 405, 401, 403), is another Cycles server; a failing
    one (5xx) is asked again on the next call, never taken for one or the other."""
    if reply.status == 200:
        return isinstance(reply.body, dict) and reply.body.get("server") == x.SERVER
    if reply.status >= 500:
        raise StoreUnavailable(f"{url} failed (HTTP {reply.status}) when asked whether it is "
                               f"an allotment server (GET {x.ANNOUNCE_PATH})")
    return False


def _estimate_ext(op: ops.Reserve) -> dict[str, Any]:
    """allotment's part of a reserve or decide: the whole estimate, or the elastic terms."""
    if op.elastic is not None:
        return {"elastic": {
            "fixed": [_amount(u, a) for u, a in op.estimate],
            "per_mtok": [_amount(u, a) for u, a in op.elastic.rates],
            "max_tokens": op.elastic.max_tokens, "floor": op.elastic.floor}}
    if len(op.estimate) > 1:
        return {"estimate": [_amount(u, a) for u, a in op.estimate]}
    return {}


def _refused(op: ops.Op[Any]) -> InvalidRequest:
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(op).__name__).lower()
    if type(op) is ops.Gated:
        return InvalidRequest("a handle of guard.tenant_for_key on a remote guard: the "
                              "server checks the API key of each request itself; send "
                              "the key to the server instead (the remote guard's api_key)")
    if type(op) is ops.Sweep:
        return InvalidRequest("sweep on a remote guard: the server expires its own "
                              "reservations")
    return InvalidRequest(f"{name} {ADMIN}")


__all__ = ["Call", "Flow", "Flows", "Reply"]
