"""What every operation shares, as common.lua is the prelude of every Redis script: a tenant's
state (definitions, ledgers, reservations), how a charge finds its ledgers, and the records an
operation writes (audit log, report tallies, notifications, idempotent replies)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NoReturn

from ... import ledger, policy
from ...amounts import Amount, Unit, Units
from ...errors import IdempotencyMismatch, NotFound, TenantClosed, UnitMismatch
from ...events import AuditType, Notification, NotificationType
from ...models import (
    Action,
    Balance,
    BudgetStatus,
    CommitResult,
    Decision,
    Outcome,
    OveragePolicy,
    Reason,
    ReservationInfo,
    ReservationStatus,
    TenantInfo,
)
from ...periods import Period, bucket
from ...reports import REPORT_RETENTION_DAYS, report_paths, report_scopes
from ...scopes import Subject
from ...usage import Tally, TokenCounts
from ..operations import PERIOD_ORDER, UNIT_ORDER, ReserveOutcome

DefKey = tuple[str, Unit, "Period | None", "str | None"]
"""A budget definition: (scope, unit, period, per-dimension key or None)."""
LedgerKey = tuple[str, Unit, "Period | None", str]
"""A ledger: (scope path incl. any dimension, unit, period, bucket)."""
QuotaKey = tuple[str, policy.QuotaKind, "Period | None", str]
"""A quota rule: (scope, kind, window, action kind)."""
AuditEntry = tuple[int, int, str, str, "Subject | None", "Action | None",
                   "dict[str, Any] | tuple[Any, ...]"]
"""seq, at_ms, type, tenant, subject, action, other fields: an AuditRecord once read. The
other fields are a dict by name, or (the usual reserve and commit, written most) a tuple in
`AuditRecord`'s order of the scopes and the fields after `action`: one small tuple kept
instead of two dicts."""
Held = list[tuple[LedgerKey, "Definition", ledger.Ledger]]
"""Ledgers an operation charges, with their definitions, in canonical order."""
Ready = tuple[tuple[tuple[LedgerKey, "Definition"], ...], tuple[ledger.Ledger, ...],
              tuple["Terms", ...]]
"""A route's current ledgers with their definitions, their objects and their terms."""
Figures = tuple[int, int, int, int, bool]
"""A ledger's allocated, reserved, spent, debt and over-limit flag, as they were. Read
attribute by attribute (`(s.allocated, s.reserved, ...)`): the interpreter's specialised
attribute reads cost about a third of an `attrgetter` call's."""
Terms = tuple[int, BudgetStatus]
"""A definition's overdraft limit and status, as a balance shows them."""

DAY_MS = 86_400_000
RESERVED = {unit: f"reserved:{unit.value}" for unit in Unit}  # report counter names
COMMITTED = {unit: f"committed:{unit.value}" for unit in Unit}
_EMPTY: list[Any] = []  # never appended to: what a finished reservation keeps
_NO_ESTIMATE: dict[Unit, int] = {}  # never written to: a finished reservation's estimate
ALLOWED = Decision(Outcome.ALLOW)
_ROUTE_CACHE = 1024  # routes kept per tenant (one per subject shape, run dimensions included)


_forks = 0  # how many times this process's line has forked: a child draws fresh ids


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class Ids:
    """Ids of reservations and records, `<tenant>:<32 hex digits>` as `ids.new_id` makes
    them, from the operating system's random source 128 at a time: one system call serves
    128 ids instead of one. Drawn under the store's lock; a forked child draws anew, so
    parent and child never hand out the same id."""

    __slots__ = ("_at", "_forks", "_hex")

    def __init__(self) -> None:
        self._hex, self._at, self._forks = "", 0, _forks

    def new(self, tenant: str) -> str:
        at = self._at
        if at >= len(self._hex) or self._forks != _forks:
            self._hex, at, self._forks = os.urandom(2048).hex(), 0, _forks
        self._at = at + 32
        return f"{tenant}:{self._hex[at:at + 32]}"


@dataclass
class Context:
    """What the operations of every tenant share: the store's retention settings, and the
    notifications of the step under way (the store hands them to listeners after it)."""

    idempotency_ttl_ms: int
    finished_retention_ms: int
    dimension_idle_ttl_ms: int
    audit_retention: int
    reap_batch: int  # overdue reservations an operation expires first
    report_retention_days: int = REPORT_RETENTION_DAYS  # days of report counters kept
    notes: list[Notification] = field(default_factory=list)
    forecast: Callable[[Tenant, Held, int], None] | None = None
    """Set while a webhook subscription wants burn-rate forecasts (see outbox.py)."""
    ids: Ids = field(default_factory=Ids)
    generation: int = 0
    """Moves whenever, in any tenant, a ledger object is replaced or dropped or a budget
    definition changes (`relinked`): what a route or a reservation keeps of its ledgers
    stands while it has not moved."""


