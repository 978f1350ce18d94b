"""Ledger arithmetic (Cycles semantics), free of storage: what a check refuses, what a
commit charges. The memory store runs it under its lock; the Redis scripts mirror it.

Identity kept by every change: allocated = remaining + reserved + spent + debt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from .amounts import Unit
from .errors import BudgetExceeded, InvalidRequest
from .models import BudgetStatus, Decision, FundOperation, Outcome, OveragePolicy, Reason
from .periods import Period, bucket_end_ms
from .validation import MAX_AMOUNT

__all__ = ["Ledger", "OveragePolicy", "Posting", "Settlement", "apply", "denial", "fund",
           "reserve_refusal", "settle", "settle_shadow", "settle_within", "within"]


@dataclass
class Ledger:
    """One budget's bucket: the amounts the identity ties together, and which notifications
    were already sent for it (each is sent once per crossing)."""

    allocated: int
    limit_seen: int
    reserved: int = 0
    spent: int = 0
    debt: int = 0
    over_limit: bool = False
    touched_ms: int = 0
    alerted: int = 0  # how many alert thresholds this bucket has crossed (notified once)
    exhausted: bool = False  # budget.exhausted sent for this bucket
    over_notified: bool = False  # budget.over_limit_entered sent since the flag was raised
    # Below `quiet_below` spent plus debt, no notification is due while the allocation and the
    # thresholds stay those it was computed for (checked inline, without a call).
    quiet_below: int = 0
    quiet_allocated: int = -1
    quiet_alerts: tuple[float, ...] = ()

    @property
    def remaining(self) -> int:
        """What a reservation may still take: the allocation less held, spent and owed."""
        return self.allocated - self.reserved - self.spent - self.debt

    def follow_limit(self, limit: int) -> None:
        """A changed definition moves this bucket's allocation by the difference."""
        self.allocated = max(0, self.allocated + limit - self.limit_seen)
        self.limit_seen = limit

    def recompute_over_limit(self, overdraft_limit: int) -> bool:
        """Debt past the overdraft limit blocks reservations until repaid or the limit rises.
        Answers whether this cleared the flag (the budget left its over-limit state)."""
        was = self.over_limit
        self.over_limit = self.debt > overdraft_limit
        if not self.over_limit:
            self.over_notified = False  # once cleared, raising it again notifies again
        return was and not self.over_limit


def reserve_refusal(state: Ledger, status: BudgetStatus, overdraft_limit: int,
                    amount: int, shadow: bool = False) -> str | None:
    """Why this ledger refuses `amount`, in the Cycles order; None when it fits.

    In shadow mode a ledger short of `amount` answers BUDGET_EXCEEDED before its debt or
    over-limit flag: that debt is shadow spend beyond the budget, which enforce mode would
    have stopped at the budget itself, so the would-be denial is the budget's."""
    if status is BudgetStatus.FROZEN:
        return Reason.BUDGET_FROZEN
    if status is BudgetStatus.CLOSED:
        return Reason.BUDGET_CLOSED
    if shadow and state.remaining < amount:
        return Reason.BUDGET_EXCEEDED
    if state.over_limit:
        return Reason.OVERDRAFT_LIMIT_EXCEEDED
    if state.debt > 0 and overdraft_limit == 0:
        return Reason.DEBT_OUTSTANDING
    if state.remaining < amount:
        return Reason.BUDGET_EXCEEDED
    return None


def denial(reason: str, scope: str, unit: Unit, period: Period | None, state: Ledger,
           requested: int, now: int) -> Decision:
    """The refusal a caller sees, with when to retry if the bucket's end would free room
    (never for a request larger than the whole budget: no period makes it fit)."""
    retry = None
    if period is not None and reason == Reason.BUDGET_EXCEEDED and requested <= state.allocated:
        retry = bucket_end_ms(period, now) - now
    return Decision(outcome=Outcome.DENY, reason=reason, scope=scope, unit=unit,
                    remaining=state.remaining, limit=state.allocated, requested=requested,
                    retry_after_ms=retry)


class Posting(NamedTuple):
    """One ledger's part of a settlement, computed before anything is written."""

    key: Any
    definition: Any
    state: Ledger
    change: tuple[int, int, int, bool]  # reserved −, spent +, debt +, becomes over-limit


Row = tuple[Any, Any, Ledger, OveragePolicy]


class Settlement(NamedTuple):
    """What settling one charge writes: a posting per ledger, and the amounts charged."""

    postings: list[Posting]
    charged: dict[Unit, int]  # per unit, the same on every ledger (and actual where none)


