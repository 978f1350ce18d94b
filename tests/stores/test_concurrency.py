"""Threads and tasks racing one budget (DESIGN §8, the check-then-increment race).

Each run ends with the books balanced on every ledger: nothing is oversubscribed, `spent` is
exactly the sum charged to the reservations under it, nothing stays reserved, and
allocated = remaining + reserved + spent + debt. Only the public API is used, so the same
tests hold any store kind in STORE_KINDS.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

import allotment as al

from support import LLM
from support.layouts import Layout

T = TypeVar("T")
USD = al.Unit.USD_MICROCENTS
CENT = 1_000_000  # USD_MICROCENTS in one cent
SWITCH = 1e-5  # seconds between forced thread switches (Python's default is 5e-3)
THREADS = 12
ROUNDS = 200  # reservations per thread in the nested race


def cents(n: int) -> al.Amount:
    return al.Amount(USD, n * CENT)


@pytest.fixture(autouse=True)
def eager_switching() -> Iterator[None]:
    """Switch threads every few microseconds, so that one thread's check and its write are
    as likely as possible to be split by another thread's."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH)
    yield
    sys.setswitchinterval(before)


def race(workers: int, work: Callable[[int, threading.Barrier], T]) -> list[T]:
    """Run `work(index, barrier)` on `workers` threads; each waits on the barrier before
    racing. Re-raises the first failure of any thread."""
    barrier = threading.Barrier(workers, timeout=20)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, i, barrier) for i in range(workers)]
        return [f.result(timeout=60) for f in futures]


# -- a tenant's budget tree and what it should add up to -------------------------------