@dataclass
class Definition:
    """A budget as set: one per scope, unit, period and dimension key."""

    scope: str
    unit: Unit
    period: Period | None
    per: str | None
    limit: int
    overdraft_limit: int
    overage_policy: OveragePolicy
    degrade: tuple[policy.Degrade, ...] = ()
    alerts: tuple[float, ...] = (0.5, 0.8, 1.0)
    status: BudgetStatus = BudgetStatus.ACTIVE
    required: bool = False  # a template whose dimension every call under the scope carries

    @property
    def key(self) -> DefKey:
        """How the tenant's definitions (and a plan's keys) name this budget."""
        return (self.scope, self.unit, self.period, self.per)

    def order(self) -> tuple[bool, int, int, str]:
        """Canonical order inside one scope: plain budgets first, then unit, period, key."""
        return (self.per is not None, UNIT_ORDER[self.unit], PERIOD_ORDER[self.period],
                self.per or "")


@dataclass(slots=True)
class Reservation:
    """A held estimate, and once finished what answers get() and replays until pruned."""

    id: str
    subject: Subject
    action: Action
    estimate: dict[Unit, int]
    estimate_amounts: tuple[Amount, ...]
    ledgers: Sequence[tuple[LedgerKey, Definition]]
    scopes: tuple[str, ...]
    epoch: int  # the tenant's definitions epoch when made: its definitions are current
    created_at_ms: int
    expires_at_ms: int
    grace_ms: int
    max_extensions: int
    overage_policy: OveragePolicy | None
    concurrency: list[QuotaKey]
    shadow: bool
    status: ReservationStatus = ReservationStatus.ACTIVE
    extensions: int = 0
    charged: tuple[Amount, ...] = ()
    finalized_at_ms: int | None = None
    commit: Kept | None = None  # its keyed commit's answer
    release: Kept | None = None  # its keyed release's answer
    extends: dict[str, Kept] | None = None  # its keyed extensions' answers, by key
    report: tuple[str, ...] | None = None  # the scopes its activity is counted at, if known
    on_commit: Counters | None = None  # what its commit counts at `report`, if known
    states: Sequence[ledger.Ledger] = ()  # its ledgers' objects, as of `generation`
    generation: int = -1
    terms: Sequence[Terms] = ()  # its definitions' terms, as of `generation`

    @property
    def deadline_ms(self) -> int:
        """When the reservation expires unless extended: its expiry plus grace."""
        return self.expires_at_ms + self.grace_ms

    def info(self) -> ReservationInfo:
        """The public view of this reservation."""
        return ReservationInfo(
            self.id, self.subject.tenant, self.status, self.subject, self.action,
            self.estimate_amounts, self.scopes,
            self.created_at_ms, self.expires_at_ms, self.grace_ms, self.extensions,
            self.overage_policy, self.charged, self.finalized_at_ms)


class Kept:
    """A keyed call's answer, kept for its replays: on the tenant until `expires_at_ms`, or
    on its reservation (its commit and release) as long as the reservation is kept.

    A day of these must not be object graphs the cyclic collector walks at every full pass
    (a keyed reserve+commit pair used to leave 15 tracked objects behind, and the collector
    took more time than the pair): the lean paths keep their answers as the few values
    they are built from (`LeanReserve`, `LeanCommit`), built again on each replay."""

    __slots__ = ("expires_at_ms", "fingerprint", "key", "result")

    def __init__(self, key: str, fingerprint: str, result: Any, expires_at_ms: int = 0) -> None:
        self.key, self.fingerprint, self.result = key, fingerprint, result
        self.expires_at_ms = expires_at_ms

    def answer(self) -> Any:
        """The answer the call gave."""
        return self.result


class LeanReserve(Kept):
    """A lean reserve's answer: its reservation (`result`), the reservation's expiry then
    (an extension moves it since), and the balances it showed (ledgers, figures, terms)."""

    __slots__ = ("figures", "held_until_ms", "ledgers", "terms")

    def __init__(self, key: str, fingerprint: str, res: Reservation, expires_at_ms: int,
                 ledgers: Sequence[tuple[LedgerKey, Definition]], figures: tuple[Figures, ...],
                 terms: Sequence[Terms]) -> None:
        super().__init__(key, fingerprint, res, expires_at_ms)
        self.held_until_ms, self.ledgers, self.figures, self.terms = (
            res.expires_at_ms, ledgers, figures, terms)

    def answer(self) -> ReserveOutcome:
        res: Reservation = self.result
        return ReserveOutcome(
            ALLOWED, ReservationInfo(res.id, res.subject.tenant, ReservationStatus.ACTIVE,
                                     res.subject, res.action, res.estimate_amounts,
                                     res.scopes, res.created_at_ms, self.held_until_ms,
                                     res.grace_ms, 0, res.overage_policy),
            partial(held_balances, self.ledgers, self.figures, self.terms))


