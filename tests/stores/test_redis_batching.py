"""Natural batching on the Redis store: the calls that queue up while a call to the same node is
in flight go together in one FCALL, each still its own all-or-nothing operation with its own
result or error. Real redis-server processes only.

To hold a call in flight for as long as a test needs, the server is paused for writes (CLIENT
PAUSE WRITE): the first call waits on the server, the calls after it queue up in the store, and
the test lets the server go once they are all queued.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

import allotment as al
from allotment.stores.redis import RedisStore

from support import LLM
from support.redis_server import redis_server

TOKENS = al.Unit.TOKENS
DEADLINE_S = 30.0
"""How long a test waits for calls to queue up before it fails (never a timing assertion)."""


@pytest.fixture
def url() -> Iterator[str]:
    with redis_server() as (url, _):
        yield url


@pytest.fixture
def aof_url() -> Iterator[str]:
    """A server that fsyncs every write, so a strict store's local wait succeeds."""
    with redis_server("--appendonly", "yes", "--appendfsync", "always") as (url, _):
        yield url


def subject(tenant: str) -> al.Subject:
    return al.Subject(tenant=tenant)


def fcalls(admin: redis.Redis) -> int:
    """FCALLs the server ran since its last CONFIG RESETSTAT."""
    return int(admin.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0))


def waits(admin: redis.Redis) -> int:
    stats = admin.info("commandstats")
    return sum(int(stats[name]["calls"]) for name in ("cmdstat_wait", "cmdstat_waitaof")
               if name in stats)


def until(what: str, ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.002)


def queued(store: RedisStore) -> int:
    """Calls waiting behind the one in flight on the (single) server's lane, sync."""
    lane = store._batcher._lanes.get(None) if store._batcher else None
    return 0 if lane is None else len(lane.queue)


def in_flight(store: RedisStore) -> bool:
    lane = store._batcher._lanes.get(None) if store._batcher else None
    return lane is not None and lane.busy


def held_batch(url: str, store: RedisStore, first: Callable[[], Any],
               rest: list[Callable[[], Any]]) -> tuple[list[Any], int]:
    """Run `first` while the server is paused, then each of `rest` in its own thread once
    `first` is in flight; let the server go when all of `rest` have queued up. Each call's
    outcome (its result, or the exception it raised) in order, and the FCALLs the server ran."""
    admin = redis.Redis.from_url(url)
    admin.config_resetstat()
    outcomes: list[Any] = [None] * (1 + len(rest))

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            outcomes[i] = call()
        except Exception as error:
            outcomes[i] = error

    admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        threads = [threading.Thread(target=run, args=(0, first))]
        threads[0].start()
        until("the first call in flight", lambda: in_flight(store))
        for i, call in enumerate(rest, 1):
            threads.append(threading.Thread(target=run, args=(i, call)))
            threads[-1].start()
            until(f"call {i} queued", lambda i=i: queued(store) == i)  # type: ignore[misc]
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    for thread in threads:
        thread.join()
    return outcomes, fcalls(admin)


def funded_guard(url: str, *tenants: str, tokens: int = 1_000_000, **options: Any) -> al.Guard:
    guard = al.Guard(RedisStore(url=url, **options))
    for tenant in tenants:
        guard.set_budget(f"tenant:{tenant}", tokens=tokens)
    return guard


def tokens_of(amounts: tuple[al.Amount, ...]) -> int:
    return sum(a.amount for a in amounts if a.unit is TOKENS)


def balance(guard: al.Guard, tenant: str) -> al.Balance:
    (only,) = guard.balances(f"tenant:{tenant}")
    return only


# -- batches: one call, each caller its own result --------------------------------------------


def test_calls_queued_behind_one_in_flight_go_together_in_one_call(url: str) -> None:
    guard = funded_guard(url, "acme", "globex")
    store: RedisStore = guard.store  # type: ignore[assignment]
    tenants = ["acme", "globex"] * 4
    calls = [lambda t=t, n=n: guard.reserve(subject(t), LLM, al.tokens(n))  # type: ignore[misc]
             for n, t in enumerate(tenants, 1)]
    outcomes, sent = held_batch(url, store, calls[0], calls[1:])
    assert sent == 2  # the first alone, then the seven that queued up behind it as one
    assert [tokens_of(r.estimate) for r in outcomes] == list(range(1, 9))
    assert [r.id.split(":")[0] for r in outcomes] == tenants
    assert len({r.id for r in outcomes}) == 8
    assert balance(guard, "acme").reserved == 1 + 3 + 5 + 7
    assert balance(guard, "globex").reserved == 2 + 4 + 6 + 8
    for tenant, sizes in (("acme", [1, 3, 5, 7]), ("globex", [2, 4, 6, 8])):
        made = [tokens_of(r.estimate) for r in sorted(guard.audit(tenant), key=lambda r: r.seq)
                if r.reservation_id is not None and r.estimate]
        assert made == sizes  # in the order received


