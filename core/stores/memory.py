"""The embedded store: all state in one process, every operation under one lock.

Each public operation is one method run while holding the lock, so a reservation checks and
charges every ledger it touches in one step, as the Redis store does in one script call.
Every check runs before the first write.
"""

from __future__ import annotations

import heapq
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import ledger
from ..amounts import Amount, Unit
from ..clock import system_ms
from ..errors import (
    BudgetExceeded,
    Denied,
    IdempotencyMismatch,
    InvalidRequest,
    MaxExtensionsExceeded,
    NotFound,
    ReservationExpired,
    ReservationFinalized,
    UnitMismatch,
)
from ..models import (
    Action,
    Balance,
    BudgetStatus,
    CommitResult,
    Decision,
    ExtendResult,
    FundResult,
    Outcome,
    OveragePolicy,
    Reason,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    ReservationStatus,
    TransferResult,
)
from ..periods import Period, bucket
from ..scopes import Subject, parse_scope
from .base import (
    AUTO,
    PERIOD_ORDER,
    UNIT_ORDER,
    Balances,
    Commit,
    Extend,
    Fund,
    Get,
    Op,
    Record,
    Release,
    Reserve,
    ReserveOutcome,
    SetBudget,
    SetStatus,
    Sweep,
    Transfer,
    Units,
)

R = TypeVar("R")
DefKey = tuple[str, Unit, "Period | None", "str | None"]
"""A budget definition: (scope, unit, period, per-dimension key or None)."""
LedgerKey = tuple[str, Unit, "Period | None", str]
"""A ledger: (scope path incl. any dimension, unit, period, bucket)."""

DAY_MS = 86_400_000
ALLOW = Decision(Outcome.ALLOW)


@dataclass
class _Definition:
    scope: str
    unit: Unit
    period: Period | None
    per: str | None
    limit: int
    overdraft_limit: int
    overage_policy: OveragePolicy
    status: BudgetStatus = BudgetStatus.ACTIVE

    @property
    def key(self) -> DefKey:
        return (self.scope, self.unit, self.period, self.per)

    def order(self) -> tuple[bool, int, int, str]:
        """Canonical order inside one scope: plain budgets first, then unit, period, key."""
        return (self.per is not None, UNIT_ORDER[self.unit], PERIOD_ORDER[self.period],
                self.per or "")


@dataclass
class _Reservation:
    id: str
    subject: Subject
    action: Action
    estimate: dict[Unit, int]
    ledgers: list[tuple[LedgerKey, DefKey]]
    created_at_ms: int
    expires_at_ms: int
    grace_ms: int
    max_extensions: int
    overage_policy: OveragePolicy | None
    status: ReservationStatus = ReservationStatus.ACTIVE
    extensions: int = 0
    charged: Units = ()
    finalized_at_ms: int | None = None
    commit: tuple[str, str, CommitResult] | None = None  # key, fingerprint, result
    release: tuple[str, str, ReleaseResult] | None = None
    extends: dict[str, tuple[str, ExtendResult]] = field(default_factory=dict)

    @property
    def deadline_ms(self) -> int:
        return self.expires_at_ms + self.grace_ms

    def info(self) -> ReservationInfo:
        return ReservationInfo(
            self.id, self.subject.tenant, self.status, self.subject, self.action,
            _amounts(_ordered(self.estimate)), tuple(dict.fromkeys(k[0] for k, _ in self.ledgers)),
            self.created_at_ms, self.expires_at_ms, self.grace_ms, self.extensions,
            self.overage_policy, _amounts(self.charged), self.finalized_at_ms)


@dataclass
class _Idempotent:
    fingerprint: str
    result: Any
    expires_at_ms: int


@dataclass
class _Tenant:
    definitions: dict[str, dict[DefKey, _Definition]] = field(default_factory=dict)
    ledgers: dict[LedgerKey, ledger.Ledger] = field(default_factory=dict)
    reservations: dict[str, _Reservation] = field(default_factory=dict)
    expiry: list[tuple[int, str]] = field(default_factory=list)  # (deadline, id), lazily pruned
    idempotency: dict[tuple[str, str], _Idempotent] = field(default_factory=dict)