class LeanCommit(Kept):
    """A lean commit's answer: the reservation id (`result`), what was charged and given
    back, and the balances it showed (ledgers, figures, terms)."""

    __slots__ = ("charged", "figures", "ledgers", "released", "terms")

    def __init__(self, key: str, fingerprint: str, rid: str, charged: tuple[Amount, ...],
                 released: tuple[Amount, ...],
                 ledgers: Sequence[tuple[LedgerKey, Definition]], figures: tuple[Figures, ...],
                 terms: Sequence[Terms]) -> None:
        super().__init__(key, fingerprint, rid)
        self.charged, self.released = charged, released
        self.ledgers, self.figures, self.terms = ledgers, figures, terms

    def answer(self) -> CommitResult:
        return CommitResult(self.result, ReservationStatus.COMMITTED, self.charged,
                            self.released,
                            partial(held_balances, self.ledgers, self.figures, self.terms))


@dataclass(slots=True)
class Tenant:
    """All of one tenant's state: what one hash tag holds in Redis."""

    name: str
    cx: Context
    definitions: dict[str, dict[DefKey, Definition]] = field(default_factory=dict)
    epoch: int = 0  # moves whenever a definition is added or removed
    routes: dict[tuple[Any, ...], Route] = field(default_factory=dict)  # of this epoch
    ledgers: dict[LedgerKey, ledger.Ledger] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    listing: list[tuple[int, str]] = field(default_factory=list)
    """(number, id) of reservations in the order they were made, numbered by the sequence
    number of the audit record that made them: a page of the list starts by bisection after
    its cursor's number. Ids since dropped are skipped, and cleared out by the sweep."""
    finished: deque[tuple[int, str]] = field(default_factory=deque)
    """(finalized at, id) of finished reservations in the order they finished: a sweep
    drops those past their retention from the front, never walking the rest."""
    expiry: list[tuple[int, str]] = field(default_factory=list)  # (deadline, id), lazily pruned
    idempotency: dict[tuple[str, str], Kept] = field(default_factory=dict)
    """Keyed answers in the order they lapse (each is kept the same time, and one kept
    again moves to the end): a sweep drops lapsed ones from the front."""
    quotas: dict[str, dict[QuotaKey, policy.QuotaRule]] = field(default_factory=dict)
    access: dict[str, policy.AccessRule] = field(default_factory=dict)
    idle_walk_ms: int = 0  # when the sweep next looks for idle dimension ledgers
    calls: dict[tuple[QuotaKey, str], int] = field(default_factory=dict)
    runs: dict[tuple[QuotaKey, str], set[str]] = field(default_factory=dict)
    active: dict[QuotaKey, int] = field(default_factory=dict)
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Scope → the dimension keys its required templates and access rule demand (sorted);
    only scopes that demand some, so a tenant without any skips the check."""
    mode: str | None = None
    plan: str | None = None
    plan_keys: set[tuple[str, Any]] = field(default_factory=set)
    audit: deque[AuditEntry] = field(default_factory=deque)
    seq: int = 0
    report: dict[int, dict[str, int]] = field(default_factory=dict)  # day -> "scope|counter"
    usage: dict[int, dict[tuple[str, str], Tally]] = field(default_factory=dict)
    """Day -> (subject scope, model) -> the usage export's counters (see `usage.py`)."""
    api_keys: dict[str, tuple[Any, str]] = field(default_factory=dict)  # id -> (key, hash)
    profile: Any = None  # the tenant's record (TenantInfo), once registered: see `record_of`
    closed_at_ms: int | None = None  # closed for good (see `admin.close_tenant`)
    touched: bool = False
    """An operation ran on it since the store's last sweep began (see `schedule.Schedule`)."""
    sweep_at: int | None = None
    """When the store's sweep schedule next has work on it (None: none until an operation
    touches it; see `schedule.next_due`)."""

    def __post_init__(self) -> None:
        self.audit = deque(self.audit, maxlen=max(0, self.cx.audit_retention))  # oldest out


