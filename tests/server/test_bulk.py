"""The reference's bulk actions over HTTP (admin key): a lifecycle action over the tenants a
filter matches, a fund operation over one tenant's budgets. Rows split into succeeded,
failed and skipped; the gates (500 rows, `expected_count`) and bad requests change nothing;
a retry under the same key replays the first answer, another request under it is refused."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import allotment as al
from allotment.server.bulk import TenantBulkBody

from support.openapi import GOVERNANCE, validate
from support.served import ADMIN_KEY, Answer, Api, serving
from support.stores import START_MS, STORE_KINDS, make_store

USD = "USD_MICROCENTS"
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}
TENANTS, BUDGETS = "/v1/admin/tenants/bulk-action", "/v1/admin/budgets/bulk-action"


def call(url: str, path: str, body: Any) -> Answer:
    return Api(url).call("POST", path, body, check=False, headers=ADMIN)


def refused(answer: Answer, status: int, code: str, *words: str) -> None:
    assert (answer.status, answer.body["error"]) == (status, code), answer.body
    for word in words:
        assert word in answer.body["message"], (word, answer.body["message"])


def state(guard: al.Guard) -> Any:
    """Everything a bulk action could change: each tenant's ledgers and audit trail."""
    return {name: (guard.balances(f"tenant:{name}"), guard.audit(name))
            for name in guard.tenants()}


def status_of(served: Any, tenant: str) -> str:
    answer = Api(served.url).call("GET", f"/v1/admin/tenants/{tenant}", check=False,
                                  headers=ADMIN)
    return str(answer.body["status"])


def tenants(guard: al.Guard) -> None:
    """acme and beta with budgets, empty without any, gone closed: all registered."""
    for name in ("acme", "beta", "empty", "gone"):
        guard.register_tenant(name, name.title())
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme/workspace:w", usd=1)
    guard.set_budget("tenant:beta", usd=5)
    guard.set_budget("tenant:gone", usd=5)
    guard.close_tenant("gone")


def test_tenants_are_suspended_reactivated_and_closed_in_bulk(served: Any) -> None:
    guard = served.guard
    tenants(guard)
    suspend = {"filter": {"status": "ACTIVE"}, "action": "SUSPEND", "expected_count": 3,
               "idempotency_key": "suspend-1"}
    first = call(served.url, TENANTS, suspend)
    assert first.status == 200, first.body
    assert first.body == {
        "action": "SUSPEND", "total_matched": 3,
        "succeeded": [{"id": "acme"}, {"id": "beta"}],
        "failed": [{"id": "empty", "error_code": "INVALID_TRANSITION",
                    "message": first.body["failed"][0]["message"]}],
        "skipped": [], "idempotency_key": "suspend-1"}
    assert "no open budgets" in first.body["failed"][0]["message"]
    assert [status_of(served, name) for name in ("acme", "beta", "gone")] == [
        "SUSPENDED", "SUSPENDED", "CLOSED"]
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme"), al.Action("llm.completion", "m"),
                      al.usd("0.01"))
    frozen = [r for r in guard.audit("acme") if r.type == al.AuditType.TENANT_SUSPENDED]
    assert [(r.actor, r.reason, r.detail) for r in frozen] == [
        ("admin-key", "bulk action suspend-1", {"budgets": 2})]  # one step for the tenant
    before = state(guard)
    again = call(served.url, TENANTS, {**suspend})  # a retry: the first answer, nothing redone
    assert (again.status, again.body) == (200, first.body)
    assert state(guard) == before
    refused(call(served.url, TENANTS, {**suspend, "action": "CLOSE"}), 409,
            "IDEMPOTENCY_MISMATCH", "suspend-1")
    assert state(guard) == before

    back = call(served.url, TENANTS, {"filter": {"search": "AC"}, "action": "REACTIVATE",
                                  "idempotency_key": "back-1"})
    assert (back.body["succeeded"], back.body["total_matched"]) == ([{"id": "acme"}], 1)
    assert status_of(served, "acme") == "ACTIVE"
    reactivate_all = call(served.url, TENANTS, {"filter": {"search": "e"}, "action": "REACTIVATE",
                                            "idempotency_key": "back-2"}).body
    assert (reactivate_all["succeeded"], reactivate_all["skipped"]) == (
        [{"id": "beta"}], [{"id": "acme", "reason": "ALREADY_IN_TARGET_STATE"},
                           {"id": "empty", "reason": "ALREADY_IN_TARGET_STATE"}])
    assert [row["id"] for row in reactivate_all["failed"]] == ["gone"]
    assert reactivate_all["failed"][0]["error_code"] == "INVALID_TRANSITION"

    close = call(served.url, TENANTS, {"filter": {"search": "beta"}, "action": "CLOSE",
                                   "idempotency_key": "close-1"}).body
    assert close["succeeded"] == [{"id": "beta"}]
    assert status_of(served, "beta") == "CLOSED"
    closed = [r for r in guard.audit("beta") if r.type == al.AuditType.TENANT_CLOSED]
    assert [(r.actor, r.reason) for r in closed] == [("admin-key", "bulk action close-1")]
    again = call(served.url, TENANTS, {"filter": {"status": "CLOSED"}, "action": "CLOSE",
                                   "idempotency_key": "close-2"}).body
    assert again["skipped"] == [{"id": "beta", "reason": "ALREADY_IN_TARGET_STATE"},
                                {"id": "gone", "reason": "ALREADY_IN_TARGET_STATE"}]
    nobody = call(served.url, TENANTS, {"filter": {"parent_tenant_id": "acme"},
                                    "action": "CLOSE", "idempotency_key": "close-3"}).body
    assert (nobody["total_matched"], nobody["succeeded"]) == (0, [])  # no tenant has a parent
    ignored = call(served.url, TENANTS, {"filter": {"search": "acme", "observe_mode": "x"},
                                     "action": "SUSPEND", "idempotency_key": "s-2"}).body
    assert ignored["succeeded"] == [{"id": "acme"}]  # the extension's filter is ignored


