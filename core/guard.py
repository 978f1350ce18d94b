"""The guard: the one object users talk to. It validates, derives scopes, and hands each
operation to its store as one atomic step. Every method has an `a`-prefixed async twin.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from .amounts import Amount, AmountsLike, Unit, amounts_by_unit, to_decimal, usd_to_microcents
from .context import current_subject
from .errors import (
    BudgetExceeded,
    Denied,
    InvalidRequest,
    NotAllowed,
    QuotaExceeded,
)
from .models import (
    Action,
    Balance,
    BudgetStatus,
    CommitResult,
    Decision,
    ExtendResult,
    FundOperation,
    FundResult,
    OveragePolicy,
    Reason,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    TransferResult,
)
from .periods import Period, parse_period
from .reservation import Reservation
from .scopes import Subject, parse_scope
from .stores import base as ops
from .stores.base import AUTO, UNIT_ORDER, PeriodChoice, Store, Units
from .validation import MAX_AMOUNT, check_idempotency_key, check_int, check_key, check_name

if TYPE_CHECKING:
    from .tenant import TenantGuard

TTL_RANGE = (1_000, 86_400_000)
GRACE_RANGE = (0, 60_000)


class Guard:
    """Enforces budgets for every tenant on one store (the embedded memory store by default)."""

    def __init__(self, store: Store | None = None, *, ttl_ms: int = 60_000,
                 grace_ms: int = 5_000, max_extensions: int = 10) -> None:
        if store is None:
            from .stores.memory import MemoryStore

            store = MemoryStore()
        self.store = store
        self.ttl_ms = check_int(ttl_ms, "ttl_ms", *TTL_RANGE)
        self.grace_ms = check_int(grace_ms, "grace_ms", *GRACE_RANGE)
        self.max_extensions = check_int(max_extensions, "max_extensions", 0, 1_000)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Guard:
        """`memory://` (embedded); guard options (ttl_ms, ...) go to the guard, the rest to
        the store."""
        guard_keys = {"ttl_ms", "grace_ms", "max_extensions"}
        guard_options = {k: v for k, v in options.items() if k in guard_keys}
        store_options = {k: v for k, v in options.items() if k not in guard_keys}
        return cls(ops.store_from_url(url, **store_options), **guard_options)

    def tenant(self, name: str) -> TenantGuard:
        """A handle that can only touch `name`'s budgets, reservations and balances."""
        from .tenant import TenantGuard

        return TenantGuard(self, name)

    def close(self) -> None:
        self.store.close()

    # -- administration -----------------------------------------------------------------

    def set_budget(self, scope: str, *, usd: Any = None, tokens: int | None = None,
                   credits: int | None = None, amount: int | None = None,
                   unit: Unit | str | None = None, period: Period | str | None = None,
                   per: str | None = None, overdraft_limit: Any = 0,
                   overage_policy: OveragePolicy | str = OveragePolicy.ALLOW_IF_AVAILABLE
                   ) -> tuple[Balance, ...]:
        """Create or change the budget of `scope` in one unit (and period). A change adjusts
        the current bucket's allocation by the difference and keeps what was spent."""
        return self.store.execute(self._set_budget_op(
            scope, usd, tokens, credits, amount, unit, period, per, overdraft_limit,
            overage_policy))

    async def aset_budget(self, scope: str, *, usd: Any = None, tokens: int | None = None,
                          credits: int | None = None, amount: int | None = None,
                          unit: Unit | str | None = None, period: Period | str | None = None,
                          per: str | None = None, overdraft_limit: Any = 0,
                          overage_policy: OveragePolicy | str = OveragePolicy.ALLOW_IF_AVAILABLE
                          ) -> tuple[Balance, ...]:
        return await self.store.aexecute(self._set_budget_op(
            scope, usd, tokens, credits, amount, unit, period, per, overdraft_limit,
            overage_policy))

    def freeze(self, scope: str, unit: Unit | str | None = None) -> int:
        """Refuse new reservations on the budgets of `scope`; returns how many were frozen."""
        return self.store.execute(self._status_op(scope, unit, BudgetStatus.FROZEN))

    async def afreeze(self, scope: str, unit: Unit | str | None = None) -> int:
        return await self.store.aexecute(self._status_op(scope, unit, BudgetStatus.FROZEN))

    def unfreeze(self, scope: str, unit: Unit | str | None = None) -> int:
        return self.store.execute(self._status_op(scope, unit, BudgetStatus.ACTIVE))

    async def aunfreeze(self, scope: str, unit: Unit | str | None = None) -> int:
        return await self.store.aexecute(self._status_op(scope, unit, BudgetStatus.ACTIVE))

    def close_budget(self, scope: str, unit: Unit | str | None = None) -> int:
        """Close the budgets of `scope` for good: reservations and records are refused."""
        return self.store.execute(self._status_op(scope, unit, BudgetStatus.CLOSED))

    async def aclose_budget(self, scope: str, unit: Unit | str | None = None) -> int:
        return await self.store.aexecute(self._status_op(scope, unit, BudgetStatus.CLOSED))

    def fund(self, scope: str, operation: FundOperation | str, amount: Amount, *,
             period: Period | str | PeriodChoice | None = AUTO, spent: int | None = None,
             idempotency_key: str | None = None) -> FundResult:
        """CREDIT, DEBIT, RESET, RESET_SPENT or REPAY_DEBT on a budget's current bucket."""
        return self.store.execute(self._fund_op(scope, operation, amount, period, spent,
                                                idempotency_key))

    async def afund(self, scope: str, operation: FundOperation | str, amount: Amount, *,
                    period: Period | str | PeriodChoice | None = AUTO,
                    spent: int | None = None, idempotency_key: str | None = None) -> FundResult:
        return await self.store.aexecute(self._fund_op(scope, operation, amount, period, spent,
                                                       idempotency_key))

    def transfer(self, source: str, destination: str, amount: Amount, *,
                 period: Period | str | PeriodChoice | None = AUTO,
                 idempotency_key: str | None = None) -> TransferResult:
        """Move allocation between two budgets of one tenant, atomically; refused (changing
        nothing) when the source's remaining cannot give that much."""
        return self.store.execute(self._transfer_op(source, destination, amount, period,
                                                    idempotency_key))

    async def atransfer(self, source: str, destination: str, amount: Amount, *,
                        period: Period | str | PeriodChoice | None = AUTO,
                        idempotency_key: str | None = None) -> TransferResult:
        return await self.store.aexecute(self._transfer_op(source, destination, amount, period,
                                                           idempotency_key))

    # -- enforcement ----------------------------------------------------------------------

    def reserve(self, subject: Subject | None, action: Action, estimate: AmountsLike, *,
                ttl_ms: int | None = None, grace_ms: int | None = None,
                overage_policy: OveragePolicy | str | None = None,
                idempotency_key: str | None = None) -> Reservation:
        """Hold `estimate` on every budget of the subject, or raise `Denied` (a subclass)."""
        op = self._reserve_op(subject, action, estimate, ttl_ms, grace_ms, overage_policy,
                              idempotency_key, dry_run=False)
        return self._reserved(self.store.execute(op))

    async def areserve(self, subject: Subject | None, action: Action, estimate: AmountsLike, *,
                       ttl_ms: int | None = None, grace_ms: int | None = None,
                       overage_policy: OveragePolicy | str | None = None,
                       idempotency_key: str | None = None) -> Reservation:
        op = self._reserve_op(subject, action, estimate, ttl_ms, grace_ms, overage_policy,
                              idempotency_key, dry_run=False)
        return self._reserved(await self.store.aexecute(op))

    def decide(self, subject: Subject | None, action: Action, estimate: AmountsLike) -> Decision:
        """What `reserve` would answer now, changing nothing."""
        op = self._reserve_op(subject, action, estimate, None, None, None, None, dry_run=True)
        return self._decided(op)

    async def adecide(self, subject: Subject | None, action: Action,
                      estimate: AmountsLike) -> Decision:
        op = self._reserve_op(subject, action, estimate, None, None, None, None, dry_run=True)
        return await self._adecided(op)

    def commit(self, reservation_id: str, actual: AmountsLike, *,
               idempotency_key: str | None = None) -> CommitResult:
        """Charge the actual usage and return the rest of the estimate. Units the estimate
        held but `actual` leaves out are charged as estimated."""
        return self.store.execute(self._commit_op(reservation_id, actual, idempotency_key))

    async def acommit(self, reservation_id: str, actual: AmountsLike, *,
                      idempotency_key: str | None = None) -> CommitResult:
        return await self.store.aexecute(self._commit_op(reservation_id, actual,
                                                         idempotency_key))

    def release(self, reservation_id: str, reason: str = "released", *,
                idempotency_key: str | None = None) -> ReleaseResult:
        return self.store.execute(self._release_op(reservation_id, reason, idempotency_key))

    async def arelease(self, reservation_id: str, reason: str = "released", *,
                       idempotency_key: str | None = None) -> ReleaseResult:
        return await self.store.aexecute(self._release_op(reservation_id, reason,
                                                          idempotency_key))

    def extend(self, reservation_id: str, by_ms: int, *,
               idempotency_key: str | None = None) -> ExtendResult:
        return self.store.execute(self._extend_op(reservation_id, by_ms, idempotency_key))

    async def aextend(self, reservation_id: str, by_ms: int, *,
                      idempotency_key: str | None = None) -> ExtendResult:
        return await self.store.aexecute(self._extend_op(reservation_id, by_ms,
                                                         idempotency_key))

    def record(self, subject: Subject | None, action: Action, actual: AmountsLike, *,
               overage_policy: OveragePolicy | str | None = None,
               idempotency_key: str | None = None) -> RecordResult:
        """Charge a cost known only afterwards, without a reservation."""
        return self.store.execute(self._record_op(subject, action, actual, overage_policy,
                                                  idempotency_key))

    async def arecord(self, subject: Subject | None, action: Action, actual: AmountsLike, *,
                      overage_policy: OveragePolicy | str | None = None,
                      idempotency_key: str | None = None) -> RecordResult:
        return await self.store.aexecute(self._record_op(subject, action, actual,
                                                         overage_policy, idempotency_key))

    # -- reads and maintenance ------------------------------------------------------------

    def get(self, reservation_id: str) -> ReservationInfo:
        return self.store.execute(ops.Get(tenant=_rid_tenant(reservation_id),
                                          reservation_id=reservation_id))

    async def aget(self, reservation_id: str) -> ReservationInfo:
        return await self.store.aexecute(ops.Get(tenant=_rid_tenant(reservation_id),
                                                 reservation_id=reservation_id))

    def balances(self, scope: str, *, include_children: bool = True) -> tuple[Balance, ...]:
        """Current balances of the budgets at `scope` and (by default) below it, dimension
        ledgers included. Reads one tenant's state only, never the keyspace."""
        return self.store.execute(_balances_op(scope, include_children))

    async def abalances(self, scope: str, *,
                        include_children: bool = True) -> tuple[Balance, ...]:
        return await self.store.aexecute(_balances_op(scope, include_children))

    def sweep(self, limit: int = 1_000) -> int:
        """Expire up to `limit` overdue reservations now; returns how many expired."""
        return self.store.execute(ops.Sweep(tenant="", limit=check_int(limit, "limit", 1)))

    async def asweep(self, limit: int = 1_000) -> int:
        return await self.store.aexecute(ops.Sweep(tenant="", limit=check_int(limit, "limit",
                                                                             1)))

    # -- building operations (pure: validation and derivation only) -----------------------

    def _set_budget_op(self, scope: str, usd: Any, tokens: int | None, credits: int | None,
                       amount: int | None, unit: Unit | str | None, period: Any, per: Any,
                       overdraft_limit: Any, overage_policy: Any) -> ops.SetBudget:
        path = parse_scope(scope)
        if path.dimension is not None:
            raise InvalidRequest(f"scope {scope!r}: set a budget for every {path.dimension[0]} "
                                 f"with per={path.dimension[0]!r} on {path.base!r}; fund() "
                                 "moves one dimension ledger")
        given = {k: v for k, v in (("usd", usd), ("tokens", tokens), ("credits", credits),
                                   ("amount", amount)) if v is not None}
        if len(given) != 1:
            raise InvalidRequest("set_budget: give exactly one of usd=, tokens=, credits= or "
                                 f"amount= (with unit=); got {sorted(given) or 'none'}")
        (kind, value), = given.items()
        if kind == "usd":
            budget_unit, limit = Unit.USD_MICROCENTS, usd_to_microcents(value, "usd")
        elif kind == "amount":
            budget_unit = _unit(unit)
            limit = check_int(value, "amount")
        else:
            budget_unit = Unit.TOKENS if kind == "tokens" else Unit.CREDITS
            limit = check_int(value, kind)
        if kind != "amount" and unit is not None and _unit(unit) is not budget_unit:
            raise InvalidRequest(f"unit={unit!r} contradicts {kind}=")
        return ops.SetBudget(
            tenant=path.tenant, scope=path.base, per=None if per is None else check_key(per, "per"),
            unit=budget_unit, period=parse_period(period), limit=limit,
            overdraft_limit=_limit_like(overdraft_limit, budget_unit, kind == "usd"),
            overage_policy=_policy(overage_policy) or OveragePolicy.ALLOW_IF_AVAILABLE)

    def _status_op(self, scope: str, unit: Unit | str | None,
                   status: BudgetStatus) -> ops.SetStatus:
        path = parse_scope(scope)
        return ops.SetStatus(tenant=path.tenant, scope=path.base,
                             unit=None if unit is None else _unit(unit), status=status)

    def _fund_op(self, scope: str, operation: Any, amount: Amount, period: Any,
                 spent: int | None, key: str | None) -> ops.Fund:
        path = parse_scope(scope)
        operation = _enum(FundOperation, operation, "operation")
        units = _units(amount, "amount")
        if len(units) != 1:
            raise InvalidRequest("amount: fund one unit at a time")
        spent = None if spent is None else check_int(spent, "spent")
        period = period if period is AUTO else parse_period(period)
        unit, value = units[0]
        return ops.Fund(tenant=path.tenant, scope=path.path, unit=unit, period=period,
                        operation=operation, amount=value, spent=spent,
                        **_keyed(key, "fund", path.path, unit, period, operation, value, spent))

    def _transfer_op(self, source: str, destination: str, amount: Amount, period: Any,
                     key: str | None) -> ops.Transfer:
        src, dst = parse_scope(source), parse_scope(destination)
        if src.tenant != dst.tenant:
            raise InvalidRequest("transfer: both budgets must belong to one tenant "
                                 f"(got {src.tenant!r} and {dst.tenant!r})")
        units = _units(amount, "amount")
        if len(units) != 1:
            raise InvalidRequest("amount: transfer one unit at a time")
        period = period if period is AUTO else parse_period(period)
        unit, value = units[0]
        return ops.Transfer(tenant=src.tenant, source=src.path, destination=dst.path, unit=unit,
                            period=period, amount=value,
                            **_keyed(key, "transfer", src.path, dst.path, unit, period, value))

    def _reserve_op(self, subject: Subject | None, action: Action, estimate: AmountsLike,
                    ttl_ms: int | None, grace_ms: int | None, overage_policy: Any,
                    key: str | None, dry_run: bool) -> ops.Reserve:
        subject = _subject(subject)
        if not isinstance(action, Action):
            raise InvalidRequest(f"action: expected an Action, got {action!r}")
        units = _units(estimate, "estimate")
        ttl = self.ttl_ms if ttl_ms is None else check_int(ttl_ms, "ttl_ms", *TTL_RANGE)
        grace = self.grace_ms if grace_ms is None else check_int(grace_ms, "grace_ms",
                                                                 *GRACE_RANGE)
        policy = _policy(overage_policy)
        return ops.Reserve(
            tenant=subject.tenant, scopes=subject.scopes(), dimensions=subject.dimension_items,
            subject=subject, action=action, estimate=units, ttl_ms=ttl, grace_ms=grace,
            max_extensions=self.max_extensions, overage_policy=policy, dry_run=dry_run,
            **_keyed(key, "reserve", subject, action, units, ttl, grace, policy))

    def _commit_op(self, rid: str, actual: AmountsLike, key: str | None) -> ops.Commit:
        units = _units(actual, "actual")
        return ops.Commit(tenant=_rid_tenant(rid), reservation_id=rid, actual=units,
                          **_keyed(key, "commit", units))

    def _release_op(self, rid: str, reason: str, key: str | None) -> ops.Release:
        if not isinstance(reason, str) or len(reason) > 256:
            raise InvalidRequest("reason: expected a string of at most 256 characters")
        return ops.Release(tenant=_rid_tenant(rid), reservation_id=rid, reason=reason,
                           **_keyed(key, "release", reason))

    def _extend_op(self, rid: str, by_ms: int, key: str | None) -> ops.Extend:
        by = check_int(by_ms, "by_ms", 1, TTL_RANGE[1])
        return ops.Extend(tenant=_rid_tenant(rid), reservation_id=rid, by_ms=by,
                          **_keyed(key, "extend", by))

    def _record_op(self, subject: Subject | None, action: Action, actual: AmountsLike,
                   overage_policy: Any, key: str | None) -> ops.Record:
        subject = _subject(subject)
        if not isinstance(action, Action):
            raise InvalidRequest(f"action: expected an Action, got {action!r}")
        units = _units(actual, "actual")
        policy = _policy(overage_policy)
        return ops.Record(
            tenant=subject.tenant, scopes=subject.scopes(),
            dimensions=subject.dimension_items, subject=subject,
            action=action, actual=units, overage_policy=policy,
            **_keyed(key, "record", subject, action, units, policy))

    # -- interpreting results -------------------------------------------------------------

    def _reserved(self, outcome: ops.ReserveOutcome) -> Reservation:
        if outcome.reservation is None:
            raise denied(outcome.decision)
        return Reservation(self, outcome.reservation, outcome.decision, outcome.balances)

    def _decided(self, op: ops.Reserve) -> Decision:
        try:
            return self.store.execute(op).decision
        except Denied as error:
            return error.decision

    async def _adecided(self, op: ops.Reserve) -> Decision:
        try:
            return (await self.store.aexecute(op)).decision
        except Denied as error:
            return error.decision