class Route:
    """Where a subject's charges in some units go: (scope path, unit, period, definition)
    per ledger, in canonical order, and the scope paths once each; with what only the
    subject decides, worked out once: the scopes its activity is counted at and the report
    counter names of each event. Cached per tenant until a definition is added or removed."""

    __slots__ = ("_counters", "_current", "_generation", "_minute", "_ready", "_ready_minute",
                 "ledgers", "on_commit", "on_reserve", "report", "scopes", "units")

    def __init__(self, ledgers: tuple[tuple[str, Unit, Period | None, Definition], ...],
                 scopes: tuple[str, ...], units: tuple[Unit, ...],
                 report: tuple[str, ...]) -> None:
        self.ledgers, self.scopes, self.units, self.report = ledgers, scopes, units, report
        self._minute = self._ready_minute = self._generation = -1
        self._current: tuple[tuple[LedgerKey, Definition], ...] = ()
        self._ready: Ready | None = None
        self._counters: dict[str, Counters] = {}
        self.on_reserve = self.counters("reservations", RESERVED)
        self.on_commit = self.counters("commits", COMMITTED)
        """The report counters a reservation and a commit in the route's units add to."""

    def current(self, now: int) -> tuple[tuple[LedgerKey, Definition], ...]:
        """The ledgers of the buckets `now` falls in, with their definitions: a bucket
        starts on a whole UTC minute, so the keys of one minute are those of the next call
        in that minute."""
        minute = now // 60_000
        if minute != self._minute:
            self._current = tuple([((path, unit, period, bucket(period, now)), d)
                                   for path, unit, period, d in self.ledgers])
            self._minute = minute
        return self._current

    def ready(self, t: Tenant, now: int) -> Ready | None:
        """`current(now)`, the ledger objects there and the terms (overdraft limit, status)
        of their definitions, when every ledger is there under the limit its definition
        has, and every definition is active without degrade rules; None otherwise. Only a
        new minute or a new generation (see `Context`) can change that, so a found answer
        is kept until then."""
        minute, generation = now // 60_000, t.cx.generation
        if minute == self._ready_minute and generation == self._generation:
            return self._ready
        ledgers = t.ledgers
        current = self.current(now)
        found = []
        for key, d in current:
            state = ledgers.get(key)
            if (state is None or state.limit_seen != d.limit
                    or d.status is not BudgetStatus.ACTIVE or d.degrade):
                return None
            found.append(state)
        self._ready = (current, tuple(found),
                       tuple([(d.overdraft_limit, d.status) for _, d in current]))
        self._ready_minute, self._generation = minute, generation
        return self._ready

    def counters(self, event: str, names: dict[Unit, str]) -> Counters:
        """The report counter names of one event with amounts in the route's units (see
        `counters`); an event comes with the same `names` every time."""
        found = self._counters.get(event)
        if found is None:
            found = self._counters[event] = counters(self.report, event, names, self.units)
        return found


Counters = tuple[tuple[str, "Unit | None"], ...]
"""Report counter names in the order `tally` writes them, each with the unit whose amount it
adds (None: it counts one)."""


_counters: dict[tuple[tuple[str, ...], str, tuple[Unit, ...]], Counters] = {}


def counters_at(scopes: tuple[str, ...], event: str, names: dict[Unit, str],
                units: tuple[Unit, ...]) -> Counters:
    """`counters`, remembered: the same few subjects settle again and again."""
    memo = (scopes, event, units)
    found = _counters.get(memo)
    if found is None:
        if len(_counters) >= 4096:
            _counters.clear()
        found = _counters[memo] = counters(scopes, event, names, units)
    return found


def counters(scopes: tuple[str, ...], event: str, names: dict[Unit, str] | None,
             units: tuple[Unit, ...]) -> Counters:
    """What `tally(t, now, scopes, event, amounts, names)` counts, for amounts in `units`."""
    found: list[tuple[str, Unit | None]] = []
    for scope in scopes:
        found.append((f"{scope}|{event}", None))
        if names:
            found += [(f"{scope}|{names[unit]}", unit) for unit in units]
    return tuple(found)


# -- definitions and ledgers ----------------------------------------------------------------

def redefined(t: Tenant) -> None:
    """A definition was added or removed: cached routes and held definitions are stale."""
    t.epoch += 1
    t.routes.clear()
    relinked(t)


def relinked(t: Tenant) -> None:
    """A ledger object was replaced or dropped, or a definition changed: what routes and
    reservations keep of their ledgers is stale."""
    t.cx.generation += 1


def requirements_changed(t: Tenant, scope: str) -> None:
    """A scope's templates or access rule changed: recompute the dimensions it requires."""
    keys = {d.per for d in t.definitions.get(scope, {}).values() if d.required and d.per}
    rule = t.access.get(scope)
    if rule is not None:
        keys.update(rule.required_dimensions)
    if keys:
        t.required[scope] = tuple(sorted(keys))
    else:
        t.required.pop(scope, None)


def missing_dimensions(t: Tenant, scopes: tuple[str, ...],
                       dimensions: tuple[tuple[str, str], ...]) -> Decision | None:
    """DIMENSION_REQUIRED when the subject lacks a dimension one of its scopes requires, at
    the outermost such scope, naming every missing key (sorted); None when nothing lacks."""
    if not t.required:
        return None
    have = {key for key, _ in dimensions}
    where, missing = None, set()
    for scope in scopes:
        for key in t.required.get(scope, ()):
            if key not in have:
                where = where or scope
                missing.add(key)
    if where is None:
        return None
    return Decision(Outcome.DENY, reason=Reason.DIMENSION_REQUIRED, scope=where,
                    missing_dimensions=tuple(sorted(missing)))