def test_the_gates_and_bad_requests_change_nothing(served: Any) -> None:
    guard = served.guard
    tenants(guard)
    before = state(guard)
    wrong = {"filter": {"status": "ACTIVE"}, "action": "SUSPEND", "expected_count": 2,
             "idempotency_key": "k-1"}
    answer = call(served.url, TENANTS, wrong)
    refused(answer, 409, "COUNT_MISMATCH", "expected_count 2", "3 rows")
    assert answer.body["details"] == {"total_matched": 3}
    for body, words in (
            ({"filter": {}, "action": "CLOSE", "idempotency_key": "k-2"}, ["at least one"]),
            ({"filter": {"search": " "}, "action": "CLOSE", "idempotency_key": "k-2"},
             ["at least one"]),
            ({"filter": {"observe_mode": "OBSERVE"}, "action": "CLOSE",  # ignored: empty
              "idempotency_key": "k-2"}, ["at least one"]),
            ({"filter": {"status": "GONE"}, "action": "CLOSE", "idempotency_key": "k-2"},
             ["status"]),
            ({"filter": {"status": "ACTIVE"}, "action": "DELETE", "idempotency_key": "k-2"},
             ["action"]),
            ({"filter": {"status": "ACTIVE"}, "action": "CLOSE"}, ["idempotency_key"]),
            ({"filter": {"status": "ACTIVE"}, "action": "CLOSE", "idempotency_key": "k-2",
              "expected_count": 1.0}, ["expected_count"]),
            ({"filter": {"status": "ACTIVE", "colour": 1}, "action": "CLOSE",
              "idempotency_key": "k-2"}, ["colour"])):
        refused(call(served.url, TENANTS, body), 400, "INVALID_REQUEST", *words)
    assert state(guard) == before
    valid = {"filter": {"search": "acme"}, "action": "REACTIVATE", "idempotency_key": "k-2"}
    assert call(served.url, TENANTS, valid).status == 200  # checked before k-2 was claimed
    fixed = call(served.url, TENANTS, {**wrong, "expected_count": 3})  # the refusal let k-1 go
    assert fixed.status == 200 and fixed.body["total_matched"] == 3


def test_more_than_500_rows_are_refused(served: Any) -> None:
    guard = served.guard
    for i in range(501):
        guard.register_tenant(f"t-{i:03d}", "Tenant")
    answer = call(served.url, TENANTS, {"filter": {"search": "t-"}, "action": "CLOSE",
                                    "idempotency_key": "all"})
    refused(answer, 400, "LIMIT_EXCEEDED", "501", "500")
    assert answer.body["details"] == {"total_matched": 501}
    assert status_of(served, "t-000") == "ACTIVE"