def denied(decision: Decision) -> Denied:
    """The error class that fits a denial's reason."""
    if decision.reason in Reason.BUDGET:
        return BudgetExceeded(decision)
    if decision.reason in Reason.QUOTA:
        return QuotaExceeded(decision)
    if decision.reason in Reason.ACCESS:
        return NotAllowed(decision)
    return Denied(decision)


def _balances_op(scope: str, include_children: bool) -> ops.Balances:
    path = parse_scope(scope)
    return ops.Balances(tenant=path.tenant, scope=path.path,
                        include_children=bool(include_children))


def _subject(subject: Subject | None) -> Subject:
    if subject is None:
        subject = current_subject()
        if subject is None:
            raise InvalidRequest("subject: none given and no al.scope(tenant=...) is active")
    if not isinstance(subject, Subject):
        raise InvalidRequest(f"subject: expected a Subject, got {subject!r}")
    return subject


def _units(value: AmountsLike, field: str) -> Units:
    if isinstance(value, Amount):
        return ((value.unit, value.amount),)
    by_unit = amounts_by_unit(value, field)
    return tuple(sorted(by_unit.items(), key=lambda kv: UNIT_ORDER[kv[0]]))


def _unit(value: Unit | str | None) -> Unit:
    if value is None:
        raise InvalidRequest("unit: required with amount=; one of "
                             + ", ".join(u.value for u in Unit))
    unit: Unit = _enum(Unit, value, "unit")
    return unit