def test_tasks_of_one_loop_are_batched_the_same_way(url: str) -> None:
    guard = funded_guard(url, "acme")
    store: RedisStore = guard.store  # type: ignore[assignment]
    admin = redis.Redis.from_url(url)

    async def main() -> list[Any]:
        await guard.abalances("tenant:acme")  # the loop's client, connected
        admin.config_resetstat()
        admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            first = asyncio.create_task(guard.areserve(subject("acme"), LLM, al.tokens(1)))
            while not store._loops[asyncio.get_running_loop()].batcher._busy:
                await asyncio.sleep(0.002)
            rest = [asyncio.create_task(guard.areserve(subject("acme"), LLM, al.tokens(n)))
                    for n in range(2, 7)]
            batcher = store._loops[asyncio.get_running_loop()].batcher
            while len(batcher._queues.get(None, ())) < 5:
                await asyncio.sleep(0.002)
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        return list(await asyncio.gather(first, *rest))

    reservations = asyncio.run(main())
    assert fcalls(admin) == 2
    assert [tokens_of(r.estimate) for r in reservations] == [1, 2, 3, 4, 5, 6]
    assert balance(guard, "acme").reserved == 21


def test_an_idle_store_sends_each_call_alone_and_at_once(url: str) -> None:
    """Nothing waits for company: one caller's calls are sent one by one, as without
    batching."""
    guard = funded_guard(url, "acme")
    admin = redis.Redis.from_url(url)
    admin.config_resetstat()
    for _ in range(5):
        guard.reserve(subject("acme"), LLM, al.tokens(10)).commit(al.tokens(3))
    assert fcalls(admin) == 10
    assert balance(guard, "acme").spent == 15


def test_one_invalid_operation_never_fails_its_neighbours(url: str) -> None:
    guard = funded_guard(url, "acme", tokens=100)
    store: RedisStore = guard.store  # type: ignore[assignment]
    guard.reserve(subject("acme"), LLM, al.tokens(5), idempotency_key="k1")
    outcomes, sent = held_batch(url, store, lambda: guard.reserve(
        subject("acme"), LLM, al.tokens(1)), [
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(2)),
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(7), idempotency_key="k1"),
        lambda: guard.commit("acme:" + "0" * 32, al.tokens(1)),
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(500)),
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(3)),
    ])
    assert sent == 2
    first, second, mismatch, missing, too_big, last = outcomes
    assert isinstance(mismatch, al.IdempotencyMismatch)
    assert isinstance(missing, al.NotFound)
    assert isinstance(too_big, al.BudgetExceeded)
    assert [tokens_of(r.estimate) for r in (first, second, last)] == [1, 2, 3]
    assert balance(guard, "acme").reserved == 5 + 1 + 2 + 3


def test_a_definition_changed_in_a_batch_holds_for_the_operations_after_it(url: str) -> None:
    """Definitions are read once per tenant per batch, until an operation of the batch
    changes them: a reserve after a freeze in the same batch is refused."""
    guard = funded_guard(url, "acme")
    store: RedisStore = guard.store  # type: ignore[assignment]
    outcomes, sent = held_batch(url, store, lambda: guard.reserve(
        subject("acme"), LLM, al.tokens(1)), [
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(2)),
        lambda: guard.freeze("tenant:acme"),
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(3)),
    ])
    assert sent == 2
    first, second, frozen, refused = outcomes
    assert [tokens_of(r.estimate) for r in (first, second)] == [1, 2]
    assert frozen == 1
    assert isinstance(refused, al.BudgetExceeded)
    assert refused.decision.reason == al.Reason.BUDGET_FROZEN
    assert balance(guard, "acme").reserved == 3


