"""The Cycles runtime plane: each route authenticates, reads the wire, makes one call on the
key's tenant handle and answers with the wire shape of its result. No ledger semantics live
here: refusals, idempotent replays and tenancy are the guard's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import extensions as x
from ..amounts import Amount, Unit
from ..clock import system_ms
from ..errors import AllotmentError, Denied, InvalidRequest, KeyRefused
from ..guard import Guard
from ..ids import id_tenant
from ..models import Action, Balance, Outcome, ReservationStatus
from ..scopes import LEVELS, Subject
from ..tenant import TenantGuard
from ..webhooks import Dispatcher
from . import extended, paging, wire
from .auth import ADMIN_HEADER, Caller, admin_key, keyed_caller, tenant_key
from .context import body, forget_tenant, json_response
from .errors import ApiError, bad_request, forbidden, from_allotment, not_found

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Settings:
    """What the routes share: the guard, the admin key, the body limit."""

    guard: Guard
    admin_key: str | None
    max_body: int
    dispatcher: Dispatcher
    """Whose rules (where a destination may resolve, the timeout) a test send follows."""
    extensions: bool = True
    """Serve allotment's wire extensions and announce them (`allotment.extensions`); off,
    the server speaks the plain Cycles wire only."""


def _idempotency(request: Request, key: str) -> str:
    """The body's key; the header, when sent, must say the same."""
    header = request.headers.get("x-idempotency-key")
    if header is not None and header != key:
        raise bad_request("X-Idempotency-Key header and body idempotency_key differ")
    return key


def _reservation_tenant(rid: str) -> str:
    """The tenant a reservation id names; an id that is not one of ours never existed."""
    try:
        return id_tenant(rid)
    except InvalidRequest:
        raise not_found(f"reservation {rid!r} not found") from None


def _own(caller: Caller, rid: str) -> None:
    """Another tenant's reservation is 403, whether or not it exists."""
    if _reservation_tenant(rid) != caller.tenant.name:
        raise forbidden("the reservation does not belong to this API key's tenant")

_N = TypeVar("_N", bound=wire.NamedBody)
_CREATE, _LIST, _BALANCES = "reservations:create", "reservations:list", "balances:read"


