"""Keyed reserves and commits on the memory store's lean paths answer, replay, refuse and
record exactly as its general paths do.

Two memory guards run the same calls. In the first the calls take the lean reserve and the
lean commit; in the second a quota (which never binds) sends every reserve down the general
path, and a budget added after the reserve (a new definitions epoch) sends the commit there.
The answers, the kept idempotency records and the reservation's audit records must match,
ids aside; a replay hands back the first answer and a reused key with another payload is
refused, changing nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import allotment as al

from support import LLM
from support.drivers import AsyncDriven
from support.snapshots import differences, snapshot
from support.stores import START_MS

SUBJECT = al.Subject(tenant="acme", workspace="w")
OTHER = "tenant:acme/workspace:other"  # a budget no call here charges
DAY_MS = 86_400_000


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[[], tuple[Any, al.ManualClock]]]:
    """Fresh memory guards on their own manual clocks, called through the sync methods or,
    in a second run, through their async twins."""
    loops: list[asyncio.AbstractEventLoop] = []

    def new() -> tuple[Any, al.ManualClock]:
        clock = al.ManualClock(START_MS)
        guard = al.Guard(al.MemoryStore(clock))
        if request.param == "sync":
            return guard, clock
        loops.append(asyncio.new_event_loop())
        return AsyncDriven(guard, loops[-1]), clock

    yield new
    for loop in loops:
        loop.close()


def _tenant(guard: Any) -> Any:
    """The memory store's state of acme (read only, to tell which path a call took)."""
    return getattr(guard, "driven", guard).store._tenants["acme"]


def _script(guard: Any, clock: al.ManualClock, general: bool) -> list[Any]:
    """Keyed reserve, replay and refused reuse; keyed commit, replay and refused reuse; then
    the reserve's key again once its record has lapsed. `general`: force the general paths."""
    guard.set_budget("tenant:acme", tokens=1_000)
    if general:
        guard.set_quota("tenant:acme", calls=1_000, window="day")
    else:
        guard.set_budget(OTHER, tokens=5)
    warm = guard.reserve(SUBJECT, LLM, al.tokens(1))  # the subject's route, now known
    warm.release()
    clock.advance(1)
    held = guard.reserve(SUBJECT, LLM, al.tokens(40), idempotency_key="r1")
    t = _tenant(guard)
    lean = t.reservations[held.id].on_commit is not None  # only the lean reserve sets it
    assert lean is not general
    again = guard.reserve(SUBJECT, LLM, al.tokens(40), idempotency_key="r1")
    before = snapshot(getattr(guard, "driven", guard).store, "acme")
    with pytest.raises(al.IdempotencyMismatch):
        guard.reserve(SUBJECT, LLM, al.tokens(41), idempotency_key="r1")
    assert snapshot(getattr(guard, "driven", guard).store, "acme") == before
    kept = t.idempotency[("reserve", "r1")]
    answer = kept.answer()  # what a replay answers, however the record keeps it
    clock.advance(1)
    if general:
        guard.set_budget(OTHER, tokens=5)  # a new epoch: the commit takes the general path
    assert (t.reservations[held.id].epoch == t.epoch) is not general
    committed = guard.commit(held.id, al.tokens(30), idempotency_key="c1")
    replayed = guard.commit(held.id, al.tokens(30), idempotency_key="c1")
    before = snapshot(getattr(guard, "driven", guard).store, "acme")
    with pytest.raises(al.IdempotencyMismatch):
        guard.commit(held.id, al.tokens(31), idempotency_key="c1")
    assert snapshot(getattr(guard, "driven", guard).store, "acme") == before
    clock.advance(DAY_MS + 1)  # the reserve's record has lapsed: the key is new again
    second = guard.reserve(SUBJECT, LLM, al.tokens(40), idempotency_key="r1")
    records = [r for r in guard.audit("acme", limit=1_000)
               if r.type.startswith("reservation.")]
    ids = {warm.id: "warm", held.id: "first", second.id: "second"}
    return [
        again.id == held.id, again.info == held.info, again.decision == held.decision,
        [_plain(b) for b in again.balances] == [_plain(b) for b in held.balances],
        _named(held.info, ids), held.decision, [_plain(b) for b in held.balances],
        (kept.fingerprint, kept.expires_at_ms, _named(answer.reservation, ids),
         answer.decision, [_plain(b) for b in answer.balances()]),
        _named(committed, ids), _named(replayed, ids),
        [_plain(b) for b in committed.balances],
        second.id != held.id, _named(second.info, ids),
        [_named(r, ids, drop=("seq",)) for r in records],
    ]


