"""What the embedded store keeps after an answer, and for how long: finished reservations and
keyed answers leave in the order they lapse, and what stays is small and mostly invisible to
the cyclic collector (a server on this store keeps a day of both)."""

from __future__ import annotations

import gc

import pytest

import allotment as al
from allotment.stores.memory import read as memory_read
from allotment.stores.memory import sweep as memory_sweep
from allotment.stores.memory.state import Tenant

from support import LLM

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SUBJECT = al.Subject(tenant="acme", workspace="w", app="a")


def _guard(clock: al.ManualClock, **settings: int) -> al.Guard:
    guard = al.Guard(al.MemoryStore(clock, **settings))
    for scope in SUBJECT.scopes():
        guard.set_budget(scope, usd=1_000_000)
    return guard


def _tenant(guard: al.Guard) -> Tenant:
    store = guard.store
    assert isinstance(store, al.MemoryStore)
    return store._tenants["acme"]


def test_finished_reservations_leave_in_the_order_they_finished(
        clock: al.ManualClock) -> None:
    guard = _guard(clock)
    long_running = guard.reserve(SUBJECT, LLM, al.usd(1), ttl_ms=DAY_MS)
    short = guard.reserve(SUBJECT, LLM, al.usd(1))
    short.commit(al.usd(1))
    clock.advance(2 * HOUR_MS)
    long_running.release()
    clock.advance(DAY_MS - HOUR_MS)  # the short one's retention is over, not the other's
    guard.sweep()
    with pytest.raises(al.NotFound):
        guard.get(short.id)
    assert guard.get(long_running.id).status is al.ReservationStatus.RELEASED
    clock.advance(2 * HOUR_MS)
    guard.sweep()
    with pytest.raises(al.NotFound):
        guard.get(long_running.id)
    assert not _tenant(guard).reservations and not _tenant(guard).finished


def test_a_key_used_again_after_it_lapsed_does_not_hold_back_later_ones(
        clock: al.ManualClock) -> None:
    guard = _guard(clock)
    guard.reserve(SUBJECT, LLM, al.usd(1), idempotency_key="k1").release()
    clock.advance(HOUR_MS)
    guard.reserve(SUBJECT, LLM, al.usd(1), idempotency_key="k2").release()
    clock.advance(DAY_MS)  # k1 has lapsed (not yet swept), k2 has not
    again = guard.reserve(SUBJECT, LLM, al.usd(2), idempotency_key="k1")  # a new call
    assert again.info.estimate == (al.usd(2),)
    clock.advance(HOUR_MS)  # now k2 has lapsed too
    guard.sweep()
    assert list(_tenant(guard).idempotency) == [("reserve", "k1")]
    assert guard.reserve(SUBJECT, LLM, al.usd(2), idempotency_key="k1").id == again.id


def test_replays_answer_as_the_first_call_did_after_the_reservation_moved_on(
        clock: al.ManualClock) -> None:
    """The lean paths keep their answers as the values they were built from: a replay of the
    reserve still shows the reservation as it was then, and the commit's its balances."""
    guard = _guard(clock)
    guard.reserve(SUBJECT, LLM, al.usd(1)).release()  # the subject's route, now known
    held = guard.reserve(SUBJECT, LLM, al.usd(3), idempotency_key="r")
    first, shown = held.info, held.balances
    held.extend(60_000)
    committed = held.commit(al.usd(2), idempotency_key="c")
    clock.advance(HOUR_MS)
    again = guard.reserve(SUBJECT, LLM, al.usd(3), idempotency_key="r")
    assert again.info == first and again.info.status is al.ReservationStatus.ACTIVE
    assert again.balances == shown
    replayed = guard.commit(held.id, al.usd(2), idempotency_key="c")
    assert replayed == committed and replayed.balances == committed.balances


def test_a_keyed_pair_leaves_three_objects_the_collector_tracks(
        clock: al.ManualClock) -> None:
    """The reservation, and the two keyed answers, each one object; the audit log (off
    here) is bounded by its own retention."""
    guard = _guard(clock, audit_retention=0)
    handle = guard.tenant("acme")
    for i in range(50):
        handle.reserve(SUBJECT, LLM, al.usd(1), idempotency_key=f"w{i}").commit(al.usd(1))
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2_000):
        held = handle.reserve(SUBJECT, LLM, al.usd(1), idempotency_key=f"r{i}")
        held.commit(al.usd(1), idempotency_key=f"c{i}")
    del held
    gc.collect()
    assert (len(gc.get_objects()) - before) / 2_000 <= 3.05  # (a few made once, too)


