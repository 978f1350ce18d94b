"""The operations: each public call is one request record, executed by a store as one atomic
step, and the `Store` protocol that executes them.

The guard validates input and derives everything that needs no state; a store evaluates and
changes state for one operation at once (one lock-held call in memory, one script call in
Redis). Sync and async entry points take the same operations.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ..amounts import Unit, Units
from ..errors import IdempotencyMismatch, InvalidRequest, KeyRefused
from ..events import AuditRecord, Notification, NotificationType, log
from ..models import (
    Action,
    ApiKey,
    Balance,
    BudgetStatus,
    CommitResult,
    Decision,
    ExtendResult,
    FundOperation,
    FundResult,
    OnceClaim,
    OveragePolicy,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    ReservationStatus,
    TenantClosure,
    TenantInfo,
    TenantStatus,
    TransferResult,
)
from ..periods import Period
from ..policy import AccessRule, Degrade, QuotaRule
from ..reports import ReportRow
from ..scopes import Subject
from ..usage import TokenCounts, UsagePage
from ..validation import MAX_AMOUNT

R = TypeVar("R")

PERIOD_ORDER: dict[Period | None, int] = {None: 0, **{p: i + 1 for i, p in enumerate(Period)}}
UNIT_ORDER: dict[Unit, int] = {u: i for i, u in enumerate(Unit)}
UNITS = tuple(Unit)


def in_unit_order(by_unit: dict[Unit, int]) -> Units:
    """Amounts by unit in their canonical form."""
    if len(by_unit) == 1:
        return tuple(by_unit.items())
    return tuple([(unit, by_unit[unit]) for unit in UNITS if unit in by_unit])


class PeriodChoice:
    """Marks a period left to the store: the budget's only one in that unit."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO = PeriodChoice()


@dataclass
class Op(Generic[R]):
    tenant: str


@dataclass
class Keyed:
    """Idempotency for a mutating operation: the key and a fingerprint of the payload."""

    idempotency_key: str | None
    fingerprint: str


@dataclass(slots=True)
class ReserveOutcome:
    decision: Decision
    reservation: ReservationInfo | None
    balances: tuple[Balance, ...] | Callable[[], tuple[Balance, ...]]
    """The balances after the step; a store may hand over a snapshot that builds them
    when first read (most callers never read them)."""


ADMIN_FIELDS = ("actor", "reason")
"""Every administrative operation carries who made it and why (each optional), for its
audit records; they are not part of what an idempotency key compares."""


@dataclass
class SetBudget(Op[tuple[Balance, ...]]):
    scope: str
    per: str | None
    unit: Unit
    period: Period | None
    limit: int
    overdraft_limit: int
    overage_policy: OveragePolicy
    degrade: tuple[Degrade, ...] = ()
    alerts: tuple[float, ...] = (0.5, 0.8, 1.0)
    required: bool = False  # a template's dimension every call under the scope must carry
    actor: str | None = None
    reason: str | None = None


@dataclass
class RemoveBudget(Op[int]):
    scope: str
    unit: Unit
    period: Period | None
    per: str | None
    actor: str | None = None
    reason: str | None = None


@dataclass
class SetQuota(Op[None]):
    rule: QuotaRule
    remove: bool = False
    actor: str | None = None
    reason: str | None = None


@dataclass
class SetAccess(Op[None]):
    scope: str
    rule: AccessRule | None  # None removes the scope's rules
    actor: str | None = None
    reason: str | None = None


@dataclass
class SetMode(Op[None]):
    mode: str | None  # "enforce", "shadow", or None for the guard's own mode
    actor: str | None = None
    reason: str | None = None


@dataclass
class ApplyPlan(Op[None]):
    """Install a plan's definitions at once, dropping those of the previous plan that the new
    one no longer has."""

    name: str
    definitions: tuple[SetBudget | SetQuota | SetAccess, ...]
    mode: str | None = None
    actor: str | None = None
    reason: str | None = None