def dimension_ledgers(t: Tenant, d: Definition, current: str) -> Iterator[LedgerKey]:
    """The ledgers of a per-dimension budget in bucket `current`, one per dimension value."""
    prefix = f"{d.scope}/{d.per}:"
    for key in t.ledgers:
        if (key[1] is d.unit and key[2] == d.period and key[3] == current
                and key[0].startswith(prefix) and "/" not in key[0][len(prefix):]):
            yield key


def ledger_at(t: Tenant, key: LedgerKey, d: Definition, now: int) -> ledger.Ledger:
    """The ledger at `key`; a new one (not yet stored) when never touched."""
    state = t.ledgers.get(key)
    if state is None:
        return ledger.Ledger(allocated=d.limit, limit_seen=d.limit, touched_ms=now)
    if state.limit_seen != d.limit and key[3] == bucket(d.period, now):
        state.follow_limit(d.limit)
    return state


def targets(t: Tenant, scopes: tuple[str, ...], dimensions: tuple[tuple[str, str], ...],
            units: Iterable[Unit]) -> Route | None:
    """Where a subject's charges in these units go (its current ledgers: `.current(now)`),
    or None when no budget applies to it at all."""
    charged = tuple(units)
    memo = (scopes, dimensions, *charged)
    route = t.routes.get(memo)
    if route is None:
        route = _route(t, scopes, dimensions, charged)
        if route is None:
            return None
        if len(t.routes) >= _ROUTE_CACHE:
            t.routes.clear()
        t.routes[memo] = route
    return route


def _route(t: Tenant, scopes: tuple[str, ...], dimensions: tuple[tuple[str, str], ...],
           units: tuple[Unit, ...]) -> Route | None:
    """The ledgers a subject charges in these units, in canonical order; None when no budget
    applies to the subject at all. Raises `UnitMismatch` when budgets apply but none in
    these units."""
    dims = dict(dimensions)
    applicable = 0
    found = []
    for scope in scopes:
        for d in t.definitions.get(scope, {}).values():
            if d.per is None:
                path = scope
            elif d.per in dims:
                path = f"{scope}/{d.per}:{dims[d.per]}"
            else:
                continue
            applicable += 1
            if d.unit in units:
                found.append((path, d.unit, d.period, d))
    if found:
        return Route(tuple(found), tuple(dict.fromkeys(row[0] for row in found)), units,
                      report_paths(scopes[-1], dimensions))
    if applicable:
        held_units = sorted({d.unit.value for s in scopes
                             for d in t.definitions.get(s, {}).values()})
        raise UnitMismatch(f"no budget of {scopes[-1]} is in "
                           f"{sorted(u.value for u in units)}; its budgets hold {held_units}")
    return None


def settlement(states: Held, estimate: dict[Unit, int], actual: dict[Unit, int],
               policy_: OveragePolicy | None, now: int, release_reserved: bool,
               shadow: bool) -> ledger.Settlement:
    """Settle a charge on these ledgers; in shadow mode nothing is refused and the spend
    beyond what enforce mode would allow is booked as debt (`ledger.settle_shadow`)."""
    rows = [(key, d, state, policy_ or d.overage_policy) for key, d, state in states]
    if shadow:
        return ledger.settle_shadow(rows, estimate, actual, release_reserved)
    return ledger.settle(rows, estimate, actual, release_reserved, now)


# -- reservations -------------------------------------------------------------------------

def record_of(t: Tenant) -> TenantInfo:
    """The tenant's record as callers see it: its registration, and when it was closed (kept
    on the tenant alone, which every change checks)."""
    info: TenantInfo = replace(t.profile, closed_at_ms=t.closed_at_ms)
    return info


def refuse_closed(t: Tenant) -> NoReturn:
    """A change of a closed tenant, past its replay: refused."""
    raise TenantClosed(f"tenant {t.name} is closed: it can be read, not changed")


def reservation(t: Tenant, rid: str) -> Reservation:
    """The reservation `rid`, active or finished within its retention."""
    res = t.reservations.get(rid)
    if res is None:
        raise NotFound(f"no reservation {rid} (never made, or past its retention)")
    return res


def held(t: Tenant, res: Reservation, now: int) -> Held:
    """The ledgers a reservation holds, with their current definitions."""
    if res.epoch == t.epoch:
        return [(key, d, ledger_at(t, key, d, now)) for key, d in res.ledgers]
    found = []
    for key, d in res.ledgers:
        d = _definition(t, d.key)
        found.append((key, d, ledger_at(t, key, d, now)))
    return found