def budgets(guard: al.Guard) -> None:
    """acme: $10 at its root, $1 in each of two workspaces, tokens at the root; beta: $5."""
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme/workspace:a", usd=1)
    guard.set_budget("tenant:acme/workspace:b", usd=1)
    guard.set_budget("tenant:acme", tokens=1_000)
    guard.set_budget("tenant:beta", usd=5)


def remaining(guard: al.Guard, tenant: str = "acme") -> dict[str, int]:
    return {f"{r.scope}|{r.unit.value}": r.remaining
            for r in guard.balances(f"tenant:{tenant}")}


def test_one_tenants_budgets_are_funded_in_bulk(served: Any) -> None:
    guard = served.guard
    budgets(guard)
    beta = state(guard)["beta"]
    credit = {"filter": {"tenant_id": "acme", "unit": USD}, "action": "CREDIT",
              "amount": {"unit": USD, "amount": 100}, "reason": "goodwill",
              "expected_count": 3, "idempotency_key": "credit-1"}
    first = call(served.url, BUDGETS, credit)
    ids = ["tenant:acme/workspace:a|USD_MICROCENTS", "tenant:acme/workspace:b|USD_MICROCENTS",
           "tenant:acme|USD_MICROCENTS"]
    assert first.body == {"action": "CREDIT", "total_matched": 3,
                          "succeeded": [{"id": i} for i in ids], "failed": [],
                          "skipped": [], "idempotency_key": "credit-1"}
    assert remaining(guard) == {"tenant:acme|USD_MICROCENTS": 1_000_000_100,
                                "tenant:acme|TOKENS": 1_000,
                                "tenant:acme/workspace:a|USD_MICROCENTS": 100_000_100,
                                "tenant:acme/workspace:b|USD_MICROCENTS": 100_000_100}
    funded = [r for r in guard.audit("acme") if r.type == al.AuditType.BUDGET_FUNDED]
    assert [(r.actor, r.reason) for r in funded] == [("admin-key", "goodwill")] * 3
    before = state(guard)
    assert call(served.url, BUDGETS, credit).body == first.body  # replayed, not funded again
    assert state(guard) == before

    debit = call(served.url, BUDGETS, {
        "filter": {"tenant_id": "acme", "scope_prefix": "tenant:acme"}, "action": "DEBIT",
        "amount": {"unit": USD, "amount": 200_000_000}, "idempotency_key": "debit-1"}).body
    assert debit["succeeded"] == [{"id": "tenant:acme|USD_MICROCENTS"}]
    assert {(row["id"], row["error_code"]) for row in debit["failed"]} == {
        (ids[0], "BUDGET_EXCEEDED"), (ids[1], "BUDGET_EXCEEDED"),
        ("tenant:acme|TOKENS", "INVALID_TRANSITION")}
    assert remaining(guard)["tenant:acme|USD_MICROCENTS"] == 800_000_100
    repay = call(served.url, BUDGETS, {
        "filter": {"tenant_id": "acme", "scope_prefix": "tenant:acme/workspace:a"},
        "action": "REPAY_DEBT", "amount": {"unit": USD, "amount": 1},
        "idempotency_key": "repay-1"}).body
    assert repay["skipped"] == [{"id": ids[0], "reason": "ALREADY_IN_TARGET_STATE"}]
    reset = call(served.url, BUDGETS, {
        "filter": {"tenant_id": "acme", "unit": "TOKENS"}, "action": "RESET_SPENT",
        "amount": {"unit": "TOKENS", "amount": 50}, "spent": {"unit": "TOKENS", "amount": 5},
        "idempotency_key": "reset-1"}).body
    assert reset["succeeded"] == [{"id": "tenant:acme|TOKENS"}]
    assert remaining(guard)["tenant:acme|TOKENS"] == 45
    assert state(guard)["beta"] == beta  # another tenant's budgets: never matched

    guard.freeze("tenant:acme/workspace:b")
    unchecked = {k: v for k, v in credit.items() if k != "expected_count"}
    frozen = call(served.url, BUDGETS, {**unchecked, "idempotency_key": "credit-3"}).body
    assert [(row["id"], row["error_code"]) for row in frozen["failed"]] == [
        (ids[1], "INVALID_TRANSITION")]
    assert "FROZEN" in frozen["failed"][0]["message"]
    guard.close_tenant("acme")
    closed = call(served.url, BUDGETS, {**credit, "idempotency_key": "credit-2"}).body
    assert {row["error_code"] for row in closed["failed"]} == {"TENANT_CLOSED"}


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"amount": None}, "INVALID_REQUEST", ["amount", "required"]),
    ({"spent": {"unit": USD, "amount": 1}}, "INVALID_REQUEST", ["RESET_SPENT"]),
    ({"action": "RESET_SPENT", "spent": {"unit": "TOKENS", "amount": 1}}, "UNIT_MISMATCH",
     ["spent"]),
    ({"amount": {"unit": USD, "amount": 1.5}}, "INVALID_REQUEST", ["amount"]),
    ({"amount": {"unit": USD, "amount": "1"}}, "INVALID_REQUEST", ["amount"]),
    ({"filter": {"unit": USD}}, "INVALID_REQUEST", ["tenant_id"]),
    ({"filter": {"tenant_id": "acme", "utilization_min": 0.9, "utilization_max": 0.1}},
     "INVALID_REQUEST", ["utilization_min"]),
    ({"filter": {"tenant_id": "acme", "scope_prefix": "tenant:beta"}}, "INVALID_REQUEST",
     ["scope_prefix", "beta"]),
    ({"filter": {"tenant_id": "acme", "scope_prefix": "workspace:a"}}, "INVALID_REQUEST",
     ["scope"]),
    ({"filter": {"tenant_id": "Not A Tenant"}}, "INVALID_REQUEST", ["tenant_id"]),
])
def test_a_bad_budget_bulk_request_changes_nothing(served: Any, change: dict[str, Any],
                                                   code: str, words: list[str]) -> None:
    guard = served.guard
    budgets(guard)
    before = state(guard)
    request = {"filter": {"tenant_id": "acme"}, "action": "CREDIT",
               "amount": {"unit": USD, "amount": 100}, "idempotency_key": "k-1", **change}
    refused(call(served.url, BUDGETS, {k: v for k, v in request.items() if v is not None}), 400,
            code, *words)
    assert state(guard) == before
    valid = {"filter": {"tenant_id": "acme"}, "action": "RESET",
             "amount": {"unit": "TOKENS", "amount": 10}, "idempotency_key": "k-1"}
    assert call(served.url, BUDGETS, valid).status == 200  # checked before k-1 was claimed


