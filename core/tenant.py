"""A guard bound to one tenant: what it is handed must belong to that tenant, checked
before any store access, so one customer's code can never read or settle another's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .amounts import Amount, AmountsLike
from .errors import Forbidden
from .events import AuditRecord, ReportRow
from .ids import id_tenant
from .models import (
    Action,
    Balance,
    CommitResult,
    Decision,
    ExtendResult,
    FundResult,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    TransferResult,
)
from .reservation import Reservation
from .scopes import Subject, parse_scope
from .validation import check_name

if TYPE_CHECKING:
    from .guard import Guard


class TenantGuard:
    def __init__(self, guard: Guard, tenant: str) -> None:
        self._guard = guard  # private: the handle must not lead back to every tenant
        self.name = check_name(tenant, "tenant")

    def __repr__(self) -> str:
        return f"<TenantGuard {self.name}>"

    # -- ownership checks ---------------------------------------------------------------

    def subject(self, subject: Subject | None = None, **fields: Any) -> Subject:
        """A subject of this tenant: the one given (checked), or one built from `fields`."""
        if subject is None:
            return Subject(tenant=self.name, **fields)
        return self._own_subject(subject)

    def _own_subject(self, subject: Subject | None) -> Subject:
        from .guard import _subject

        subject = _subject(subject)
        if subject.tenant != self.name:
            raise Forbidden(f"subject of tenant {subject.tenant!r} given to the handle of "
                            f"{self.name!r}")
        return subject

    def _own_scope(self, scope: str) -> str:
        if parse_scope(scope).tenant != self.name:
            raise Forbidden(f"scope {scope!r} is not under tenant:{self.name}")
        return scope

    def _own_reservation(self, reservation_id: str) -> str:
        if id_tenant(reservation_id) != self.name:
            raise Forbidden(f"reservation {reservation_id!r} belongs to another tenant than "
                            f"{self.name!r}")
        return reservation_id

    # -- the guard's calls, checked -------------------------------------------------------

    def reserve(self, subject: Subject | None, action: Action, estimate: AmountsLike,
                **options: Any) -> Reservation:
        return self._guard.reserve(self._own_subject(subject), action, estimate, **options)

    async def areserve(self, subject: Subject | None, action: Action, estimate: AmountsLike,
                       **options: Any) -> Reservation:
        return await self._guard.areserve(self._own_subject(subject), action, estimate,
                                         **options)

    def decide(self, subject: Subject | None, action: Action, estimate: AmountsLike) -> Decision:
        return self._guard.decide(self._own_subject(subject), action, estimate)

    async def adecide(self, subject: Subject | None, action: Action,
                      estimate: AmountsLike) -> Decision:
        return await self._guard.adecide(self._own_subject(subject), action, estimate)

    def record(self, subject: Subject | None, action: Action, actual: AmountsLike,
               **options: Any) -> RecordResult:
        return self._guard.record(self._own_subject(subject), action, actual, **options)

    async def arecord(self, subject: Subject | None, action: Action, actual: AmountsLike,
                      **options: Any) -> RecordResult:
        return await self._guard.arecord(self._own_subject(subject), action, actual, **options)

    def commit(self, reservation_id: str, actual: AmountsLike, **options: Any) -> CommitResult:
        return self._guard.commit(self._own_reservation(reservation_id), actual, **options)

    async def acommit(self, reservation_id: str, actual: AmountsLike,
                      **options: Any) -> CommitResult:
        return await self._guard.acommit(self._own_reservation(reservation_id), actual,
                                        **options)

    def release(self, reservation_id: str, reason: str = "released",
                **options: Any) -> ReleaseResult:
        return self._guard.release(self._own_reservation(reservation_id), reason, **options)

    async def arelease(self, reservation_id: str, reason: str = "released",
                       **options: Any) -> ReleaseResult:
        return await self._guard.arelease(self._own_reservation(reservation_id), reason,
                                         **options)

    def extend(self, reservation_id: str, by_ms: int, **options: Any) -> ExtendResult:
        return self._guard.extend(self._own_reservation(reservation_id), by_ms, **options)

    async def aextend(self, reservation_id: str, by_ms: int, **options: Any) -> ExtendResult:
        return await self._guard.aextend(self._own_reservation(reservation_id), by_ms, **options)

    def get(self, reservation_id: str) -> ReservationInfo:
        return self._guard.get(self._own_reservation(reservation_id))

    async def aget(self, reservation_id: str) -> ReservationInfo:
        return await self._guard.aget(self._own_reservation(reservation_id))

    def balances(self, scope: str | None = None, **options: Any) -> tuple[Balance, ...]:
        return self._guard.balances(self._own_scope(scope or f"tenant:{self.name}"), **options)

    async def abalances(self, scope: str | None = None, **options: Any) -> tuple[Balance, ...]:
        return await self._guard.abalances(self._own_scope(scope or f"tenant:{self.name}"),
                                          **options)

    def set_budget(self, scope: str, **options: Any) -> tuple[Balance, ...]:
        return self._guard.set_budget(self._own_scope(scope), **options)

    async def aset_budget(self, scope: str, **options: Any) -> tuple[Balance, ...]:
        return await self._guard.aset_budget(self._own_scope(scope), **options)

    def fund(self, scope: str, operation: Any, amount: Amount, **options: Any) -> FundResult:
        return self._guard.fund(self._own_scope(scope), operation, amount, **options)

    async def afund(self, scope: str, operation: Any, amount: Amount,
                    **options: Any) -> FundResult:
        return await self._guard.afund(self._own_scope(scope), operation, amount, **options)

    def transfer(self, source: str, destination: str, amount: Amount,
                 **options: Any) -> TransferResult:
        return self._guard.transfer(self._own_scope(source), self._own_scope(destination),
                                   amount, **options)

    async def atransfer(self, source: str, destination: str, amount: Amount,
                        **options: Any) -> TransferResult:
        return await self._guard.atransfer(self._own_scope(source), self._own_scope(destination),
                                          amount, **options)

    def audit(self, **options: Any) -> tuple[AuditRecord, ...]:
        return self._guard.audit(self.name, **options)

    async def aaudit(self, **options: Any) -> tuple[AuditRecord, ...]:
        return await self._guard.aaudit(self.name, **options)

    def report(self, **options: Any) -> tuple[ReportRow, ...]:
        return self._guard.report(self.name, **options)

    async def areport(self, **options: Any) -> tuple[ReportRow, ...]:
        return await self._guard.areport(self.name, **options)

    def set_quota(self, scope: str, **options: Any) -> None:
        self._guard.set_quota(self._own_scope(scope), **options)

    def set_access(self, scope: str, **options: Any) -> None:
        self._guard.set_access(self._own_scope(scope), **options)

    def clear_access(self, scope: str) -> None:
        self._guard.clear_access(self._own_scope(scope))

    def remove_budget(self, scope: str, unit: Any, **options: Any) -> int:
        return self._guard.remove_budget(self._own_scope(scope), unit, **options)

    def close_budget(self, scope: str, unit: Any = None) -> int:
        return self._guard.close_budget(self._own_scope(scope), unit)

    def freeze(self, scope: str, unit: Any = None) -> int:
        return self._guard.freeze(self._own_scope(scope), unit)

    def unfreeze(self, scope: str, unit: Any = None) -> int:
        return self._guard.unfreeze(self._own_scope(scope), unit)