def _definition(t: Tenant, key: DefKey) -> Definition:
    """A reservation's budget definition, or a neutral stand-in if it was removed since."""
    d = t.definitions.get(key[0], {}).get(key)
    if d is None:
        d = Definition(*key, limit=0, overdraft_limit=0,
                       overage_policy=OveragePolicy.ALLOW_IF_AVAILABLE)
    return d


def return_estimate(t: Tenant, res: Reservation, now: int) -> tuple[Balance, ...]:
    """Give a reservation's estimate back to every ledger it holds (release, expiry)."""
    balances = []
    for key, d, state in held(t, res, now):
        t.ledgers[key] = state
        state.reserved -= res.estimate[key[1]]
        state.touched_ms = now
        balances.append(balance(key, state, d))
    return tuple(balances)


def finish(t: Tenant, res: Reservation, status: ReservationStatus, now: int,
           charged: tuple[Amount, ...] = ()) -> None:
    """Mark a reservation final and free its concurrency slots."""
    res.status, res.finalized_at_ms, res.charged = status, now, charged
    for key in res.concurrency:
        t.active[key] = max(0, t.active.get(key, 0) - 1)
    # A finished reservation is kept only to answer get() and replays: drop what the
    # collector would otherwise walk for a day (what stays is shared: amounts, scopes).
    res.ledgers, res.concurrency, res.states, res.terms = _EMPTY, _EMPTY, (), ()
    res.estimate = _NO_ESTIMATE
    t.finished.append((now, res.id))


def release_held(t: Tenant, res: Reservation, now: int, key: str | None,
                 reason: str | None) -> tuple[Balance, ...]:
    """Give a reservation's whole estimate back, on the record (a release, or closing its
    tenant); the balances after it."""
    balances = return_estimate(t, res, now)
    finish(t, res, ReservationStatus.RELEASED, now)
    log(t, now, AuditType.RELEASED, scopes=res.scopes, reservation_id=res.id,
        idempotency_key=key, estimate=res.estimate_amounts, detail={"reason": reason})
    tally(t, now, report_scopes(res.subject), "releases")
    return balances


def expire(t: Tenant, res: Reservation, now: int) -> None:
    """A reservation past its ttl and grace: its estimate goes back, on the record."""
    return_estimate(t, res, now)
    finish(t, res, ReservationStatus.EXPIRED, now)
    log(t, now, AuditType.EXPIRED, scopes=res.scopes, reservation_id=res.id,
        estimate=res.estimate_amounts)
    tally(t, now, report_scopes(res.subject), "expiries")
    t.cx.notes.append(Notification(NotificationType.RESERVATION_EXPIRED, t.name, now,
                                   reservation_id=res.id, amounts=res.estimate_amounts))


# -- idempotency --------------------------------------------------------------------------

def replay(t: Tenant, kind: str, key: str | None, fingerprint: str, now: int) -> Any:
    """The stored result of an earlier call with this key, or None when there is none."""
    if key is None:
        return None
    record = t.idempotency.get((kind, key))
    if record is None or record.expires_at_ms < now:
        return None
    return replayed(record, fingerprint, kind)


def remember(t: Tenant, kind: str, key: str | None, fingerprint: str, result: Any,
             now: int) -> None:
    """Keep a keyed call's result, so that a retry gets it again instead of a second change."""
    if key is not None:
        records = t.idempotency
        records.pop((kind, key), None)  # a lapsed key used again goes to the end
        records[(kind, key)] = Kept(key, fingerprint, result, now + t.cx.idempotency_ttl_ms)


def replayed(kept: Kept, fingerprint: str, kind: str) -> Any:
    """The kept answer of an idempotent call, if the payload is the same."""
    if kept.fingerprint != fingerprint:
        raise IdempotencyMismatch(f"idempotency key {kept.key!r} was used for a different "
                                  f"{kind} request")
    return kept.answer()


# -- records: audit log, report tallies, notifications ---------------------------------------

def log(t: Tenant, now: int, kind: str, *, subject: Subject | None = None,
        action: Action | None = None, **fields: Any) -> None:
    """Append an audit entry in the step that makes the change; the oldest beyond the
    retention drops out."""
    t.seq += 1
    t.audit.append((t.seq, now, kind, t.name, subject, action, fields))


def tally(t: Tenant, now: int, scopes: tuple[str, ...], event: str,
          amounts: dict[Unit, int] | None = None, names: dict[Unit, str] | None = None) -> None:
    """Count one `event` at each of `scopes`, and `amounts` under their unit's counter `names`,
    in today's counters (see `reports.py` for which scopes an event is counted at)."""
    count(t, now, counters(scopes, event, names if amounts else None,
                           tuple(amounts) if amounts else ()), amounts)