def test_concurrent_retries_run_the_action_once(served: Any) -> None:
    """Eight identical requests at once: one runs, the others wait for its answer (or come
    after it) and replay it; every ledger is credited once."""
    guard = served.guard
    for i in range(30):
        guard.set_budget(f"tenant:acme/workspace:w{i:02d}", usd=1)
    credit = {"filter": {"tenant_id": "acme"}, "action": "CREDIT",
              "amount": {"unit": USD, "amount": 7}, "idempotency_key": "together"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: call(served.url, BUDGETS, credit), range(8)))
    assert {answer.status for answer in answers} == {200}
    assert all(answer.body == answers[0].body for answer in answers)
    assert len(answers[0].body["succeeded"]) == 30
    assert {r.remaining for r in guard.balances("tenant:acme")} == {100_000_007}
    funded = [r for r in guard.audit("acme") if r.type == al.AuditType.BUDGET_FUNDED]
    assert len(funded) == 30


def test_a_retry_while_the_first_run_holds_the_key_is_503(served: Any) -> None:
    """The key held by a run that has not answered (claimed here straight on the guard the
    server shares): the retry waits its 5 s, then 503 with Retry-After; nothing changes."""
    guard = served.guard
    tenants(guard)
    request = {"filter": {"status": "ACTIVE"}, "action": "CLOSE", "idempotency_key": "held"}
    parsed = TenantBulkBody.model_validate(request).model_dump(mode="json")
    claim = guard.claim_once("tenants-bulk", "held", parsed)
    assert claim.owner is not None
    before = state(guard)
    answer = call(served.url, TENANTS, request)
    refused(answer, 503, "INTERNAL_ERROR", "still running")
    assert answer.headers["retry-after"] == "1"
    assert state(guard) == before
    guard.finish_once(claim, '{"kept": true}')
    assert call(served.url, TENANTS, request).body == {"kept": True}


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_run_repeated_after_its_claim_lapsed_never_funds_twice(kind: str) -> None:
    """Past the 15 minutes the key is free: the same request runs again and each ledger's
    fund replays (its key is derived from the request), so nothing is funded twice; another
    request under the bulk key then funds afresh."""
    clock = al.ManualClock(START_MS)
    store = make_store(kind, clock)
    guard = al.Guard(store)
    budgets(guard)
    credit = {"filter": {"tenant_id": "acme", "unit": USD}, "action": "CREDIT",
              "amount": {"unit": USD, "amount": 100}, "idempotency_key": "credit-1"}
    with serving(guard) as url:
        first = call(url, BUDGETS, credit)
        after_first = remaining(guard)
        clock.advance(15 * 60 * 1000)  # the claim and its answer lapse
        again = call(url, BUDGETS, credit)
        assert again.status == 200 and again.body["succeeded"] == first.body["succeeded"]
        assert remaining(guard) == after_first  # each fund replayed, none applied again
        clock.advance(15 * 60 * 1000)
        other = call(url, BUDGETS, {**credit, "amount": {"unit": USD, "amount": 5}})
        assert other.status == 200 and len(other.body["succeeded"]) == 3
    assert remaining(guard)["tenant:acme|USD_MICROCENTS"] == after_first[
        "tenant:acme|USD_MICROCENTS"] + 5
    store.close()


