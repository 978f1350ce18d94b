"""The outbox outlives the server: `allotment serve` on Redis is killed (SIGKILL, nothing
closed) with events it could not deliver yet, and the next `allotment serve` on the same store
delivers every one of them to a real receiver that verifies each signature, once by id; and
among the processes sharing a store one sends at a time."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
import redis

import allotment as al
from allotment.clock import system_ms
from allotment.server.sending import LEASE, Sender
from allotment.stores.redis import RedisStore
from allotment.webhooks import Dispatcher

from support.redis_server import free_port
from support.serve_script import SCRIPT, allotment_serve
from support.stores import make_store, redis_url
from support.webhooks import Receiver

ADMIN = {"X-Admin-API-Key": "outbox-test-admin"}
USD = "USD_MICROCENTS"
GPT = al.Action("llm.completion", "openai:gpt-4o")


def serve(store: str) -> AbstractContextManager[tuple[str, subprocess.Popen[str]]]:
    """`allotment serve` on `store`, sending webhooks to loopback; killed at the end."""
    return allotment_serve("--store", store, "--webhook-allow", "127.0.0.1/32",
                           admin_key=ADMIN["X-Admin-API-Key"], kill=True)


def until(check: Callable[[], Any], failure: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def deliveries(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(url + "/v1/webhooks/deliveries", headers=ADMIN,
                       params={"tenant_id": "acme", "limit": 1_000})
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["deliveries"]
    return rows


def test_events_left_in_the_outbox_are_delivered_after_a_restart() -> None:
    store = f"{redis_url()}/61"
    redis.Redis.from_url(store).flushdb()
    receiver = Receiver(fail=1_000_000)  # verifies every signature, then answers 500
    try:
        with serve(store) as (url, process):
            made = httpx.post(url + "/v1/webhooks", headers=ADMIN,
                              json={"url": receiver.url, "events": ["*"]})
            assert made.status_code == 201, made.text
            receiver.secrets.append(made.json()["secret"])
            key = httpx.post(url + "/v1/admin/api-keys", headers=ADMIN,
                             json={"tenant_id": "acme", "name": "k"}).json()["key_secret"]
            budget = httpx.post(url + "/v1/admin/budgets", headers=ADMIN, json={
                "tenant_id": "acme", "scope": "tenant:acme", "unit": USD,
                "allocated": {"unit": USD, "amount": 1_000_000}})
            assert budget.status_code == 201, budget.text
            tenant = {"X-Cycles-API-Key": key}
            call = {"subject": {"tenant": "acme"},
                    "action": {"kind": "llm.completion", "name": "m"}}
            held = httpx.post(url + "/v1/reservations", headers=tenant, json={
                "idempotency_key": "r1", **call, "estimate": {"unit": USD, "amount": 950_000}})
            rid = held.json()["reservation_id"]
            done = httpx.post(url + f"/v1/reservations/{rid}/commit", headers=tenant, json={
                "idempotency_key": "c1", "actual": {"unit": USD, "amount": 950_000}})
            assert done.status_code == 200, done.text
            denied = httpx.post(url + "/v1/reservations", headers=tenant, json={
                "idempotency_key": "r2", **call, "estimate": {"unit": USD, "amount": 500_000}})
            assert denied.status_code == 409
            # the running server tried each one and was refused: they wait in the outbox
            tried = until(lambda: (rows := deliveries(url)) and all(
                r["attempts"] >= 1 for r in rows) and rows, "no delivery was tried")
            process.kill()
        assert receiver.accepted == [] and receiver.bad_signatures == 0
        assert {r["status"] for r in tried} == {"pending"}
        waiting = {r["event_id"] for r in tried}
        assert {r["event_type"] for r in tried} >= {"budget.threshold_crossed",
                                                     "reservation.denied"}

        receiver.fail = 0  # the receiver recovers; a new server starts on the same store
        with serve(store) as (url, _):
            until(lambda: set(receiver.ids) >= waiting, "the waiting events were not sent")
            log = until(lambda: (rows := deliveries(url)) and all(
                r["status"] == "delivered" for r in rows) and rows, "not all delivered")
        assert receiver.bad_signatures == 0
        assert sorted(receiver.ids) == sorted(waiting)  # each once, by id
        assert {r["event_id"] for r in log} == waiting
    finally:
        receiver.close()


def test_one_process_at_a_time_sends_and_another_takes_over() -> None:
    """Two senders on one Redis store: the one holding the lease sends (its dispatcher allows
    loopback); the other (which would refuse loopback, and log it) waits, and takes over
    once the first stops."""
    receiver = Receiver()
    first_store, second_store = make_store("redis", system_ms), None
    try:
        first = al.Guard(first_store)
        second_store = RedisStore(url=first_store.url, clock=system_ms)
        second = al.Guard(second_store)
        made = first.subscribe_webhook(receiver.url, events=["reservation.denied"])
        receiver.secrets.append(made.secret or "")
        first.set_budget("tenant:acme", usd=1)
        sending = Sender(first, Dispatcher(first, allow=["127.0.0.1/32"]))
        sending.start()
        lease = redis.Redis.from_url(first_store.url)
        until(lambda: lease.get(f"al:lease:{LEASE}") == sending.owner.encode(),
              "the first sender took no lease")
        waiting = Sender(second, Dispatcher(second))  # would refuse loopback for good
        waiting.start()
        for i in range(3):
            with pytest.raises(al.BudgetExceeded):
                second.reserve(al.Subject(tenant="acme"), GPT, al.usd(2 + i))
        until(lambda: len(receiver.ids) == 3, "the lease holder did not send")
        assert {d.status for d in first.webhook_deliveries(tenant="acme")} == {"delivered"}

        sending.stop()
        with pytest.raises(al.BudgetExceeded):
            second.reserve(al.Subject(tenant="acme"), GPT, al.usd(9))
        refused = until(lambda: [d for d in first.webhook_deliveries(tenant="acme")
                                 if d.status == "failed"], "the other did not take over")
        assert "loopback" in (refused[0].last_error or "") and len(receiver.ids) == 3
        waiting.stop()
    finally:
        receiver.close()
        first_store.close()
        if second_store is not None:
            second_store.close()


def test_a_network_that_is_not_one_is_refused_before_serving() -> None:
    for args, env in ((["--webhook-allow", "nonsense"], {}),
                      ([], {"ALLOTMENT_WEBHOOK_ALLOW": "10.0.0.0/8,bad"})):
        done = subprocess.run([str(SCRIPT), "serve", "--port", str(free_port()), *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})
        assert done.returncode == 2, done.stderr
        assert "--webhook-allow" in done.stderr and "is not a network" in done.stderr