class Runtime:
    """The runtime routes over one guard."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    async def _reservation_handle(self, request: Request, rid: str,
                                  permission: str) -> Guard | TenantGuard:
        """The guard for the admin key (the two routes the protocol opens to it), else the
        handle of the tenant key's own tenant, which must own the reservation."""
        if admin_key(self.s.admin_key, request):
            _reservation_tenant(rid)
            return self.s.guard
        caller = keyed_caller(self.s.guard, request, permission)
        _own(caller, rid)
        return caller.tenant

    def routes(self) -> list[Route]:
        announce = [Route(x.ANNOUNCE_PATH, self.announce, methods=["GET"])] if (
            self.s.extensions) else []
        keyed = self._keyed
        return [*announce,
            Route("/v1/reservations", keyed(self.create, _CREATE), methods=["POST"]),
            Route("/v1/reservations", keyed(self.list, _LIST), methods=["GET"]),
            Route("/v1/reservations/{reservation_id}", keyed(self.get, _LIST),
                  methods=["GET"]),
            Route("/v1/reservations/{reservation_id}/commit",
                  keyed(self.commit, "reservations:commit"), methods=["POST"]),
            Route("/v1/reservations/{reservation_id}/release",
                  keyed(self.release, "reservations:release"), methods=["POST"]),
            Route("/v1/reservations/{reservation_id}/extend",
                  keyed(self.extend, "reservations:extend"), methods=["POST"]),
            Route("/v1/decide", keyed(self.decide, _CREATE), methods=["POST"]),
            Route("/v1/events", keyed(self.event, _CREATE), methods=["POST"]),
            Route("/v1/balances", keyed(self.balances, _BALANCES), methods=["GET"]),
        ]

    def _keyed(self, endpoint: Endpoint, permission: str) -> Endpoint:
        """`endpoint`, whose tenant key the store checks with the operation it runs
        (`keyed_caller`). A refusal found before the store was asked (a bad body, another
        tenant's scope or reservation) first looks the key up, so a bad key is a 401 (or a
        key without the permission a 403) whatever else is wrong, as when every request
        looked its key up first. A denial came from the store: its key passed."""
        async def route(request: Request) -> Response:
            try:
                return await endpoint(request)
            except KeyRefused:
                forget_tenant(request)
                raise
            except Denied:
                raise
            except (ApiError, AllotmentError) as error:
                status = (error if isinstance(error, ApiError) else from_allotment(error)).status
                if (status < 500 and status != 401  # a 401 is already the key's answer
                        and request.headers.get(ADMIN_HEADER) is None):
                    forget_tenant(request)
                    await tenant_key(self.s.guard, request, permission)
                raise
        route.__name__ = route.__qualname__ = endpoint.__name__
        return route

    async def _named(self, request: Request, model: type[_N]
                     ) -> tuple[Caller, _N, str, Subject, Action, Any]:
        """A call that names a subject (reserve, decide, events): the caller's key, the body,
        its idempotency key, who and what, and the allotment extension if it used one."""
        caller = keyed_caller(self.s.guard, request, _CREATE)
        req = await self._body(request, model)
        key = _idempotency(request, req.idempotency_key)
        who, what = wire.subject(req.subject, caller.tenant.name), wire.action(req.action)
        return caller, req, key, who, what, extended.ext(req)

    async def _body(self, request: Request, model: type[wire._M]) -> wire._M:
        if self.s.extensions:
            model = extended.EXTENDED.get(model, model)
        return wire.parse(model, await body(request, self.s.max_body))

    def _asked(self, request: Request) -> bool:
        """Whether a read asked for allotment's whole result (never, with extensions off)."""
        return self.s.extensions and extended.asked(request)

    async def announce(self, request: Request) -> Response:
        """The route a remote guard reads to know it talks to allotment (no key needed)."""
        return json_response(request, x.announcement())

    # -- reserve, decide, events ------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        caller, req, key, who, what, ext = await self._named(request, wire.ReserveBody)
        cycles_estimate = req.estimate.amount_()
        estimate = x.estimate(cycles_estimate, ext)
        scopes = who.scopes()
        handle = caller.tenant
        if req.dry_run:
            decision = await handle.adecide(who, what, estimate)
            answer = wire.decision(decision, scopes)
            answer["scope_path"] = who.scope_path
            if decision.outcome is not Outcome.DENY:
                answer["reserved"] = wire.amount(cycles_estimate)
            if ext is not None:
                answer[x.FIELD] = {"decision": x.decision(decision)}
            return json_response(request, answer)
        held = await handle.areserve(
            who, what, estimate, ttl_ms=req.ttl_ms, grace_ms=req.grace_period_ms,
            overage_policy=req.overage_policy, idempotency_key=key)
        answer = wire.decision(held.decision, scopes)
        answer.update(reservation_id=held.id, scope_path=who.scope_path,
                      reserved=wire.amount(_in_unit(held.estimate, cycles_estimate.unit)),
                      expires_at_ms=held.expires_at_ms,
                      remaining_ttl_ms=max(0, held.expires_at_ms - system_ms()),
                      balances=wire.balances(held.balances))
        if ext is not None:
            answer[x.FIELD] = {"decision": x.decision(held.decision),
                               "reservation": x.reservation(held.info),
                               "balances": x.balances(held.balances)}
        return json_response(request, answer)

    async def decide(self, request: Request) -> Response:
        caller, req, _, who, what, ext = await self._named(request, wire.DecideBody)
        decision = await caller.tenant.adecide(who, what,
                                               x.estimate(req.estimate.amount_(), ext))
        answer = wire.decision(decision, who.scopes())
        if ext is not None:
            answer[x.FIELD] = {"decision": x.decision(decision)}
        return json_response(request, answer)

    async def event(self, request: Request) -> Response:
        caller, req, key, who, what, ext = await self._named(request, wire.EventBody)
        actual = req.actual.amount_()
        result = await caller.tenant.arecord(who, what, x.actual(actual, ext),
                                             overage_policy=req.overage_policy,
                                             idempotency_key=key, usage=x.usage(ext))
        answer: dict[str, Any] = {"status": "APPLIED", "event_id": result.event_id}
        charged = _in_unit(result.charged, actual.unit) if result.charged else None
        if charged is not None and charged.amount != actual.amount:
            answer["charged"] = wire.amount(charged)
        answer["balances"] = wire.balances(result.balances)
        if ext is not None:
            answer[x.FIELD] = {"charged": x.amounts(result.charged),
                               "balances": x.balances(result.balances)}
        return json_response(request, answer, 201)

    # -- one reservation --------------------------------------------------------------------

    async def commit(self, request: Request) -> Response:
        caller = keyed_caller(self.s.guard, request, "reservations:commit")
        rid = request.path_params["reservation_id"]
        _own(caller, rid)
        req = await self._body(request, wire.CommitBody)
        key = _idempotency(request, req.idempotency_key)
        actual, ext = req.actual.amount_(), extended.ext(req)
        result = await caller.tenant.acommit(rid, x.actual(actual, ext), idempotency_key=key,
                                             usage=x.usage(ext))
        answer: dict[str, Any] = {
            "status": "COMMITTED", "charged": wire.amount(_in_unit(result.charged, actual.unit))}
        released = [a for a in result.released if a.amount > 0]
        if released:
            answer["released"] = wire.amount(_in_unit(tuple(released), actual.unit))
        answer["balances"] = wire.balances(result.balances)
        if ext is not None:
            answer[x.FIELD] = {"charged": x.amounts(result.charged),
                               "released": x.amounts(result.released),
                               "balances": x.balances(result.balances)}
        return json_response(request, answer)

    async def release(self, request: Request) -> Response:
        rid = request.path_params["reservation_id"]
        handle = await self._reservation_handle(request, rid, "reservations:release")
        req = await self._body(request, wire.ReleaseBody)
        key = _idempotency(request, req.idempotency_key)
        result = await handle.arelease(rid, req.reason or "released", idempotency_key=key)
        answer = {"status": "RELEASED", "released": wire.amount(result.released[0]),
                  "balances": wire.balances(result.balances)}
        if extended.ext(req) is not None:
            answer[x.FIELD] = {"released": x.amounts(result.released),
                               "balances": x.balances(result.balances)}
        return json_response(request, answer)

    async def extend(self, request: Request) -> Response:
        caller = keyed_caller(self.s.guard, request, "reservations:extend")
        rid = request.path_params["reservation_id"]
        _own(caller, rid)
        req = await self._body(request, wire.ExtendBody)
        key = _idempotency(request, req.idempotency_key)
        result = await caller.tenant.aextend(rid, req.extend_by_ms, idempotency_key=key)
        answer: dict[str, Any] = {
            "status": "ACTIVE", "expires_at_ms": result.expires_at_ms,
            "remaining_ttl_ms": max(0, result.expires_at_ms - system_ms())}
        if extended.ext(req) is not None:
            answer[x.FIELD] = {"expires_at_ms": result.expires_at_ms,
                               "extensions": result.extensions}
        return json_response(request, answer)

    async def get(self, request: Request) -> Response:
        rid = request.path_params["reservation_id"]
        handle = await self._reservation_handle(request, rid, _LIST)
        asked = self._asked(request)
        info = await handle.aget(rid)
        if asked:  # the whole record, an expired one too (the library's `get` answers it)
            return json_response(request, {**wire.reservation(info),
                                           x.FIELD: {"reservation": x.reservation(info)}})
        if info.status is ReservationStatus.EXPIRED:
            raise ApiError(410, "RESERVATION_EXPIRED", f"reservation {rid} expired")
        return json_response(request, wire.reservation(info))

    async def list(self, request: Request) -> Response:
        """A page of the tenant's reservations: the store's page, filtered by subject and
        time windows here (so a page may be short; the cursor goes on)."""
        query = request.query_params
        handle: Guard | TenantGuard
        if admin_key(self.s.admin_key, request):
            named = query.get("tenant")
            if not named:
                raise bad_request("tenant: required with the admin key")
            handle, tenant = self.s.guard, named.lower()
        else:
            caller = keyed_caller(self.s.guard, request, _LIST)
            handle, tenant = caller.tenant, caller.tenant.name
            if query.get("tenant") and query["tenant"].lower() != tenant:
                raise forbidden("tenant is not the tenant of this API key")
        if query.get("idempotency_key"):
            raise bad_request("idempotency_key: listing by a reserve key is not supported "
                              "yet; the replay of the reserve call returns its reservation")
        status = query.get("status") or None
        if status is not None and status not in ReservationStatus.__members__:
            raise bad_request(f"status: {status!r} is not one of "
                              + ", ".join(ReservationStatus.__members__))
        sort_by, sort_dir = query.get("sort_by") or None, query.get("sort_dir") or "desc"
        if sort_by is not None and sort_by not in _SORTS:
            raise bad_request(f"sort_by: {sort_by!r} is not one of " + ", ".join(_SORTS))
        if sort_dir not in ("asc", "desc"):
            raise bad_request(f"sort_dir: {sort_dir!r} is not asc or desc")
        windows = {name: _window(query, name) for name in ("", "expires_", "finalized_")}
        subject = {level: query[level].lower() for level in LEVELS[1:] if query.get(level)}
        wanted: dict[str, Any] = {"status": status, "limit": paging.limit(query),
                                  "cursor": query.get("cursor") or None}
        if isinstance(handle, TenantGuard):
            page, cursor = await handle.alist_reservations(**wanted)
        else:
            page, cursor = await handle.alist_reservations(tenant, **wanted)
        kept = [info for info in page
                if all(getattr(info.subject, level) == value
                       for level, value in subject.items())
                and _within(windows[""], info.created_at_ms)
                and _within(windows["expires_"], info.expires_at_ms)
                and _within(windows["finalized_"], info.finalized_at_ms)]
        rows = [wire.reservation(info) for info in kept]
        if sort_by is not None:
            rows.sort(key=_sort_key(sort_by), reverse=sort_dir == "desc")
        answer: dict[str, Any] = {"reservations": rows}
        if cursor is not None:
            answer.update(next_cursor=cursor, has_more=True)
        if self._asked(request):  # in the store's order (a sort applies to the Cycles rows)
            answer[x.FIELD] = {"reservations": [x.reservation(info) for info in kept]}
        return json_response(request, answer)

    # -- balances ---------------------------------------------------------------------------

    async def balances(self, request: Request) -> Response:
        caller = keyed_caller(self.s.guard, request, _BALANCES)
        query = request.query_params
        asked = self._asked(request)
        known = {*LEVELS, "include_children", "limit", "cursor", *(("scope",) if asked else ())}
        unknown = set(query) - known
        if unknown:
            raise bad_request(f"unknown query parameters {sorted(unknown)}")
        if query.get("include_children", "false") not in ("true", "false"):
            raise bad_request("include_children: give true or false (descendants are "
                              "always included)")
        filters = {level: query[level].lower() for level in LEVELS if query.get(level)}
        if not filters and not (asked and query.get("scope")):
            raise bad_request("give at least one of " + ", ".join(LEVELS))
        tenant = filters.get("tenant")
        if tenant is not None and tenant != caller.tenant.name:
            raise forbidden("tenant is not the tenant of this API key")
        limit, after = paging.window(query)
        wanted = {f"{level}:{value}" for level, value in filters.items()}
        if asked and query.get("scope"):  # the library's `balances(scope, include_children)`
            rows = list(await caller.tenant.abalances(
                query["scope"], include_children=_flag(query.get("include_children"), True)))
            page = _after(rows, after)[:limit + 1]  # in the guard's own order
        else:
            rows = sorted((row for row in await caller.tenant.abalances()
                           if wanted <= set(row.scope.split("/"))), key=_row_key)
            page = [row for row in rows if after is None or _row_key(row) > after][:limit + 1]
        answer: dict[str, Any] = {"balances": wire.balances(tuple(page[:limit]))}
        if len(page) > limit:
            answer["next_cursor"] = paging.encoded(_row_key(page[limit - 1]))
            answer["has_more"] = True
        if asked:
            answer[x.FIELD] = {"balances": x.balances(tuple(page[:limit]))}
        return json_response(request, answer)


