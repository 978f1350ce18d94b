"""Typed values that cross the public boundary.

Inputs (`Action`, and `Subject`/`Amount` elsewhere) are validated models. Outputs (decisions,
balances, results) are slotted dataclasses, typed and cheap to build on the hot path; treat
them as read-only records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from pydantic import field_validator

from .amounts import Amount, Unit, format_amount
from .scopes import Subject
from .validation import MAX_TEXT, Model, check_list, check_text, shown

ACTION_KIND = re.compile(r"[a-z0-9_]{1,32}(\.[a-z0-9_]{1,32}){1,3}")
ACTION_KIND_GLOB = re.compile(r"[a-z0-9_.*?]{1,64}")
"""A glob on action kinds (a quota's `action_kind`): their characters and * ?."""
MAX_TAGS = 10
MAX_TAG = 64


class Action(Model):
    """What is being paid for: `Action("llm.completion", "openai:gpt-4o")`.

    `kind` is <category>.<operation> (a-z, 0-9, _; at most 64 characters), `name` 1-256
    printable characters, `tags` at most 10 of 1-64 characters."""

    kind: str
    name: str
    tags: tuple[str, ...] = ()

    def __init__(self, kind: str | None = None, name: str | None = None, /,
                 **data: object) -> None:
        if kind is not None:
            data["kind"] = kind
        if name is not None:
            data["name"] = name
        super().__init__(**data)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {shown(value)}")
        if len(value) > 64 or not ACTION_KIND.fullmatch(value):
            raise ValueError("write it as <category>.<operation>, e.g. llm.completion "
                             "(a-z, 0-9, _; at most 64 characters)")
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> str:
        return check_text(value, "name", MAX_TEXT, printable=True)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> tuple[str, ...]:
        return check_list(value, "tags", MAX_TAGS, _tag, "('beta', 'batch')")


def _tag(value: object, field: str) -> str:
    return check_text(value, field, MAX_TAG)


class Outcome(str, Enum):
    ALLOW = "ALLOW"
    ALLOW_WITH_CAPS = "ALLOW_WITH_CAPS"
    DENY = "DENY"


class Reason:
    """Decision reason codes (Cycles names, plus ours). An open set: stored as plain strings."""

    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    BUDGET_FROZEN = "BUDGET_FROZEN"
    BUDGET_CLOSED = "BUDGET_CLOSED"
    OVERDRAFT_LIMIT_EXCEEDED = "OVERDRAFT_LIMIT_EXCEEDED"
    DEBT_OUTSTANDING = "DEBT_OUTSTANDING"
    BUDGET_NOT_FOUND = "BUDGET_NOT_FOUND"
    TENANT_CLOSED = "TENANT_CLOSED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    CONCURRENCY_EXCEEDED = "CONCURRENCY_EXCEEDED"
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
    TOOL_NOT_ALLOWED = "TOOL_NOT_ALLOWED"
    PRICE_UNKNOWN = "PRICE_UNKNOWN"
    DIMENSION_REQUIRED = "DIMENSION_REQUIRED"
    """The subject lacks a dimension (e.g. `run`) that a scope it falls under requires."""

    BUDGET = frozenset({BUDGET_EXCEEDED, BUDGET_FROZEN, BUDGET_CLOSED, OVERDRAFT_LIMIT_EXCEEDED,
                        DEBT_OUTSTANDING})
    QUOTA = frozenset({QUOTA_EXCEEDED, CONCURRENCY_EXCEEDED})
    ACCESS = frozenset({MODEL_NOT_ALLOWED, TOOL_NOT_ALLOWED})


class OveragePolicy(str, Enum):
    REJECT = "REJECT"
    ALLOW_IF_AVAILABLE = "ALLOW_IF_AVAILABLE"
    ALLOW_WITH_OVERDRAFT = "ALLOW_WITH_OVERDRAFT"


class BudgetStatus(str, Enum):
    ACTIVE = "ACTIVE"
    FROZEN = "FROZEN"
    CLOSED = "CLOSED"


class TenantStatus(str, Enum):
    """Where a tenant stands, as the Cycles admin plane names it: CLOSED for good
    (`close_tenant`), SUSPENDED while it has open budgets and every one is frozen
    (`suspend_tenant`, or each frozen by hand), else ACTIVE."""

    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    CLOSED = "CLOSED"


class ReservationStatus(str, Enum):
    ACTIVE = "ACTIVE"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(slots=True)
class Caps:
    """Limits a call must run under instead of being denied (ALLOW_WITH_CAPS)."""

    max_tokens: int | None = None
    tool_allowlist: tuple[str, ...] | None = None
    tool_denylist: tuple[str, ...] | None = None
    cooldown_ms: int | None = None
    max_steps_remaining: int | None = None
    model: str | None = None


@dataclass(slots=True)
class Balance:
    """One ledger: a budget's state for one period bucket (and one dimension value)."""

    scope: str
    unit: Unit
    period: str | None
    bucket: str
    allocated: int
    reserved: int
    spent: int
    debt: int
    overdraft_limit: int
    is_over_limit: bool
    status: BudgetStatus

    @property
    def remaining(self) -> int:
        """allocated − reserved − spent − debt; negative only through debt or overdraft."""
        return self.allocated - self.reserved - self.spent - self.debt


@dataclass(slots=True)
class Decision:
    """The answer to "may this call proceed?", precise enough to show to the end user."""

    outcome: Outcome
    caps: Caps | None = None
    reason: str | None = None
    scope: str | None = None
    unit: Unit | None = None
    remaining: int | None = None
    limit: int | None = None
    requested: int | None = None
    retry_after_ms: int | None = None
    observed: Decision | None = None
    """In shadow mode: the denial enforce mode would have answered (the call proceeds)."""
    missing_dimensions: tuple[str, ...] = ()
    """With DIMENSION_REQUIRED: the dimension keys the subject lacks, sorted."""

    @property
    def allowed(self) -> bool:
        return self.outcome is not Outcome.DENY

    def explain(self) -> str:
        """One line a person can act on: the scope, the reason, the figures and what to do."""
        if self.allowed:
            return f"{self.outcome.value}" + (f" with {self.caps}" if self.caps else "")
        where = self.scope or "this subject"
        text = f"{where}: {self.reason}"
        if self.unit is not None and self.limit is not None:
            text += f" (budget {format_amount(self.unit, self.limit)}"
            if self.remaining is not None:
                text += f", remaining {format_amount(self.unit, self.remaining)}"
            if self.requested is not None:
                text += f", requested {format_amount(self.unit, self.requested)}"
            text += ")"
        if self.missing_dimensions:
            text += f" ({_missing(self.missing_dimensions)})"
        if self.reason in HINTS:
            text += f"; {HINTS[self.reason]}"
        elif self.never_fits:
            text += "; it can never fit under the current limit: raise the limit"
        if self.retry_after_ms is not None:
            text += f"; frees up at the next period (in {duration(self.retry_after_ms)})"
        return text

    @property
    def never_fits(self) -> bool:
        """A request larger than the whole budget: waiting for the next period cannot help."""
        return (self.reason == Reason.BUDGET_EXCEEDED and self.limit is not None
                and self.requested is not None and self.requested > self.limit)


HINTS = {
    Reason.BUDGET_NOT_FOUND: "no budget covers it: set one with guard.set_budget(...) or give "
                             "the guard a default_plan",
    Reason.PRICE_UNKNOWN: "no price is known for this model: give Pricer(fallback=...) or an "
                     "override for it",
    Reason.OVERDRAFT_LIMIT_EXCEEDED:
        "a commit went over the budget (ALLOW_IF_AVAILABLE charged what remained, or debt "
        "passed the overdraft limit); the budget is over its limit until funded or the "
        "period rolls over",
}
"""What to do about a refusal whose figures alone do not say it (by reason)."""


def _missing(keys: tuple[str, ...]) -> str:
    """Which dimensions a call lacks, and the ways to give them."""
    many = len(keys) > 1
    names = ", ".join(repr(key) for key in keys)
    scope = ", ".join(f"{key}=..." for key in keys)
    dims = ", ".join(f"{key!r}: ..." for key in keys)
    headers = ", ".join(f"x-allotment-{key}" for key in keys)
    return (f"missing dimension{'s' if many else ''} {names}: every call under this scope "
            f"must carry {'them' if many else 'it'}; run the call inside al.scope({scope}), "
            f"give Subject(dimensions={{{dims}}}), or hand {'them' if many else 'it'} to "
            f"the adapter (header{'s' if many else ''} {headers}; LangChain metadata or "
            f"LlamaIndex instrument_tags {{'dimensions': {{{dims}}}}})")


def duration(ms: int) -> str:
    """A wait as a person reads it: "40 s", "12 min", "3 h 12 min", "25 days"."""
    seconds = max(1, round(ms / 1000))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{round(hours / 24)} days"


@dataclass(slots=True)
class ReservationInfo:
    """A reservation as the store keeps it."""

    id: str
    tenant: str
    status: ReservationStatus
    subject: Subject
    action: Action
    estimate: tuple[Amount, ...]
    scopes: tuple[str, ...]
    created_at_ms: int
    expires_at_ms: int
    grace_ms: int
    extensions: int
    overage_policy: OveragePolicy | None = None
    charged: tuple[Amount, ...] = ()
    finalized_at_ms: int | None = None


BalancesLater = Callable[[], tuple[Balance, ...]]
"""A snapshot of balances that builds its `Balance` rows when called."""


class _Settled:
    """A result that carries the balances after its step. A store may hand them over as a
    snapshot, built into `Balance` rows on first read: most callers never read them."""

    __slots__ = ()
    _balances: tuple[Balance, ...] | BalancesLater

    @property
    def balances(self) -> tuple[Balance, ...]:
        if callable(self._balances):
            self._balances = self._balances()  # type: ignore[misc]  # each subclass's slot
        return self._balances

    def _values(self) -> dict[str, Any]:
        return {f.name.lstrip("_"): self.balances if f.name == "_balances"
                else getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Settled) or type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self._values().items())
        return f"{type(self).__name__}({shown})"

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True, eq=False, repr=False)
class CommitResult(_Settled):
    reservation_id: str
    status: ReservationStatus
    charged: tuple[Amount, ...]
    released: tuple[Amount, ...]
    _balances: tuple[Balance, ...] | BalancesLater