@dataclass
class SetStatus(Op[int]):
    scope: str
    unit: Unit | None
    status: BudgetStatus
    actor: str | None = None
    reason: str | None = None


@dataclass
class SetBudgetTerms(Op[int]):
    """Change the overdraft limit and/or overage policy (None: keep) of every budget of a
    scope in one unit, keeping its ledgers' figures; each current ledger's over-limit flag
    follows the new limit. Answers how many budgets changed; none there: NotFound."""

    scope: str
    unit: Unit
    overdraft_limit: int | None
    overage_policy: OveragePolicy | None
    actor: str | None = None
    reason: str | None = None


@dataclass
class Reserve(Op[ReserveOutcome], Keyed):
    scopes: tuple[str, ...]
    dimensions: tuple[tuple[str, str], ...]
    subject: Subject
    action: Action
    estimate: Units
    ttl_ms: int
    grace_ms: int
    max_extensions: int
    overage_policy: OveragePolicy | None
    dry_run: bool = False
    elastic: ElasticTerms | None = None
    shadow: bool = False  # the guard's mode; a tenant's own mode overrides it
    default_plan: ApplyPlan | None = None


@dataclass
class ElasticTerms:
    """The shrinkable part of an estimate: per-million-output-token rates by unit."""

    rates: tuple[tuple[Unit, int], ...]
    max_tokens: int
    floor: int


@dataclass
class Commit(Op[CommitResult], Keyed):
    reservation_id: str
    actual: Units
    usage: TokenCounts | None = None  # the provider's token counts, for the usage export


@dataclass
class Release(Op[ReleaseResult], Keyed):
    reservation_id: str
    reason: str


@dataclass
class Extend(Op[ExtendResult], Keyed):
    reservation_id: str
    by_ms: int


@dataclass
class Record(Op[RecordResult], Keyed):
    scopes: tuple[str, ...]
    dimensions: tuple[tuple[str, str], ...]
    subject: Subject
    action: Action
    actual: Units
    overage_policy: OveragePolicy | None
    shadow: bool = False
    usage: TokenCounts | None = None  # the provider's token counts, for the usage export


@dataclass
class Get(Op[ReservationInfo]):
    reservation_id: str


@dataclass
class ListReservations(Op[tuple[tuple[ReservationInfo, ...], "str | None"]]):
    """A page of the tenant's reservations (active, and finished within their retention),
    in no promised order, and the cursor of the next page (None: none left). A page may be
    short, even empty, with a cursor: keep reading until the cursor is None."""

    status: ReservationStatus | None
    limit: int
    cursor: str | None


@dataclass
class Balances(Op[tuple[Balance, ...]]):
    scope: str
    include_children: bool = True


@dataclass
class Fund(Op[FundResult], Keyed):
    scope: str
    unit: Unit
    period: Period | PeriodChoice | None
    operation: FundOperation
    amount: int
    spent: int | None
    actor: str | None = None
    reason: str | None = None


@dataclass
class Transfer(Op[TransferResult], Keyed):
    source: str
    destination: str
    unit: Unit
    period: Period | PeriodChoice | None
    amount: int
    actor: str | None = None
    reason: str | None = None


@dataclass
class Audit(Op[tuple[AuditRecord, ...]]):
    since_ms: int | None
    types: frozenset[str] | None
    limit: int
    until_ms: int | None = None  # records of that moment and before only


@dataclass
class Report(Op[tuple[ReportRow, ...]]):
    period: Period
    at_ms: int | None
    by: str | None = None  # a dimension key: rows per value of it
    top: int | None = None  # the busiest rows only


@dataclass
class Usage(Op[UsagePage]):
    """A tenant's usage counters of `period` ("YYYY-MM" or "YYYY-MM-DD"; None: the store's
    current month), whole days from day `index` (0: the first), until `limit` entries."""

    period: str | None
    index: int
    limit: int


