"""The error hierarchy: every failure a caller can act on has its own class.

    AllotmentError                    every error raised on purpose; `code` names it on the wire
    ├── Denied                        the call may not proceed (carries the `Decision`)
    │   ├── BudgetExceeded
    │   ├── QuotaExceeded
    │   └── NotAllowed
    ├── ReservationStateError         the reservation cannot take this change any more
    │   ├── ReservationExpired
    │   ├── ReservationFinalized
    │   └── MaxExtensionsExceeded
    ├── IdempotencyMismatch
    ├── UnitMismatch
    ├── Forbidden
    │   └── CrossTenant               also an InvalidRequest: one call spanning two tenants
    ├── KeyRefused                    an API key may not run the operation (`reason` says why)
    ├── TenantClosed                  the tenant was closed for good: nothing of it changes
    ├── NotFound
    ├── InvalidRequest                also a ValueError
    └── StoreUnavailable

A store reports a refusal by its code (the Redis scripts answer `{error = CODE}`); `by_code`
turns a code back into its class, from the one table `CODES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Decision


class AllotmentError(Exception):
    """Base of every error this library raises on purpose."""

    code = "ALLOTMENT_ERROR"


class Denied(AllotmentError):
    """The call may not proceed; `decision` says which scope refused it and why."""

    code = "DENIED"

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.explain())


class BudgetExceeded(Denied):
    """A budget cannot hold the estimate (or is frozen, closed, in debt or over its limit)."""

    code = "BUDGET_EXCEEDED"


class QuotaExceeded(Denied):
    """A call, run or concurrency quota is used up for its window."""

    code = "QUOTA_EXCEEDED"


class NotAllowed(Denied):
    """An access rule forbids this model or tool."""

    code = "NOT_ALLOWED"


def denied(decision: Decision) -> Denied:
    """The error that fits a denial's reason, as the guard raises it (and a remote store
    raises a server's denial)."""
    from .models import Reason  # models imports this module's neighbours at load time

    if decision.reason in Reason.BUDGET:
        return BudgetExceeded(decision)
    if decision.reason in Reason.QUOTA:
        return QuotaExceeded(decision)
    if decision.reason in Reason.ACCESS:
        return NotAllowed(decision)
    return Denied(decision)


class ReservationStateError(AllotmentError):
    """The reservation is past the point where this change applies; nothing was changed."""

    code = "RESERVATION_STATE"


class ReservationExpired(ReservationStateError):
    """The reservation outlived its ttl and grace; its estimate went back to the budgets."""

    code = "RESERVATION_EXPIRED"


class ReservationFinalized(ReservationStateError):
    """The reservation was already committed or released."""

    code = "RESERVATION_FINALIZED"


class MaxExtensionsExceeded(ReservationStateError):
    """The reservation was extended as often as its budget allows."""

    code = "MAX_EXTENSIONS_EXCEEDED"


class IdempotencyMismatch(AllotmentError):
    """An idempotency key was reused with a different payload."""

    code = "IDEMPOTENCY_MISMATCH"


class UnitMismatch(AllotmentError):
    """The amounts are in units that the budgets or the reservation do not hold."""

    code = "UNIT_MISMATCH"


class Forbidden(AllotmentError):
    """A tenant-bound handle was asked to touch another tenant's data."""

    code = "FORBIDDEN"


class NotFound(AllotmentError):
    """No such reservation or budget (or it is past its retention)."""

    code = "NOT_FOUND"


class InvalidRequest(AllotmentError, ValueError):
    """An argument broke a rule; the message names the field and the rule."""

    code = "INVALID_REQUEST"


class StoreUnavailable(AllotmentError):
    """The store could not be reached or answered with an error."""

    code = "STORE_UNAVAILABLE"


class CrossTenant(Forbidden, InvalidRequest):
    """One call names budgets of two tenants (a transfer across the wall): invalid for
    anyone, and forbidden to a tenant-bound handle."""

    code = "FORBIDDEN"


class KeyRefused(AllotmentError):
    """An API key may not run this operation, checked in the operation's own store step;
    nothing was written. `reason` is "malformed", "unknown", "mismatch" (a wrong secret for
    the key id), "revoked" or "expired" (`unauthenticated`: no live key, HTTP 401) or
    "permission" (a live key without the permission, HTTP 403). The message of an
    unauthenticated refusal is the same for every reason, so it reveals nothing about the
    key; `reason` is for logs."""

    code = "KEY_REFUSED"
    UNAUTHENTICATED = "unknown, revoked or expired API key"

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or self.UNAUTHENTICATED)

    @property
    def unauthenticated(self) -> bool:
        """No live key matched the secret (401); False: the key lacks the permission (403)."""
        return self.reason != "permission"

    def __reduce__(self) -> tuple[type[KeyRefused], tuple[str, str]]:
        return type(self), (self.reason, str(self))


class TenantClosed(AllotmentError):
    """The tenant was closed (`Guard.close_tenant`): a closed tenant is read, never changed.
    A reservation on it is a denial instead (`Reason.TENANT_CLOSED`)."""

    code = "TENANT_CLOSED"


CODES: dict[str, type[AllotmentError]] = {
    cls.code: cls for cls in (
        NotFound, InvalidRequest, IdempotencyMismatch, UnitMismatch, ReservationExpired,
        ReservationFinalized, MaxExtensionsExceeded, Forbidden, StoreUnavailable,
        TenantClosed)}
"""The errors a store reports by code (denials travel as decisions, not codes)."""


def by_code(code: str, message: str) -> AllotmentError:
    """The error a store's code stands for; an unknown code is a store failure, never a
    silent success."""
    return CODES.get(code, StoreUnavailable)(message)