def _listed(guard: al.Guard, **options: object) -> tuple[list[str], int]:
    """Every id over all pages, and how many pages that took."""
    ids, cursor, pages = [], None, 0
    while True:
        page, cursor = guard.list_reservations("acme", cursor=cursor, **options)
        ids += [r.id for r in page]
        pages += 1
        if cursor is None:
            return ids, pages


def test_a_page_looks_at_a_bounded_number_of_reservations(
        clock: al.ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page never walks the whole day: past its share it answers short, with a cursor."""
    monkeypatch.setattr(memory_read, "_LOOKED_AT", 4)
    guard = _guard(clock)
    made = [guard.reserve(SUBJECT, LLM, al.usd(1)) for _ in range(10)]
    for held in made[:7]:
        held.commit(al.usd(1))
    active, pages = _listed(guard, status="ACTIVE", limit=50)
    assert active == [r.id for r in made[7:]] and pages == 3  # 4 + 4 + 2 looked at
    every, _ = _listed(guard, limit=3)
    assert every == [r.id for r in made]


def test_the_list_stays_whole_when_the_sweep_clears_out_dropped_ones(
        clock: al.ManualClock) -> None:
    guard = _guard(clock)
    made = [guard.reserve(SUBJECT, LLM, al.usd(1), ttl_ms=DAY_MS) for _ in range(1_200)]
    kept = made[::100]
    for held in made:
        if held not in kept:
            held.release()
    first, cursor = guard.list_reservations("acme", status="ACTIVE", limit=5)
    clock.advance(DAY_MS + 1)  # the released ones are past their retention, the rest live
    assert guard.sweep() == 0
    assert len(_tenant(guard).listing) == len(kept)  # cleared out: most were dropped
    later, last = guard.list_reservations("acme", status="ACTIVE", limit=50, cursor=cursor)
    assert [r.id for r in first + later] == [r.id for r in kept] and last is None


def test_idle_run_ledgers_are_looked_for_at_most_every_720th_of_their_ttl(
        clock: al.ManualClock) -> None:
    """A month of runs' ledgers is not walked every second: the sweep looks for idle ones
    once every ttl / 720 (an hour at the default 30 days), so one may stay that much longer."""
    guard = al.Guard(al.MemoryStore(clock, dimension_idle_ttl_ms=720_000))  # looked: each 1 s
    guard.set_budget("tenant:acme", usd=100)
    guard.set_budget("tenant:acme", usd=1, per="run")
    run = al.Subject(tenant="acme", dimensions={"run": "r1"})
    guard.reserve(run, LLM, al.usd("0.5")).commit(al.usd("0.5"))
    clock.advance(720_000)
    guard.sweep()  # looked: r1 is not idle yet (idle past the ttl, not at it)
    assert [b.scope for b in guard.balances("tenant:acme")][-1] == "tenant:acme/run:r1"
    clock.advance(500)
    guard.sweep()  # r1 is idle now, but the next look is due 1 s after the last
    assert [b.scope for b in guard.balances("tenant:acme")][-1] == "tenant:acme/run:r1"
    clock.advance(500)
    guard.sweep()
    assert [b.scope for b in guard.balances("tenant:acme")] == ["tenant:acme"]


def test_a_sweep_takes_a_few_hundred_tenants_per_step(clock: al.ManualClock) -> None:
    """The lock is never held across every tenant: each step sweeps `TENANTS_PER_STEP` of
    them (its notifications go out after it), and the limit counts across the steps."""
    store = al.MemoryStore(clock)
    guard = al.Guard(store)
    steps: list[int] = []
    store.subscribe(lambda notes: steps.append(len(notes)))
    count = 2 * memory_sweep.TENANTS_PER_STEP + 10
    for i in range(count):
        subject = al.Subject(tenant=f"t{i}")
        guard.set_budget(f"tenant:t{i}", usd=10)
        guard.reserve(subject, LLM, al.usd(1), ttl_ms=1_000)
    clock.advance(60_000)  # every reservation is past its ttl and grace
    steps.clear()
    assert guard.sweep(limit=count - 5) == count - 5
    assert steps == [memory_sweep.TENANTS_PER_STEP] * 2 + [5]
    assert guard.sweep(limit=10) == 5



def test_a_sweep_finds_work_on_tenants_nothing_touched_and_skips_idle_ones(
        clock: al.ManualClock) -> None:
    """The sweep looks at the tenants an operation touched since the last sweep began and at
    those whose next work is due (`next_due`). Each kind of deferred work, on a tenant of its
    own that nothing touches in between, is still done on time: an overdue reservation, a
    finished one past its retention, a lapsed keyed answer, an idle run ledger, a closed
    quota window. A tenant with nothing due is not on the schedule at all."""
    store = al.MemoryStore(clock, dimension_idle_ttl_ms=2 * HOUR_MS,  # looked: each 10 s
                           idempotency_ttl_ms=2 * HOUR_MS)  # before the finished ones leave
    guard = al.Guard(store)
    for name in ("late", "done", "keyed", "runs", "windows"):
        guard.set_budget(f"tenant:{name}", usd=100)
    late = guard.reserve(al.Subject(tenant="late"), LLM, al.usd(1), ttl_ms=60_000, grace_ms=0)
    done = guard.reserve(al.Subject(tenant="done"), LLM, al.usd(1))
    done.commit(al.usd(1))
    guard.record(al.Subject(tenant="keyed"), LLM, al.usd(1), idempotency_key="k1")
    guard.set_budget("tenant:runs", usd=1, per="run")
    guard.record(al.Subject(tenant="runs", dimensions={"run": "r1"}), LLM, al.usd(1))
    guard.set_quota("tenant:windows", calls=1_000, window="minute")
    guard.decide(al.Subject(tenant="windows"), LLM, al.usd(1))
    guard.reserve(al.Subject(tenant="windows"), LLM, al.usd(1), ttl_ms=DAY_MS)
    guard.register_tenant("idle", "Idle Corp")  # nothing held: never due
    tenants = store._tenants
    assert guard.sweep() == 0  # looks at every one (touched), then schedules what is due
    assert store._schedule.names() == {"late", "done", "keyed", "runs", "windows"}
    assert tenants["idle"].sweep_at is None and tenants["windows"].calls

    clock.advance(60_001)  # nothing touches a tenant from here on
    assert guard.sweep() == 1  # late's reservation, found by the schedule
    assert not tenants["windows"].calls  # the minute's window closed
    assert tenants["keyed"].idempotency and tenants["done"].finished
    clock.advance(2 * HOUR_MS)
    guard.sweep()
    assert not tenants["keyed"].idempotency  # lapsed after two hours
    assert tenants["done"].finished  # kept a day
    clock.advance(DAY_MS)
    guard.sweep()
    assert not tenants["done"].finished and not tenants["done"].reservations
    assert [b.scope for b in guard.balances("tenant:runs")] == ["tenant:runs"]  # r1 idle
    for gone in (done, late):
        with pytest.raises(al.NotFound):
            guard.get(gone.id)  # past its retention


def test_a_sweep_cut_short_leaves_what_it_did_not_reach_to_the_next(
        clock: al.ManualClock) -> None:
    """A listener that raises after a sweep's first step cuts the sweep short; the tenants it
    took and did not get to are looked at by the next sweep, not lost until something
    touches them."""
    store = al.MemoryStore(clock)
    guard = al.Guard(store)
    count = memory_sweep.TENANTS_PER_STEP + 44
    for i in range(count):
        guard.set_budget(f"tenant:t{i}", usd=10)
        guard.reserve(al.Subject(tenant=f"t{i}"), LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
    failing = [True]

    def listener(notes: list[al.Notification]) -> None:
        if failing and notes:
            failing.clear()
            raise RuntimeError("listener failed")

    store.subscribe(listener)
    clock.advance(5_000)
    with pytest.raises(RuntimeError, match="listener failed"):
        guard.sweep()  # the first step's expiries, then the listener raises
    clock.advance(60_000)
    assert guard.sweep() == 44  # the second step's, by the next sweep
    assert sum(b.reserved for i in range(count)
               for b in guard.balances(f"tenant:t{i}")) == 0


def test_the_schedule_stays_small_while_tenants_come_and_go(clock: al.ManualClock) -> None:
    """A tenant whose reservation is due soon and whose finished ones are due a day later is
    pushed again each time it is busy; the entries that go stale are dropped as they pile
    up, so the schedule stays within twice its tenants (and a little)."""
    store = al.MemoryStore(clock)
    guard = al.Guard(store)
    tenants = [f"t{i}" for i in range(10)]
    for name in tenants:
        guard.set_budget(f"tenant:{name}", usd=10**6)
    for _ in range(300):  # ten hours: a call per tenant every two minutes
        held = [guard.reserve(al.Subject(tenant=name), LLM, al.usd(1), ttl_ms=60_000)
                for name in tenants]
        guard.sweep()
        for r in held:
            r.commit(al.usd(1))
        for _ in range(4):
            clock.advance(30_000)
            guard.sweep()
        assert len(store._schedule) <= 2 * len(tenants) + 1_024
    assert store._schedule.names() == set(tenants)