def _in_unit(amounts: tuple[Amount, ...], unit: Unit) -> Amount:
    """The amount in `unit` (the Cycles field's unit) of a result in several units."""
    return next((a for a in amounts if a.unit is unit), amounts[0])


def _after(rows: list[Balance], after: list[str] | None) -> list[Balance]:
    """The rows after the one a cursor names, in the order given."""
    if after is None:
        return rows
    keys = [_row_key(row) for row in rows]
    if after not in keys:
        raise bad_request("cursor: the balance it points at is gone; read again from the "
                          "first page")
    return rows[keys.index(after) + 1:]


def _flag(text: str | None, default: bool) -> bool:
    if text is None or text == "":
        return default
    if text.lower() not in ("true", "false"):
        raise bad_request(f"include_children: {text!r} is not true or false")
    return text.lower() == "true"


_SORTS = ("reservation_id", "tenant", "scope_path", "status", "reserved", "created_at_ms",
          "expires_at_ms")


def _sort_key(name: str) -> Any:
    """Rows are sorted within a page (the store pages in its own order)."""
    if name == "tenant":
        return lambda row: row["subject"].get("tenant", "")
    if name == "reserved":
        return lambda row: row["reserved"]["amount"]
    return lambda row: row[name]


def _window(query: Any, prefix: str) -> tuple[int | None, int | None]:
    """An inclusive window in epoch ms from `<prefix>from` / `<prefix>to` (ISO-8601);
    blank is unset, and from after to is refused."""
    bounds = []
    for side in ("from", "to"):
        text = (query.get(prefix + side) or "").strip()
        bounds.append(None if not text else _epoch_ms(text, prefix + side))
    low, high = bounds
    if low is not None and high is not None and low > high:
        raise bad_request(f"{prefix}from is after {prefix}to")
    return low, high


def _epoch_ms(text: str, field: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{field}: {text!r} is not an ISO-8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _within(window: tuple[int | None, int | None], ms: int | None) -> bool:
    low, high = window
    if low is None and high is None:
        return True
    if ms is None:
        return False
    return (low is None or ms >= low) and (high is None or ms <= high)


def _row_key(row: Balance) -> list[str]:
    return [row.scope, row.unit.value, row.period or "", row.bucket]


__all__ = ["Runtime", "Settings"]