@dataclass
class PlanOf(Op["str | None"]):
    """The name of the plan a tenant is on (None: none assigned)."""


@dataclass
class StatusOf(Op[TenantStatus]):
    """Where the tenant stands (`TenantStatus`), from its record and the status of its
    budgets' definitions (templates included, whether or not a ledger was made yet).
    Writes nothing."""


@dataclass
class Tenants(Op[tuple[str, ...]]):
    """The tenants the store holds anything for, by name: those registered or with at least
    one change on record (a definition, a plan, a reservation, a denial...). A refused call
    that wrote nothing, a read or a decide makes no tenant."""


@dataclass
class Sweep(Op[int]):
    """Expire due reservations and drop what is past retention, across tenants."""

    limit: int


@dataclass
class CreateKey(Op[ApiKey]):
    """Store a new key of `tenant`; the store stamps its creation time."""

    key_id: str
    name: str
    permissions: tuple[str, ...]
    expires_at_ms: int | None
    secret_hash: str


@dataclass
class ListKeys(Op[tuple[ApiKey, ...]]):
    """Every key of the tenant, revoked ones included, oldest first."""


@dataclass
class RevokeKey(Op[ApiKey]):
    """Revoke a key for good (revoking it again changes nothing)."""

    key_id: str


@dataclass
class UpdateKey(Op["tuple[ApiKey, bool]"]):
    """Rename a key or replace its permissions (None: keep). A revoked or expired key is
    left as it is: the answer is the key and whether it changed. No such key: NotFound."""

    key_id: str
    name: str | None
    permissions: tuple[str, ...] | None


@dataclass
class KeyMatch:
    """A stored key, the hash of its secret and the store's time: what authentication
    compares (in constant time, outside the store)."""

    key: ApiKey
    secret_hash: str
    now_ms: int


@dataclass
class FindKey(Op["KeyMatch | None"]):
    """A key by id, for authentication; None when there is none. Writes nothing."""

    key_id: str


@dataclass(frozen=True, slots=True)
class KeyProof:
    """What a keyed operation carries to prove its caller's API key: the key id (which
    names the tenant), the hash of the secret given, and the permission the operation needs.
    The store checks it in the operation's own step, before anything is written."""

    key_id: str
    secret_hash: str
    permission: str


@dataclass
class Gated(Op[R]):
    """`op`, run only if the API key of `proof` is live (not revoked, not expired by the
    store's clock), its secret's hash is the one kept and it holds the permission: checked
    in the same atomic step, before `op` writes anything (its reap of overdue reservations
    included). A refusal raises `KeyRefused` and changes nothing; `tenant` is `op`'s."""

    op: Op[R]
    proof: KeyProof


@dataclass
class RegisterTenant(Op[tuple[TenantInfo, bool]]):
    """Record the tenant with a display name unless it has a record; answers the record
    and whether this call made it."""

    name: str


@dataclass
class GetTenant(Op["TenantInfo | None"]):
    """The tenant's record, or None. Writes nothing."""


@dataclass
class CloseTenant(Op[TenantClosure]):
    """Close the tenant for good, in one step: its record says so (made if it had none), its
    open reservations are released (those overdue expire), its budgets closed, its API keys
    revoked and its own webhook subscriptions disabled. Afterwards nothing of it changes:
    reserves are denied (`TENANT_CLOSED`), other writes refused (`TenantClosed`) once past
    their replay; reads stay. Closing it again changes nothing."""

    actor: str | None = None
    reason: str | None = None


@dataclass
class SuspendTenant(Op[int]):
    """Freeze (`suspended`) or unfreeze every budget of the tenant that is not closed, in
    one step; answers how many changed (0: already so, and nothing is recorded). A tenant
    without an open budget: NotFound. Closed budgets stay closed either way."""

    suspended: bool
    actor: str | None = None
    reason: str | None = None