def count(t: Tenant, now: int, names: Counters, amounts: dict[Unit, int] | None) -> None:
    """Add to today's report counters: one to each counter without a unit, the amount of
    its unit to each other. The first count of a day drops the days past the retention,
    as `count` in common.lua."""
    day = now // DAY_MS
    report = t.report.get(day)
    if report is None:
        report = t.report[day] = {}
        oldest = day - t.cx.report_retention_days + 1
        for old in [kept for kept in t.report if kept < oldest]:
            del t.report[old]
    for key, unit in names:
        by = 1 if unit is None else amounts[unit]  # type: ignore[index]
        try:
            report[key] += by
        except KeyError:  # the day's first count under this name
            report[key] = by


def count_usage(t: Tenant, at_ms: int, now: int, scope: str, model: str, calls: int,
                denials: int, tokens: TokenCounts | None,
                spend: Iterable[tuple[Unit, int]]) -> None:
    """Count a call (or a denial) for the usage export on the day of `at_ms` (a commit: the
    day its reservation was made), as `count_usage` in common.lua: one entry per day, scope
    and model. A day past the retention is not kept; the first entry of a day drops those."""
    day = at_ms // DAY_MS
    kept = t.usage.get(day)
    if kept is None:  # the day's first entry (a day still kept is within the retention)
        oldest = now // DAY_MS - t.cx.report_retention_days + 1
        if day < oldest:
            return
        kept = t.usage[day] = {}
        for old in [d for d in t.usage if d < oldest]:
            del t.usage[old]
    entry = kept.get((scope, model))
    if entry is None:
        entry = kept[(scope, model)] = Tally()
    entry.add(calls, denials, tokens, spend)


def alerts(t: Tenant, changed: Iterable[tuple[LedgerKey, Definition, ledger.Ledger]], now: int,
           rid: str | None) -> None:
    """Notify what these changed ledgers crossed (after a commit or a record: holds never
    alert); skips each one still below its next threshold without a call."""
    for key, d, state in changed:
        if (state.spent + state.debt < state.quiet_below
                and not state.over_limit and state.quiet_allocated == state.allocated
                and state.quiet_alerts is d.alerts):
            continue  # below the next threshold, as computed for this allocation
        _alert(t, key, d, state, now, rid)


