"""`allotment serve`, the console script, as an operator runs it: memory:// says that state
is lost on exit and refuses several workers; on Redis several workers share one store (keys
included); the admin key comes from ALLOTMENT_ADMIN_KEY; SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from contextlib import AbstractContextManager

import httpx
import redis

from support.serve_script import SCRIPT, allotment_serve
from support.stores import redis_url

USD = "USD_MICROCENTS"
ADMIN = "serve-test-admin"


def serve(*args: str) -> AbstractContextManager[tuple[str, subprocess.Popen[str]]]:
    return allotment_serve(*args, admin_key=ADMIN)


def provision(url: str, tenant: str) -> str:
    admin = {"X-Admin-API-Key": ADMIN}
    key = httpx.post(url + "/v1/admin/api-keys", json={"tenant_id": tenant, "name": "k"},
                     headers=admin)
    assert key.status_code == 201, key.text
    made = httpx.post(url + "/v1/admin/budgets", headers=admin, json={
        "tenant_id": tenant, "scope": f"tenant:{tenant}", "unit": USD,
        "allocated": {"unit": USD, "amount": 1_000_000}})
    assert made.status_code == 201, made.text
    return str(key.json()["key_secret"])


def reserve(url: str, secret: str, key: str) -> httpx.Response:
    return httpx.post(url + "/v1/reservations", headers={"X-Cycles-API-Key": secret}, json={
        "idempotency_key": key, "subject": {"tenant": "acme"},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": USD, "amount": 1_000}})


def test_memory_serve_warns_that_state_is_lost_and_stops_on_sigterm() -> None:
    with serve() as (url, process):
        secret = provision(url, "acme")
        assert reserve(url, secret, "r1").status_code == 200
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(30) in (0, -signal.SIGTERM)
        errors = process.communicate()[1]
    assert "state" in errors and "lost" in errors
    assert "Finished server process" in errors


def test_memory_serve_refuses_several_workers() -> None:
    done = subprocess.run([str(SCRIPT), "serve", "--workers", "2"], capture_output=True,
                          text=True, env={**os.environ, "ALLOTMENT_STORE": "memory://"})
    assert done.returncode != 0 and "--workers" in done.stderr


def test_workers_on_redis_share_keys_and_budgets() -> None:
    url_of_db = f"{redis_url()}/63"
    redis.Redis.from_url(url_of_db).flushdb()
    with serve("--workers", "2", "--store", url_of_db) as (url, _):
        secret = provision(url, "acme")
        answers = [reserve(url, secret, f"r{i}") for i in range(20)]
        assert {a.status_code for a in answers} == {200}
        balance = httpx.get(url + "/v1/balances?tenant=acme",
                            headers={"X-Cycles-API-Key": secret}).json()["balances"][0]
        assert balance["reserved"]["amount"] == 20_000


def test_four_workers_on_redis_never_overspend_and_agree_with_their_answers() -> None:
    url_of_db = f"{redis_url()}/62"
    redis.Redis.from_url(url_of_db).flushdb()
    with serve("--workers", "4", "--store", url_of_db) as (url, _):
        secret = provision(url, "acme")  # 1,000,000 microcents
        headers = {"X-Cycles-API-Key": secret}
        told: list[int] = []

        def client(n: int) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                for i in range(15):
                    held = http.post("/v1/reservations", json={
                        "idempotency_key": f"c{n}-{i}", "subject": {"tenant": "acme"},
                        "action": {"kind": "llm.completion", "name": "m"},
                        "estimate": {"unit": USD, "amount": 10_000}})
                    if held.status_code != 200:
                        assert held.json()["error"] == "BUDGET_EXCEEDED"
                        continue
                    rid = held.json()["reservation_id"]
                    done = http.post(f"/v1/reservations/{rid}/commit", json={
                        "idempotency_key": f"c{n}-{i}", "actual": {"unit": USD,
                                                                    "amount": 9_000}})
                    assert done.status_code == 200, done.text
                    told.append(done.json()["charged"]["amount"])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        balance = httpx.get(url + "/v1/balances?tenant=acme",
                            headers=headers).json()["balances"][0]
    assert balance["spent"]["amount"] == sum(told) <= 1_000_000
    assert balance["reserved"]["amount"] == 0
    assert len(told) >= 100  # 120 tries of 10,000 on 1,000,000: the budget ran out


def test_serve_with_a_plans_file_assigns_its_tiers_by_name_on_every_worker() -> None:
    url_of_db = f"{redis_url()}/61"
    redis.Redis.from_url(url_of_db).flushdb()
    admin = {"X-Admin-API-Key": ADMIN}
    with serve("--workers", "2", "--store", url_of_db, "--plans", "examples/plans.yaml") as (
            url, _):
        for _ in range(6):  # whichever worker answers, it holds the file's tiers
            listed = httpx.get(url + "/v1/admin/plans", headers=admin).json()["plans"]
            assert [p["name"] for p in listed] == ["enterprise", "free", "pro", "starter"]
        assigned = httpx.put(url + "/v1/admin/tenants/acme/plan", json={"plan": "pro"},
                             headers=admin)
        assert assigned.json() == {"tenant_id": "acme", "plan": "pro"}
        refused = httpx.put(url + "/v1/admin/plans/gold", json={"budgets": [{"usd": 5}]},
                            headers=admin)
        assert refused.status_code == 409 and "--plans FILE" in refused.json()["message"]
        assert httpx.get(url + "/v1/admin/plans/gold", headers=admin).status_code == 404
    done = subprocess.run([str(SCRIPT), "serve", "--plans", "missing.yaml"],
                          capture_output=True, text=True,
                          env={**os.environ, "ALLOTMENT_STORE": "memory://"})
    assert done.returncode == 2 and "--plans" in done.stderr


def test_a_key_revoked_through_one_worker_is_refused_by_every_worker_at_once() -> None:
    """Keys are not cached: each request reads its key from the store, so a revocation made
    through one worker holds on all of them from the next request."""
    url_of_db = f"{redis_url()}/60"
    redis.Redis.from_url(url_of_db).flushdb()
    with serve("--workers", "2", "--store", url_of_db) as (url, _):
        secret = provision(url, "acme")
        key_id = secret.removeprefix("alk_").rpartition(".")[0]
        # a fresh connection each: the workers share the accepting socket, so both serve
        assert {reserve(url, secret, f"r{i}").status_code for i in range(12)} == {200}
        revoked = httpx.delete(f"{url}/v1/admin/api-keys/{key_id}",
                               headers={"X-Admin-API-Key": ADMIN})
        assert revoked.json()["status"] == "REVOKED"
        after = [reserve(url, secret, f"s{i}") for i in range(12)]
        assert {a.status_code for a in after} == {401}
        reader = httpx.post(url + "/v1/admin/api-keys", headers={"X-Admin-API-Key": ADMIN},
                            json={"tenant_id": "acme", "name": "reader"}).json()["key_secret"]
        balance = httpx.get(url + "/v1/balances?tenant=acme",
                            headers={"X-Cycles-API-Key": reader}).json()["balances"][0]
        assert balance["reserved"]["amount"] == 12_000  # the refused calls held nothing


def test_a_bulk_action_retried_through_every_worker_runs_once() -> None:
    """The bulk action's key is claimed in the store: identical requests sent at once on
    fresh connections (so to both workers) get one answer, and each budget is funded once."""
    url_of_db = f"{redis_url()}/59"
    redis.Redis.from_url(url_of_db).flushdb()
    with serve("--workers", "2", "--store", url_of_db) as (url, _):
        admin = {"X-Admin-API-Key": ADMIN}
        for scope in ("tenant:acme", *(f"tenant:acme/workspace:w{i}" for i in range(20))):
            made = httpx.post(url + "/v1/admin/budgets", headers=admin, json={
                "tenant_id": "acme", "scope": scope, "unit": USD,
                "allocated": {"unit": USD, "amount": 1_000}})
            assert made.status_code == 201, made.text
        credit = {"filter": {"tenant_id": "acme"}, "action": "CREDIT",
                  "amount": {"unit": USD, "amount": 5}, "idempotency_key": "everyone"}
        answers: list[httpx.Response] = []

        def send() -> None:
            answers.append(httpx.post(url + "/v1/admin/budgets/bulk-action", headers=admin,
                                      json=credit, timeout=30))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ledgers = httpx.get(url + "/v1/admin/budgets?tenant_id=acme&limit=200",
                            headers=admin).json()["ledgers"]
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.content for answer in answers}) == 1
    assert len(answers[0].json()["succeeded"]) == 21
    assert {row["allocated"]["amount"] for row in ledgers} == {1_005}