@dataclass
class ClaimOnce(Op[OnceClaim]):
    """Claim `key` (named by its call, e.g. `tenants-bulk:<key>`) for one run, or read
    where its run stands: kept `ttl_ms` from the claim, then from the answer. The same key
    with another `fingerprint` raises `IdempotencyMismatch`. Not a tenant's: `tenant` is
    empty."""

    key: str
    fingerprint: str
    owner: str
    ttl_ms: int


@dataclass
class FinishOnce(Op[bool]):
    """Keep `answer` for the claim `owner` holds on `key` (replayed for `ttl_ms`), or, with
    `answer` None, let the key go (the run changed nothing). False when `owner` does not
    hold it (its claim lapsed)."""

    key: str
    owner: str
    answer: str | None
    ttl_ms: int


ONCE_OPS = (ClaimOnce, FinishOnce)


def once_mismatch(op: ClaimOnce) -> IdempotencyMismatch:
    """The refusal of a claim whose key was first claimed for another request."""
    return IdempotencyMismatch(f"idempotency key {op.key.partition(':')[2]!r} was used with "
                               "a different request")


def grants(permissions: tuple[str, ...], permission: str) -> bool:
    """Whether a key holding `permissions` may do `permission` (directly, or through
    admin:read for a `*:read`, or admin:write for anything)."""
    return (permission in permissions or "admin:write" in permissions
            or (permission.endswith(":read") and "admin:read" in permissions))


def key_refusal(proof: KeyProof, found: tuple[ApiKey, str] | None,
                now_ms: int) -> KeyRefused | None:
    """Why the stored key `found` (with its secret's hash; None: no such key) does not let
    `proof` through at `now_ms`, or None when it does. The hashes are compared in constant
    time. keys.lua's `key_refusal` is the same check."""
    if found is None:
        return refused("unknown", proof)
    key, kept = found
    if not hmac.compare_digest(kept, proof.secret_hash):
        return refused("mismatch", proof)
    if key.revoked:
        return refused("revoked", proof)
    if key.expires_at_ms is not None and now_ms >= key.expires_at_ms:
        return refused("expired", proof)
    if not grants(key.permissions, proof.permission):
        return refused("permission", proof)
    return None


def refused(reason: str, proof: KeyProof) -> KeyRefused:
    """The error of a key refused for `reason`; a missing permission is named."""
    if reason == "permission":
        return KeyRefused(reason, f"this API key lacks the {proof.permission} permission")
    return KeyRefused(reason)


TENANT_FAILED = NotificationType.SWEEP_TENANT_FAILED
"""The notification a sweep sends for a tenant it skipped: one tenant's state that cannot be
read (corrupt, or written by an incompatible version) must not stall the others' expiry.
Its `reason` is the error."""


def skipped(tenant: str, error: BaseException) -> str:
    """Log that a sweep skipped `tenant`; the reason its notification carries."""
    reason = f"{type(error).__name__}: {error}"
    log.warning("sweep skipped tenant %r: %s", tenant, reason)
    return reason


def checked_amounts(amounts: dict[Unit, int], what: str) -> None:
    """Refuse an amount no ledger may hold or be charged (the guard's checks make one
    impossible; a store checks again before it writes, so a negative one is never stored)."""
    for unit, amount in amounts.items():
        if not 0 <= amount <= MAX_AMOUNT:
            raise InvalidRequest(f"{what}: {unit.value} {amount} is not between 0 and "
                                 f"{MAX_AMOUNT}")


class Store(Protocol):
    def execute(self, op: Op[R]) -> R: ...

    async def aexecute(self, op: Op[R]) -> R: ...

    def subscribe(self, listener: Callable[[list[Notification]], None]) -> None:
        """Receive each operation's notifications after its atomic step."""

    def lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew a named lease for `owner`; False while another owner holds it."""

    def close(self) -> None: ...

