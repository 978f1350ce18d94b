"""Enforcement: reserve, decide, commit, release, extend, record and get.

Calls that are one operation are pure builders; calls that decide between steps are flows
(see `calls.py`): a reservation let through while the store is down (fail open), a decision
read from a denial, a commit retried after a store failure and recognised when its first try
had landed. Both the guard and a tenant handle offer these; the runner decides which tenants
it may touch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import arguments as arg
from .amounts import Amount, AmountsLike, Units, trusted_amounts
from .calls import Flow, Pause, Runner, flow_twins, twins
from .clock import system_ms
from .engine import Engine
from .errors import (
    Denied,
    InvalidRequest,
    ReservationFinalized,
    StoreUnavailable,
    denied,
)
from .events import Notification, NotificationType
from .ids import new_id
from .models import (
    Action,
    CommitResult,
    Decision,
    Outcome,
    OveragePolicy,
    RecordResult,
    ReservationInfo,
    ReservationStatus,
)
from .platform import assign_plan_op
from .policy import Elastic
from .pricing import TokenUsage
from .reservation import (
    Reservation,
    commit_op,
    extend_op,
    get_op,
    in_field_order,
    release_op,
)
from .scopes import Subject
from .stores import operations as ops
from .stores.operations import in_unit_order
from .usage import token_counts
from .validation import check_int

log = logging.getLogger("allotment")
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
SPEND_UNRECORDED = NotificationType.SPEND_UNRECORDED


in_field_order(ops.Reserve, "idempotency_key", "fingerprint", "tenant", "scopes", "dimensions",
               "subject", "action", "estimate", "ttl_ms", "grace_ms", "max_extensions",
               "overage_policy", "dry_run", "elastic", "shadow", "default_plan")


def _same(result: Any) -> Any:
    return result


class EnforcementCalls(Runner):
    """Reserve before a call, settle after it; on the engine of the guard that made it."""

    _engine: Engine

    # -- reserving ------------------------------------------------------------------------

    def _reserve(self, subject: Subject | None, action: Action,
                 estimate: AmountsLike | Elastic, *, ttl_ms: int | None = None,
                 grace_ms: int | None = None,
                 overage_policy: OveragePolicy | str | None = None,
                 idempotency_key: str | None = None) -> Flow[Reservation]:
        """Hold `estimate` on every budget of the subject, or raise `Denied` (a subclass).

        Access rules, quotas and budgets are all checked, and all charged, in one atomic
        step. An `al.Elastic` estimate may be reserved smaller, answered ALLOW_WITH_CAPS."""
        return self._reserving(self._reserve_op(subject, action, estimate, ttl_ms, grace_ms,
                                                overage_policy, idempotency_key))

    reserve, areserve = flow_twins(_reserve)

    def _decide(self, subject: Subject | None, action: Action,
                estimate: AmountsLike | Elastic) -> Flow[Decision]:
        """What `reserve` would answer now, changing nothing."""
        op = self._reserve_op(subject, action, estimate, dry_run=True)
        try:
            outcome: ops.ReserveOutcome = yield op
        except Denied as error:
            return error.decision
        return outcome.decision

    decide, adecide = flow_twins(_decide)

    def _reserving(self, op: ops.Reserve) -> Flow[Reservation]:
        try:
            outcome: ops.ReserveOutcome = yield op
        except StoreUnavailable as error:
            return self._store_failed(op, error)
        if outcome.reservation is None:
            raise denied(outcome.decision)
        return Reservation(self, outcome.reservation, outcome.decision, outcome.balances)

    def _reserve_op(self, subject: Subject | None, action: Action,
                    estimate: AmountsLike | Elastic, ttl_ms: int | None = None,
                    grace_ms: int | None = None, overage_policy: Any = None,
                    idempotency_key: str | None = None, dry_run: bool = False) -> ops.Reserve:
        # a Subject (the usual one) is checked without `arg.subject`'s call and isinstance
        subject = subject.checked() if type(subject) is Subject else arg.subject(subject)
        if not isinstance(action, Action):
            raise InvalidRequest(f"action: expected an Action, got {action!r}")
        elastic = None
        if type(estimate) is Amount:  # the usual estimate: one amount, checked when made
            units: Units = ((estimate.unit, estimate.amount),)
        elif isinstance(estimate, Elastic):
            units = in_unit_order(estimate.units())
            elastic = arg.exact(ops.ElasticTerms(in_unit_order(estimate.rates()),
                                                 estimate.max_tokens, estimate.floor))
        else:
            units = arg.units(estimate, "estimate")
        engine = self._engine
        ttl = engine.ttl_ms if ttl_ms is None else check_int(ttl_ms, "ttl_ms", *arg.TTL_RANGE)
        grace = engine.grace_ms if grace_ms is None else check_int(grace_ms, "grace_ms",
                                                                   *arg.GRACE_RANGE)
        policy = None if overage_policy is None else arg.policy(overage_policy)
        return self._checked_reserve_op(
            subject, action, units, elastic, ttl, grace, policy, dry_run,
            arg.NO_KEY if idempotency_key is None else arg.keyed(
                idempotency_key, "reserve", subject, action, units, elastic, ttl, grace,
                policy))

    def _checked_reserve_op(self, subject: Subject, action: Action, units: Units,
                            elastic: ops.ElasticTerms | None, ttl: int, grace: int,
                            policy: OveragePolicy | None, dry_run: bool,
                            keyed: dict[str, Any]) -> ops.Reserve:
        """The reserve operation from checked parts: one place, so the public and the
        adapters' entry points send the store the same thing."""
        engine = self._engine
        tenant = subject.tenant
        return ops.Reserve(
            keyed["idempotency_key"], keyed["fingerprint"], tenant, subject.scopes(),
            subject.dimension_items, subject, action, units, ttl, grace,
            engine.max_extensions, policy, dry_run, elastic, engine.mode == "shadow",
            None if engine.default_plan is None else self._default_plan(tenant))

    def _default_plan(self, tenant: str) -> ops.ApplyPlan | None:
        engine = self._engine
        if engine.default_plan is None:
            return None
        op = engine.default_plans.get(tenant)
        if op is None:
            op = engine.default_plans[tenant] = assign_plan_op(tenant, engine.default_plan)
        return op

    def _store_failed(self, op: ops.Reserve, error: StoreUnavailable) -> Reservation:
        """Fail closed (raise), or open: the call proceeds unguarded and its spend is
        recorded when it commits, once the store answers again."""
        engine = self._engine
        engine.store_failures += 1
        if engine.on_store_error == "deny":
            raise error
        log.warning("store unavailable, letting %s through unguarded: %s", op.tenant, error)
        estimate = trusted_amounts(op.estimate)
        info = ReservationInfo(new_id(op.tenant), op.tenant,
                               ReservationStatus.ACTIVE, op.subject, op.action, estimate,
                               op.scopes, 0, 0, op.grace_ms, 0, op.overage_policy)
        decision = Decision(Outcome.ALLOW, reason=STORE_UNAVAILABLE)
        return Reservation(self, info, decision, (), unguarded=True)

    # -- the adapters' entry point (see `allotment.adapter`) -------------------------------

    def _reserving_units(self, subject: Subject, action: Action, units: Units,
                         elastic: ops.ElasticTerms | None = None,
                         ttl_ms: int | None = None) -> Flow[Reservation]:
        """`reserve` for a Subject and Action the adapter built and checked integer units
        in unit order: only what an adapter cannot vouch for is checked again."""
        shrinkable = None if elastic is None else arg.exact(elastic)
        ttl = self._engine.ttl_ms if ttl_ms is None else check_int(ttl_ms, "ttl_ms",
                                                                   *arg.TTL_RANGE)
        return self._reserving(self._checked_reserve_op(
            subject, action, units, shrinkable, ttl, self._engine.grace_ms, None, False,
            arg.NO_KEY))

    _reserve_units, _areserve_units = flow_twins(_reserving_units, name="_reserve_units")

    # -- settling -------------------------------------------------------------------------

    def _commit(self, reservation_id: str, actual: AmountsLike, *,
                idempotency_key: str | None = None,
                usage: TokenUsage | None = None) -> Flow[CommitResult]:
        """Charge the actual usage and return the rest of the estimate. Units the estimate
        held but `actual` leaves out are charged as estimated. `usage` (an `al.TokenUsage`:
        the provider's token counts) is counted for the usage export.

        A store failure is retried (a lost answer to an applied commit is recognised, never
        charged twice); if every try fails, `spend.unrecorded` is sent to the subscribers and
        sinks with the amounts, and `StoreUnavailable` is raised."""
        op = commit_op(reservation_id, actual, idempotency_key=idempotency_key, usage=usage)
        return self._spending(op, reservation_id)

    commit, acommit = flow_twins(_commit)

    def _spending(self, op: ops.Commit | ops.Record, reservation_id: str,
                  then: Callable[[Any], Any] = _same) -> Flow[Any]:
        """Write spend that was incurred, and return `then(result)`: a store failure is
        retried (a retried commit whose first try landed is recognised, a retried record
        replays by its key, so nothing is charged twice); when every try fails the spend
        goes to the sinks, never nowhere. Retries wait 0.05 s, 0.1 s, 0.2 s, ... before
        each."""
        try:  # the first try, outside the loop of retries: most calls need no other
            return then((yield op))
        except StoreUnavailable as error:
            failure = error
        for attempt in range(1, self._engine.commit_retries + 1):
            yield Pause(0.05 * 2 ** (attempt - 1))
            try:
                return then((yield op))
            except StoreUnavailable as error:
                failure = error
            except ReservationFinalized:
                if not isinstance(op, ops.Commit):
                    raise
                info: ReservationInfo = yield get_op(op.reservation_id)
                return then(_applied_commit(info))
        raise self._unrecorded(op.tenant, reservation_id, op.actual, failure)

    def _unrecorded(self, tenant: str, reservation_id: str, actual: Units,
                    error: StoreUnavailable) -> StoreUnavailable:
        """Never drop spend silently: tell the subscribers and sinks what could not be
        written, then let the caller know."""
        amounts = trusted_amounts(actual)
        log.error("spend of %s on %s could not be recorded: %s", amounts, reservation_id, error)
        self._engine.notify([Notification(SPEND_UNRECORDED, tenant, system_ms(),
                                          reservation_id=reservation_id, amounts=amounts)])
        return StoreUnavailable(f"the spend of {reservation_id} failed after "
                                f"{self._engine.commit_retries + 1} tries ({error}); the spend "
                                f"was sent to the notification sinks as {SPEND_UNRECORDED}")

    release, arelease = twins(release_op)
    extend, aextend = twins(extend_op)

    def _record(self, subject: Subject | None, action: Action, actual: AmountsLike, *,
                overage_policy: OveragePolicy | str | None = None,
                idempotency_key: str | None = None,
                usage: TokenUsage | None = None) -> Flow[RecordResult]:
        """Charge a cost known only afterwards, without a reservation; `usage` (an
        `al.TokenUsage`) is counted for the usage export."""
        result: RecordResult = yield self._record_op(subject, action, actual,
                                                     overage_policy=overage_policy,
                                                     idempotency_key=idempotency_key,
                                                     usage=usage)
        return result

    def _record_op(self, subject: Subject | None, action: Action, actual: AmountsLike, *,
                   overage_policy: OveragePolicy | str | None = None,
                   idempotency_key: str | None = None,
                   usage: TokenUsage | None = None) -> ops.Record:
        subject = arg.subject(subject)
        if not isinstance(action, Action):
            raise InvalidRequest(f"action: expected an Action, got {action!r}")
        units = arg.units(actual, "actual")
        policy = arg.policy(overage_policy)
        counts = token_counts(usage)
        payload = (subject, action, units, policy) if counts is None else (
            subject, action, units, policy, counts)
        return ops.Record(
            tenant=subject.tenant, scopes=subject.scopes(),
            dimensions=subject.dimension_items, subject=subject,
            action=action, actual=units, overage_policy=policy,
            shadow=self._engine.mode == "shadow", usage=counts,
            **arg.keyed(idempotency_key, "record", *payload))

    record, arecord = flow_twins(_record)

    get, aget = twins(get_op)


def _applied_commit(info: ReservationInfo) -> CommitResult:
    """A retried commit found its first try applied: answer from the stored record."""
    if info.status is not ReservationStatus.COMMITTED:
        raise ReservationFinalized(f"reservation {info.id} is already {info.status.value}")
    charged = {a.unit: a.amount for a in info.charged}
    released = tuple(Amount.trusted(a.unit, max(0, a.amount - charged.get(a.unit, 0)))
                     for a in info.estimate)
    return CommitResult(info.id, ReservationStatus.COMMITTED, info.charged, released, ())
