"""The error hierarchy: every failure a caller can act on has its own class."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Decision


class AllotmentError(Exception):
    """Base of every error this library raises on purpose."""


class Denied(AllotmentError):
    """The call may not proceed; `decision` says which scope refused it and why."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.explain())


class BudgetExceeded(Denied):
    """A budget cannot hold the estimate (or is frozen, closed, in debt or over its limit)."""


class QuotaExceeded(Denied):
    """A call, run or concurrency quota is used up for its window."""


class NotAllowed(Denied):
    """An access rule forbids this model or tool."""


class ReservationExpired(AllotmentError):
    """The reservation outlived its ttl and grace; its estimate went back to the budgets."""


class ReservationFinalized(AllotmentError):
    """The reservation was already committed or released."""


class MaxExtensionsExceeded(AllotmentError):
    """The reservation was extended as often as its budget allows."""


class IdempotencyMismatch(AllotmentError):
    """An idempotency key was reused with a different payload."""


class UnitMismatch(AllotmentError):
    """The amounts are in units that the budgets or the reservation do not hold."""


class Forbidden(AllotmentError):
    """A tenant-bound handle was asked to touch another tenant's data."""


class NotFound(AllotmentError):
    """No such reservation or budget (or it is past its retention)."""


class InvalidRequest(AllotmentError, ValueError):
    """An argument broke a rule; the message names the field and the rule."""


class StoreUnavailable(AllotmentError):
    """The store could not be reached or answered with an error."""