def test_operations_in_a_batch_feed_the_webhook_outbox_as_alone(url: str) -> None:
    """Each operation of a batch appends its own events to its tenant's webhook outbox."""
    guard = funded_guard(url, "acme", tokens=10)
    store: RedisStore = guard.store  # type: ignore[assignment]
    made = guard.subscribe_webhook("https://hooks.example.com/allotment",
                                   events="reservation.denied")
    outcomes, sent = held_batch(url, store, lambda: guard.reserve(
        subject("acme"), LLM, al.tokens(1)), [
        lambda n=n: guard.reserve(subject("acme"), LLM, al.tokens(n))  # type: ignore[misc]
        for n in (50, 60, 2)])
    assert sent == 2
    assert [type(o) for o in outcomes[1:3]] == [al.BudgetExceeded] * 2
    deliveries = guard.webhook_deliveries(webhook_id=made.id)
    assert len(deliveries) == 2 and len({row.event_id for row in deliveries}) == 2


def test_a_lua_error_in_one_operation_fails_it_alone(url: str) -> None:
    """A tenant whose stored state the scripts cannot read raises the error it raises without
    batching; the operations batched with it go on."""
    guard = funded_guard(url, "acme", "broken")
    store: RedisStore = guard.store  # type: ignore[assignment]
    admin = redis.Redis.from_url(url)
    admin.delete("al:{broken}:meta")
    admin.set("al:{broken}:meta", "not a hash")  # HMGET on it is a WRONGTYPE error
    alone = al.Guard(RedisStore(url=url, batching=False))
    with pytest.raises(al.StoreUnavailable) as unbatched:
        alone.reserve(subject("broken"), LLM, al.tokens(1))

    outcomes, sent = held_batch(url, store, lambda: guard.reserve(
        subject("acme"), LLM, al.tokens(1)), [
        lambda: guard.reserve(subject("broken"), LLM, al.tokens(2)),
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(3)),
    ])
    assert sent == 2
    first, broken, last = outcomes
    assert isinstance(broken, al.StoreUnavailable)
    assert "WRONGTYPE" in str(broken) and "WRONGTYPE" in str(unbatched.value)
    assert [tokens_of(r.estimate) for r in (first, last)] == [1, 3]
    assert balance(guard, "acme").reserved == 4


def test_a_whole_batch_replays_by_idempotency_key(url: str) -> None:
    """Retried calls with the same keys, batched together, replay what each was told."""
    guard = funded_guard(url, "acme")
    store: RedisStore = guard.store  # type: ignore[assignment]

    def reserve(n: int) -> Callable[[], Any]:
        return lambda: guard.reserve(subject("acme"), LLM, al.tokens(n),
                                     idempotency_key=f"key-{n}")

    told, _ = held_batch(url, store, reserve(1), [reserve(2), reserve(3)])
    again, sent = held_batch(url, store, reserve(1), [reserve(2), reserve(3)])
    assert sent == 2
    assert [r.id for r in again] == [r.id for r in told]
    assert balance(guard, "acme").reserved == 6


def test_strict_durability_waits_once_after_a_batch(aof_url: str) -> None:
    """One WAITAOF after the batch covers every write in it; each commit is confirmed."""
    guard = funded_guard(aof_url, "acme", durability="strict")
    store: RedisStore = guard.store  # type: ignore[assignment]
    held = [guard.reserve(subject("acme"), LLM, al.tokens(10)) for _ in range(5)]
    outcomes, sent = held_batch(aof_url, store, lambda: held[0].commit(al.tokens(1)), [
        lambda r=r, n=n: r.commit(al.tokens(n))  # type: ignore[misc]
        for n, r in enumerate(held[1:], 2)])
    admin = redis.Redis.from_url(aof_url)
    assert sent == 2 and waits(admin) == 2
    assert [tokens_of(c.charged) for c in outcomes] == [1, 2, 3, 4, 5]
    assert [c.reservation_id for c in outcomes] == [r.id for r in held]
    assert balance(guard, "acme").spent == 15 and balance(guard, "acme").reserved == 0