def _plain(balance: Any) -> tuple[Any, ...]:
    return (balance.scope, balance.unit, balance.period, balance.bucket, balance.allocated,
            balance.reserved, balance.spent, balance.debt)


def _named(value: Any, ids: dict[str, str], drop: tuple[str, ...] = ()) -> Any:
    """A model's fields, reservation ids by name (ids are random), without `drop`."""
    fields = {name: getattr(value, name) for name in dir(value)
              if not name.startswith("_") and name not in drop
              and not callable(getattr(value, name)) and name != "balances"}
    return {name: ids.get(v, v) if isinstance(v, str) else v for name, v in fields.items()}


def test_keyed_lean_paths_match_the_general_ones(
        make: Callable[[], tuple[Any, al.ManualClock]]) -> None:
    lean, lean_clock = make()
    general, general_clock = make()
    got = _script(lean, lean_clock, general=False)
    want = _script(general, general_clock, general=True)
    assert got == want
    assert got[:4] == [True, True, True, True]  # a replay is the first answer
    reserved = [r for r in got[-1] if r["type"] == "reservation.reserved"]
    committed = [r for r in got[-1] if r["type"] == "reservation.committed"]
    assert [r["idempotency_key"] for r in reserved] == [None, "r1", "r1"]
    assert [r["idempotency_key"] for r in committed] == ["c1"]


def test_a_kept_key_replays_whatever_path_made_it(
        make: Callable[[], tuple[Any, al.ManualClock]]) -> None:
    """A key the general path kept (a subject's first reserve: its route is not known yet)
    replays once the subject would take the lean path, and the lean path writes nothing for
    it; a new key then takes the lean path."""
    guard, _ = make()
    guard.set_budget("tenant:acme", tokens=1_000)
    held = guard.reserve(SUBJECT, LLM, al.tokens(40), idempotency_key="r1")
    assert _tenant(guard).reservations[held.id].on_commit is None  # the general path
    store = getattr(guard, "driven", guard).store
    before = snapshot(store, "acme")
    again = guard.reserve(SUBJECT, LLM, al.tokens(40), idempotency_key="r1")
    assert again.id == held.id and again.info == held.info
    with pytest.raises(al.IdempotencyMismatch):
        guard.reserve(SUBJECT, LLM, al.tokens(39), idempotency_key="r1")
    after = snapshot(store, "acme")
    assert after == before, differences(before, after)
    fresh = guard.reserve(SUBJECT, LLM, al.tokens(40), idempotency_key="r2")
    t = _tenant(guard)
    assert t.reservations[fresh.id].on_commit is not None  # the lean path
    assert t.idempotency[("reserve", "r2")].answer().reservation == fresh.info
    assert guard.reserve(SUBJECT, LLM, al.tokens(40), idempotency_key="r2").id == fresh.id



def test_a_tenant_whose_last_quota_is_removed_takes_the_lean_reserve_again() -> None:
    """Removing a scope's last quota leaves no quota behind (as the Redis store drops the
    scope's field), so the tenant's reserves take the lean path again."""
    guard = al.Guard(al.MemoryStore())
    guard.set_budget("tenant:acme", usd=100)
    guard.set_quota("tenant:acme", calls=1000, window="minute")
    t = _tenant(guard)  # which path a call took
    first = guard.reserve(SUBJECT, LLM, al.usd("0.01"))
    assert t.reservations[first.id].on_commit is None  # the general path: a quota
    guard.remove_quota("tenant:acme", "calls", window="minute")
    assert t.quotas == {}
    guard.reserve(SUBJECT, LLM, al.usd("0.01"))  # the route is made on a first reserve
    again = guard.reserve(SUBJECT, LLM, al.usd("0.01"))
    assert t.reservations[again.id].on_commit is not None  # the lean path again
