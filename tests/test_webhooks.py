"""Webhooks end to end: subscriptions in the store, events appended to the outbox in the
operation's own step, delivered by the dispatcher to a real HTTP receiver on loopback that
checks every Standard Webhooks signature with its own implementation of the spec."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import allotment as al
from allotment.periods import Period, bucket_start_ms
from allotment.stores.hooks import CYCLES_TYPES
from allotment.webhook_security import DEFAULT, DEFAULT_BLOCKED
from allotment.webhooks import Dispatcher, WebhookTest, body_of

from support import LLM
from support.drivers import AsyncDriven
from support.stores import make_store, redis_url
from support.webhooks import Receiver

LOOPBACK = ["127.0.0.1/32"]
@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def subscribe(guard: Any, receiver: Receiver, **options: Any) -> al.Webhook:
    options.setdefault("events", "*")
    made = guard.subscribe_webhook(receiver.url, **options)
    assert made.secret is not None and made.secret.startswith("whsec_")
    receiver.secrets.append(made.secret)
    return made


def drain(guard: Any, dispatcher: Dispatcher) -> int:
    """One round of the dispatcher, the way this guard is called (sync, or on its loop)."""
    if isinstance(guard, AsyncDriven):
        return guard._loop.run_until_complete(dispatcher.arun_once())
    return dispatcher.run_once()


def spend(guard: Any, usd: float, estimate: float | None = None) -> None:
    r = guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(estimate or usd))
    r.commit(al.usd(usd))


def test_events_reach_a_receiver_signed_once_each(guard: Any, clock: al.ManualClock,
                                                  receiver: Receiver) -> None:
    made = subscribe(guard, receiver)
    guard.set_budget("tenant:acme", usd=10, period="month")
    spend(guard, 6, estimate=4)  # past 50%, and more than estimated
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(5))
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1), ttl_ms=1_000)
    clock.advance(60_000)
    guard.sweep()
    guard.set_mode("acme", "shadow")
    assert receiver.accepted == []  # nothing is sent until a dispatcher runs
    dispatcher = Dispatcher(guard, allow=LOOPBACK)
    sent = drain(guard, dispatcher)
    assert receiver.bad_signatures == 0
    assert sent == len(receiver.accepted) == len(set(receiver.ids))
    assert set(receiver.types()) == {
        "budget.threshold_crossed", "reservation.commit_overage", "reservation.denied",
        "reservation.expired", "tenant.mode_changed"}
    overage = next(doc for _, doc in receiver.accepted
                   if doc["type"] == "reservation.commit_overage")
    assert overage["data"]["amounts"] == [{"unit": "USD_MICROCENTS",
                                           "amount": al.usd(2).amount}]
    assert drain(guard, dispatcher) == 0  # all delivered: nothing is sent twice
    log = guard.webhook_deliveries(webhook_id=made.id)
    assert {row.event_id for row in log} == set(receiver.ids)
    assert {(row.status, row.attempts, row.last_status) for row in log} == {
        ("delivered", 1, 204)}


def test_a_plan_that_changes_the_mode_says_so(guard: Any, receiver: Receiver) -> None:
    subscribe(guard, receiver, events=["tenant.mode_changed"])
    trial = al.Plan(name="trial", mode="shadow", budgets=[al.BudgetSpec(usd=1)])
    paid = al.Plan(name="paid", mode="enforce", budgets=[al.BudgetSpec(usd=50)])
    guard.assign_plan("acme", trial)
    guard.assign_plan("acme", trial)  # the mode is already shadow: nothing to say
    guard.assign_plan("acme", al.Plan(name="same", budgets=[al.BudgetSpec(usd=2)]))  # none
    guard.assign_plan("acme", paid)  # the upgrade enforces
    drain(guard, Dispatcher(guard, allow=LOOPBACK))
    assert receiver.bad_signatures == 0
    assert [(doc["type"], doc["data"]["tenant"], doc["data"]["reason"])
            for _, doc in receiver.accepted] == [("tenant.mode_changed", "acme", "shadow"),
                                                 ("tenant.mode_changed", "acme", "enforce")]


def test_closing_a_tenant_tells_the_global_subscriptions_and_silences_its_own(
        guard: Any, receiver: Receiver) -> None:
    wanted = ["tenant.closed", "reservation.denied"]
    everyone = subscribe(guard, receiver, events=wanted)
    own = guard.subscribe_webhook(receiver.url, tenant="acme", events=wanted)
    guard.set_budget("tenant:acme", usd=1)
    assert guard.close_tenant("acme", reason="churned").webhooks_disabled == 1
    with pytest.raises(al.Denied):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd("0.1"))
    assert sorted((row.webhook_id, row.event_type) for row in guard.webhook_deliveries(
        tenant="acme")) == sorted([(everyone.id, "tenant.closed"),
                                   (everyone.id, "reservation.denied")])
    assert [hook.enabled for hook in guard.webhooks("acme")] == [False]
    assert own.id not in {row.webhook_id for row in guard.webhook_deliveries(tenant="acme")}
    drain(guard, Dispatcher(guard, allow=LOOPBACK))
    assert [(doc["type"], doc["data"]["reason"]) for _, doc in receiver.accepted
            if doc["type"] == "tenant.closed"] == [("tenant.closed", "churned")]


def test_nothing_is_kept_without_a_subscription(guard: Any, receiver: Receiver) -> None:
    guard.set_budget("tenant:acme", usd=10, period="month")
    spend(guard, 9)
    made = subscribe(guard, receiver)  # subscribed after the crossing: not sent
    assert drain(guard, Dispatcher(guard, allow=LOOPBACK)) == 0
    assert guard.webhook_deliveries() == ()
    assert [w.id for w in guard.webhooks()] == [made.id]
    assert guard.webhooks()[0].secret is None  # shown once only


def test_a_failing_receiver_gets_every_event_exactly_once(
        guard: Any, clock: al.ManualClock) -> None:
    receiver = Receiver(fail=3)
    try:
        subscribe(guard, receiver, events=["budget.threshold_crossed", "budget.exhausted"])
        guard.set_budget("tenant:acme", usd=10, period="month")
        spend(guard, 10)  # 50%, 80%, 100% and exhausted: four events
        dispatcher = Dispatcher(guard, allow=LOOPBACK, backoff_s=2, backoff_cap_s=30)
        waits = []
        while len(receiver.accepted) < 4:
            drain(guard, dispatcher)
            pending = [row for row in guard.webhook_deliveries() if row.status == "pending"]
            if pending:
                due = min(row.next_at_ms for row in pending if row.next_at_ms is not None)
                waits.append(due - clock())
                clock.set(due)
            assert len(waits) < 10
        assert receiver.requests == 4 + 3
        assert sorted(receiver.ids) == sorted(set(receiver.ids))
        log = guard.webhook_deliveries()
        assert {row.event_id for row in log} == set(receiver.ids)
        assert all(row.status == "delivered" for row in log)
        assert sum(row.attempts for row in log) == 7
        assert waits[0] == 2_000  # the first retry after backoff_s, doubling after
        assert drain(guard, dispatcher) == 0
    finally:
        receiver.close()


def test_a_receiver_that_never_answers_is_given_up_on_then_replayed(
        guard: Any, clock: al.ManualClock) -> None:
    receiver = Receiver(fail=1_000)
    try:
        made = subscribe(guard, receiver, events="budget.exhausted")
        guard.set_budget("tenant:acme", usd=10, period="month")
        spend(guard, 10)
        dispatcher = Dispatcher(guard, allow=LOOPBACK, max_attempts=3, backoff_s=1,
                                backoff_cap_s=1)
        for _ in range(3):
            assert drain(guard, dispatcher) == 1
            clock.advance(1_000)
        assert drain(guard, dispatcher) == 0
        (row,) = guard.webhook_deliveries(webhook_id=made.id)
        assert (row.status, row.attempts, row.last_status, row.last_error) == (
            "failed", 3, 500, "HTTP 500")
        receiver.fail = 0
        assert guard.replay_webhook_event(row.event_id) == 1
        assert drain(guard, dispatcher) == 1
        assert receiver.ids == [row.event_id]
        (row,) = guard.webhook_deliveries(event_id=row.event_id)
        assert row.status == "delivered"
    finally:
        receiver.close()


def test_finished_deliveries_and_their_events_leave_after_the_retention(
        guard: Any, clock: al.ManualClock, receiver: Receiver) -> None:
    made = subscribe(guard, receiver, events=["budget.threshold_crossed"])
    guard.set_budget("tenant:acme", usd=10, period="month")
    spend(guard, 6)  # 50%
    dispatcher = Dispatcher(guard, allow=LOOPBACK, retention_s=3_600)
    assert drain(guard, dispatcher) == 1
    (first,) = guard.webhook_deliveries()
    clock.advance(1_800_000)
    spend(guard, 3)  # 80%
    assert drain(guard, dispatcher) == 1
    clock.advance(1_800_001)  # the first is past the hour, the second not yet
    assert drain(guard, dispatcher) == 0
    (kept,) = guard.webhook_deliveries(webhook_id=made.id)
    assert kept.event_id != first.event_id and kept.status == "delivered"
    with pytest.raises(al.NotFound):
        guard.replay_webhook_event(first.event_id)
    assert guard.replay_webhook_event(kept.event_id) == 1  # pending again: kept past the
    clock.advance(7_200_000)                               # retention until it finishes
    assert drain(guard, dispatcher) == 1
    clock.advance(3_600_001)
    assert drain(guard, dispatcher) == 0
    assert guard.webhook_deliveries() == ()
    assert receiver.ids == [first.event_id, kept.event_id, kept.event_id]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://10.1.2.3/hook",
    "http://169.254.169.254/latest/meta-data", "http://[::1]:9/hook",
    "http://[::ffff:192.168.0.1]/hook", "http://0.0.0.0:9/hook", "https://100.64.0.1/hook"])
def test_destinations_that_are_not_public_are_refused(
        guard: Any, receiver: Receiver, url: str) -> None:
    made = guard.subscribe_webhook(url, events="budget.exhausted")
    guard.set_budget("tenant:acme", usd=1, period="month")
    spend(guard, 1)
    assert drain(guard, Dispatcher(guard)) == 1  # no network allowed beyond the public one
    (row,) = guard.webhook_deliveries(webhook_id=made.id)
    assert row.status == "failed" and row.attempts == 1  # refused for good, not retried
    assert "not public" in (row.last_error or "")


def test_an_allow_list_lets_only_its_networks_through(guard: Any,
                                                      receiver: Receiver) -> None:
    subscribe(guard, receiver, events="budget.exhausted")
    guard.set_budget("tenant:acme", usd=1, period="month")
    spend(guard, 1)
    drain(guard, Dispatcher(guard, allow=["10.0.0.0/8"]))
    assert receiver.accepted == []
    (row,) = guard.webhook_deliveries()
    assert row.status == "failed"
    with pytest.raises(al.InvalidRequest, match="not a network"):
        Dispatcher(guard, allow=["loopback"])


def test_the_burn_rate_forecast_is_sent_once_per_period(guard: Any, clock: al.ManualClock,
                                                        receiver: Receiver) -> None:
    heard: list[al.Notification] = []
    guard.on("budget.burn_rate_forecast", heard.append)
    subscribe(guard, receiver, events="budget.burn_rate_forecast")
    guard.set_budget("tenant:acme", usd=300, period="month")
    start = bucket_start_ms(Period.MONTH, clock())
    spend(guard, 100)  # 27.5 days in: $100 at this rate is $109 by month's end
    assert heard == []
    spend(guard, 100)  # $200 in 27.5 days runs out $300 on day 41: still after the end
    assert heard == []
    clock.advance(86_400_000)  # 28.5 days in
    spend(guard, 90)  # $290: at this rate $300 is spent 29.48 days in: inside November
    (note,) = heard
    elapsed = clock() - start
    at = start + (al.usd(300).amount * elapsed) // al.usd(290).amount
    assert note.detail["exhausts_at_ms"] in (at, at + 1)  # the store works in doubles
    assert note.detail["exhausts_on"] == "2026-11-30"
    assert (note.scope, note.bucket, note.tenant) == ("tenant:acme", "2026-11", "acme")
    spend(guard, 1)
    assert len(heard) == 1  # once per ledger and period
    drain(guard, Dispatcher(guard, allow=LOOPBACK))
    assert receiver.types() == ["budget.burn_rate_forecast"]
    assert receiver.accepted[0][1]["data"]["exhausts_on"] == "2026-11-30"
    clock.set(start + 31 * 86_400_000 + 3_600_000)  # an hour into December
    spend(guard, 20)
    assert len(heard) == 2 and heard[1].bucket == "2026-12"


def test_the_forecast_costs_nothing_without_a_subscription(guard: Any,
                                                          clock: al.ManualClock) -> None:
    heard: list[al.Notification] = []
    guard.on("budget.burn_rate_forecast", heard.append)
    guard.set_budget("tenant:acme", usd=300, period="month")
    spend(guard, 290)
    assert heard == []


def test_a_tenant_manages_its_own_webhooks_only(guard: Any, receiver: Receiver) -> None:
    everyone = subscribe(guard, receiver, events="budget.exhausted")
    rival = guard.subscribe_webhook(receiver.url, events="*", tenant="rival")
    receiver.secrets.append(rival.secret or "")
    acme = guard.tenant("acme")
    own = acme.subscribe_webhook(receiver.url, events=["budget.exhausted"])
    receiver.secrets.append(own.secret or "")
    assert own.tenant == "acme" and own.id.startswith("acme/")
    assert [w.id for w in acme.webhooks()] == [own.id]
    assert [w.id for w in guard.webhooks()] == [everyone.id]
    assert [w.id for w in guard.webhooks("rival")] == [rival.id]
    for call in (lambda: acme.remove_webhook(everyone.id),
                 lambda: acme.remove_webhook(rival.id),
                 lambda: acme.enable_webhook(rival.id, False),
                 lambda: acme.webhook_deliveries(webhook_id=everyone.id)):
        with pytest.raises(al.Forbidden):
            call()
    guard.set_budget("tenant:acme", usd=1, period="month")
    guard.set_budget("tenant:rival", usd=1, period="month")
    spend(guard, 1)
    guard.reserve(al.Subject(tenant="rival"), LLM, al.usd(1)).commit(al.usd(1))
    drain(guard, Dispatcher(guard, allow=LOOPBACK))
    mine = acme.webhook_deliveries()
    assert {row.webhook_id for row in mine} == {own.id}  # not the global one's rows
    assert {row.event_id.split("/")[0] for row in mine} == {"acme"}
    by_hook = {row.webhook_id for row in guard.webhook_deliveries(tenant="rival")}
    assert by_hook == {everyone.id, rival.id}
    assert acme.enable_webhook(own.id, False).enabled is False
    assert acme.remove_webhook(own.id) is True
    assert acme.webhooks() == ()
    assert [w.id for w in guard.webhooks()] == [everyone.id]


def test_bad_subscriptions_are_refused_with_what_would_be_right(guard: Any) -> None:
    with pytest.raises(al.InvalidRequest, match=r"did you mean 'budget\.exhausted'"):
        guard.subscribe_webhook("https://example.com/h", events=["budget.exhausteed"])
    with pytest.raises(al.InvalidRequest, match=r"did you mean 'reservation\.denied'"):
        guard.subscribe_webhook("https://example.com/h", events=["denied"])
    with pytest.raises(al.InvalidRequest, match="at least one event type"):
        guard.subscribe_webhook("https://example.com/h", events=[])
    with pytest.raises(al.InvalidRequest, match="not an absolute http"):
        guard.subscribe_webhook("ftp://example.com/h", events="*")
    with pytest.raises(al.InvalidRequest, match="whsec_"):
        guard.subscribe_webhook("https://example.com/h", events="*", secret="hunter2")
    with pytest.raises(al.InvalidRequest, match=r"unknown type 'spend\.unrecorded'"):
        guard.subscribe_webhook("https://example.com/h", events=["spend.unrecorded"])
    with pytest.raises(al.InvalidRequest, match="webhook id"):
        guard.remove_webhook("acme")
    assert guard.webhooks() == ()
    with pytest.raises(al.InvalidRequest, match="'standard' or 'cycles'"):
        guard.subscribe_webhook("https://example.com/h", events="*", format="json")
    with pytest.raises(al.InvalidRequest, match=r"tenant\.mode_changed have no Cycles"):
        guard.subscribe_webhook("https://example.com/h", events=["tenant.mode_changed"],
                                format="cycles")
    with pytest.raises(al.InvalidRequest, match="16 to 256 characters") as refused:
        guard.subscribe_webhook("https://example.com/h", events="*", format="cycles",
                                secret="hunter2")
    assert "hunter2" not in str(refused.value)  # a secret is never repeated back
    with pytest.raises(al.InvalidRequest, match="printable") as refused:
        guard.subscribe_webhook("https://example.com/h", events="*", format="cycles",
                                secret="a secret with a\nnewline")
    assert "newline" not in str(refused.value)
    assert guard.webhooks() == ()
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    made = guard.subscribe_webhook("https://example.com/h", events="*", secret=secret)
    assert (made.secret, made.format) == (secret, "standard")
    cycles = guard.subscribe_webhook("https://example.com/c", events="*", format="cycles",
                                     secret="a receiver's own secret")
    assert (cycles.secret, cycles.format) == ("a receiver's own secret", "cycles")
    assert {w.format for w in guard.webhooks()} == {"standard", "cycles"}


def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_runs_out(
        guard: Any, clock: al.ManualClock) -> None:
    from allotment.stores.hooks import GLOBAL, ClaimDeliveries

    guard.subscribe_webhook("https://example.com/h", events="budget.exhausted")
    guard.set_budget("tenant:acme", usd=1, period="month")
    spend(guard, 1)
    store = guard.store
    first = store.execute(ClaimDeliveries(tenant=GLOBAL, limit=10, lease_ms=30_000))
    assert len(first) == 1
    assert store.execute(ClaimDeliveries(tenant=GLOBAL, limit=10, lease_ms=30_000)) == ()
    clock.advance(30_001)  # the claimer died: another takes it over
    (again,) = store.execute(ClaimDeliveries(tenant=GLOBAL, limit=10, lease_ms=30_000))
    assert again.event.id == first[0].event.id


def test_both_stores_append_the_same_events(clock: al.ManualClock) -> None:
    """The memory store and the Lua that mirrors it: the same ids, types and data."""
    seen = []
    for kind in ("memory", "redis"):
        clock.set(1_795_000_000_000)
        store = make_store(kind, clock)
        guard = al.Guard(store)
        guard.subscribe_webhook("https://example.com/h", events="*")
        guard.set_budget("tenant:acme", usd=10, period="month", alerts=[0.5, 0.9])
        guard.set_budget("tenant:acme", tokens=1_000, period="day")
        r = guard.reserve(al.Subject(tenant="acme"), LLM, [al.usd(2), al.tokens(100)],
                          ttl_ms=1_000)
        clock.advance(10_000)
        guard.sweep()
        spend(guard, 9, estimate=5)
        guard.record(al.Subject(tenant="acme"), LLM, al.usd(2))
        guard.set_mode("acme", "shadow")
        guard.set_mode("acme", None)
        guard.suspend_tenant("acme", reason="invoice unpaid")
        guard.resume_tenant("acme")
        guard.close_tenant("acme", reason="churned")
        with pytest.raises(al.Denied):
            guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
        from allotment.stores.hooks import GLOBAL, ClaimDeliveries

        claimed = store.execute(ClaimDeliveries(tenant=GLOBAL, limit=100, lease_ms=1_000))
        bodies = [json.loads(body_of(c)) for c in claimed]
        for body in bodies:  # random in each store
            assert body["data"].pop("reservation_id", r.id).startswith("acme:")
        seen.append([(c.event.id, c.event.type, c.event.at_ms, body)
                     for c, body in zip(claimed, bodies, strict=True)])
        assert r.id
        store.close()
    assert seen[0] == seen[1]
    assert {kind for _, kind, _, _ in seen[0]} >= {
        "reservation.expired", "reservation.commit_overage", "budget.threshold_crossed",
        "budget.exhausted", "budget.over_limit_entered", "tenant.mode_changed",
        "budget.burn_rate_forecast", "tenant.suspended", "tenant.reactivated",
        "tenant.closed", "reservation.denied"}


def test_both_stores_tell_debt_incurred_and_over_limit_exited_alike(
        clock: al.ManualClock) -> None:
    """A commit and a record that owe, a limit lowered under the debt, then the flag cleared
    by a repayment and by a raised limit: the same events, in the same order, on both."""
    seen = []
    for kind in ("memory", "redis"):
        clock.set(1_795_000_000_000)
        store = make_store(kind, clock)
        guard = al.Guard(store)
        guard.subscribe_webhook("https://example.com/h", events=[
            "budget.debt_incurred", "budget.over_limit_exited"])
        guard.set_budget("tenant:acme", tokens=100, overdraft_limit=50,
                         overage_policy="ALLOW_WITH_OVERDRAFT")
        who = al.Subject(tenant="acme")
        guard.reserve(who, LLM, al.tokens(90)).commit(al.tokens(120))  # 20 owed
        guard.record(who, LLM, al.tokens(5))  # 5 more
        guard.set_budget_terms("tenant:acme", "TOKENS", overdraft_limit=10)  # over it now
        guard.fund("tenant:acme", "REPAY_DEBT", al.tokens(20))  # 5 left: under again
        guard.set_budget_terms("tenant:acme", "TOKENS", overdraft_limit=0)  # over again
        guard.set_budget_terms("tenant:acme", "TOKENS", overdraft_limit=5)  # and out
        from allotment.stores.hooks import GLOBAL, ClaimDeliveries

        claimed = store.execute(ClaimDeliveries(tenant=GLOBAL, limit=100, lease_ms=1_000))
        bodies = [json.loads(body_of(c)) for c in claimed]
        for body in bodies:
            body["data"].pop("reservation_id", None)  # random in each store
        seen.append([(c.event.id, c.event.type, body)
                     for c, body in zip(claimed, bodies, strict=True)])
        store.close()
    assert seen[0] == seen[1]
    assert [kind for _, kind, _ in seen[0]] == [
        "budget.debt_incurred", "budget.debt_incurred", "budget.over_limit_exited",
        "budget.over_limit_exited"]
    owed = [body["data"] for _, kind, body in seen[0] if kind == "budget.debt_incurred"]
    assert [d.get("amounts") for d in owed] == [
        [{"unit": "TOKENS", "amount": 20}], [{"unit": "TOKENS", "amount": 5}]]


PRODUCER = """
import os, allotment as al
from allotment.stores.redis import RedisStore
guard = al.Guard(RedisStore(url={url!r}))
guard.set_budget("tenant:acme", usd=10, period="month")
made = guard.subscribe_webhook({hook!r}, events=["budget.threshold_crossed"])
print(made.secret, flush=True)
r = guard.reserve(al.Subject(tenant="acme"), al.Action("llm.completion", "m"), al.usd(9))
r.commit(al.usd(9))
os._exit(9)  # killed: no dispatcher ever ran here, nothing was closed
"""


def test_events_in_the_outbox_survive_the_process_that_made_them(receiver: Receiver) -> None:
    url = f"{redis_url()}/63"
    import redis

    redis.Redis.from_url(url).flushdb()
    done = subprocess.run([sys.executable, "-c", PRODUCER.format(url=url, hook=receiver.url)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 9, done.stderr
    receiver.secrets.append(done.stdout.split()[0])
    guard = al.Guard.from_url(url)  # another process's guard on the same store
    try:
        assert Dispatcher(guard, allow=LOOPBACK).run_once() == 2  # 50% and 80%
        assert receiver.bad_signatures == 0
        assert [doc["data"]["threshold"] for _, doc in receiver.accepted] == [0.5, 0.8]
    finally:
        guard.close()


def probe(guard: Any, dispatcher: Dispatcher, webhook_id: str) -> WebhookTest:
    """A test send, the way this guard is called (sync, or on its loop)."""
    if isinstance(guard, AsyncDriven):
        return guard._loop.run_until_complete(dispatcher.atest(webhook_id))
    return dispatcher.test(webhook_id)


def test_a_subscription_changes_in_place(guard: Any, receiver: Receiver) -> None:
    moved = Receiver()
    try:
        everyone = subscribe(guard, receiver, events=["budget.exhausted"])
        own = guard.subscribe_webhook(receiver.url, tenant="acme", events=["budget.exhausted"],
                                      format="cycles", secret="the first cycles secret")
        for made in (everyone, own):  # a global subscription, and a tenant's
            changed = guard.update_webhook(made.id, events=["reservation.denied",
                                                            "budget.exhausted"])
            assert (changed.id, changed.format, changed.created_at_ms, changed.secret) == (
                made.id, made.format, made.created_at_ms, None)
            assert changed.events == ("budget.exhausted", "reservation.denied")
        rotated = "whsec_" + base64.b64encode(b"n" * 32).decode()
        assert guard.update_webhook(everyone.id, secret=rotated, url=moved.url).url == moved.url
        guard.update_webhook(own.id, secret="the second cycles secret")
        receiver.secrets[:] = ["the second cycles secret"]  # the old ones no longer verify
        moved.secrets.append(rotated)
        guard.set_budget("tenant:acme", usd=1)
        with pytest.raises(al.BudgetExceeded):
            guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(5))
        drain(guard, Dispatcher(guard, allow=LOOPBACK))
        assert receiver.bad_signatures == moved.bad_signatures == 0
        assert [doc["event_type"] for _, doc in receiver.accepted] == ["reservation.denied"]
        assert moved.types() == ["reservation.denied"]
        paused = guard.update_webhook(own.id, enabled=False)
        assert (paused.enabled, paused.url, paused.events) == (
            False, receiver.url, ("budget.exhausted", "reservation.denied"))
        assert [hook.enabled for hook in guard.webhooks("acme")] == [False]
        assert guard.update_webhook(own.id, events="*").events == tuple(sorted(CYCLES_TYPES))
    finally:
        moved.close()


def test_a_bad_change_is_refused_and_changes_nothing(guard: Any) -> None:
    made = guard.subscribe_webhook("https://example.com/h", events=["budget.exhausted"])
    cycles = guard.subscribe_webhook("https://example.com/c", tenant="acme", format="cycles",
                                     events=["budget.exhausted"])
    rival = guard.subscribe_webhook("https://example.com/r", tenant="rival", events="*")
    before = (guard.webhooks(), guard.webhooks("acme"))
    for call, refused, says in (
            (lambda: guard.update_webhook(made.id), al.InvalidRequest, "at least one of"),
            (lambda: guard.update_webhook(made.id, url="ftp://x", enabled=False),
             al.InvalidRequest, "not an absolute http"),
            (lambda: guard.update_webhook(made.id, events=["budget.exhausteed"]),
             al.InvalidRequest, r"did you mean 'budget\.exhausted'"),
            (lambda: guard.update_webhook(made.id, secret="hunter2", enabled=False),
             al.InvalidRequest, "whsec_"),
            (lambda: guard.update_webhook(cycles.id, events=["tenant.mode_changed"]),
             al.InvalidRequest, r"tenant\.mode_changed have no Cycles"),
            (lambda: guard.update_webhook(cycles.id, secret="short", url="https://a.b/"),
             al.InvalidRequest, "16 to 256 characters"),
            (lambda: guard.update_webhook(cycles.id, enabled="no"), al.InvalidRequest,
             "True or False"),
            (lambda: guard.update_webhook(f"acme/whk_{'0' * 24}", enabled=False), al.NotFound,
             "no webhook"),
            (lambda: guard.update_webhook(f"whk_{'0' * 24}", secret="x" * 20), al.NotFound,
             "no webhook"),
            (lambda: guard.tenant("acme").update_webhook(rival.id, enabled=False),
             al.Forbidden, "not one of tenant 'acme'"),
            (lambda: guard.tenant("acme").update_webhook(made.id, url="https://a.b/"),
             al.Forbidden, "not one of tenant 'acme'")):
        with pytest.raises(refused, match=says):
            call()
    assert (guard.webhooks(), guard.webhooks("acme")) == before
    assert guard.tenant("acme").update_webhook(cycles.id, url="https://a.b/").url == \
        "https://a.b/"


def test_a_test_send_is_signed_as_deliveries_are_and_logged_nowhere(
        guard: Any, receiver: Receiver) -> None:
    standard = subscribe(guard, receiver, events=["budget.exhausted"])
    cycles = guard.subscribe_webhook(receiver.url, tenant="acme", events=["budget.exhausted"],
                                     format="cycles", secret="a receiver's own secret")
    receiver.secrets.append("a receiver's own secret")
    dispatcher = Dispatcher(guard, allow=LOOPBACK)
    for hook, tenant in ((standard, "__system__"), (cycles, "acme")):
        sent = probe(guard, dispatcher, hook.id)
        assert (sent.delivered, sent.status, sent.error) == (True, 204, None)
        assert sent.elapsed_ms >= 0 and sent.event_id.startswith(tenant + "/evt_")
    assert receiver.bad_signatures == 0 and len(receiver.accepted) == 2
    (_, plain), (_, spec) = receiver.accepted
    assert (plain["type"], plain["data"]["webhook_id"]) == ("system.webhook_test", standard.id)
    assert (spec["event_type"], spec["tenant_id"], spec["data"]["webhook_id"]) == (
        "system.webhook_test", "acme", cycles.id)
    receiver.fail = 1
    failed = probe(guard, dispatcher, cycles.id)
    assert (failed.delivered, failed.status, failed.error) == (False, 500, "HTTP 500")
    refused = probe(guard, Dispatcher(guard), standard.id)  # loopback is not public
    assert (refused.delivered, refused.status) == (False, None)
    assert "not public" in (refused.error or "")
    assert guard.webhook_deliveries() == () and guard.webhook_deliveries(tenant="acme") == ()
    with pytest.raises(al.NotFound, match="no webhook"):
        probe(guard, dispatcher, f"acme/whk_{'0' * 24}")
    with pytest.raises(al.InvalidRequest, match="webhook id"):
        probe(guard, dispatcher, "acme")


def test_the_security_configuration_decides_where_webhooks_may_go(guard: Any,
                                                                 receiver: Receiver) -> None:
    assert guard.webhook_security() == DEFAULT and "127.0.0.0/8" in DEFAULT_BLOCKED
    made = subscribe(guard, receiver, events=["budget.exhausted"])
    guard.set_budget("tenant:acme", usd=1, period="month")
    spend(guard, 1)
    opened = guard.set_webhook_security(
        blocked_cidr_ranges=[r for r in DEFAULT_BLOCKED if r != "127.0.0.0/8"])
    assert opened.allow_http is True and "127.0.0.0/8" not in opened.blocked_cidr_ranges
    assert guard.webhook_security() == opened
    assert drain(guard, Dispatcher(guard)) == 1  # loopback is no longer blocked
    assert receiver.types() == ["budget.exhausted"] and receiver.bad_signatures == 0
    closed = guard.set_webhook_security(blocked_cidr_ranges=["0.0.0.0/0", "::/0"],
                                        allowed_url_patterns=["https://*.example.com/*"],
                                        allow_http=False)
    sent = probe(guard, Dispatcher(guard), made.id)  # every address blocked now
    assert not sent.delivered and "loopback address in a blocked range" in (sent.error or "")
    assert "127.0.0.1" not in (sent.error or "").partition(": ")[2]  # nor the address itself
    assert probe(guard, Dispatcher(guard, allow=LOOPBACK), made.id).delivered  # carved out
    acme = guard.tenant("acme")
    for call, says in ((lambda: guard.subscribe_webhook("http://hooks.example.com/a",
                                                        events="*"), "https:// only"),
                       (lambda: acme.subscribe_webhook("https://hooks.example.org/a",
                                                       events="*"), "allowed URL patterns"),
                       (lambda: guard.update_webhook(made.id, url="https://elsewhere.test/"),
                        "allowed URL patterns")):
        with pytest.raises(al.InvalidRequest, match=says):
            call()
    for elsewhere in ("https://evil.test/x.example.com/", "https://evil.test?.example.com/",
                      "https://evil.test#.example.com/a", "https://hooks.example.com.evil.test/",
                      "https://hooks.example.com@evil.test/", "https://example.com/a",
                      "https://hooks.example.com:8443/a"):  # the pattern's host, and only it
        with pytest.raises(al.InvalidRequest, match="allowed URL patterns"):
            acme.subscribe_webhook(elsewhere, events="*")
    assert [hook.url for hook in guard.webhooks()] == [receiver.url]  # kept, not checked again
    assert guard.webhooks("acme") == ()
    assert acme.subscribe_webhook("https://a.hooks.example.com/a?v=1", events="*").url == \
        "https://a.hooks.example.com/a?v=1"
    for bad, says in (({"blocked_cidr_ranges": ["10.0.0.0/33"]}, r"blocked_cidr_ranges\[0\]"),
                      ({"blocked_cidr_ranges": "10.0.0.0/8"}, "a list of strings"),
                      ({"allowed_url_patterns": [""]}, "an http.s. URL glob"),
                      ({"allowed_url_patterns": ["*.example.com"]}, "with a host"),
                      ({"allow_http": "yes"}, "True or False")):
        with pytest.raises(al.InvalidRequest, match=says):
            guard.set_webhook_security(**bad)
    assert guard.webhook_security() == closed
    assert guard.set_webhook_security() == DEFAULT  # everything left out: the defaults