def _policy(value: OveragePolicy | str | None) -> OveragePolicy | None:
    return None if value is None else _enum(OveragePolicy, value, "overage_policy")


def _enum(kind: Any, value: Any, field: str) -> Any:
    try:
        return kind(value.upper() if isinstance(value, str) else value)
    except ValueError:
        names = ", ".join(member.value for member in kind)
        raise InvalidRequest(f"{field}: {value!r} is not one of {names}") from None


def _limit_like(value: Any, unit: Unit, in_dollars: bool) -> int:
    """overdraft_limit in the same terms as the limit: dollars with usd=, else the unit."""
    if isinstance(value, Amount):
        if value.unit is not unit:
            raise InvalidRequest(f"overdraft_limit: {value.unit.value} given for a "
                                 f"{unit.value} budget")
        return value.amount
    if in_dollars:
        return usd_to_microcents(to_decimal(value, "overdraft_limit"), "overdraft_limit")
    return check_int(value, "overdraft_limit", 0, MAX_AMOUNT)


def _keyed(key: str | None, *payload: Any) -> dict[str, Any]:
    """Idempotency fields: a caller's key gets a payload fingerprint; with no key there is
    nothing to replay, so none is stored."""
    if key is None:
        return {"idempotency_key": None, "fingerprint": ""}
    return {"idempotency_key": check_idempotency_key(key), "fingerprint": _fingerprint(payload)}


def _fingerprint(payload: tuple[Any, ...]) -> str:
    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if hasattr(value, "value"):
            return value.value
        return value if value is None or isinstance(value, (int, str)) else repr(value)

    text = json.dumps(plain(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _rid_tenant(reservation_id: str) -> str:
    """Reservation ids are `<tenant>:<32 hex>`; anything else is refused before the store."""
    if isinstance(reservation_id, str):
        tenant, sep, token = reservation_id.partition(":")
        if sep and len(token) == 32 and all(c in "0123456789abcdef" for c in token):
            return check_name(tenant, "reservation_id tenant")
    raise InvalidRequest(f"reservation_id: {reservation_id!r} is not a reservation id "
                         "(<tenant>:<32 hex digits>)")

