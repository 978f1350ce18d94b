"""A live reservation: settle it with `commit`, `release` or `extend`, or use it as a
context manager that releases when the block raises and charges the estimate when the
block ends without settling (work that ran is never free)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import fields, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import arguments as arg
from .amounts import Amount, AmountsLike, Units, trusted_amounts
from .calls import Flow, Runner, flow_twins
from .errors import AllotmentError
from .ids import id_tenant
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
from .pricing import TokenUsage
from .stores import operations as ops
from .usage import token_counts
from .validation import check_int

if TYPE_CHECKING:
    from .enforcement import EnforcementCalls

R = TypeVar("R")


def in_field_order(op: type[Any], *names: str) -> None:
    """Hot-path operations are built with positional arguments (a keyword call of a
    dataclass costs about twice as much); this checks, once at import, that `names` is
    the operation's field order, so a reordered field fails loudly instead of shifting."""
    found = tuple(f.name for f in fields(op))
    if found != names:
        raise ImportError(f"{op.__name__}: fields are {found}, built here as {names}")


in_field_order(ops.Commit, "idempotency_key", "fingerprint", "tenant", "reservation_id",
               "actual", "usage")


def commit_op(reservation_id: str, actual: AmountsLike, *,
              idempotency_key: str | None = None, usage: TokenUsage | None = None
              ) -> ops.Commit:
    """Charge the actual usage of a reservation (see `Guard.commit`); `usage`, the
    provider's token counts, goes to the usage export."""
    return _commit_of(id_tenant(reservation_id), reservation_id, actual, idempotency_key,
                      usage)


def _commit_of(tenant: str, reservation_id: str, actual: AmountsLike,
               idempotency_key: str | None, usage: TokenUsage | None) -> ops.Commit:
    """`commit_op` of a reservation whose tenant is known (a handle knows its own)."""
    # an Amount (the usual actual) and no usage are read here, without a call each
    units = ((actual.unit, actual.amount),) if type(actual) is Amount else arg.units(
        actual, "actual")
    counts = None if usage is None else token_counts(usage)
    if idempotency_key is None:
        return ops.Commit(None, "", tenant, reservation_id, units, counts)
    keyed = arg.keyed(idempotency_key, "commit",
                      *((units,) if counts is None else (units, counts)))
    return ops.Commit(keyed["idempotency_key"], keyed["fingerprint"], tenant, reservation_id,
                      units, counts)


def release_op(reservation_id: str, reason: str = "released", *,
               idempotency_key: str | None = None) -> ops.Release:
    """Return the whole estimate to the budgets: the call did not happen."""
    reason = arg.reason(reason)
    return ops.Release(tenant=id_tenant(reservation_id), reservation_id=reservation_id,
                       reason=reason, **arg.keyed(idempotency_key, "release", reason))


def extend_op(reservation_id: str, by_ms: int, *,
              idempotency_key: str | None = None) -> ops.Extend:
    """Push the reservation's expiry back by `by_ms` (a long call still running)."""
    by = check_int(by_ms, "by_ms", 1, arg.TTL_RANGE[1])
    return ops.Extend(tenant=id_tenant(reservation_id), reservation_id=reservation_id,
                      by_ms=by, **arg.keyed(idempotency_key, "extend", by))


def get_op(reservation_id: str) -> ops.Get:
    """The reservation as the store holds it now (status, amounts, expiry)."""
    return ops.Get(tenant=id_tenant(reservation_id), reservation_id=reservation_id)


def commit_units_op(tenant: str, reservation_id: str, actual: Units,
                    usage: TokenUsage | None = None) -> ops.Commit:
    """A commit of an adapter's checked integer units (no idempotency key: one try per
    live reservation handle), with the provider's token counts when known."""
    return ops.Commit(None, "", tenant, reservation_id, actual, token_counts(usage))


