"""allotment: per-tenant budgets, quotas and isolation, enforced before each model or tool
call.

    import allotment as al
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=2000, period="month")
    with guard.reserve(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                       al.usd(0.05)) as r:
        ...
        r.commit(al.usd(0.031))
"""

from .amounts import Amount, Unit, credits, format_amount, microcents_to_usd, tokens, usd
from .clock import ManualClock
from .context import current_subject, scope
from .errors import (
    AllotmentError,
    BudgetExceeded,
    Denied,
    Forbidden,
    IdempotencyMismatch,
    InvalidRequest,
    MaxExtensionsExceeded,
    NotAllowed,
    NotFound,
    QuotaExceeded,
    ReservationExpired,
    ReservationFinalized,
    StoreUnavailable,
    UnitMismatch,
)
from .guard import Guard
from .models import (
    Action,
    Balance,
    BudgetStatus,
    Caps,
    CommitResult,
    Decision,
    ExtendResult,
    FundOperation,
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
from .periods import Period
from .reservation import Reservation
from .scopes import Subject
from .stores.memory import MemoryStore
from .tenant import TenantGuard

__all__ = [
    "Action", "AllotmentError", "Amount", "Balance", "BudgetExceeded", "BudgetStatus", "Caps",
    "CommitResult", "Decision", "Denied", "ExtendResult", "Forbidden", "FundOperation",
    "FundResult", "Guard", "IdempotencyMismatch", "InvalidRequest", "ManualClock",
    "MaxExtensionsExceeded", "MemoryStore", "NotAllowed", "NotFound", "Outcome",
    "OveragePolicy", "Period", "QuotaExceeded", "Reason", "RecordResult", "ReleaseResult",
    "Reservation", "ReservationExpired", "ReservationFinalized", "ReservationInfo",
    "ReservationStatus", "StoreUnavailable", "Subject", "TenantGuard", "TransferResult", "Unit",
    "UnitMismatch", "credits", "current_subject", "format_amount", "microcents_to_usd", "scope",
    "tokens", "usd",
]
