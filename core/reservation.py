"""A live reservation: settle it with `commit`, `release` or `extend`, or use it as a
context manager that releases when the block raises and charges the estimate when the
block ends without settling (work that ran is never free)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING

from .amounts import Amount, AmountsLike, Units, trusted_amounts
from .errors import AllotmentError
from .models import (
    Balance,
    Caps,
    CommitResult,
    Decision,
    ExtendResult,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    ReservationStatus,
)

if TYPE_CHECKING:
    from .guard import Guard


class Reservation:
    def __init__(self, guard: Guard, info: ReservationInfo, decision: Decision,
                 balances: tuple[Balance, ...] | Callable[[], tuple[Balance, ...]],
                 unguarded: bool = False) -> None:
        self.guard = guard
        self.info = info
        self.decision = decision
        self._balances = balances
        self.result: CommitResult | ReleaseResult | None = None
        self.unguarded = unguarded
        """Let through while the store was down (fail open): nothing is held, and a commit
        records the spend once the store answers again."""

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def balances(self) -> tuple[Balance, ...]:
        """The balances of the subject's budgets right after the reservation."""
        if callable(self._balances):
            self._balances = self._balances()
        return self._balances

    @property
    def caps(self) -> Caps | None:
        return self.decision.caps

    @property
    def estimate(self) -> tuple[Amount, ...]:
        return self.info.estimate

    @property
    def expires_at_ms(self) -> int:
        return self.info.expires_at_ms

    @property
    def settled(self) -> bool:
        return self.result is not None

    def __repr__(self) -> str:
        return f"<Reservation {self.id} {self.decision.outcome.value} {list(self.estimate)}>"

    def commit(self, actual: AmountsLike, *, idempotency_key: str | None = None) -> CommitResult:
        if self.unguarded:
            result = self._recorded(self.guard.record(
                self.info.subject, self.info.action, actual, idempotency_key=self.id))
        else:
            result = self.guard.commit(self.id, actual, idempotency_key=idempotency_key)
        self.result = result
        return result

    async def acommit(self, actual: AmountsLike, *,
                      idempotency_key: str | None = None) -> CommitResult:
        if self.unguarded:
            result = self._recorded(await self.guard.arecord(
                self.info.subject, self.info.action, actual, idempotency_key=self.id))
        else:
            result = await self.guard.acommit(self.id, actual, idempotency_key=idempotency_key)
        self.result = result
        return result

    def _commit_units(self, actual: Units) -> CommitResult:
        """`commit` for an adapter's checked integer units, in unit order."""
        if self.unguarded:
            return self.commit(trusted_amounts(actual))
        result = self.guard._commit_units(self.info.tenant, self.id, actual)
        self.result = result
        return result

    async def _acommit_units(self, actual: Units) -> CommitResult:
        if self.unguarded:
            return await self.acommit(trusted_amounts(actual))
        result = await self.guard._acommit_units(self.info.tenant, self.id, actual)
        self.result = result
        return result

    def release(self, reason: str = "released", *,
                idempotency_key: str | None = None) -> ReleaseResult:
        if self.unguarded:
            result = ReleaseResult(self.id, ReservationStatus.RELEASED, (), ())
        else:
            result = self.guard.release(self.id, reason, idempotency_key=idempotency_key)
        self.result = result
        return result

    async def arelease(self, reason: str = "released", *,
                       idempotency_key: str | None = None) -> ReleaseResult:
        if self.unguarded:
            result = ReleaseResult(self.id, ReservationStatus.RELEASED, (), ())
        else:
            result = await self.guard.arelease(self.id, reason,
                                               idempotency_key=idempotency_key)
        self.result = result
        return result

    def _recorded(self, record: RecordResult) -> CommitResult:
        return CommitResult(self.id, ReservationStatus.COMMITTED, record.charged, (),
                            record.balances)

    def extend(self, by_ms: int, *, idempotency_key: str | None = None) -> ExtendResult:
        if self.unguarded:
            return ExtendResult(self.id, self.info.expires_at_ms, self.info.extensions)
        result = self.guard.extend(self.id, by_ms, idempotency_key=idempotency_key)
        self.info = replace(self.info, expires_at_ms=result.expires_at_ms,
                            extensions=result.extensions)
        return result

    async def aextend(self, by_ms: int, *, idempotency_key: str | None = None) -> ExtendResult:
        if self.unguarded:
            return ExtendResult(self.id, self.info.expires_at_ms, self.info.extensions)
        result = await self.guard.aextend(self.id, by_ms, idempotency_key=idempotency_key)
        self.info = replace(self.info, expires_at_ms=result.expires_at_ms,
                            extensions=result.extensions)
        return result

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.settled:
            return
        if error is None:
            self.commit(self.estimate)
            return
        # The original exception matters more; an expired hold went back on its own.
        with contextlib.suppress(AllotmentError):
            self.release(f"error: {kind.__name__ if kind else 'unknown'}")

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self.settled:
            return
        if error is None:
            await self.acommit(self.estimate)
            return
        with contextlib.suppress(AllotmentError):
            await self.arelease(f"error: {kind.__name__ if kind else 'unknown'}")

    @property
    def status(self) -> ReservationStatus:
        """The status as last seen by this handle (use `guard.get(id)` for the store's)."""
        return self.result.status if self.result is not None else self.info.status