class MemoryStore:
    """Thread-safe in-process store; `clock` returns integer milliseconds and may be moved."""

    def __init__(self, clock: Callable[[], int] = system_ms, *, reap_batch: int = 16,
                 idempotency_ttl_ms: int = DAY_MS, finished_retention_ms: int = DAY_MS,
                 dimension_idle_ttl_ms: int = 30 * DAY_MS) -> None:
        self.clock = clock
        self.reap_batch = reap_batch
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.finished_retention_ms = finished_retention_ms
        self.dimension_idle_ttl_ms = dimension_idle_ttl_ms
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._handlers: dict[type[Any], Callable[[_Tenant, Any, int], Any]] = {
            SetBudget: self._set_budget, SetStatus: self._set_status, Reserve: self._reserve,
            Commit: self._commit, Release: self._release, Extend: self._extend,
            Record: self._record, Get: self._get, Balances: self._balances, Fund: self._fund,
            Transfer: self._transfer,
        }

    def execute(self, op: Op[R]) -> R:
        with self._lock:
            now = self.clock()
            if isinstance(op, Sweep):
                return self._sweep(op, now)  # type: ignore[return-value]
            tenant = self._tenants.get(op.tenant)
            if tenant is None:
                tenant = self._tenants[op.tenant] = _Tenant()
            elif tenant.expiry and tenant.expiry[0][0] < now:
                self._reap(tenant, now, self.reap_batch)
            result: R = self._handlers[type(op)](tenant, op, now)
            return result

    async def aexecute(self, op: Op[R]) -> R:
        # The lock is held for microseconds and never across an await, so calling through
        # is cheaper than a hop to a thread and keeps one event loop's operations in order.
        return self.execute(op)

    def close(self) -> None:
        pass

    # -- administration -----------------------------------------------------------------

    def _set_budget(self, t: _Tenant, op: SetBudget, now: int) -> tuple[Balance, ...]:
        defs = t.definitions.setdefault(op.scope, {})
        d = defs.get((op.scope, op.unit, op.period, op.per))
        if d is None:
            d = _Definition(op.scope, op.unit, op.period, op.per, op.limit, op.overdraft_limit,
                            op.overage_policy)
            defs[d.key] = d
            t.definitions[op.scope] = dict(sorted(defs.items(), key=lambda kv: kv[1].order()))
        else:
            d.limit, d.overdraft_limit, d.overage_policy = (op.limit, op.overdraft_limit,
                                                            op.overage_policy)
        if op.per is not None:
            return ()  # each dimension ledger follows the new limit when next touched
        key = (op.scope, op.unit, op.period, bucket(op.period, now))
        state = t.ledgers[key] = self._ledger(t, key, d, now)
        state.recompute_over_limit(d.overdraft_limit)
        return (_balance(key, state, d),)

    def _set_status(self, t: _Tenant, op: SetStatus, now: int) -> int:
        matched = [d for d in t.definitions.get(op.scope, {}).values()
                   if op.unit is None or d.unit is op.unit]
        if not matched:
            raise NotFound(f"no budget at {op.scope}"
                           + (f" in {op.unit.value}" if op.unit else ""))
        for d in matched:
            d.status = op.status
        return len(matched)

    def _fund(self, t: _Tenant, op: Fund, now: int) -> FundResult:
        replay = self._replay(t, "fund", op.idempotency_key, op.fingerprint, now)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        key, d = self._locate(t, op.scope, op.unit, op.period, now)
        state = self._ledger(t, key, d, now)
        after = ledger.fund(state, op.operation, op.amount, op.spent, d.overdraft_limit)
        if after is None:
            raise BudgetExceeded(ledger.denial(Reason.BUDGET_EXCEEDED, key[0], op.unit, None,
                                               state, op.amount, now))
        t.ledgers[key] = after
        result = FundResult(_balance(key, state, d), _balance(key, after, d))
        self._remember(t, "fund", op.idempotency_key, op.fingerprint, result, now)
        return result

    def _transfer(self, t: _Tenant, op: Transfer, now: int) -> TransferResult:
        replay = self._replay(t, "transfer", op.idempotency_key, op.fingerprint, now)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        skey, sdef = self._locate(t, op.source, op.unit, op.period, now)
        dkey, ddef = self._locate(t, op.destination, op.unit, op.period, now)
        if skey == dkey:
            raise InvalidRequest("transfer: source and destination are the same budget")
        source, destination = self._ledger(t, skey, sdef, now), self._ledger(t, dkey, ddef, now)
        if source.remaining < op.amount:
            raise BudgetExceeded(ledger.denial(Reason.BUDGET_EXCEEDED, skey[0], op.unit, None,
                                               source, op.amount, now))
        source.allocated -= op.amount
        destination.allocated += op.amount
        destination.recompute_over_limit(ddef.overdraft_limit)
        t.ledgers[skey], t.ledgers[dkey] = source, destination
        result = TransferResult(_balance(skey, source, sdef), _balance(dkey, destination, ddef))
        self._remember(t, "transfer", op.idempotency_key, op.fingerprint, result, now)
        return result

    # -- enforcement ----------------------------------------------------------------------

    def _reserve(self, t: _Tenant, op: Reserve, now: int) -> ReserveOutcome:
        if not op.dry_run:
            replay = self._replay(t, "reserve", op.idempotency_key, op.fingerprint, now)
            if replay is not None:
                return replay  # type: ignore[no-any-return]
        estimate = dict(op.estimate)
        targets = self._targets(t, op.scopes, op.dimensions, estimate, now)
        states = [(key, d, self._ledger(t, key, d, now)) for key, d in targets]
        for key, d, state in states:
            reason = ledger.reserve_refusal(state, d.status, d.overdraft_limit, estimate[d.unit])
            if reason is not None:
                decision = ledger.denial(reason, key[0], d.unit, d.period, state,
                                         estimate[d.unit], now)
                return ReserveOutcome(decision, None, _balances(states))
        if op.dry_run:
            return ReserveOutcome(ALLOW, None, _balances(states))
        for key, d, state in states:
            state.reserved += estimate[d.unit]
            state.touched_ms = now
            t.ledgers[key] = state
        res = _Reservation(f"{op.tenant}:{uuid.uuid4().hex}", op.subject, op.action, estimate,
                           [(key, d.key) for key, d in targets], now, now + op.ttl_ms,
                           op.grace_ms, op.max_extensions, op.overage_policy)
        t.reservations[res.id] = res
        heapq.heappush(t.expiry, (res.deadline_ms, res.id))
        outcome = ReserveOutcome(ALLOW, res.info(), _balances(states))
        self._remember(t, "reserve", op.idempotency_key, op.fingerprint, outcome, now)
        return outcome

    def _commit(self, t: _Tenant, op: Commit, now: int) -> CommitResult:
        res = self._reservation(t, op.reservation_id)
        if op.idempotency_key and res.commit and res.commit[0] == op.idempotency_key:
            replayed: CommitResult = _replayed(res.commit[1:], op.fingerprint,
                                               op.idempotency_key, "commit")
            return replayed
        self._require_active(t, res, now, grace=True)
        actual = dict(op.actual)
        unknown = actual.keys() - res.estimate.keys()
        if unknown:
            raise UnitMismatch(f"commit: {sorted(u.value for u in unknown)} not in the "
                               f"reservation's estimate "
                               f"{sorted(u.value for u in res.estimate)}")
        for unit, held in res.estimate.items():
            actual.setdefault(unit, held)  # a unit left out is charged as estimated
        plans = self._settle(t, res.ledgers, res.estimate, actual, res.overage_policy, now,
                             release_reserved=True)
        charged = ledger.apply(plans, now)
        released = {u: max(0, held - charged[u]) for u, held in res.estimate.items()}
        result = CommitResult(res.id, ReservationStatus.COMMITTED, _amounts(_ordered(charged)),
                              _amounts(_ordered(released)), _plan_balances(plans))
        self._finish(res, ReservationStatus.COMMITTED, now, _ordered(charged))
        if op.idempotency_key:
            res.commit = (op.idempotency_key, op.fingerprint, result)
        return result

    def _release(self, t: _Tenant, op: Release, now: int) -> ReleaseResult:
        res = self._reservation(t, op.reservation_id)
        if op.idempotency_key and res.release and res.release[0] == op.idempotency_key:
            again: ReleaseResult = _replayed(res.release[1:], op.fingerprint,
                                             op.idempotency_key, "release")
            return again
        self._require_active(t, res, now, grace=True)
        balances = self._return_estimate(t, res, now)
        result = ReleaseResult(res.id, ReservationStatus.RELEASED,
                               _amounts(_ordered(res.estimate)), balances)
        self._finish(res, ReservationStatus.RELEASED, now)
        if op.idempotency_key:
            res.release = (op.idempotency_key, op.fingerprint, result)
        return result

    def _extend(self, t: _Tenant, op: Extend, now: int) -> ExtendResult:
        res = self._reservation(t, op.reservation_id)
        seen = res.extends.get(op.idempotency_key) if op.idempotency_key else None
        if seen is not None:
            extended: ExtendResult = _replayed(seen, op.fingerprint, op.idempotency_key,
                                               "extension")
            return extended
        self._require_active(t, res, now, grace=False)
        if res.extensions >= res.max_extensions:
            raise MaxExtensionsExceeded(f"reservation {res.id} was extended {res.extensions} "
                                        "times, the most allowed")
        res.expires_at_ms += op.by_ms
        res.extensions += 1
        heapq.heappush(t.expiry, (res.deadline_ms, res.id))
        result = ExtendResult(res.id, res.expires_at_ms, res.extensions)
        if op.idempotency_key:
            res.extends[op.idempotency_key] = (op.fingerprint, result)
        return result

    def _record(self, t: _Tenant, op: Record, now: int) -> RecordResult:
        replay = self._replay(t, "record", op.idempotency_key, op.fingerprint, now)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        actual = dict(op.actual)
        targets = self._targets(t, op.scopes, op.dimensions, actual, now)
        for key, d in targets:  # records pass debt and over-limit, never a frozen budget
            if d.status is not BudgetStatus.ACTIVE:
                reason = (Reason.BUDGET_FROZEN if d.status is BudgetStatus.FROZEN
                          else Reason.BUDGET_CLOSED)
                raise BudgetExceeded(ledger.denial(reason, key[0], d.unit, d.period,
                                                   self._ledger(t, key, d, now),
                                                   actual[d.unit], now))
        plans = self._settle(t, [(k, d.key) for k, d in targets], dict.fromkeys(actual, 0),
                             actual, op.overage_policy, now, release_reserved=False)
        charged = ledger.apply(plans, now)
        result = RecordResult(f"{op.tenant}:{uuid.uuid4().hex}", _amounts(_ordered(charged)),
                              _plan_balances(plans))
        self._remember(t, "record", op.idempotency_key, op.fingerprint, result, now)
        return result

    # -- reads ----------------------------------------------------------------------------

    def _get(self, t: _Tenant, op: Get, now: int) -> ReservationInfo:
        return self._reservation(t, op.reservation_id).info()

    def _balances(self, t: _Tenant, op: Balances, now: int) -> tuple[Balance, ...]:
        path = parse_scope(op.scope)
        below = op.scope + "/" if op.include_children else None
        result: list[Balance] = []
        for scope, defs in t.definitions.items():
            if scope != path.base and not (below and scope.startswith(below)):
                continue
            for d in defs.values():
                current = bucket(d.period, now)
                if d.per is None:
                    keys: Iterator[LedgerKey] = iter(
                        () if path.dimension else ((scope, d.unit, d.period, current),))
                elif path.dimension or below:
                    keys = (k for k in self._dimension_ledgers(t, d, current)
                            if path.dimension is None or k[0] == path.path)
                else:
                    continue
                result += [_balance(k, self._ledger(t, k, d, now), d) for k in keys]
        return tuple(result)

    # -- maintenance ----------------------------------------------------------------------

    def _sweep(self, op: Sweep, now: int) -> int:
        expired = 0
        for t in self._tenants.values():
            expired += self._reap(t, now, op.limit - expired)
            self._prune(t, now)
        return expired

    def _reap(self, t: _Tenant, now: int, limit: int) -> int:
        """Expire up to `limit` reservations whose ttl and grace have passed."""
        expired = 0
        while t.expiry and t.expiry[0][0] < now and expired < limit:
            _, rid = heapq.heappop(t.expiry)
            res = t.reservations.get(rid)
            if res is None or res.status is not ReservationStatus.ACTIVE:
                continue
            if res.deadline_ms >= now:
                continue  # extended since: a later entry stands in the heap
            self._expire(t, res, now)
            expired += 1
        return expired

    def _prune(self, t: _Tenant, now: int) -> None:
        """Drop finished reservations, idempotency records and idle dimension ledgers."""
        for rid, res in list(t.reservations.items()):
            if res.finalized_at_ms is not None and (
                    res.finalized_at_ms + self.finished_retention_ms < now):
                del t.reservations[rid]
        for key, record in list(t.idempotency.items()):
            if record.expires_at_ms < now:
                del t.idempotency[key]
        templates = {(d.scope, d.unit, d.period) for defs in t.definitions.values()
                     for d in defs.values() if d.per is not None}
        for lkey, state in list(t.ledgers.items()):
            idle = state.touched_ms + self.dimension_idle_ttl_ms < now
            base = lkey[0].rsplit("/", 1)[0]
            if idle and state.reserved == 0 and (base, lkey[1], lkey[2]) in templates:
                del t.ledgers[lkey]

    # -- helpers --------------------------------------------------------------------------

    def _targets(self, t: _Tenant, scopes: tuple[str, ...],
                 dimensions: tuple[tuple[str, str], ...], units: dict[Unit, int],
                 now: int) -> list[tuple[LedgerKey, _Definition]]:
        """The ledgers a subject charges in these units, in canonical order.

        Raises `Denied(BUDGET_NOT_FOUND)` when no budget applies to the subject at all, and
        `UnitMismatch` when budgets apply but none in the given units.
        """
        dims = dict(dimensions)
        applicable = 0
        targets = []
        for scope in scopes:
            for d in t.definitions.get(scope, {}).values():
                if d.per is None:
                    path = scope
                elif d.per in dims:
                    path = f"{scope}/{d.per}:{dims[d.per]}"
                else:
                    continue
                applicable += 1
                if d.unit in units:
                    targets.append(((path, d.unit, d.period, bucket(d.period, now)), d))
        if targets:
            return targets
        if applicable:
            held = sorted({d.unit.value for s in scopes for d in t.definitions.get(s, {}).values()})
            raise UnitMismatch(f"no budget of {scopes[-1]} is in "
                               f"{sorted(u.value for u in units)}; its budgets hold {held}")
        raise Denied(Decision(Outcome.DENY, reason=Reason.BUDGET_NOT_FOUND, scope=scopes[-1]))

    def _ledger(self, t: _Tenant, key: LedgerKey, d: _Definition, now: int) -> ledger.Ledger:
        """The ledger at `key`; a new one (not yet stored) when never touched."""
        state = t.ledgers.get(key)
        if state is None:
            return ledger.Ledger(allocated=d.limit, limit_seen=d.limit, touched_ms=now)
        if state.limit_seen != d.limit and key[3] == bucket(d.period, now):
            state.follow_limit(d.limit)
        return state

    def _locate(self, t: _Tenant, scope: str, unit: Unit, period: Any,
                now: int) -> tuple[LedgerKey, _Definition]:
        """The current ledger of the one budget at `scope` in `unit` (and `period`)."""
        path = parse_scope(scope)
        per = path.dimension[0] if path.dimension else None
        found = [d for d in t.definitions.get(path.base, {}).values()
                 if d.unit is unit and d.per == per and (period is AUTO or d.period == period)]
        if not found:
            raise NotFound(f"no budget at {scope} in {unit.value}"
                           + ("" if period is AUTO else f" for period {period}"))
        if len(found) > 1:
            periods = [d.period.value if d.period else None for d in found]
            raise InvalidRequest(f"{scope} has {unit.value} budgets for periods {periods}; "
                                 "say which with period=")
        d = found[0]
        return (path.path, unit, d.period, bucket(d.period, now)), d

    def _settle(self, t: _Tenant, ledgers: list[tuple[LedgerKey, DefKey]],
                estimate: dict[Unit, int], actual: dict[Unit, int],
                policy: OveragePolicy | None, now: int, release_reserved: bool
                ) -> list[ledger.Plan]:
        rows = []
        for key, dkey in ledgers:
            d = _definition(t, dkey)
            state = t.ledgers[key] = self._ledger(t, key, d, now)
            rows.append((key, d, state, policy or d.overage_policy))
        return ledger.plan(rows, estimate, actual, release_reserved, now)

    def _return_estimate(self, t: _Tenant, res: _Reservation, now: int) -> tuple[Balance, ...]:
        balances = []
        for key, dkey in res.ledgers:
            d = _definition(t, dkey)
            state = t.ledgers[key] = self._ledger(t, key, d, now)
            state.reserved -= res.estimate[key[1]]
            state.touched_ms = now
            balances.append(_balance(key, state, d))
        return tuple(balances)

    def _expire(self, t: _Tenant, res: _Reservation, now: int) -> None:
        self._return_estimate(t, res, now)
        self._finish(res, ReservationStatus.EXPIRED, now)

    def _reservation(self, t: _Tenant, rid: str) -> _Reservation:
        res = t.reservations.get(rid)
        if res is None:
            raise NotFound(f"no reservation {rid} (never made, or past its retention)")
        return res

    def _require_active(self, t: _Tenant, res: _Reservation, now: int, grace: bool) -> None:
        if res.status is ReservationStatus.EXPIRED:
            raise ReservationExpired(f"reservation {res.id} expired; its estimate went back "
                                     "to the budgets (charge the spend with record())")
        if res.status is not ReservationStatus.ACTIVE:
            raise ReservationFinalized(f"reservation {res.id} is already {res.status.value}")
        if now > res.deadline_ms:
            self._expire(t, res, now)
        if now > (res.deadline_ms if grace else res.expires_at_ms):
            raise ReservationExpired(f"reservation {res.id} expired at {res.expires_at_ms} ms")

    @staticmethod
    def _finish(res: _Reservation, status: ReservationStatus, now: int,
                charged: Units = ()) -> None:
        res.status, res.finalized_at_ms, res.charged = status, now, charged

    def _replay(self, t: _Tenant, kind: str, key: str | None, fingerprint: str,
                now: int) -> Any:
        if key is None:
            return None
        record = t.idempotency.get((kind, key))
        if record is None or record.expires_at_ms < now:
            return None
        return _replayed((record.fingerprint, record.result), fingerprint, key, kind)

    def _remember(self, t: _Tenant, kind: str, key: str | None, fingerprint: str,
                  result: Any, now: int) -> None:
        if key is not None:
            t.idempotency[(kind, key)] = _Idempotent(fingerprint, result,
                                                     now + self.idempotency_ttl_ms)

    @staticmethod
    def _dimension_ledgers(t: _Tenant, d: _Definition, current: str) -> Iterator[LedgerKey]:
        prefix = f"{d.scope}/{d.per}:"
        for key in t.ledgers:
            if (key[1] is d.unit and key[2] == d.period and key[3] == current
                    and key[0].startswith(prefix) and "/" not in key[0][len(prefix):]):
                yield key