def test_webhook_subscriptions_are_paused_resumed_and_removed_in_bulk(served: Any) -> None:
    guard = served.guard
    tenants(guard)
    url = "/v1/admin/webhooks/bulk-action"
    a1 = guard.subscribe_webhook("https://hooks.example.com/a1", events="*", tenant="acme")
    a2 = guard.subscribe_webhook("https://hooks.example.com/a2",
                                 events=["budget.exhausted"], tenant="acme")
    b1 = guard.subscribe_webhook("https://other.example.com/b1", events="*", tenant="beta")
    pause = {"filter": {"tenant_id": "acme"}, "action": "PAUSE", "expected_count": 2,
             "idempotency_key": "pause-acme"}
    done = call(served.url, url, pause)
    assert done.status == 200, done.body
    validate("POST", url, 200, done.body, GOVERNANCE)
    assert (done.body["total_matched"], {r["id"] for r in done.body["succeeded"]}) == (
        2, {a1.id, a2.id})
    assert [w.enabled for w in guard.webhooks("acme")] == [False, False]
    assert guard.webhooks("beta")[0].enabled is True
    assert call(served.url, url, pause).body == done.body  # the same key: the same answer
    again = call(served.url, url, {**pause, "idempotency_key": "pause-again"})
    assert {r["id"] for r in again.body["skipped"]} == {a1.id, a2.id}
    resume = call(served.url, url, {"filter": {"search": "HOOKS.example.com/a1"},
                                    "action": "RESUME", "idempotency_key": "resume-a1"})
    assert [r["id"] for r in resume.body["succeeded"]] == [a1.id]
    removed = call(served.url, url, {"filter": {"event_type": "budget.exhausted",
                                                "status": "PAUSED"},
                                     "action": "DELETE", "idempotency_key": "drop"})
    assert [r["id"] for r in removed.body["succeeded"]] == [a2.id]
    assert {w.id for w in guard.webhooks("acme")} == {a1.id}
    before = (guard.webhooks("acme"), guard.webhooks("beta"))
    refused(call(served.url, url, {"filter": {}, "action": "PAUSE", "idempotency_key": "k"}),
            400, "INVALID_REQUEST", "filter")
    refused(call(served.url, url, {"filter": {"tenant_id": "beta"}, "action": "PAUSE",
                                   "expected_count": 5, "idempotency_key": "k2"}),
            409, "COUNT_MISMATCH")
    refused(call(served.url, url, {"filter": {"event_type": "budget.melted"},
                                   "action": "PAUSE", "idempotency_key": "k3"}),
            400, "INVALID_REQUEST", "event_type")
    refused(call(served.url, url, {"filter": {"tenant_id": "beta"}, "action": "MUTE",
                                   "idempotency_key": "k4"}), 400, "INVALID_REQUEST", "action")
    assert (guard.webhooks("acme"), guard.webhooks("beta")) == before
    assert b1.id in {w.id for w in guard.webhooks("beta")}