def settle(rows: list[Row], estimate: dict[Unit, int], actual: dict[Unit, int],
         release_reserved: bool, now: int) -> Settlement:
    """Settle `actual` against held `estimate` on every ledger, or raise and change nothing.

    actual ≤ estimate charges actual. Above it, each ledger's overage policy decides:
    REJECT refuses unless the excess fits; ALLOW_IF_AVAILABLE charges what the tightest
    ledger still has and flags those that could not cover the excess; ALLOW_WITH_OVERDRAFT
    (with a positive overdraft_limit) turns the part it cannot cover into debt, up to the
    limit. Every ledger of a unit is charged the same amount, so spend adds up per scope.
    Postings come back in the order of `rows`; a unit without ledgers is charged its actual.
    """
    extra: dict[Unit, int] = {}
    for unit, held in estimate.items():
        delta = actual[unit] - held
        unit_rows = [row for row in rows if row[0][1] is unit]
        for key, _, state, policy in unit_rows:
            if delta > 0 and policy is OveragePolicy.REJECT and state.remaining < delta:
                raise BudgetExceeded(denial(Reason.BUDGET_EXCEEDED, key[0], unit, key[2],
                                            state, delta, now))
        covers = [max(row[2].remaining, 0) for row in unit_rows if not _takes_debt(row)]
        extra[unit] = min([delta, *covers]) if delta > 0 else delta
    postings = []
    for row in rows:
        key, d, state, _ = row
        unit = key[1]
        held, delta = estimate[unit], actual[unit] - estimate[unit]
        shortfall = max(0, extra[unit] - max(state.remaining, 0)) if _takes_debt(row) else 0
        if shortfall and state.debt + shortfall > d.overdraft_limit:
            raise BudgetExceeded(denial(Reason.OVERDRAFT_LIMIT_EXCEEDED, key[0], unit, key[2],
                                        state, delta, now))
        flag = extra[unit] < delta and state.remaining < delta and not _takes_debt(row)
        postings.append(Posting(key, d, state, (held if release_reserved else 0,
                                                held + extra[unit] - shortfall, shortfall,
                                                flag)))
    return Settlement(postings, {unit: held + extra[unit] for unit, held in estimate.items()})


def settle_shadow(rows: list[Row], estimate: dict[Unit, int], actual: dict[Unit, int],
                  release_reserved: bool) -> Settlement:
    """Settle `actual` in shadow mode: nothing is refused and all of it is charged, so the
    data shows the real spend. On each ledger the part that the allocation still has room
    for (after spent and debt; holds aside, as shadow holds may pass the allocation) is
    spent, and the rest is debt, as an overdraft books it: spent never passes the
    allocation, and spent plus debt is what was really spent, in whatever order charges
    come. The ledger is over its limit once its debt passes what enforce mode would have
    let it owe (its overdraft limit under ALLOW_WITH_OVERDRAFT, nothing otherwise).
    """
    postings = []
    for key, d, state, policy in rows:
        unit = key[1]
        charge = actual[unit]
        debt = max(0, charge - max(0, state.allocated - state.spent - state.debt))
        owed = d.overdraft_limit if policy is OveragePolicy.ALLOW_WITH_OVERDRAFT else 0
        postings.append(Posting(key, d, state, (
            estimate[unit] if release_reserved else 0, charge - debt, debt,
            state.debt + debt > owed)))
    return Settlement(postings, {unit: actual[unit] for unit in estimate})


def within(estimate: dict[Unit, int], actual: dict[Unit, int]) -> bool:
    """True when no unit is charged above its estimate: no overage policy has a say."""
    for unit, held in estimate.items():  # noqa: SIM110 - every commit runs it; all() is slower
        if actual[unit] > held:
            return False
    return True


def settle_within(states: list[tuple[Any, Any, Ledger]], estimate: dict[Unit, int],
                  actual: dict[Unit, int], now: int) -> None:
    """The common commit, where `within` holds: each ledger gives back what it held and is
    charged the actual (ledger keys carry their unit second)."""
    for key, _, state in states:
        state.reserved -= estimate[key[1]]
        state.spent += actual[key[1]]
        state.touched_ms = now


def _takes_debt(row: Row) -> bool:
    return row[3] is OveragePolicy.ALLOW_WITH_OVERDRAFT and row[1].overdraft_limit > 0


def apply(settlement: Settlement, now: int) -> dict[Unit, int]:
    """Write a checked settlement; returns what was charged per unit."""
    for _, _, state, (reserved, spent, debt, flag) in settlement.postings:
        state.reserved -= reserved
        state.spent += spent
        state.debt += debt
        state.over_limit = state.over_limit or flag
        state.touched_ms = now
    return settlement.charged


def fund(state: Ledger, operation: FundOperation, amount: int, spent: int | None,
         overdraft_limit: int) -> Ledger | None:
    """The ledger after a funding operation, or None when a debit would overdraw it."""
    after = replace(state)
    if operation is FundOperation.CREDIT:
        after.allocated += amount
    elif operation is FundOperation.DEBIT:
        if state.remaining < amount:
            return None
        after.allocated -= amount
    elif operation is FundOperation.RESET:
        after.allocated = amount
    elif operation is FundOperation.RESET_SPENT:
        after.allocated = amount
        after.spent = spent or 0
    elif operation is FundOperation.REPAY_DEBT:
        if amount > state.debt:
            raise InvalidRequest(f"amount: repay at most the debt ({state.debt}), got {amount}")
        after.debt -= amount
    if after.allocated > MAX_AMOUNT:
        raise InvalidRequest(f"amount: the allocation would be {after.allocated}, more than "
                             f"a ledger holds ({MAX_AMOUNT})")
    after.recompute_over_limit(overdraft_limit)
    return after
