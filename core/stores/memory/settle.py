"""Commit, release and extend of one reservation, as settle.lua; the idempotent reply of each
is kept on the reservation."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from functools import partial

from ... import ledger
from ...errors import (
    MaxExtensionsExceeded,
    ReservationExpired,
    ReservationFinalized,
    UnitMismatch,
)
from ...events import AuditType, Notification, NotificationType
from ...models import CommitResult, ExtendResult, ReleaseResult, ReservationStatus
from ...reports import report_scopes
from ..operations import Commit, Extend, Release, checked_amounts
from .state import (
    COMMITTED,
    DAY_MS,
    Figures,
    Held,
    Kept,
    LeanCommit,
    Reservation,
    Tenant,
    alerts,
    amounts,
    count,
    count_usage,
    counters_at,
    debts_added,
    debts_of,
    expire,
    finish,
    held,
    held_balances,
    log,
    ordered,
    refuse_closed,
    release_held,
    replayed,
    reservation,
    settlement,
    shared_amounts,
    snapshot,
    tally,
)

_ACTIVE = ReservationStatus.ACTIVE
_COMMITTED = ReservationStatus.COMMITTED
_COMMITTED_RECORD = AuditType.COMMITTED


def commit(t: Tenant, op: Commit, now: int) -> CommitResult:
    """Charge the actual cost against the estimate held, and give back the rest."""
    res = t.reservations.get(op.reservation_id) or _named(t, op.reservation_id)
    if op.idempotency_key and res.commit and res.commit.key == op.idempotency_key:
        again: CommitResult = replayed(res.commit, op.fingerprint, "commit")
        return again
    if res.status is not _ACTIVE or now > res.expires_at_ms + res.grace_ms:
        _require_active(t, res, now, grace=True)
    # The usual commit, without the general one's steps (`_commit`): a live reservation in
    # one unit, of the current definitions, in enforce mode, charged within its estimate,
    # on ledgers still there under the limit they were held at. It writes and answers
    # exactly what the general path would; anything else goes there before the first write.
    given = op.actual
    estimate = res.estimate
    if (res.report is None or res.epoch != t.epoch or res.shadow or len(given) != 1
            or len(estimate) != 1):
        return _commit(t, op, res, now)
    unit, amount = given[0]
    held = estimate.get(unit)
    if held is None or amount < 0 or amount > held:
        return _commit(t, op, res, now)
    states, terms = res.states, res.terms
    if res.generation != t.cx.generation:  # a ledger or definition changed since: look again
        ledgers = t.ledgers
        states = []
        for key, d in res.ledgers:
            state = ledgers.get(key)
            if state is None or state.limit_seen != d.limit:
                return _commit(t, op, res, now)
            states.append(state)
        terms = [(d.overdraft_limit, d.status) for _, d in res.ledgers]
    loud = False  # some ledger may have a notification due (see `alerts`)
    charged_ledgers = res.ledgers
    figures = []  # the balances as the answer shows them, read in the loop that writes
    # `states` are `res.ledgers`' objects, one each by construction: no `strict=True`,
    # whose keyword makes `zip` parse its arguments the slow way (about 1.5 k instructions)
    for (_, d), state in zip(charged_ledgers, states):  # noqa: B905
        state.reserved -= held
        state.spent += amount
        state.touched_ms = now
        figures.append((state.allocated, state.reserved, state.spent, state.debt,
                        state.over_limit))
        if not (state.spent + state.debt < state.quiet_below and not state.over_limit
                and state.quiet_allocated == state.allocated
                and state.quiet_alerts is d.alerts):
            loud = True
    charged = shared_amounts(given) or amounts(given)
    released = ((unit, held - amount),)
    back = shared_amounts(released) or amounts(released)
    shown: Sequence[Figures] = figures
    if op.idempotency_key:  # kept as the values the answer is built from (see `Kept`)
        shown = tuple(figures)
        res.commit = LeanCommit(op.idempotency_key, op.fingerprint, res.id, charged, back,
                                charged_ledgers, shown, tuple(terms))
    result = CommitResult(res.id, _COMMITTED, charged, back,
                          partial(held_balances, charged_ledgers, shown, terms))
    finish(t, res, _COMMITTED, now, charged)
    t.seq += 1
    t.audit.append((t.seq, now, _COMMITTED_RECORD, t.name, None, None,
                    (res.scopes, res.id, op.idempotency_key, res.estimate_amounts, charged,
                     charged)))
    report = res.report
    assert report is not None
    count(t, now, res.on_commit or counters_at(report, "commits", COMMITTED, (unit,)),
          {unit: amount})
    kept = t.usage.get(res.created_at_ms // DAY_MS)  # the day's counters of this subject,
    entry = None if kept is None else kept.get((report[0], res.action.name))  # when there
    if entry is not None:
        entry.add(1, 0, op.usage, given)
    else:
        count_usage(t, res.created_at_ms, now, report[0], res.action.name, 1, 0, op.usage,
                    given)
    forecast = t.cx.forecast
    if loud or forecast is not None:
        changed: Held = [(key, d, state) for (key, d), state
                         in zip(charged_ledgers, states, strict=True)]
        if loud:
            alerts(t, changed, now, res.id)
        if forecast is not None:
            forecast(t, changed, now)
    return result


def _commit(t: Tenant, op: Commit, res: Reservation, now: int) -> CommitResult:
    """Commit in general: several units, shadow mode, an actual beyond the estimate, a
    reservation made before a definition was added or removed."""
    given, estimate = dict(op.actual), res.estimate  # (finish() lets go of the estimate)
    checked_amounts(given, "actual")
    if not given.keys() <= res.estimate.keys():
        unknown = sorted(u.value for u in given.keys() - res.estimate.keys())
        raise UnitMismatch(f"commit: {unknown} not in the reservation's estimate "
                           f"{sorted(u.value for u in res.estimate)}")
    # in the estimate's (unit) order; a unit left out is charged as estimated
    actual = given if len(given) == len(res.estimate) else {
        unit: given.get(unit, estimated) for unit, estimated in res.estimate.items()}
    changed = held(t, res, now)
    debts = debts_of(changed)
    if not res.shadow and ledger.within(res.estimate, actual):
        ledger.settle_within(changed, res.estimate, actual, now)
        charged = actual
    else:
        charged = ledger.apply(settlement(changed, res.estimate, actual, res.overage_policy,
                                          now, release_reserved=True, shadow=res.shadow), now)
    for key, _, state in changed:
        t.ledgers[key] = state
    released = tuple([(u, max(0, estimated - charged[u]))
                      for u, estimated in res.estimate.items()])
    charged_amounts = amounts(ordered(charged))
    result = CommitResult(res.id, ReservationStatus.COMMITTED, charged_amounts,
                          amounts(released), snapshot(changed))
    finish(t, res, ReservationStatus.COMMITTED, now, charged_amounts)
    if op.idempotency_key:
        res.commit = Kept(op.idempotency_key, op.fingerprint, result)
    log(t, now, AuditType.COMMITTED, scopes=res.scopes, reservation_id=res.id,
        idempotency_key=op.idempotency_key, estimate=res.estimate_amounts,
        actual=charged_amounts if actual == charged else amounts(ordered(actual)),
        charged=charged_amounts)
    if res.report is not None:
        count(t, now, counters_at(res.report, "commits", COMMITTED, tuple(charged)), charged)
    else:
        tally(t, now, report_scopes(res.subject), "commits", charged, COMMITTED)
    count_usage(t, res.created_at_ms, now, res.subject.scope_path, res.action.name, 1, 0,
                op.usage, charged.items())
    alerts(t, changed, now, res.id)
    debts_added(t, changed, debts, now, res.id)
    over = {u: a - estimate[u] for u, a in actual.items() if a > estimate[u]}
    if over:  # on record too, with the estimate and the actual (as settle.lua)
        t.cx.notes.append(Notification(NotificationType.COMMIT_OVERAGE, t.name, now,
                                       reservation_id=res.id, amounts=amounts(ordered(over))))
        log(t, now, AuditType.COMMIT_OVERAGE, scopes=res.scopes, reservation_id=res.id,
            estimate=res.estimate_amounts, actual=amounts(ordered(actual)))
    if t.cx.forecast is not None:
        t.cx.forecast(t, changed, now)
    return result



def release(t: Tenant, op: Release, now: int) -> ReleaseResult:
    """Give the whole estimate back: the work was not done."""
    res = _named(t, op.reservation_id)
    if op.idempotency_key and res.release and res.release.key == op.idempotency_key:
        again: ReleaseResult = replayed(res.release, op.fingerprint, "release")
        return again
    _require_active(t, res, now, grace=True)
    balances = release_held(t, res, now, op.idempotency_key, op.reason)
    result = ReleaseResult(res.id, ReservationStatus.RELEASED, res.estimate_amounts, balances)
    if op.idempotency_key:
        res.release = Kept(op.idempotency_key, op.fingerprint, result)
    return result


def extend(t: Tenant, op: Extend, now: int) -> ExtendResult:
    """Push a reservation's expiry out, up to its maximum number of extensions."""
    res = _named(t, op.reservation_id)
    seen = res.extends.get(op.idempotency_key) if op.idempotency_key and res.extends else None
    if seen is not None:
        again: ExtendResult = replayed(seen, op.fingerprint, "extension")
        return again
    _require_active(t, res, now, grace=False)
    if res.extensions >= res.max_extensions:
        raise MaxExtensionsExceeded(f"reservation {res.id} was extended {res.extensions} "
                                    "times, the most allowed")
    res.expires_at_ms += op.by_ms
    res.extensions += 1
    heapq.heappush(t.expiry, (res.deadline_ms, res.id))
    result = ExtendResult(res.id, res.expires_at_ms, res.extensions)
    if op.idempotency_key:
        if res.extends is None:
            res.extends = {}
        res.extends[op.idempotency_key] = Kept(op.idempotency_key, op.fingerprint, result)
    log(t, now, AuditType.EXTENDED, reservation_id=res.id, idempotency_key=op.idempotency_key,
        detail={"by_ms": op.by_ms, "expires_at_ms": res.expires_at_ms})
    return result


def _named(t: Tenant, rid: str) -> Reservation:
    """The reservation a commit, release or extend names. On a closed tenant one not there
    is refused as any change is (`_require_active`), not as not found."""
    res = t.reservations.get(rid)
    if res is None and t.closed_at_ms is not None:
        refuse_closed(t)
    return res or reservation(t, rid)


def _require_active(t: Tenant, res: Reservation, now: int, grace: bool) -> None:
    """Refuse a change on a closed tenant (whose reservations closing finished: its refusal
    comes before theirs), a finished reservation, or one past its expiry (and grace, if
    `grace`); one past both expires here."""
    if t.closed_at_ms is not None:
        refuse_closed(t)
    if res.status is ReservationStatus.EXPIRED:
        raise ReservationExpired(f"reservation {res.id} expired; its estimate went back "
                                 "to the budgets (charge the spend with record())")
    if res.status is not ReservationStatus.ACTIVE:
        raise ReservationFinalized(f"reservation {res.id} is already {res.status.value}")
    if now > res.deadline_ms:
        expire(t, res, now)
    if now > (res.deadline_ms if grace else res.expires_at_ms):
        raise ReservationExpired(f"reservation {res.id} expired at {res.expires_at_ms} ms")