def nested(tenant: str, divisor: int = 1) -> Layout:
    """tenant > workspace > agent budgets plus a per-run template, each level tighter for some
    subjects than the level above it, so denials come from every level (limits in cents,
    divided by `divisor`; sized for about 2,400 reservations)."""
    t = f"tenant:{tenant}"
    w0, w1 = f"{t}/workspace:w0", f"{t}/workspace:w1"
    limits = {t: 24_000, w0: 15_000, w1: 9_000, f"{w0}/agent:a0": 7_200,
              f"{w0}/agent:a1": 6_000, f"{w1}/agent:a0": 5_400}
    subjects: list[al.Subject] = [al.Subject(tenant=tenant, workspace="w0", agent="a0",
                                             dimensions={"run": f"r{i}"}) for i in range(10)]
    subjects += [al.Subject(tenant=tenant, workspace="w0", agent="a0"),
                 al.Subject(tenant=tenant, workspace="w0", agent="a1"),
                 al.Subject(tenant=tenant, workspace="w1", agent="a0"),
                 al.Subject(tenant=tenant, workspace="w1"),
                 al.Subject(tenant=tenant, workspace="w2"),
                 al.Subject(tenant=tenant)]
    return Layout({s: n * CENT // divisor for s, n in limits.items()},
                  {f"{w0}/agent:a0": ("run", 480 * CENT // divisor)}, tuple(subjects))


@dataclass
class Tally:
    """What workers saw: each settled reservation's ledgers and charge, and the denials."""

    settled: list[tuple[str, tuple[str, ...], int]] = field(default_factory=list)
    denied: int = 0
    overage_refused: int = 0
    overage_charged: int = 0
    overage_capped: int = 0  # overage commits charged less than their actual

    def add(self, other: Tally) -> Tally:
        self.settled += other.settled
        self.denied += other.denied
        self.overage_refused += other.overage_refused
        self.overage_charged += other.overage_charged
        self.overage_capped += other.overage_capped
        return self

    def spent_by_ledger(self, layout: Layout) -> Counter[str]:
        spent: Counter[str] = Counter(dict.fromkeys(layout.limits, 0))
        for _, ledgers, charged in self.settled:
            for scope in ledgers:
                spent[scope] += charged
        return spent


def check_denial(decision: al.Decision, ledgers: tuple[str, ...]) -> None:
    """A denial names one of the subject's own budgets and was true when it was made."""
    assert decision.reason in al.Reason.BUDGET, decision
    assert decision.scope in ledgers, (decision.scope, ledgers)
    if decision.reason == al.Reason.BUDGET_EXCEEDED:
        assert decision.remaining is not None and decision.requested is not None
        assert decision.remaining < decision.requested, decision


@dataclass
class Step:
    """One reservation's plan, drawn before the race so sync and async runs share it."""

    subject: al.Subject
    estimate: int
    action: str  # "release", "over" (actual > estimate) or "under" (actual <= estimate)
    actual: int


def plan_steps(layout: Layout, seed: int, rounds: int) -> list[Step]:
    rng = random.Random(seed)
    steps = []
    for _ in range(rounds):
        estimate = rng.randint(1, 40)
        roll = rng.random()
        if roll < 0.2:
            steps.append(Step(rng.choice(layout.subjects), estimate, "release", 0))
        elif roll < 0.5:
            steps.append(Step(rng.choice(layout.subjects), estimate, "over",
                              estimate + rng.randint(1, 2 * estimate)))
        else:
            steps.append(Step(rng.choice(layout.subjects), estimate, "under",
                              rng.randint(0, estimate)))
    return steps


def check_charge(step: Step, charged: int, policy: str) -> None:
    """REJECT charges the actual or refuses; ALLOW_IF_AVAILABLE charges at least the held
    estimate and never more than the actual."""
    if step.action == "under" or policy == "REJECT":
        assert charged == step.actual * CENT, (step, charged)
    else:
        assert step.estimate * CENT <= charged <= step.actual * CENT, (step, charged)


def settle(reservation: al.Reservation, step: Step, policy: str, tally: Tally,
           ledgers: tuple[str, ...]) -> None:
    if step.action == "release":
        reservation.release("race")
        tally.settled.append((reservation.id, ledgers, 0))
        return
    try:
        result = reservation.commit(cents(step.actual))
    except al.BudgetExceeded as refused:
        assert policy == "REJECT" and step.action == "over", refused
        check_denial(refused.decision, ledgers)
        tally.overage_refused += 1
        result = reservation.commit(cents(step.estimate))  # the held estimate always fits
        assert result.charged == (cents(step.estimate),)
        tally.settled.append((reservation.id, ledgers, step.estimate * CENT))
        return
    (charged,) = result.charged
    check_charge(step, charged.amount, policy)
    tally.overage_charged += step.action == "over"
    tally.overage_capped += charged.amount < step.actual * CENT
    tally.settled.append((reservation.id, ledgers, charged.amount))


def spend(guard: al.Guard, layout: Layout, steps: list[Step], policy: str,
          barrier: threading.Barrier) -> Tally:
    tally = Tally()
    barrier.wait()
    for step in steps:
        ledgers = layout.ledgers(step.subject)
        try:
            reservation = guard.reserve(step.subject, LLM, cents(step.estimate))
        except al.BudgetExceeded as denied:
            check_denial(denied.decision, ledgers)
            tally.denied += 1
            continue
        assert set(reservation.info.scopes) == set(ledgers)
        settle(reservation, step, policy, tally, ledgers)
    return tally


def assert_books(guard: al.Guard, layout: Layout, tally: Tally) -> None:
    """Every ledger balances and holds exactly what its reservations were charged."""
    expected = tally.spent_by_ledger(layout)
    seen: dict[str, al.Balance] = {}
    for b in (b for tenant in layout.tenants for b in guard.balances(f"tenant:{tenant}")):
        assert b.scope not in seen, f"two ledgers for {b.scope}"
        seen[b.scope] = b
        assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b
        assert b.allocated == layout.limit_of(b.scope), b
        assert (b.reserved, b.debt) == (0, 0), b
        assert 0 <= b.spent <= b.allocated, b  # Σ charged ≤ allocated: no oversubscription
        if b.scope not in expected:
            assert b.spent == 0, b  # a ledger only a denial touched
    assert expected.keys() <= seen.keys()
    assert {scope: seen[scope].spent for scope in expected} == dict(expected)


def assert_settled(guard: al.Guard, tally: Tally) -> None:
    """The store's record of each reservation agrees with what its caller was told."""
    for rid, _, charged in tally.settled:
        info = guard.get(rid)
        assert info.status in (al.ReservationStatus.COMMITTED, al.ReservationStatus.RELEASED)
        assert sum(a.amount for a in info.charged) == charged, info


# -- threads ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["REJECT", "ALLOW_IF_AVAILABLE"])
def test_threads_racing_nested_budgets_never_oversubscribe(
        guard: al.Guard, policy: str) -> None:
    """12 threads × 200 reservations on tenant > workspace > agent > run budgets, with
    overage commits, releases and denials: the books balance exactly afterwards."""
    layout = nested("acme")
    layout.install(guard, USD, policy)
    plans = [plan_steps(layout, seed, ROUNDS) for seed in range(THREADS)]

    tallies = race(THREADS, lambda i, barrier: spend(guard, layout, plans[i], policy, barrier))
    tally = Tally()
    for part in tallies:
        tally.add(part)

    assert len(tally.settled) + tally.denied == THREADS * ROUNDS
    assert tally.denied > 0 and len(tally.settled) > 600  # both paths were raced
    if policy == "REJECT":
        assert tally.overage_refused > 0 and tally.overage_charged > 0
    else:
        assert tally.overage_refused == 0 and tally.overage_charged > 0
    assert_books(guard, layout, tally)
    assert_settled(guard, tally)


def test_allow_if_available_overage_race_takes_no_debt(guard: al.Guard) -> None:
    """Overage-only commits racing on small budgets: whatever is charged comes out of what
    remains, so no ledger ever goes into debt or below zero remaining."""
    layout = nested("beta")
    layout.install(guard, USD, "ALLOW_IF_AVAILABLE")

    def work(index: int, barrier: threading.Barrier) -> Tally:
        steps = [Step(s.subject, s.estimate, "over", s.estimate * 3)
                 for s in plan_steps(layout, 100 + index, 150)]
        return spend(guard, layout, steps, "ALLOW_IF_AVAILABLE", barrier)

    tally = Tally()
    for part in race(THREADS, work):
        tally.add(part)
    assert tally.overage_charged > 0 and tally.denied > 0
    assert tally.overage_capped > 0  # some overages met a ledger that could not cover them
    assert_books(guard, layout, tally)
    capped = [b for b in guard.balances("tenant:beta") if b.is_over_limit]
    assert capped, "overages beyond what remained must flag their scope"
    assert all(b.remaining >= 0 and b.debt == 0 for b in guard.balances("tenant:beta"))


def test_successful_reservations_never_exceed_what_the_budget_holds(guard: al.Guard) -> None:
    """16 threads only hold (never settle) 10-token reservations: exactly as many succeed as
    the tightest budgets allow, then commits racing releases of the same ids settle each one
    exactly once."""
    t = "tenant:acme"
    guard.set_budget(t, tokens=800, overage_policy="REJECT")  # 80 holds
    guard.set_budget(f"{t}/workspace:w0", tokens=600, overage_policy="REJECT")  # 60
    guard.set_budget(f"{t}/workspace:w1", tokens=600, overage_policy="REJECT")  # 60
    guard.set_budget(f"{t}/workspace:w0", tokens=30, per="run", overage_policy="REJECT")
    runs = [al.Subject(tenant="acme", workspace="w0", dimensions={"run": f"r{i}"})
            for i in range(12)]
    plain = [al.Subject(tenant="acme", workspace="w0"), al.Subject(tenant="acme",
                                                                   workspace="w1")]

    def hold(index: int, barrier: threading.Barrier) -> list[al.Reservation]:
        rng = random.Random(index)
        held = []
        barrier.wait()
        for _ in range(40):
            subject = rng.choice(runs) if rng.random() < 0.4 else rng.choice(plain)
            try:
                held.append(guard.reserve(subject, LLM, al.tokens(10)))
            except al.BudgetExceeded as denied:
                assert denied.decision.reason == al.Reason.BUDGET_EXCEEDED
        return held

    held = [r for part in race(16, hold) for r in part]
    assert len(held) == 80  # not one more than the tenant holds, and none lost
    by_scope = {b.scope: b for b in guard.balances(t)}
    assert by_scope[t].reserved == 800 and by_scope[t].remaining == 0
    in_w0 = [r for r in held if r.info.subject.workspace == "w0"]
    assert by_scope[f"{t}/workspace:w0"].reserved == 10 * len(in_w0) <= 600
    assert by_scope[f"{t}/workspace:w1"].reserved == 10 * (80 - len(in_w0)) <= 600
    per_run = Counter(r.info.subject.dimensions.get("run") for r in in_w0)
    for run, count in per_run.items():
        if run is not None:
            assert count <= 3
            assert by_scope[f"{t}/workspace:w0/run:{run}"].reserved == 10 * count

    # each id is committed by one thread and released by another, at the same time
    chunks = [held[i::4] for i in range(4)]

    def settle_once(index: int, barrier: threading.Barrier) -> list[tuple[str, int | None]]:
        mine = chunks[index % 4] if index < 4 else list(reversed(chunks[index % 4]))
        outcomes: list[tuple[str, int | None]] = []
        barrier.wait()
        for r in mine:
            try:
                if index < 4:
                    outcomes.append((r.id, guard.commit(r.id, al.tokens(7)).charged[0].amount))
                else:
                    guard.release(r.id, "race")
                    outcomes.append((r.id, None))
            except al.ReservationFinalized:
                pass
        return outcomes

    outcomes = [o for part in race(8, settle_once) for o in part]
    assert sorted(rid for rid, _ in outcomes) == sorted(r.id for r in held)  # one winner each
    committed = {rid for rid, charged in outcomes if charged is not None}
    assert all(charged in (None, 7) for _, charged in outcomes)
    expected: Counter[str] = Counter()
    for r in held:
        for scope in r.info.scopes:
            expected[scope] += 7 * (r.id in committed)
    for b in guard.balances(t):
        assert b.reserved == 0 and b.debt == 0, b
        assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b
        assert b.spent == expected[b.scope], b
    for rid, charged in outcomes:
        status = guard.get(rid).status
        assert status is (al.ReservationStatus.RELEASED if charged is None
                          else al.ReservationStatus.COMMITTED)


def test_commits_racing_expiry_settle_each_reservation_once(guard: al.Guard,
                                                            clock: al.ManualClock) -> None:
    """While one thread moves the clock through 400 staggered deadlines and sweeps, seven
    threads commit: each reservation ends either committed (charged) or expired (its
    estimate returned), never both, and the caller was told which."""
    guard.set_budget("tenant:acme", tokens=100_000, overage_policy="REJECT")
    guard.set_budget("tenant:acme/workspace:w", tokens=50_000, overage_policy="REJECT")
    subject = al.Subject(tenant="acme", workspace="w")
    held = [guard.reserve(subject, LLM, al.tokens(10), ttl_ms=1_000 + 10 * i, grace_ms=0)
            for i in range(400)]
    start = clock()

    def work(index: int, barrier: threading.Barrier) -> list[tuple[str, bool]]:
        barrier.wait()
        if index == 0:  # the clock: 1 ms at a time past every deadline, sweeping as it goes
            for step in range(5_200):
                clock.advance(1)
                if step % 50 == 0:
                    guard.sweep(limit=25)
            return []
        outcomes = []
        for r in held[index - 1::7]:
            if int(r.id[-1], 16) % 8 == 0:
                continue  # left for expiry
            try:
                assert guard.commit(r.id, al.tokens(6)).charged == (al.tokens(6),)
                outcomes.append((r.id, True))
            except al.ReservationExpired:
                outcomes.append((r.id, False))
        return outcomes

    outcomes = dict(o for part in race(8, work) for o in part)
    assert clock() == start + 5_200
    guard.sweep()  # whatever nobody committed has expired by now
    committed = 0
    for r in held:
        info = guard.get(r.id)
        if outcomes.get(r.id):
            assert (info.status, info.charged) == (al.ReservationStatus.COMMITTED,
                                                   (al.tokens(6),)), info
            committed += 1
        else:
            assert (info.status, info.charged) == (al.ReservationStatus.EXPIRED, ()), info
    assert 0 < committed < len(held)
    for b in guard.balances("tenant:acme"):
        assert (b.reserved, b.debt, b.spent) == (0, 0, 6 * committed), b
        assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b


def test_retried_commits_racing_with_one_key_charge_once(guard: al.Guard) -> None:
    """A commit retried from several threads with the same idempotency key charges once and
    every caller gets the same answer."""
    guard.set_budget("tenant:acme", usd=10, overage_policy="REJECT")
    reservations = [guard.reserve(al.Subject(tenant="acme"), LLM, cents(10))
                    for _ in range(20)]

    def retry(index: int, barrier: threading.Barrier) -> list[tuple[al.Amount, ...]]:
        barrier.wait()
        return [guard.commit(r.id, cents(7), idempotency_key=f"c-{r.id.split(':')[1]}").charged
                for r in reservations]

    answers = race(8, retry)
    assert all(answer == [(cents(7),)] * 20 for answer in answers)
    (b,) = guard.balances("tenant:acme")
    assert (b.spent, b.reserved) == (20 * 7 * CENT, 0)
    assert b.allocated == b.remaining + b.reserved + b.spent + b.debt


def test_many_tenants_racing_stay_isolated(guard: al.Guard) -> None:
    """20 tenants with budgets of different sizes, spent by 10 threads through tenant
    handles: each tenant's ledgers hold exactly its own charges, however the others fare."""
    names = [f"t{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        guard.set_budget(f"tenant:{name}", amount=(5 + 10 * i) * 100 * CENT // 10, unit=USD,
                         overage_policy="REJECT")
        guard.set_budget(f"tenant:{name}/workspace:w", amount=(3 + 6 * i) * 100 * CENT // 10,
                         unit=USD, overage_policy="REJECT")
    handles = {name: guard.tenant(name) for name in names}

    def work(index: int, barrier: threading.Barrier) -> dict[str, Tally]:
        rng = random.Random(1_000 + index)
        tallies = {name: Tally() for name in names}
        barrier.wait()
        for _ in range(150):
            name = rng.choice(names)
            handle, tally = handles[name], tallies[name]
            subject = handle.subject(workspace="w") if rng.random() < 0.5 else handle.subject()
            estimate = rng.randint(1, 30)
            try:
                r = handle.reserve(subject, LLM, cents(estimate))
            except al.BudgetExceeded as denied:
                assert denied.decision.scope is not None
                assert denied.decision.scope.startswith(f"tenant:{name}")
                tally.denied += 1
                continue
            assert r.id.startswith(f"{name}:") and r.info.tenant == name
            assert r.info.scopes == subject.scopes()  # both levels are budgeted
            if rng.random() < 0.25:
                handle.release(r.id)
                tally.settled.append((r.id, subject.scopes(), 0))
            else:
                actual = rng.randint(0, estimate)
                (charged,) = handle.commit(r.id, cents(actual)).charged
                assert charged == cents(actual)
                tally.settled.append((r.id, subject.scopes(), charged.amount))
        return tallies

    parts = race(10, work)
    exhausted = 0
    for name in names:
        tally = Tally()
        for part in parts:
            tally.add(part[name])
        spent: Counter[str] = Counter()
        for _, scopes, charged in tally.settled:
            for scope in scopes:
                spent[scope] += charged
        balances = guard.balances(f"tenant:{name}")
        assert {b.scope for b in balances} == {f"tenant:{name}", f"tenant:{name}/workspace:w"}
        for b in balances:
            assert b.spent == spent[b.scope], (name, b)
            assert b.reserved == 0 and b.debt == 0 and b.spent <= b.allocated, b
            assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b
        exhausted += tally.denied > 0
    assert 0 < exhausted < len(names)  # some tenants ran dry while others did not


# -- asyncio ---------------------------------------------------------------------------


async def aspend(guard: al.Guard, layout: Layout, steps: list[Step], policy: str,
                 start: asyncio.Event) -> Tally:
    """The async twin of `spend`: yields to the loop between every call."""
    tally = Tally()
    await start.wait()
    for step in steps:
        ledgers = layout.ledgers(step.subject)
        try:
            reservation = await guard.areserve(step.subject, LLM, cents(step.estimate))
        except al.BudgetExceeded as denied:
            check_denial(denied.decision, ledgers)
            tally.denied += 1
            continue
        await asyncio.sleep(0)
        if step.action == "release":
            await reservation.arelease("race")
            tally.settled.append((reservation.id, ledgers, 0))
            continue
        try:
            result = await guard.acommit(reservation.id, cents(step.actual))
        except al.BudgetExceeded:
            assert policy == "REJECT" and step.action == "over"
            tally.overage_refused += 1
            await asyncio.sleep(0)
            result = await reservation.acommit(cents(step.estimate))
            tally.settled.append((reservation.id, ledgers, step.estimate * CENT))
            continue
        (charged,) = result.charged
        check_charge(step, charged.amount, policy)
        tally.overage_charged += step.action == "over"
        tally.settled.append((reservation.id, ledgers, charged.amount))
    return tally


def test_async_tasks_racing_nested_budgets_balance(guard: al.Guard) -> None:
    """120 tasks under asyncio.gather, interleaving between reserve and commit, against the
    nested REJECT layout (budgets half the threaded run's): the same books hold."""
    layout = nested("acme", divisor=2)
    layout.install(guard, USD, "REJECT")

    async def main() -> list[Tally]:
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(aspend(guard, layout, plan_steps(layout, 500 + i, 15),
                                              "REJECT", start)) for i in range(120)]
        start.set()
        return await asyncio.gather(*tasks)

    tally = Tally()
    for part in asyncio.run(main()):
        tally.add(part)
    assert len(tally.settled) + tally.denied == 120 * 15
    assert tally.denied > 0 and tally.overage_refused > 0 and len(tally.settled) > 300
    assert_books(guard, layout, tally)
    assert_settled(guard, tally)
    balances = asyncio.run(guard.abalances("tenant:acme"))
    assert all(b.reserved == 0 for b in balances)
