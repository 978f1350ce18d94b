"""Hostile input and bad stored state, on each store: decide changes nothing, one tenant's
corrupt data never stalls another's expiry, and nothing is written before everything it
writes has been checked (Redis does not roll a function back)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import redis

import allotment as al
from allotment.stores import operations as ops

from support import LLM

ACME = al.Subject(tenant="acme")


def everything(guard: al.Guard, tenant: str = "acme") -> Any:
    """What a tenant's state looks like from outside: balances, audit, report."""
    return (guard.balances(f"tenant:{tenant}"), guard.audit(tenant, limit=1_000),
            guard.report(tenant, period="day"))


def raw(store: Any) -> redis.Redis:
    return redis.Redis.from_url(store.url)


# -- decide ------------------------------------------------------------------------------------

def test_decide_answers_as_if_overdue_holds_were_back_and_changes_nothing(
        store: Any, clock: al.ManualClock) -> None:
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", tokens=100)
    guard.set_quota("tenant:acme", concurrent=1)
    held = guard.reserve(ACME, LLM, al.tokens(80), ttl_ms=1_000, grace_ms=0)
    assert guard.decide(ACME, LLM, al.tokens(50)).reason == "CONCURRENCY_EXCEEDED"
    before = everything(guard)  # read while nothing is overdue: reads reap too
    clock.advance(1_001)
    assert guard.decide(ACME, LLM, al.tokens(50)).outcome is al.Outcome.ALLOW
    denied = guard.decide(ACME, LLM, al.tokens(101))
    assert (denied.reason, denied.remaining) == ("BUDGET_EXCEEDED", 100)
    clock.advance(-1_001)
    assert everything(guard) == before  # no reap, audit, counters or quota counts
    assert guard.get(held.id).status is al.ReservationStatus.ACTIVE
    clock.advance(1_001)
    r = guard.reserve(ACME, LLM, al.tokens(50))  # the reserve reaps, as decide foresaw
    assert guard.get(held.id).status is al.ReservationStatus.EXPIRED
    r.release()


def test_decide_counts_back_only_what_the_next_reserve_would_reap(
        store: Any, clock: al.ManualClock) -> None:
    guard = al.Guard(store)  # reap_batch 16: a call expires 16 overdue reservations first
    guard.set_budget("tenant:acme", tokens=100)
    for _ in range(20):
        guard.reserve(ACME, LLM, al.tokens(5), ttl_ms=1_000, grace_ms=0)
    clock.advance(1_001)
    assert guard.decide(ACME, LLM, al.tokens(80)).outcome is al.Outcome.ALLOW
    assert guard.decide(ACME, LLM, al.tokens(81)).remaining == 80
    assert guard.reserve(ACME, LLM, al.tokens(80)).estimate == (al.tokens(80),)


def test_decide_of_an_unknown_tenant_leaves_no_trace(store: Any) -> None:
    guard = al.Guard(store)
    assert guard.decide(al.Subject(tenant="ghost"), LLM, al.tokens(1)).reason == (
        "BUDGET_NOT_FOUND")
    if isinstance(store, al.MemoryStore):
        assert "ghost" not in store._tenants
    else:
        assert not raw(store).sismember("al:tenants", "ghost")


# -- one tenant's bad state never stalls another -----------------------------------------------

def corrupt(store: Any, how: str) -> None:
    """Break tenant `bad`, which holds an overdue reservation."""
    if isinstance(store, al.MemoryStore):
        for res in store._tenants["bad"].reservations.values():
            res.estimate = {}  # its hold can no longer be given back
        return
    client = raw(store)
    if how == "definitions":  # a packed definition that cannot be decoded
        client.hset("al:{bad}:defs", "tenant:bad", b"\x02\x05\x00garbage")
    elif how == "reservation":  # a reservation hash with garbage in it
        (key,) = client.keys("al:{bad}:r:*")
        client.hset(key, "core", b"\xc1\xc1garbage")
    else:  # a ledger that cannot be read
        client.hset("al:{bad}:ledgers", "tenant:bad|TOKENS||", b"\x01\x00")


@pytest.mark.parametrize(("store", "how"), [
    ("memory", "reservation"),  # the memory store holds objects, not encoded fields
    ("redis", "definitions"), ("redis", "reservation"), ("redis", "ledger")],
    indirect=["store"])
@pytest.mark.parametrize("calls", ["sync", "async"])
def test_a_corrupt_tenant_is_reported_and_skipped_by_the_sweep(
        store: Any, clock: al.ManualClock, how: str, calls: str) -> None:
    guard = al.Guard(store)
    failed: list[al.Notification] = []
    guard.on("sweep.tenant_failed", failed.append)
    tenants = ["bad", "good1", "good2", "good3"]
    for tenant in tenants:
        guard.set_budget(f"tenant:{tenant}", tokens=10)
        guard.reserve(al.Subject(tenant=tenant), LLM, al.tokens(10), ttl_ms=1_000,
                      grace_ms=0)
    corrupt(store, how)
    clock.advance(1_001)
    sweep = guard.sweep if calls == "sync" else (lambda: asyncio.run(guard.asweep()))
    assert sweep() == 3
    assert [(n.type, n.tenant) for n in failed] == [("sweep.tenant_failed", "bad")]
    assert failed[0].reason
    for tenant in tenants[1:]:
        assert guard.balances(f"tenant:{tenant}")[0].reserved == 0
    assert sweep() == 0  # the broken tenant is never in the way


def test_the_sweep_still_fails_when_the_store_does() -> None:
    """Only one tenant's own failure is skipped: Redis being down fails the sweep."""
    guard = al.Guard(al.stores.redis.RedisStore(url="redis://127.0.0.1:1/0",
                                                socket_timeout=0.2))
    with pytest.raises(al.StoreUnavailable):
        guard.sweep()


