"""The Cycles error envelope, and how allotment's errors map onto its codes and statuses.

A denial of a live call carries the reason the guard gave: budget states are 409s with the
reason as the code (404 when no budget covers the subject), quotas are throttling (429 with
Retry-After), access rules are 403. Everything else maps by class.
"""

from __future__ import annotations

from typing import Any

from .. import errors as al
from ..models import Decision, Reason

REASON_CODES = frozenset({Reason.BUDGET_EXCEEDED, Reason.BUDGET_FROZEN, Reason.BUDGET_CLOSED,
                          Reason.OVERDRAFT_LIMIT_EXCEEDED, Reason.DEBT_OUTSTANDING,
                          Reason.TENANT_CLOSED})
"""Denial reasons that are Cycles error codes of their own (409)."""


class ApiError(Exception):
    """An error answered with the envelope: HTTP status, Cycles code, message, details."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def bad_request(message: str, **details: Any) -> ApiError:
    return ApiError(400, "INVALID_REQUEST", message, details or None)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "FORBIDDEN", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", message)


def denial_details(decision: Decision) -> dict[str, Any]:
    """What refused, in figures: the fields of the decision that are set."""
    details: dict[str, Any] = {"reason_code": decision.reason}
    for name in ("scope", "remaining", "limit", "requested", "retry_after_ms"):
        value = getattr(decision, name)
        if value is not None:
            details[name] = value
    if decision.unit is not None:
        details["unit"] = decision.unit.value
    missing = getattr(decision, "missing_dimensions", ())
    if missing:
        details["missing_dimensions"] = list(missing)
    return details


def from_denial(error: al.Denied) -> ApiError:
    decision = error.decision
    reason = decision.reason or "DENIED"
    details = denial_details(decision)
    if reason == Reason.BUDGET_NOT_FOUND:
        where = decision.scope or "the subject"
        return ApiError(404, "NOT_FOUND", f"Budget not found for provided scope: {where}",
                        details)
    if reason in REASON_CODES:
        return ApiError(409, reason, str(error), details)
    if reason in Reason.QUOTA:
        seconds = max(1, -(-(decision.retry_after_ms or 1000) // 1000))
        return ApiError(429, "LIMIT_EXCEEDED", str(error), details,
                        {"Retry-After": str(seconds), "X-RateLimit-Remaining": "0",
                         "X-RateLimit-Reset": str(seconds)})
    if reason in Reason.ACCESS:
        return ApiError(403, "FORBIDDEN", str(error), details)
    if reason == "DIMENSION_REQUIRED":  # the request lacks what the tenant's rules demand
        return ApiError(400, "INVALID_REQUEST", str(error), details)
    return ApiError(409, "BUDGET_EXCEEDED", str(error), details)


_BY_CLASS: tuple[tuple[type[al.AllotmentError], int, str], ...] = (
    (al.ReservationExpired, 410, "RESERVATION_EXPIRED"),
    (al.ReservationFinalized, 409, "RESERVATION_FINALIZED"),
    (al.MaxExtensionsExceeded, 409, "MAX_EXTENSIONS_EXCEEDED"),
    (al.TenantClosed, 409, "TENANT_CLOSED"),
    (al.IdempotencyMismatch, 409, "IDEMPOTENCY_MISMATCH"),
    (al.UnitMismatch, 400, "UNIT_MISMATCH"),
    (al.Forbidden, 403, "FORBIDDEN"),
    (al.NotFound, 404, "NOT_FOUND"),
    (al.InvalidRequest, 400, "INVALID_REQUEST"),
    (al.StoreUnavailable, 500, "INTERNAL_ERROR"),
)


def from_allotment(error: al.AllotmentError) -> ApiError:
    """The envelope of an error the guard raised."""
    if isinstance(error, al.Denied):
        return from_denial(error)
    if isinstance(error, al.KeyRefused):  # the store checked the key with the operation
        return (ApiError(401, "UNAUTHORIZED", str(error)) if error.unauthenticated
                else ApiError(403, "FORBIDDEN", str(error)))
    for cls, status, code in _BY_CLASS:
        if isinstance(error, cls):
            return ApiError(status, code, str(error))
    return ApiError(500, "INTERNAL_ERROR", str(error))