def _alert(t: Tenant, key: LedgerKey, d: Definition, state: ledger.Ledger, now: int,
           rid: str | None) -> None:
    """Threshold, exhaustion and over-limit notifications, once per crossing, as `alert` in
    common.lua. Thresholds and exhaustion follow spent plus debt, never what is held."""
    allocated, crossed = state.allocated, state.alerted
    used = state.spent + state.debt
    if not state.over_limit and used < allocated and (
            crossed >= len(d.alerts)
            or used * 1_000_000 < round(d.alerts[crossed] * 1_000_000) * allocated):
        state.over_notified = False
        # The common case: nothing to send. Note how far spend may go before the next
        # threshold (or exhaustion), so `alerts` can skip this call until then.
        due = allocated if crossed >= len(d.alerts) else min(
            allocated, -(-round(d.alerts[crossed] * 1_000_000) * allocated // 1_000_000))
        state.quiet_below, state.quiet_allocated, state.quiet_alerts = (
            due, allocated, d.alerts)
        return
    state.quiet_allocated = -1  # past a threshold or over the limit: check every time
    if allocated <= 0:
        return
    thresholds = d.alerts  # sorted when set
    while crossed < len(thresholds) and (
            used * 1_000_000 >= round(thresholds[crossed] * 1_000_000) * allocated):
        crossed += 1
    exhausted = used >= allocated and not state.exhausted
    over = state.over_limit and not state.over_notified
    state.over_notified = state.over_limit
    if crossed == state.alerted and not exhausted and not over:
        return
    remaining = state.remaining

    def note(kind: str, threshold: float | None = None) -> None:
        alerted(t, Notification(
            kind, t.name, now, scope=key[0], unit=key[1], bucket=key[3],
            threshold=threshold, remaining=remaining, allocated=allocated,
            reservation_id=rid))

    for index in range(state.alerted, crossed):
        note(NotificationType.THRESHOLD_CROSSED, thresholds[index])
    state.alerted = crossed
    if exhausted:
        state.exhausted = True
        note(NotificationType.EXHAUSTED)
        tally(t, now, (key[0],), "exhaustions")  # the ledger that ran out, run ledgers too
    if over:
        note(NotificationType.OVER_LIMIT_ENTERED)


def alerted(t: Tenant, note: Notification) -> None:
    """Send a ledger's notification and put it on record in the same step (as `alerted` in
    common.lua): the record names the ledger's scope and has the notification's figures in
    its `detail` (unit, bucket, threshold, remaining, allocated, and the debt a commit
    added)."""
    t.cx.notes.append(note)
    assert note.unit is not None and note.scope is not None
    detail: dict[str, Any] = {"unit": note.unit.value, "remaining": note.remaining,
                              "allocated": note.allocated}
    if note.bucket:
        detail["bucket"] = note.bucket
    if note.threshold is not None:
        detail["threshold"] = note.threshold
    if note.amounts:  # the debt a commit or record added
        detail["debt_incurred"] = note.amounts[0].amount
    log(t, note.at_ms, note.type, scopes=(note.scope,), reservation_id=note.reservation_id,
        detail=detail)


def recompute_over(t: Tenant, key: LedgerKey, state: ledger.Ledger, overdraft_limit: int,
                   now: int) -> None:
    """Re-derive a ledger's over-limit flag after its figures or limit changed by hand (as
    recompute_over in common.lua); a flag that clears is notified."""
    if state.recompute_over_limit(overdraft_limit):
        over_limit_exited(t, key, state, now)


def over_limit_exited(t: Tenant, key: LedgerKey, state: ledger.Ledger, now: int) -> None:
    """Notify that a ledger's over-limit flag cleared."""
    alerted(t, Notification(
        NotificationType.OVER_LIMIT_EXITED, t.name, now, scope=key[0], unit=key[1],
        bucket=key[3], remaining=state.remaining, allocated=state.allocated))


def debts_of(changed: Held) -> list[int]:
    """The debt of each ledger a charge is about to change, for `debts_added`."""
    return [state.debt for _, _, state in changed]


def debts_added(t: Tenant, changed: Held, before: list[int], now: int,
                rid: str | None) -> None:
    """Notify each ledger a commit or record put (more) in debt (as debts_added in
    common.lua)."""
    for (key, _, state), debt in zip(changed, before, strict=True):
        if state.debt > debt:
            alerted(t, Notification(
                NotificationType.DEBT_INCURRED, t.name, now, scope=key[0], unit=key[1],
                bucket=key[3], remaining=state.remaining, allocated=state.allocated,
                reservation_id=rid, amounts=(Amount(key[1], state.debt - debt),)))


# -- results --------------------------------------------------------------------------------

def balance(key: LedgerKey, state: ledger.Ledger, d: Definition) -> Balance:
    """The public view of one ledger."""
    return Balance(key[0], key[1], period_name(key[2]), key[3], state.allocated,
                   state.reserved, state.spent, state.debt, d.overdraft_limit, state.over_limit,
                   d.status)


Row = tuple[LedgerKey, Figures, int, BudgetStatus]
"""A ledger's balance as it was: key, figures, overdraft limit, status."""


def snapshot(states: Held) -> Callable[[], tuple[Balance, ...]]:
    """These ledgers' balances as they are now, built into `Balance` rows when read."""
    return balances_later([(key, (state.allocated, state.reserved, state.spent, state.debt,
                                  state.over_limit), d.overdraft_limit, d.status)
                           for key, d, state in states])


def balances_later(rows: list[Row]) -> Callable[[], tuple[Balance, ...]]:
    """`Balance` rows of these figures, built when read (most callers never read them)."""
    return partial(_snapshot_balances, rows)


def held_balances(held: Sequence[tuple[LedgerKey, Definition]], values: Sequence[Figures],
                  terms: Sequence[Terms]) -> tuple[Balance, ...]:
    """`Balance` rows of ledgers (with their definitions) from their figures and terms as
    they were: the lean reserve and commit take those in the step, and hand over
    `partial(held_balances, ...)`, built into rows only when read."""
    return tuple([Balance(key[0], key[1], period_name(key[2]), key[3], allocated, reserved,
                          spent, debt, overdraft_limit, over_limit, status)
                  for (key, _), (allocated, reserved, spent, debt, over_limit),
                  (overdraft_limit, status) in zip(held, values, terms, strict=True)])


def _snapshot_balances(rows: list[Row]) -> tuple[Balance, ...]:
    return tuple([Balance(key[0], key[1], period_name(key[2]), key[3], allocated, reserved,
                          spent, debt, overdraft_limit, over_limit, status)
                  for key, (allocated, reserved, spent, debt, over_limit), overdraft_limit,
                  status in rows])


def ordered(by_unit: dict[Unit, int]) -> Units:
    """Amounts by unit from a dict built in unit order, as every estimate is (operations
    carry their units in that order) and so every dict made by walking one."""
    return tuple(by_unit.items())


_amount_cache: dict[Units, tuple[Amount, ...]] = {}
shared_amounts = _amount_cache.get
"""`amounts` of values seen recently, or None: the lean paths ask this first, which spares
the call in the usual case (the cache is cleared in place, never replaced)."""


def amounts(units: Units) -> tuple[Amount, ...]:
    """Amounts are immutable, and estimates repeat: share the objects of recent values."""
    made = _amount_cache.get(units)
    if made is None:
        if len(_amount_cache) >= 4096:
            _amount_cache.clear()
        made = _amount_cache[units] = tuple([Amount.trusted(*pair) for pair in units])
    return made


def period_name(period: Period | None) -> str | None:
    """A period as records and balances spell it."""
    return None if period is None else period.value