def _definition(t: _Tenant, key: DefKey) -> _Definition:
    """A reservation's budget definition, or a neutral stand-in if it was removed since."""
    d = t.definitions.get(key[0], {}).get(key)
    if d is None:
        d = _Definition(*key, limit=0, overdraft_limit=0,
                        overage_policy=OveragePolicy.ALLOW_IF_AVAILABLE)
    return d


def _replayed(stored: tuple[str, Any], fingerprint: str, key: str | None, kind: str) -> Any:
    """The stored result of an idempotent call, if the payload is the same."""
    if stored[0] != fingerprint:
        raise IdempotencyMismatch(f"idempotency key {key!r} was used for a different "
                                  f"{kind} request")
    return stored[1]


def _balance(key: LedgerKey, state: ledger.Ledger, d: _Definition) -> Balance:
    return Balance(key[0], key[1], key[2].value if key[2] else None, key[3], state.allocated,
                   state.reserved, state.spent, state.debt, d.overdraft_limit, state.over_limit,
                   d.status)


def _balances(states: list[tuple[LedgerKey, _Definition, ledger.Ledger]]) -> tuple[Balance, ...]:
    return tuple(_balance(key, state, d) for key, d, state in states)


def _plan_balances(plans: list[ledger.Plan]) -> tuple[Balance, ...]:
    return tuple(_balance(p.key, p.state, p.definition) for p in plans)


def _amounts(units: Units) -> tuple[Amount, ...]:
    return tuple(Amount(unit, amount) for unit, amount in units)


def _ordered(by_unit: dict[Unit, int]) -> Units:
    return tuple(sorted(by_unit.items(), key=lambda kv: UNIT_ORDER[kv[0]]))
