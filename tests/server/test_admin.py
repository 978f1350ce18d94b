"""The reference admin plane's provisioning calls: the admin key creates keys and budgets
for any tenant; a tenant key with budgets:write manages budgets inside its own tenant only
(the enterprise admin moving money between departments); fund's five operations."""

from __future__ import annotations

from typing import Any

from support.served import ADMIN_KEY, Api

USD = "USD_MICROCENTS"
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}


def admin(served: Any) -> Api:
    return Api(served.url)


def budget(tenant: str, scope: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {"tenant_id": tenant, "scope": scope, "unit": USD,
            "allocated": {"unit": USD, "amount": amount}, **extra}


def test_the_admin_provisions_a_tenant_the_runtime_then_serves(served: Any) -> None:
    api = admin(served)
    made = api.post("/v1/admin/api-keys", {"tenant_id": "acme", "name": "worker",
                                           "permissions": ["reservations:create",
                                                           "reservations:commit",
                                                           "balances:read"]},
                    headers=ADMIN, check=False)
    assert made.status == 201, made.body
    secret = made.body["key_secret"]
    assert made.body["tenant_id"] == "acme" and secret.startswith(made.body["key_prefix"])
    ledger = api.post("/v1/admin/budgets", budget("acme", "tenant:acme", 100_000_000),
                      headers=ADMIN, check=False)
    assert ledger.status == 201, ledger.body
    assert ledger.body["remaining"] == {"unit": USD, "amount": 100_000_000}
    again = api.post("/v1/admin/budgets", budget("acme", "tenant:acme", 5), headers=ADMIN,
                     check=False)
    assert again.status == 409
    worker = Api(served.url, secret)
    held = worker.post("/v1/reservations", {
        "idempotency_key": "r", "subject": {"tenant": "acme"},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": USD, "amount": 1_000}})
    assert held.status == 200
    keys = api.get("/v1/admin/api-keys?tenant_id=acme", headers=ADMIN, check=False)
    assert [k["name"] for k in keys.body["keys"]] == ["worker"]
    revoked = api.call("DELETE", f"/v1/admin/api-keys/{made.body['key_id']}", headers=ADMIN,
                       check=False)
    assert revoked.body["status"] == "REVOKED"
    assert worker.get("/v1/balances?tenant=acme").status == 401


def test_admin_calls_need_the_admin_key(served: Any) -> None:
    tenant_key = served.tenant("acme")
    for key_header in ({}, {"X-Admin-API-Key": "guess"}):
        answer = admin(served).post("/v1/admin/api-keys", {"tenant_id": "acme", "name": "x"},
                                    headers=key_header, check=False)
        assert answer.status == 401
    answer = tenant_key.post("/v1/admin/api-keys", {"tenant_id": "acme", "name": "x"},
                             check=False)
    assert answer.status == 401
    assert len(served.guard.keys("acme")) == 1


def test_the_enterprise_admin_moves_money_inside_its_tenant_only(served: Any) -> None:
    guard = served.guard
    guard.set_budget("tenant:corp", usd=10_000)
    for department, usd in (("engineering", 5_000), ("marketing", 3_000), ("support", 2_000)):
        guard.set_budget(f"tenant:corp/workspace:{department}", usd=usd)
    guard.set_budget("tenant:rival", usd=1_000)
    owner = served.tenant("corp", usd=None, permissions=["budgets:write", "budgets:read",
                                                         "balances:read"])
    marketing = "tenant:corp/workspace:marketing"
    engineering = "tenant:corp/workspace:engineering"
    support_before = guard.balances("tenant:corp/workspace:support")
    moved = owner.post(f"/v1/admin/budgets/fund?scope={engineering}&unit={USD}",
                       {"operation": "DEBIT", "amount": 50_000_000_000,
                        "idempotency_key": "move-1-out"}, check=False)
    assert moved.status == 200, moved.body
    assert moved.body["new_allocated"]["amount"] == 450_000_000_000
    moved = owner.post(f"/v1/admin/budgets/fund?scope={marketing}&unit={USD}",
                       {"operation": "CREDIT", "amount": {"unit": USD,
                                                          "amount": 50_000_000_000},
                        "idempotency_key": "move-1-in"}, check=False)
    assert moved.status == 200
    looked = owner.get(f"/v1/admin/budgets/lookup?scope={marketing}&unit={USD}", check=False)
    assert looked.body["allocated"]["amount"] == 350_000_000_000
    assert guard.balances("tenant:corp/workspace:support") == support_before
    listed = owner.get("/v1/admin/budgets?scope_prefix=tenant:corp/workspace:marketing",
                       check=False)
    assert [row["scope"] for row in listed.body["ledgers"]] == [marketing]
    # As the reference: a tenant key's tenant_id is ignored on the list; its own tenant is
    # the one listed, and nothing of the other shows.
    ignored = owner.get("/v1/admin/budgets?tenant_id=rival", check=False)
    assert ignored.status == 200
    assert {row["tenant_id"] for row in ignored.body["ledgers"]} == {"corp"}
    rival_before = guard.balances("tenant:rival")
    for method, path, body in (
            ("POST", f"/v1/admin/budgets/fund?scope=tenant:rival&unit={USD}",
             {"operation": "CREDIT", "amount": 1}),
            ("GET", f"/v1/admin/budgets/lookup?scope=tenant:rival&unit={USD}", None),
            ("GET", "/v1/admin/budgets?scope_prefix=tenant:rival", None)):
        refused = owner.call(method, path, body, check=False)
        assert refused.status == 403, (path, refused.body)
    # A tenant key never names a tenant when creating a budget (the reference's 400).
    named = owner.post("/v1/admin/budgets", budget("rival", "tenant:rival/workspace:x", 1),
                       check=False)
    assert (named.status, named.body["error"]) == (400, "INVALID_REQUEST")
    created = owner.post("/v1/admin/budgets", {**budget("corp", "tenant:rival/workspace:x", 1),
                                               "tenant_id": None}, check=False)
    assert created.status in (400, 403)
    assert guard.balances("tenant:rival") == rival_before
    runtime_only = served.tenant("corp", usd=None)
    refused = runtime_only.post(f"/v1/admin/budgets/fund?scope={marketing}&unit={USD}",
                                {"operation": "CREDIT", "amount": 1}, check=False)
    assert refused.status == 403 and "budgets:write" in refused.body["message"]


def test_fund_operations_and_freeze(served: Any) -> None:
    api = admin(served)
    api.post("/v1/admin/budgets", budget("acme", "tenant:acme", 1_000), headers=ADMIN,
             check=False)
    where = f"scope=tenant:acme&unit={USD}&tenant_id=acme"

    def fund(operation: str, amount: int, **extra: Any) -> Any:
        return api.post(f"/v1/admin/budgets/fund?{where}",
                        {"operation": operation, "amount": amount, **extra}, headers=ADMIN,
                        check=False)

    assert fund("CREDIT", 500).body["new_allocated"]["amount"] == 1_500
    assert fund("DEBIT", 200).body["new_remaining"]["amount"] == 1_300
    assert fund("DEBIT", 5_000).status == 409
    assert fund("RESET", 800).body["new_allocated"]["amount"] == 800
    reset = fund("RESET_SPENT", 900, spent=100).body
    assert (reset["new_allocated"]["amount"], reset["new_spent"]["amount"]) == (900, 100)
    assert fund("REPAY_DEBT", 1).status == 400  # there is no debt to repay
    assert fund("SPEND", 1).status == 400
    frozen = api.post(f"/v1/admin/budgets/freeze?{where}", headers=ADMIN, check=False)
    assert frozen.body["status"] == "FROZEN"
    held = served.tenant("acme", usd=None).post("/v1/reservations", {
        "idempotency_key": "r", "subject": {"tenant": "acme"},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": USD, "amount": 1}})
    assert (held.status, held.body["error"]) == (409, "BUDGET_FROZEN")
    thawed = api.post(f"/v1/admin/budgets/unfreeze?{where}", headers=ADMIN, check=False)
    assert thawed.body["status"] == "ACTIVE"


def test_tenants_are_created_once(served: Any) -> None:
    api = admin(served)
    made = api.post("/v1/admin/tenants", {"tenant_id": "acme-corp", "name": "Acme"},
                    headers=ADMIN, check=False)
    assert made.status == 201 and made.body["tenant_id"] == "acme-corp"
    same = api.post("/v1/admin/tenants", {"tenant_id": "acme-corp", "name": "Acme"},
                    headers=ADMIN, check=False)
    assert same.status == 200 and same.body == made.body
    other = api.post("/v1/admin/tenants", {"tenant_id": "acme-corp", "name": "Other"},
                     headers=ADMIN, check=False)
    assert other.status == 409
    assert api.get("/v1/admin/tenants/acme-corp", headers=ADMIN, check=False).body == made.body
    assert api.get("/v1/admin/tenants/nobody", headers=ADMIN, check=False).status == 404
    for bad in ("ab", "Acme_Corp", "x" * 65):
        refused = api.post("/v1/admin/tenants", {"tenant_id": bad, "name": "n"},
                           headers=ADMIN, check=False)
        assert refused.status == 400, bad
