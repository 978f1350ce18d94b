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
    CrossTenant,
    Denied,
    Forbidden,
    IdempotencyMismatch,
    InvalidRequest,
    KeyRefused,
    MaxExtensionsExceeded,
    NotAllowed,
    NotFound,
    QuotaExceeded,
    ReservationExpired,
    ReservationFinalized,
    ReservationStateError,
    StoreUnavailable,
    TenantClosed,
    UnitMismatch,
)
from .events import (
    AuditRecord,
    AuditType,
    Notification,
    NotificationType,
    Sink,
)
from .guard import Guard
from .hierarchy import BudgetHierarchyWarning
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
    TenantStatus,
    TransferResult,
)
from .observation import Observation, Observer
from .periods import Period
from .plans import AccessSpec, BudgetSpec, Plan, QuotaSpec
from .policy import Degrade, Elastic
from .pricing import TokenUsage
from .reports import REPORT_RETENTION_DAYS, ReportRow
from .reservation import Reservation
from .scopes import Subject, quote_value, unquote_value
from .stores.hooks import Webhook, WebhookDelivery, WebhookEvent, WebhookSecurity
from .stores.memory import MemoryStore
from .tenant import TenantGuard
from .usage import UsageRow, write_usage

__all__ = [
    "REPORT_RETENTION_DAYS",
    "AccessSpec",
    "Action",
    "AllotmentError",
    "Amount",
    "AuditRecord",
    "AuditType",
    "Balance",
    "BudgetExceeded",
    "BudgetHierarchyWarning",
    "BudgetSpec",
    "BudgetStatus",
    "Caps",
    "CommitResult",
    "CrossTenant",
    "Decision",
    "Degrade",
    "Denied",
    "Elastic",
    "ExtendResult",
    "Forbidden",
    "FundOperation",
    "FundResult",
    "Guard",
    "IdempotencyMismatch",
    "InvalidRequest",
    "KeyRefused",
    "ManualClock",
    "MaxExtensionsExceeded",
    "MemoryStore",
    "NotAllowed",
    "NotFound",
    "Notification",
    "NotificationType",
    "Observation",
    "Observer",
    "Outcome",
    "OveragePolicy",
    "Period",
    "Plan",
    "QuotaExceeded",
    "QuotaSpec",
    "Reason",
    "RecordResult",
    "ReleaseResult",
    "ReportRow",
    "Reservation",
    "ReservationExpired",
    "ReservationFinalized",
    "ReservationInfo",
    "ReservationStateError",
    "ReservationStatus",
    "Sink",
    "StoreUnavailable",
    "Subject",
    "TenantClosed",
    "TenantGuard",
    "TenantStatus",
    "TokenUsage",
    "TransferResult",
    "Unit",
    "UnitMismatch",
    "UsageRow",
    "Webhook",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookSecurity",
    "credits",
    "current_subject",
    "format_amount",
    "microcents_to_usd",
    "quote_value",
    "scope",
    "tokens",
    "unquote_value",
    "usd",
    "write_usage",
]