def test_a_bulk_actions_claim_is_durable_and_joins_a_batch(aof_url: str) -> None:
    """A claim and its finish are calls of the library like any other: under strict
    durability each is confirmed by a wait, and a claim that queues up behind a call in
    flight goes in the same batch as its neighbours and gets its own answer."""
    guard = funded_guard(aof_url, "acme", durability="strict")
    store: RedisStore = guard.store  # type: ignore[assignment]
    admin = redis.Redis.from_url(aof_url)
    admin.config_resetstat()
    claim = guard.claim_once("tenants-bulk", "k-1", {"action": "SUSPEND"})
    assert guard.finish_once(claim, '{"total_matched":0}') is True
    assert waits(admin) == 2  # one per write; the store's clock is read without one
    outcomes, sent = held_batch(aof_url, store, lambda: guard.reserve(
        subject("acme"), LLM, al.tokens(1)), [
        lambda: guard.claim_once("tenants-bulk", "k-1", {"action": "SUSPEND"}),
        lambda: guard.claim_once("budgets-bulk", "k-2", {"action": "CREDIT"}),
        lambda: guard.reserve(subject("acme"), LLM, al.tokens(2))])
    assert sent == 2  # the first call, then the three that queued behind it in one
    assert outcomes[1].answer == '{"total_matched":0}' and outcomes[1].owner is None
    assert outcomes[2].owner is not None and outcomes[2].answer is None
    assert [tokens_of(r.estimate) for r in (outcomes[0], outcomes[3])] == [1, 2]
    with pytest.raises(al.IdempotencyMismatch):
        guard.claim_once("budgets-bulk", "k-2", {"action": "DEBIT"})


def test_the_switch_turns_batching_off(url: str) -> None:
    guard = funded_guard(url, "acme", batching=False)
    admin = redis.Redis.from_url(url)
    admin.config_resetstat()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: guard.reserve(subject("acme"), LLM, al.tokens(1)), range(40)))
    assert fcalls(admin) == 40
    assert balance(guard, "acme").reserved == 40


# -- hammering: each caller its own result, the ledgers what the callers were told ------------


def hammer(guard: al.Guard, tenants: list[str], workers: int, rounds: int) -> dict[str, int]:
    """Reserve+commit pairs from `workers` threads on `tenants` (round robin); per tenant the
    tokens the commits said they charged. Checks each caller got its own results."""
    charged: dict[str, int] = dict.fromkeys(tenants, 0)
    lock = threading.Lock()

    def work(worker: int) -> None:
        for i in range(rounds):
            tenant = tenants[(worker + i) % len(tenants)]
            estimate = 1 + (worker + i) % 7
            actual = (worker * 31 + i) % (estimate + 1)  # never over the estimate
            try:
                reservation = guard.reserve(subject(tenant), LLM, al.tokens(estimate))
            except al.BudgetExceeded:
                continue
            assert reservation.id.startswith(f"{tenant}:")
            assert tokens_of(reservation.estimate) == estimate
            result = reservation.commit(al.tokens(actual))
            assert result.reservation_id == reservation.id
            assert tokens_of(result.charged) == actual
            with lock:
                charged[tenant] += actual

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(workers)))
    return charged


@pytest.mark.parametrize("tenants", [1, 12])
def test_threads_hammering_one_and_many_tenants(url: str, tenants: int) -> None:
    names = [f"t{i}" for i in range(tenants)]
    guard = funded_guard(url, *names, tokens=300)  # tight: many reserves are refused
    charged = hammer(guard, names, workers=16, rounds=40)
    for name in names:
        b = balance(guard, name)
        assert b.spent == charged[name] and b.reserved == 0
        assert b.spent <= b.allocated  # zero overspend


def test_tasks_hammering_one_and_many_tenants(url: str) -> None:
    names = ["solo"] + [f"t{i}" for i in range(10)]
    guard = funded_guard(url, *names, tokens=200)
    charged = dict.fromkeys(names, 0)

    async def work(worker: int) -> None:
        for i in range(25):
            tenant = "solo" if worker % 2 else names[1 + (worker + i) % 10]
            estimate = 1 + i % 7
            actual = (worker + i) % (estimate + 1)
            try:
                reservation = await guard.areserve(subject(tenant), LLM, al.tokens(estimate))
            except al.BudgetExceeded:
                continue
            assert tokens_of(reservation.estimate) == estimate
            result = await reservation.acommit(al.tokens(actual))
            assert result.reservation_id == reservation.id
            assert tokens_of(result.charged) == actual
            charged[tenant] += actual

    async def main() -> None:
        await asyncio.gather(*(work(w) for w in range(40)))

    asyncio.run(main())
    for name in names:
        b = balance(guard, name)
        assert b.spent == charged[name] and b.reserved == 0 and b.spent <= b.allocated