class Reservation(Runner):
    """One reservation, settled through the guard (or tenant handle) that made it: `guard`
    is that maker, so a reservation from a tenant handle leads back only to the handle."""

    __slots__ = ("_arun", "_balances", "_engine", "_run", "decision", "guard", "info",
                 "result", "unguarded")

    def __init__(self, guard: EnforcementCalls, info: ReservationInfo, decision: Decision,
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
        # Operations run where the maker runs them (its tenant check included), watched by
        # its observers.
        self._engine = guard._engine
        self._run = guard._run  # type: ignore[method-assign]
        self._arun = guard._arun  # type: ignore[method-assign]

    @property
    def id(self) -> str:
        """The reservation id, `<tenant>:<32 hex digits>`."""
        return self.info.id

    @property
    def balances(self) -> tuple[Balance, ...]:
        """The balances of the subject's budgets right after the reservation."""
        if callable(self._balances):
            self._balances = self._balances()
        return self._balances

    @property
    def caps(self) -> Caps | None:
        """What the call must respect to stay within budget (ALLOW_WITH_CAPS), or None."""
        return self.decision.caps

    @property
    def estimate(self) -> tuple[Amount, ...]:
        """What is held (after any shrink to fit)."""
        return self.info.estimate

    @property
    def expires_at_ms(self) -> int:
        """When the hold lapses unless committed, released or extended (epoch ms)."""
        return self.info.expires_at_ms

    @property
    def settled(self) -> bool:
        """Committed or released through this handle."""
        return self.result is not None

    @property
    def status(self) -> ReservationStatus:
        """The status as last seen by this handle (use `guard.get(id)` for the store's)."""
        return self.result.status if self.result is not None else self.info.status

    def __repr__(self) -> str:
        return f"<Reservation {self.id} {self.decision.outcome.value} {list(self.estimate)}>"

    def _commit(self, actual: AmountsLike, *, idempotency_key: str | None = None,
                usage: TokenUsage | None = None) -> Flow[CommitResult]:
        """Charge the actual usage and return the rest of the estimate (see
        `Guard.commit`); `usage` (an `al.TokenUsage`) goes to the usage export."""
        info = self.info
        rid = info.id
        if self.unguarded:  # let through while the store was down: record what was spent
            record = self.guard._record_op(info.subject, info.action, actual,
                                           idempotency_key=rid, usage=usage)
            return self.guard._spending(record, rid, self._recorded)
        op = _commit_of(info.tenant, rid, actual, idempotency_key, usage)
        return self.guard._spending(op, rid, self._settled)

    commit, acommit = flow_twins(_commit)

    def _committing_units(self, actual: Units,
                          usage: TokenUsage | None = None) -> Flow[CommitResult]:
        """`commit` for an adapter's checked integer units, in unit order."""
        if self.unguarded:
            return self._commit(trusted_amounts(actual), usage=usage)
        op = commit_units_op(self.info.tenant, self.info.id, actual, usage)
        return self.guard._spending(op, self.info.id, self._settled)

    _commit_units, _acommit_units = flow_twins(_committing_units, name="_commit_units")

    def _release(self, reason: str = "released", *,
                 idempotency_key: str | None = None) -> Flow[ReleaseResult]:
        """Return the whole estimate: the call did not happen."""
        if self.unguarded:
            result = ReleaseResult(self.id, ReservationStatus.RELEASED, (), ())
        else:
            result = yield release_op(self.id, reason, idempotency_key=idempotency_key)
        self.result = result
        return result

    release, arelease = flow_twins(_release)

    def _extend(self, by_ms: int, *, idempotency_key: str | None = None) -> Flow[ExtendResult]:
        """Keep the hold for `by_ms` more (a long call still running)."""
        if self.unguarded:
            return ExtendResult(self.id, self.info.expires_at_ms, self.info.extensions)
        result: ExtendResult = yield extend_op(self.id, by_ms, idempotency_key=idempotency_key)
        self.info = replace(self.info, expires_at_ms=result.expires_at_ms,
                            extensions=result.extensions)
        return result

    extend, aextend = flow_twins(_extend)

    def _settled(self, result: CommitResult | ReleaseResult) -> Any:
        self.result = result
        return result

    def _recorded(self, record: RecordResult) -> CommitResult:
        """A commit's answer from the record that stood in for it."""
        result = CommitResult(self.id, ReservationStatus.COMMITTED, record.charged, (),
                              record.balances)
        self.result = result
        return result

    def _exit(self, kind: type[BaseException] | None,
              error: BaseException | None) -> Flow[None]:
        """Leaving the block: the estimate is charged if it ended without settling, the
        hold released if it raised (the original exception matters more; an expired hold
        went back on its own)."""
        if self.settled:
            return
        if error is None:
            yield from self._commit(self.estimate)
            return
        with contextlib.suppress(AllotmentError):
            yield from self._release(f"error: {kind.__name__ if kind else 'unknown'}")

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._drive(self._exit(kind, error))

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self._adrive(self._exit(kind, error))