# -- packed definitions refuse what would not read back (Redis) -------------------------------

def set_budget_op(**changes: Any) -> ops.SetBudget:
    op = ops.SetBudget(tenant="acme", scope="tenant:acme", per=None, unit=al.Unit.TOKENS,
                       period=None, limit=100, overdraft_limit=0,
                       overage_policy=al.OveragePolicy.ALLOW_IF_AVAILABLE)
    return dataclasses.replace(op, **changes)


HUGE_DEGRADE = tuple(al.Degrade(below=0.5, model=f"model-{i:06d}") for i in range(2_500))
"""Degrade rules whose JSON passes 65,535 bytes (a 16-bit length would wrap)."""


@pytest.mark.parametrize("store", ["redis"], indirect=True)
@pytest.mark.parametrize("changes", [{"degrade": HUGE_DEGRADE},
                                     {"alerts": tuple(i / 9_000 for i in range(1, 8_193))}],
                         ids=["degrade-json", "alerts"])
def test_a_definition_that_would_not_read_back_is_refused_and_nothing_written(
        store: Any, changes: dict[str, Any]) -> None:
    guard = al.Guard(store)
    with pytest.raises(al.InvalidRequest):
        store.execute(set_budget_op(**changes))
    plan = ops.ApplyPlan(tenant="acme", name="big", definitions=(
        set_budget_op(scope="tenant:acme/workspace:w"), set_budget_op(**changes)))
    with pytest.raises(al.InvalidRequest):  # the plan's first budget is not written either
        store.execute(plan)
    assert raw(store).hlen("al:{acme}:defs") == 0
    assert guard.audit("acme") == ()
    guard.set_budget("tenant:acme", tokens=100)  # the tenant is as good as new
    guard.reserve(ACME, LLM, al.tokens(10)).commit(al.tokens(5))
    assert guard.balances("tenant:acme")[0].spent == 5


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_a_default_plan_that_would_not_read_back_refuses_the_reserve_first(
        store: Any) -> None:
    plan = ops.ApplyPlan(tenant="acme", name="big", definitions=(
        set_budget_op(scope="tenant:acme/workspace:w"), set_budget_op(degrade=HUGE_DEGRADE)))
    op = guard_reserve_op(default_plan=plan)
    with pytest.raises(al.InvalidRequest):
        store.execute(op)
    assert raw(store).keys("al:{acme}:*") == []


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_many_alert_thresholds_round_trip(store: Any) -> None:
    guard = al.Guard(store)
    thresholds = tuple(i / 8_191 for i in range(1, 8_192))  # the most 16 bits can hold
    store.execute(set_budget_op(alerts=thresholds, limit=8_191))
    notes: list[al.Notification] = []
    guard.on("budget.threshold_crossed", notes.append)
    guard.record(ACME, LLM, al.tokens(3))  # spend alerts (a hold would not)
    assert [n.threshold for n in notes] == list(thresholds[:3])
    assert guard.remove_budget("tenant:acme", unit="TOKENS") == 1


# -- a negative hold is never written ------------------------------------------------------------

def guard_reserve_op(**changes: Any) -> ops.Reserve:
    op = ops.Reserve(tenant="acme", idempotency_key=None, fingerprint="", scopes=("tenant:acme",),
                     dimensions=(), subject=ACME, action=LLM, estimate=((al.Unit.TOKENS, 10),),
                     ttl_ms=60_000, grace_ms=0, max_extensions=5, overage_policy=None)
    return dataclasses.replace(op, **changes)


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_negative_hold_is_refused_before_anything_is_written(store: Any,
                                                              dry_run: bool) -> None:
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", tokens=100)
    before = everything(guard)
    with pytest.raises(al.InvalidRequest, match="estimate"):
        store.execute(guard_reserve_op(estimate=((al.Unit.TOKENS, -5),), dry_run=dry_run))
    assert everything(guard) == before


def test_a_negative_charge_is_refused_before_anything_is_written(store: Any) -> None:
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", tokens=100)
    r = guard.reserve(ACME, LLM, al.tokens(10))
    before = everything(guard)
    negative = ((al.Unit.TOKENS, -5),)
    with pytest.raises(al.InvalidRequest, match="actual"):
        store.execute(ops.Commit(tenant="acme", idempotency_key=None, fingerprint="",
                                 reservation_id=r.id, actual=negative))
    with pytest.raises(al.InvalidRequest, match="actual"):
        store.execute(ops.Record(tenant="acme", idempotency_key=None, fingerprint="",
                                 scopes=("tenant:acme",), dimensions=(), subject=ACME,
                                 action=LLM, actual=negative, overage_policy=None))
    assert everything(guard) == before
    assert r.commit(al.tokens(5)).charged == (al.tokens(5),)


def test_a_corrupt_usage_counter_never_fails_a_commit_halfway(clock: al.ManualClock) -> None:
    """The usage counter is written after the commit's first write: a stored value that is
    not what the store writes is read as zeros and rewritten, never an error mid-call."""
    from support.stores import make_store

    store = make_store("redis", clock)
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=10)
    guard.record(ACME, LLM, al.usd(1))
    client = raw(store)
    report = b"al:{acme}:report"
    (field,) = [f for f in client.hkeys(report) if f.startswith(b"u|")]
    client.hset(report, field, b"garbage,,x=1,USD_MICROCENTS=oops")
    held = guard.reserve(ACME, LLM, al.usd(2))
    held.commit(al.usd(2))
    assert guard.balances("tenant:acme")[0].spent == al.usd(3).amount
    (row,) = guard.usage()
    assert (row.calls, row.spend) == (1, al.usd(2).amount)  # the corrupt counts read as 0