@dataclass(slots=True, eq=False, repr=False)
class ReleaseResult(_Settled):
    reservation_id: str
    status: ReservationStatus
    released: tuple[Amount, ...]
    _balances: tuple[Balance, ...] | BalancesLater


@dataclass(slots=True)
class ExtendResult:
    reservation_id: str
    expires_at_ms: int
    extensions: int


@dataclass(slots=True, eq=False, repr=False)
class RecordResult(_Settled):
    event_id: str
    charged: tuple[Amount, ...]
    _balances: tuple[Balance, ...] | BalancesLater


class FundOperation(str, Enum):
    CREDIT = "CREDIT"
    DEBIT = "DEBIT"
    RESET = "RESET"
    RESET_SPENT = "RESET_SPENT"
    REPAY_DEBT = "REPAY_DEBT"


@dataclass(slots=True)
class FundResult:
    before: Balance
    after: Balance


@dataclass(slots=True)
class TransferResult:
    source: Balance
    destination: Balance


@dataclass(slots=True)
class ApiKey:
    """A key bound to one tenant: what it may do and until when. Its secret is never kept,
    only a hash of it (see `Guard.create_key`)."""

    key_id: str
    tenant: str
    name: str
    permissions: tuple[str, ...]
    created_at_ms: int
    expires_at_ms: int | None
    revoked: bool

    def active(self, now_ms: int) -> bool:
        """Neither revoked nor past its expiry at `now_ms`."""
        return not self.revoked and (self.expires_at_ms is None or now_ms < self.expires_at_ms)


@dataclass(slots=True)
class TenantInfo:
    """A tenant's record: its display name, when it was registered, and when it was closed
    for good (None: it is open)."""

    tenant: str
    name: str
    created_at_ms: int
    closed_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OnceClaim:
    """A claim on an idempotency key for a call of several steps (a bulk action), which no
    single store step can make idempotent: the first caller runs it and keeps its answer
    (`Guard.finish_once`); a retry with the same request replays that answer.

    `owner` set: this caller holds the key and runs the call. `answer` set: the first run
    finished with it; answer it again. Neither: another run still holds the key."""

    key: str
    owner: str | None
    answer: str | None


@dataclass(slots=True)
class TenantClosure:
    """What closing a tenant did, in the one step that did it: its record (made if it had
    none), the reservations it released, the budgets it closed, the API keys it revoked and
    the webhook subscriptions it disabled. `changed` is False when the tenant was closed
    already (then the counts are 0)."""

    info: TenantInfo
    released: int
    budgets_closed: int
    keys_revoked: int
    webhooks_disabled: int
    changed: bool
