"""The reference admin plane's provisioning calls: the admin key creates keys and budgets
for any tenant; a tenant key with budgets:write manages budgets inside its own tenant only
(the enterprise admin moving money between departments); fund's five operations."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

import allotment as al
from allotment.clock import system_ms
from allotment.server.shapes import NO_EXPIRY, UNKNOWN_TIME

from support.served import ADMIN_KEY, Api, serving
from support.snapshots import snapshot
from support.stores import STORE_KINDS, make_store

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
    own = owner.get("/v1/admin/budgets?tenant_id=corp", check=False)
    assert {row["tenant_id"] for row in own.body["ledgers"]} == {"corp"}
    rival_before = guard.balances("tenant:rival")
    for method, path, body in (
            ("POST", f"/v1/admin/budgets/fund?scope=tenant:rival&unit={USD}",
             {"operation": "CREDIT", "amount": 1}),
            ("GET", f"/v1/admin/budgets/lookup?scope=tenant:rival&unit={USD}", None),
            ("GET", "/v1/admin/budgets?scope_prefix=tenant:rival", None),
            ("GET", "/v1/admin/budgets?tenant_id=rival", None),
            ("POST", f"/v1/admin/budgets/fund?scope=tenant:rival&unit={USD}&tenant_id=rival",
             {"operation": "CREDIT", "amount": 1}),
            ("POST", "/v1/admin/budgets", budget("rival", "tenant:rival/workspace:x", 1))):
        refused = owner.call(method, path, body, check=False)
        assert refused.status == 403, (path, refused.body)
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


# -- the reference schemas, field by field ------------------------------------------------
# Required and allowed fields as the governance admin OpenAPI (cycles-governance-admin
# v0.1.25) defines them; "closed" schemas have additionalProperties: false.

TENANT_REQUIRED = {"tenant_id", "name", "status", "created_at"}  # Tenant (closed)
TENANT_ALLOWED = TENANT_REQUIRED | {
    "parent_tenant_id", "default_commit_overage_policy", "default_reservation_ttl_ms",
    "max_reservation_ttl_ms", "max_reservation_extensions", "reservation_expiry_policy",
    "metadata", "updated_at", "suspended_at", "closed_at"}
API_KEY_REQUIRED = {"key_id", "tenant_id", "key_prefix", "status", "created_at",
                    "expires_at"}  # ApiKey (closed)
API_KEY_ALLOWED = API_KEY_REQUIRED | {
    "name", "description", "permissions", "scope_filter", "last_used_at", "revoked_at",
    "revoked_reason", "metadata"}
KEY_CREATED_REQUIRED = {"key_id", "key_secret", "key_prefix", "tenant_id", "created_at",
                        "expires_at"}  # ApiKeyCreateResponse (open)
LEDGER_REQUIRED = {"ledger_id", "scope", "unit", "allocated", "remaining", "status",
                   "created_at"}  # BudgetLedger (closed)
LEDGER_ALLOWED = LEDGER_REQUIRED | {
    "tenant_id", "scope_path", "reserved", "spent", "debt", "overdraft_limit",
    "is_over_limit", "commit_overage_policy", "rollover_policy", "period_start",
    "period_end", "updated_at"}
FUNDED_REQUIRED = {"operation", "previous_allocated", "new_allocated",
                   "previous_remaining", "new_remaining"}  # BudgetFundingResponse (open)
ERROR_REQUIRED = {"error", "message", "request_id"}  # ErrorResponse (open)
ERROR_CODES = {  # ErrorCode
    "INVALID_REQUEST", "UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "BUDGET_EXCEEDED",
    "RESERVATION_EXPIRED", "RESERVATION_FINALIZED", "IDEMPOTENCY_MISMATCH", "UNIT_MISMATCH",
    "OVERDRAFT_LIMIT_EXCEEDED", "DEBT_OUTSTANDING", "INTERNAL_ERROR", "TENANT_NOT_FOUND",
    "TENANT_SUSPENDED", "TENANT_CLOSED", "BUDGET_NOT_FOUND", "BUDGET_FROZEN",
    "POLICY_VIOLATION", "INSUFFICIENT_PERMISSIONS", "KEY_REVOKED", "KEY_EXPIRED",
    "DUPLICATE_RESOURCE", "BUDGET_CLOSED", "WEBHOOK_NOT_FOUND", "WEBHOOK_URL_INVALID",
    "EVENT_NOT_FOUND", "REPLAY_IN_PROGRESS", "COUNT_MISMATCH", "LIMIT_EXCEEDED"}
AS_ADMIN: dict[str, Any] = {"headers": ADMIN, "check": False}
DATE_TIMES = {"created_at", "expires_at", "period_start", "period_end", "timestamp",
              "updated_at"}
AMOUNTS = {"allocated", "remaining", "reserved", "spent", "debt", "overdraft_limit"}


def moment(text: str) -> datetime:
    """An RFC 3339 date-time with its offset, as a strict client parses it."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, text
    return parsed


def shaped(body: dict[str, Any], required: set[str], allowed: set[str] | None = None
           ) -> dict[str, Any]:
    """`body` carries every required field, nothing a closed schema lacks, and no null."""
    assert required <= body.keys(), required - body.keys()
    if allowed is not None:
        assert body.keys() <= allowed, body.keys() - allowed
    assert None not in body.values(), body
    for name in DATE_TIMES & body.keys():
        moment(body[name])
    for name in AMOUNTS & body.keys():
        assert set(body[name]) == {"unit", "amount"} and type(body[name]["amount"]) is int
    return body


def error(answer: Any, status: int) -> str:
    assert answer.status == status, answer.body
    shaped(answer.body, ERROR_REQUIRED)
    assert answer.body["error"] in ERROR_CODES, answer.body
    return str(answer.body["error"])


def test_tenants_answer_the_tenant_schema(served: Any) -> None:
    api = admin(served)
    made = api.post("/v1/admin/tenants", {"tenant_id": "acme", "name": "Acme"}, headers=ADMIN,
                    check=False)
    shaped(made.body, TENANT_REQUIRED, TENANT_ALLOWED)
    shaped(api.get("/v1/admin/tenants/acme", **AS_ADMIN).body, TENANT_REQUIRED,
           TENANT_ALLOWED)
    served.guard.set_budget("tenant:unrecorded", usd=1)  # made by the library, no record
    served.guard.set_budget("tenant:acme", usd=1)  # the store lists tenants with a change
    found = api.get("/v1/admin/tenants/unrecorded", **AS_ADMIN)
    assert shaped(found.body, TENANT_REQUIRED, TENANT_ALLOWED)["created_at"] == UNKNOWN_TIME
    listed = api.get("/v1/admin/tenants", **AS_ADMIN).body
    assert {"tenants"} <= listed.keys()  # TenantListResponse
    assert sorted(shaped(t, TENANT_REQUIRED, TENANT_ALLOWED)["tenant_id"]
                  for t in listed["tenants"]) == ["acme", "unrecorded"]
    assert api.get("/v1/admin/tenants?status=CLOSED", **AS_ADMIN).body["tenants"] == []
    found = api.get("/v1/admin/tenants?search=ACM", **AS_ADMIN).body["tenants"]
    assert [t["tenant_id"] for t in found] == ["acme"]
    assert error(api.get(f"/v1/admin/tenants?search={'x' * 129}", **AS_ADMIN), 400)
    assert error(api.get("/v1/admin/tenants/nobody", **AS_ADMIN), 404) == "TENANT_NOT_FOUND"
    assert error(api.get("/v1/admin/tenants/acme", check=False), 401) == "UNAUTHORIZED"


def test_keys_answer_the_api_key_schemas(served: Any) -> None:
    api = admin(served)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    forever = api.post("/v1/admin/api-keys", {"tenant_id": "acme", "name": "forever"},
                       **AS_ADMIN).body
    shaped(forever, KEY_CREATED_REQUIRED)
    assert forever["expires_at"] == NO_EXPIRY  # no expiry: after any real one
    assert forever["key_prefix"] == f"alk_{forever['key_id']}"
    assert forever["key_secret"].startswith(forever["key_prefix"] + ".")
    assert moment(forever["created_at"]) >= before
    dated = api.post("/v1/admin/api-keys", {"tenant_id": "acme", "name": "dated",
                                            "expires_at": "2031-05-01T12:00:00Z"},
                     **AS_ADMIN).body
    assert moment(shaped(dated, KEY_CREATED_REQUIRED)["expires_at"]) == datetime(
        2031, 5, 1, 12, tzinfo=timezone.utc)
    api.post("/v1/admin/api-keys", {"tenant_id": "rival", "name": "theirs"}, **AS_ADMIN)
    listed = api.get("/v1/admin/api-keys?tenant_id=acme", **AS_ADMIN).body
    assert {"keys"} <= listed.keys()  # ApiKeyListResponse
    views = {k["name"]: shaped(k, API_KEY_REQUIRED, API_KEY_ALLOWED) for k in listed["keys"]}
    assert sorted(views) == ["dated", "forever"]
    assert views["forever"]["key_prefix"] == forever["key_prefix"]
    assert views["forever"]["expires_at"] == NO_EXPIRY
    assert views["dated"]["expires_at"] == dated["expires_at"]
    assert "key_secret" not in views["forever"]
    assert error(api.get("/v1/admin/api-keys", **AS_ADMIN), 400)
    found = api.get("/v1/admin/api-keys?tenant_id=acme&search=FOREV", headers=ADMIN,
                    check=False).body["keys"]
    assert [k["name"] for k in found] == ["forever"]
    revoked = api.call("DELETE", f"/v1/admin/api-keys/{forever['key_id']}", **AS_ADMIN)
    assert revoked.status == 200
    view = shaped(revoked.body, API_KEY_REQUIRED, API_KEY_ALLOWED)
    assert (view["status"], view["key_prefix"]) == ("REVOKED", forever["key_prefix"])
    again = api.call("DELETE", f"/v1/admin/api-keys/{forever['key_id']}", **AS_ADMIN)
    assert error(again, 409) == "KEY_REVOKED"
    ghost = f"acme:{'0' * 32}"
    assert error(api.call("DELETE", f"/v1/admin/api-keys/{ghost}", **AS_ADMIN), 404)
    active = api.get("/v1/admin/api-keys?tenant_id=acme&status=ACTIVE", **AS_ADMIN)
    assert [k["name"] for k in active.body["keys"]] == ["dated"]
    assert error(api.get("/v1/admin/api-keys?status=GONE", **AS_ADMIN), 400)
    assert error(api.post("/v1/admin/api-keys", {"tenant_id": "acme"}, **AS_ADMIN), 400)


def test_budgets_answer_the_ledger_and_funding_schemas(served: Any) -> None:
    api = admin(served)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    made = api.post("/v1/admin/budgets", budget("acme", "tenant:acme", 1_000), **AS_ADMIN)
    assert made.status == 201
    created = shaped(made.body, LEDGER_REQUIRED, LEDGER_ALLOWED)["created_at"]
    assert before <= moment(created) <= datetime.now(timezone.utc)
    where = f"scope=tenant:acme&unit={USD}"
    # lookup and freeze name the budget by scope and unit alone (no tenant_id), as the
    # reference; fund with the admin key needs tenant_id.
    looked = api.get(f"/v1/admin/budgets/lookup?{where}", **AS_ADMIN)
    assert shaped(looked.body, LEDGER_REQUIRED, LEDGER_ALLOWED) == made.body
    funded = api.post(f"/v1/admin/budgets/fund?{where}&tenant_id=acme",
                      {"operation": "RESET_SPENT", "amount": {"unit": USD, "amount": 900},
                       "spent": {"unit": USD, "amount": 100}, "reason": "new period"},
                      **AS_ADMIN)
    assert funded.status == 200, funded.body
    shaped(funded.body, FUNDED_REQUIRED)
    assert (funded.body["new_allocated"]["amount"], funded.body["new_spent"]["amount"]) == (
        900, 100)
    assert error(api.post(f"/v1/admin/budgets/fund?{where}",
                          {"operation": "CREDIT", "amount": 1}, **AS_ADMIN), 400)
    assert error(api.post(f"/v1/admin/budgets/fund?{where}&tenant_id=acme",
                          {"operation": "CREDIT", "amount": {"unit": "TOKENS", "amount": 1}},
                          **AS_ADMIN), 400) == "UNIT_MISMATCH"
    frozen = api.post(f"/v1/admin/budgets/freeze?{where}", {"reason": "audit"},
                      **AS_ADMIN)
    assert shaped(frozen.body, LEDGER_REQUIRED, LEDGER_ALLOWED)["status"] == "FROZEN"
    assert frozen.body["created_at"] == created  # the definition's time, not the change's
    assert error(api.post(f"/v1/admin/budgets/freeze?{where}", **AS_ADMIN), 409)
    thawed = api.post(f"/v1/admin/budgets/unfreeze?{where}", **AS_ADMIN)
    assert shaped(thawed.body, LEDGER_REQUIRED, LEDGER_ALLOWED)["status"] == "ACTIVE"
    assert error(api.post(f"/v1/admin/budgets/unfreeze?{where}", **AS_ADMIN), 409)
    assert error(api.post(f"/v1/admin/budgets/freeze?{where}&tenant_id=rival",
                          **AS_ADMIN), 400)
    status = served.guard.audit("acme", types=["budget.status_changed"])
    assert [record.reason for record in status][:1] == ["audit"]
    missing = api.get("/v1/admin/budgets/lookup?scope=tenant:acme&unit=TOKENS",
                      **AS_ADMIN)
    assert error(missing, 404) == "BUDGET_NOT_FOUND"
    served.guard.set_budget("tenant:acme/workspace:ops", usd=1, period="month")
    served.guard.set_budget("tenant:rival", tokens=5)
    listed = api.get("/v1/admin/budgets", **AS_ADMIN).body  # every tenant's
    assert set(listed) <= {"ledgers", "next_cursor", "has_more"}  # BudgetListResponse
    rows = {(r["tenant_id"], r["scope"]): shaped(r, LEDGER_REQUIRED, LEDGER_ALLOWED)
            for r in listed["ledgers"]}
    assert sorted(rows) == [("acme", "tenant:acme"), ("acme", "tenant:acme/workspace:ops"),
                            ("rival", "tenant:rival")]
    monthly = rows[("acme", "tenant:acme/workspace:ops")]
    start, end = moment(monthly["period_start"]), moment(monthly["period_end"])
    assert (start.day, start.hour, end.day) == (1, 0, 1) and start <= moment(
        monthly["created_at"]) < end
    only = api.get("/v1/admin/budgets?tenant_id=rival", **AS_ADMIN).body["ledgers"]
    assert [r["scope"] for r in only] == ["tenant:rival"]
    for query, scopes in (("unit=TOKENS", ["tenant:rival"]), ("has_debt=true", []),
                          ("utilization_min=0.1", ["tenant:acme"]),
                          ("search=OPS", ["tenant:acme/workspace:ops"])):
        found = api.get(f"/v1/admin/budgets?{query}", **AS_ADMIN).body["ledgers"]
        assert sorted(r["scope"] for r in found) == scopes, query
    for query in ("unit=EUROS", "status=OPEN", "over_limit=yes", "utilization_min=2",
                  "utilization_min=0.5&utilization_max=0.1", f"search={'x' * 129}"):
        assert error(api.get(f"/v1/admin/budgets?{query}", **AS_ADMIN), 400), query


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_budget_is_dated_only_while_its_definition_is_on_record(kind: str) -> None:
    """Once the audit log has dropped a tenant's oldest records, the first `budget.set`
    kept may be a later change of the budget, not its definition: the time is unknown."""
    store = make_store(kind, system_ms, audit_retention=5)
    guard = al.Guard(store)
    try:
        with serving(guard) as url:
            api = Api(url)
            guard.set_budget("tenant:acme", usd=1)
            guard.set_budget("tenant:acme/workspace:a", usd=1)
            where = f"scope=tenant:acme&unit={USD}"
            dated = api.get(f"/v1/admin/budgets/lookup?{where}", **AS_ADMIN).body
            assert moment(dated["created_at"]) > moment(UNKNOWN_TIME)
            for _ in range(300):  # the log keeps about the newest five (Redis: a few more)
                guard.fund("tenant:acme/workspace:a", "CREDIT",
                           al.Amount(al.Unit.USD_MICROCENTS, 1))
            guard.set_budget("tenant:acme", usd=2)  # a change, kept on record
            assert guard.audit("acme", limit=1_000)[0].seq > 1
            later = api.get(f"/v1/admin/budgets/lookup?{where}", **AS_ADMIN).body
            assert later["created_at"] == UNKNOWN_TIME
            assert later["allocated"]["amount"] == 200_000_000
    finally:
        store.close()


def test_a_periodic_ledger_names_its_current_period(served: Any) -> None:
    periods = ("minute", "hour", "day", "week", "month", "year")
    for period in periods:
        served.guard.set_budget(f"tenant:acme/workspace:{period}", usd=1, period=period)
    served.guard.set_budget("tenant:acme", tokens=10, per="run")  # a template
    now = datetime.now(timezone.utc)
    rows = admin(served).get("/v1/admin/budgets?tenant_id=acme", **AS_ADMIN).body["ledgers"]
    bounds = {r["scope"].rpartition(":")[2]: (moment(r["period_start"]),
                                              moment(r["period_end"]))
              for r in rows if "period_start" in r}
    assert sorted(bounds) == sorted(periods)
    for period, (start, end) in bounds.items():
        assert start <= now < end, period
    assert bounds["week"][0].weekday() == 0 and bounds["year"][0].timetuple().tm_yday == 1
    held = served.tenant("acme", usd=None).post("/v1/reservations", {
        "idempotency_key": "r", "subject": {"tenant": "acme", "dimensions": {"run": "r1"}},
        "action": {"kind": "tool", "name": "t"}, "estimate": {"unit": "TOKENS", "amount": 1}},
        check=False)
    assert held.status == 200, held.body
    run = admin(served).get("/v1/admin/budgets?tenant_id=acme&unit=TOKENS", **AS_ADMIN)
    template = served.guard.audit("acme", types=["budget.set"])[-1]
    assert [(r["scope"], moment(r["created_at"])) for r in run.body["ledgers"]] == [
        ("tenant:acme/run:r1", datetime.fromtimestamp(template.at_ms / 1000, timezone.utc))]


# -- a budget's terms (PATCH) --------------------------------------------------------------

TOKENS_AT_ACME = "/v1/admin/budgets?scope=tenant:acme&unit=TOKENS"
LLM = al.Action("llm.completion", "openai:gpt-4o")


def held(worker: Api, key: str, tokens: int) -> Any:
    return worker.post("/v1/reservations", {
        "idempotency_key": key, "subject": {"tenant": "acme"},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": "TOKENS", "amount": tokens}}, check=False)


def test_patch_sets_a_budgets_terms_and_recomputes_its_over_limit_flag(served: Any) -> None:
    """A budget in debt past a lowered overdraft limit refuses reservations; raised above
    the debt again, it takes them; the commit overage policy changes what a commit above
    its estimate may do. Each answer is the budget as lookup shows it."""
    api, guard = admin(served), served.guard
    guard.set_budget("tenant:acme", tokens=1_000, overdraft_limit=100,
                     overage_policy="ALLOW_WITH_OVERDRAFT")
    guard.reserve(al.Subject(tenant="acme"), LLM, al.tokens(900)).commit(al.tokens(1_050))
    guard.fund("tenant:acme", "CREDIT", al.tokens(500))  # room again; 50 still owed
    worker = served.tenant("acme", usd=None)
    lowered = api.call("PATCH", TOKENS_AT_ACME, {"overdraft_limit": {
        "unit": "TOKENS", "amount": 10}}, **AS_ADMIN)
    assert lowered.status == 200, lowered.body
    view = shaped(lowered.body, LEDGER_REQUIRED, LEDGER_ALLOWED)
    assert (view["overdraft_limit"]["amount"], view["debt"]["amount"],
            view["is_over_limit"]) == (10, 50, True)
    assert (view["allocated"]["amount"], view["spent"]["amount"]) == (1_500, 1_000)
    assert api.get("/v1/admin/budgets/lookup?scope=tenant:acme&unit=TOKENS",
                   **AS_ADMIN).body == view
    refused = held(worker, "r1", 100)
    assert (refused.status, refused.body["error"]) == (409, "OVERDRAFT_LIMIT_EXCEEDED")
    raised = api.call("PATCH", f"{TOKENS_AT_ACME}&tenant_id=acme", {
        "overdraft_limit": {"unit": "TOKENS", "amount": 60}}, **AS_ADMIN)
    assert (raised.body["overdraft_limit"]["amount"], raised.body["is_over_limit"]) == (
        60, False)
    assert held(worker, "r2", 100).status == 200
    strict = api.call("PATCH", TOKENS_AT_ACME, {"commit_overage_policy": "REJECT"},
                      **AS_ADMIN)
    assert strict.status == 200 and strict.body["overdraft_limit"]["amount"] == 60
    small = held(worker, "r3", 10).body["reservation_id"]
    over = {"idempotency_key": "c3", "actual": {"unit": "TOKENS", "amount": 1_000}}
    refused = worker.post(f"/v1/reservations/{small}/commit", over, check=False)
    assert (refused.status, refused.body["error"]) == (409, "BUDGET_EXCEEDED")
    api.call("PATCH", TOKENS_AT_ACME, {"commit_overage_policy": "ALLOW_WITH_OVERDRAFT",
                                       "overdraft_limit": {"unit": "TOKENS",
                                                           "amount": 1_000}}, **AS_ADMIN)
    committed = worker.post(f"/v1/reservations/{small}/commit", {**over,
                                                                 "idempotency_key": "c4"})
    assert committed.status == 200, committed.body
    record = guard.audit("acme", types=["budget.updated"])[-1]
    assert (record.actor, record.detail["overage_policy"]) == ("admin-key",
                                                               "ALLOW_WITH_OVERDRAFT")


def test_patch_is_the_admins_and_refuses_what_it_cannot_do_changing_nothing(
        served: Any) -> None:
    api, guard = admin(served), served.guard
    guard.set_budget("tenant:acme", tokens=1_000, overdraft_limit=5)
    guard.set_budget("tenant:acme", usd=1)
    guard.set_budget("tenant:rival", tokens=1_000)
    owner = served.tenant("acme", usd=None, permissions=["admin:write", "budgets:write"])
    rival = served.tenant("rival", usd=None, permissions=["admin:write"])
    before = {t: snapshot(guard.store, t) for t in ("acme", "rival")}
    terms = {"overdraft_limit": {"unit": "TOKENS", "amount": 1}}
    for tenant_key in (owner, rival):  # a tenant key, even admin:write: admin key only
        assert error(tenant_key.call("PATCH", TOKENS_AT_ACME, terms, check=False), 401)
    assert error(api.call("PATCH", TOKENS_AT_ACME, terms, check=False), 401)  # no key
    assert error(api.call("PATCH", TOKENS_AT_ACME, terms, headers={
        "X-Admin-API-Key": "guess"}, check=False), 401)
    assert error(api.call("PATCH", "/v1/admin/budgets?scope=tenant:acme/workspace:none"
                          "&unit=TOKENS", terms, **AS_ADMIN), 404) == "BUDGET_NOT_FOUND"
    assert error(api.call("PATCH", "/v1/admin/budgets?scope=tenant:acme&unit=CREDITS",
                          {"commit_overage_policy": "REJECT"}, **AS_ADMIN),
                 404) == "BUDGET_NOT_FOUND"
    for path in (f"{TOKENS_AT_ACME}&tenant_id=rival", "/v1/admin/budgets?scope=tenant:acme",
                 "/v1/admin/budgets?unit=TOKENS", "/v1/admin/budgets?scope=tenant:acme"
                 "&unit=EUROS", "/v1/admin/budgets?scope=tenant:acme/run:r1&unit=TOKENS"):
        assert error(api.call("PATCH", path, terms, **AS_ADMIN), 400), path
    for body, field in (
            ({}, "overdraft_limit"),
            ({"overdraft_limit": {"unit": "TOKENS", "amount": 1}, "status": "FROZEN"},
             "status"),
            ({"overdraft_limit": {"unit": "TOKENS", "amount": 1.5}}, "amount"),
            ({"overdraft_limit": {"unit": "TOKENS", "amount": "1"}}, "amount"),
            ({"overdraft_limit": {"unit": "TOKENS", "amount": -1}}, "amount"),
            ({"overdraft_limit": {"unit": "TOKENS", "amount": 2**53}}, "amount"),
            ({"overdraft_limit": 1}, "overdraft_limit"),
            ({"overdraft_limit": {"unit": "TOKENS"}}, "amount"),
            ({"commit_overage_policy": "SOMETIMES"}, "commit_overage_policy"),
            ({"commit_overage_policy": "REJECT", "metadata": {"team": "a"}}, "metadata"),
            ([{"commit_overage_policy": "REJECT"}], "object")):
        refused = api.call("PATCH", TOKENS_AT_ACME, body, **AS_ADMIN)
        assert error(refused, 400) == "INVALID_REQUEST", body
        assert field in refused.body["message"], (body, refused.body)
    mismatch = api.call("PATCH", TOKENS_AT_ACME, {"overdraft_limit": {
        "unit": "USD_MICROCENTS", "amount": 1}}, **AS_ADMIN)
    assert error(mismatch, 400) == "UNIT_MISMATCH"
    assert error(api.call("PATCH", TOKENS_AT_ACME, raw=b"{not json", **AS_ADMIN), 400)
    assert {t: snapshot(guard.store, t) for t in ("acme", "rival")} == before


# -- who a credential is -----------------------------------------------------------------

INTROSPECT_REQUIRED = {"authenticated", "auth_type", "permissions", "capabilities"}
CAPABILITIES = {"view_overview", "view_budgets", "view_events", "view_webhooks",
                "view_audit", "view_tenants", "view_api_keys", "view_policies"}
VALIDATION_REQUIRED = {"valid", "tenant_id"}  # ApiKeyValidationResponse (open)
VALIDATION_ALLOWED = VALIDATION_REQUIRED | {"key_id", "permissions", "scope_filter",
                                            "expires_at", "reason"}


def test_introspect_says_what_the_credential_may_do(served: Any) -> None:
    api = admin(served)
    own = shaped(api.get("/v1/auth/introspect", **AS_ADMIN).body, INTROSPECT_REQUIRED)
    assert (own["authenticated"], own["auth_type"], own["permissions"]) == (True, "admin",
                                                                            ["*"])
    assert own["capabilities"] == dict.fromkeys(CAPABILITIES, True)
    reader = served.tenant("acme", permissions=["budgets:read", "webhooks:read"])
    seen = reader.get("/v1/auth/introspect", check=False)
    assert seen.status == 200 and seen.headers["X-Cycles-Tenant"] == "acme"
    body = shaped(seen.body, INTROSPECT_REQUIRED)
    assert (body["auth_type"], body["tenant_id"]) == ("api_key", "acme")
    assert body["permissions"] == ["budgets:read", "webhooks:read"]
    assert body["key_id"] == served.guard.keys("acme")[0].key_id
    assert body["capabilities"] == {**dict.fromkeys(CAPABILITIES, False), "view_budgets": True,
                                    "view_audit": True, "view_webhooks": True}
    wide = served.tenant("acme", usd=None, permissions=["admin:read"])
    granted = wide.get("/v1/auth/introspect", check=False).body["capabilities"]
    assert {name for name, yes in granted.items() if not yes} == {
        "view_overview", "view_tenants", "view_api_keys"}  # the admin key's pages alone
    runtime = served.tenant("acme", usd=None)  # no permission a page needs: still answered
    assert not any(runtime.get("/v1/auth/introspect", check=False).body[
        "capabilities"].values())
    assert error(api.get("/v1/auth/introspect", check=False), 401) == "UNAUTHORIZED"
    assert error(api.get("/v1/auth/introspect", headers={"X-Admin-API-Key": "guess"},
                         check=False), 401)
    for secret in ("alk_nonsense", f"alk_acme:{'0' * 32}.{'x' * 43}"):
        assert error(api.get("/v1/auth/introspect", key=secret, check=False), 401)
    served.guard.revoke_key(served.guard.keys("acme")[0].key_id)
    assert error(reader.get("/v1/auth/introspect", check=False), 401)


def test_validate_tells_the_admin_whether_a_secret_is_live(served: Any) -> None:
    api = admin(served)
    guard = served.guard
    live = guard.create_key("acme", permissions=["balances:read"], name="live")
    dated = guard.create_key("acme", expires=system_ms() + 86_400_000, name="dated")
    gone = guard.create_key("acme", expires=system_ms() - 1, name="gone")
    revoked = guard.create_key("acme", name="revoked")
    guard.revoke_key(revoked.key.key_id)

    def validate(secret: str) -> dict[str, Any]:
        answer = api.post("/v1/auth/validate", {"key_secret": secret}, **AS_ADMIN)
        assert answer.status == 200, answer.body
        return shaped(answer.body, VALIDATION_REQUIRED, VALIDATION_ALLOWED)

    assert validate(live.secret) == {
        "valid": True, "tenant_id": "acme", "key_id": live.key.key_id,
        "permissions": ["balances:read"], "expires_at": NO_EXPIRY}
    assert moment(validate(dated.secret)["expires_at"]) > datetime.now(timezone.utc)
    for made, reason in ((gone, "KEY_EXPIRED"), (revoked, "KEY_REVOKED")):
        found = validate(made.secret)
        assert (found["valid"], found["tenant_id"], found["key_id"], found["reason"]) == (
            False, "acme", made.key.key_id, reason)
    forged = live.secret[:-43] + "x" * 43
    for secret, reason in ((forged, "INVALID_KEY"), ("alk_nonsense", "KEY_NOT_FOUND"),
                           (f"alk_acme:{'0' * 32}.{'x' * 43}", "KEY_NOT_FOUND")):
        assert validate(secret) == {"valid": False, "tenant_id": "", "reason": reason}
    tenant = Api(served.url, live.secret)
    assert error(tenant.post("/v1/auth/validate", {"key_secret": live.secret},
                             check=False), 401)
    for bad in ({}, {"key_secret": ""}, {"key_secret": 7}, {"key_secret": "x", "more": 1}):
        assert error(api.post("/v1/auth/validate", bad, **AS_ADMIN), 400)


def test_a_key_is_renamed_and_repermissioned_without_a_new_secret(served: Any) -> None:
    api, guard = admin(served), served.guard
    guard.set_budget("tenant:acme", usd=10)
    made = guard.create_key("acme", permissions=["balances:read"], name="worker")
    path = f"/v1/admin/api-keys/{made.key.key_id}"
    worker = Api(served.url, made.secret)
    assert error(worker.get("/v1/admin/budgets", check=False), 403)
    changed = api.call("PATCH", path, {"name": "reader", "permissions": [
        "budgets:read", "balances:read"]}, **AS_ADMIN)
    assert changed.status == 200, changed.body
    view = shaped(changed.body, API_KEY_REQUIRED, API_KEY_ALLOWED)
    assert (view["name"], view["permissions"], view["status"]) == (
        "reader", ["balances:read", "budgets:read"], "ACTIVE")
    assert view["key_prefix"] == f"alk_{made.key.key_id}"
    assert worker.get("/v1/admin/budgets", check=False).status == 200  # the same secret
    renamed = api.call("PATCH", path, {"name": "renamed"}, **AS_ADMIN).body
    assert (renamed["name"], renamed["permissions"]) == ("renamed", view["permissions"])
    listed = api.get("/v1/admin/api-keys?tenant_id=acme", **AS_ADMIN).body["keys"]
    assert [(k["name"], k["permissions"]) for k in listed] == [("renamed",
                                                                view["permissions"])]


def test_a_key_update_refuses_what_it_cannot_do_and_changes_nothing(served: Any) -> None:
    api, guard = admin(served), served.guard
    made = guard.create_key("acme", permissions=["balances:read"], name="worker")
    rival = guard.create_key("rival", permissions=["admin:write"], name="rival")
    path = f"/v1/admin/api-keys/{made.key.key_id}"
    before = guard.keys("acme"), guard.keys("rival")
    for body, field in (({"permissions": ["root"]}, "permissions"),
                        ({"permissions": []}, "permissions"),
                        ({"name": ""}, "name"), ({"name": "x" * 129}, "name"),
                        ({"description": "d"}, "description"),
                        ({"scope_filter": ["workspace:eng"]}, "scope_filter"),
                        ({"metadata": {"a": "b"}}, "metadata"), ({"tenant_id": "x"}, "tenant_id"),
                        ({}, "name"), ({"status": "ACTIVE"}, "status")):
        refused = api.call("PATCH", path, body, **AS_ADMIN)
        assert error(refused, 400) == "INVALID_REQUEST"
        assert field in refused.body["message"], (body, refused.body)
    for key in (made.secret, rival.secret):  # a tenant key, even admin:write: admin key only
        assert error(Api(served.url, key).call("PATCH", path, {"name": "mine"},
                                               check=False), 401)
    assert error(api.call("PATCH", path, {"name": "x"}, check=False), 401)
    ghost = f"acme:{'0' * 32}"
    assert error(api.call("PATCH", f"/v1/admin/api-keys/{ghost}", {"name": "x"}, **AS_ADMIN),
                 404) == "NOT_FOUND"
    assert (guard.keys("acme"), guard.keys("rival")) == before
    guard.revoke_key(made.key.key_id)
    assert error(api.call("PATCH", path, {"name": "x"}, **AS_ADMIN), 409) == "KEY_REVOKED"
    gone = guard.create_key("acme", expires=system_ms() - 1, name="gone")
    assert error(api.call("PATCH", f"/v1/admin/api-keys/{gone.key.key_id}", {"name": "x"},
                          **AS_ADMIN), 409) == "KEY_EXPIRED"
    assert [k.name for k in guard.keys("acme")] == ["worker", "gone"]


# -- paging of the admin lists -----------------------------------------------------------

def pages(api: Api, path: str, field: str, limit: int, **options: Any) -> list[list[Any]]:
    """Every page of a list, following `next_cursor` (present exactly when `has_more`)."""
    found, cursor = [], None
    while True:
        sep = "&" if "?" in path else "?"
        at = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        answer = api.get(at, check=False, **options)
        assert answer.status == 200, answer.body
        assert len(answer.body[field]) <= limit
        found.append(answer.body[field])
        assert ("next_cursor" in answer.body) == answer.body["has_more"]
        if not answer.body["has_more"]:
            return found
        cursor = answer.body["next_cursor"]


def test_keys_come_in_pages(served: Any) -> None:
    api, guard = admin(served), served.guard
    made = [guard.create_key("acme", name=f"k{i}").key.key_id for i in range(5)]
    guard.create_key("rival", name="theirs")
    whole = api.get("/v1/admin/api-keys?tenant_id=acme", **AS_ADMIN).body
    assert (len(whole["keys"]), whole["has_more"]) == (5, False)
    listed = pages(api, "/v1/admin/api-keys?tenant_id=acme", "keys", 2, headers=ADMIN)
    assert [len(page) for page in listed] == [2, 2, 1]
    assert [k["key_id"] for page in listed for k in page] == [
        k["key_id"] for k in whole["keys"]] and sorted(made) == sorted(
        k["key_id"] for k in whole["keys"])
    first = api.get("/v1/admin/api-keys?tenant_id=acme&limit=2", **AS_ADMIN).body
    guard.revoke_key(made[0])  # a change between pages moves no other key
    late = guard.create_key("acme", name="late").key.key_id
    rest = pages(api, f"/v1/admin/api-keys?tenant_id=acme&cursor={first['next_cursor']}",
                 "keys", 2, headers=ADMIN)
    after = [k["key_id"] for page in rest for k in page]
    assert after[:3] == [k["key_id"] for k in whole["keys"][2:]] and after[3:] == [late]
    active = pages(api, "/v1/admin/api-keys?tenant_id=acme&status=ACTIVE", "keys", 1,
                   headers=ADMIN)
    assert len(active) == 5 and all(page[0]["status"] == "ACTIVE" for page in active)
    for bad in ("limit=0", "limit=201", "limit=x", "cursor=%%%", "cursor=bm90LWEtbGlzdA"):
        refused = api.get(f"/v1/admin/api-keys?tenant_id=acme&{bad}", **AS_ADMIN)
        assert error(refused, 400) == "INVALID_REQUEST"
        assert bad.partition("=")[0] in refused.body["message"]


def test_ledgers_come_in_pages_each_tenant_its_own(served: Any) -> None:
    api, guard = admin(served), served.guard
    for tenant in ("acme", "rival"):
        guard.set_budget(f"tenant:{tenant}", usd=10)
        for team in ("a", "b", "c"):
            guard.set_budget(f"tenant:{tenant}/workspace:{team}", usd=1)
    every = [(r["tenant_id"], r["scope"]) for r in api.get(
        "/v1/admin/budgets", **AS_ADMIN).body["ledgers"]]
    assert len(every) == 8
    listed = pages(api, "/v1/admin/budgets", "ledgers", 3, headers=ADMIN)
    assert [len(page) for page in listed] == [3, 3, 2]
    assert [(r["tenant_id"], r["scope"]) for page in listed for r in page] == every
    for page in listed:
        for row in page:
            shaped(row, LEDGER_REQUIRED, LEDGER_ALLOWED)
    reader = served.tenant("acme", usd=None, permissions=["budgets:read"])
    own = pages(reader, "/v1/admin/budgets", "ledgers", 2)
    assert [len(page) for page in own] == [2, 2]
    assert {row["tenant_id"] for page in own for row in page} == {"acme"}
    rival_cursor = api.get("/v1/admin/budgets?tenant_id=rival&limit=1", **AS_ADMIN).body[
        "next_cursor"]  # a cursor names a position, never grants a tenant
    beyond = reader.get(f"/v1/admin/budgets?limit=50&cursor={rival_cursor}", check=False)
    assert beyond.status == 200 and {r["tenant_id"] for r in beyond.body["ledgers"]} <= {
        "acme"}
    assert error(reader.get("/v1/admin/budgets?tenant_id=rival&limit=1", check=False), 403)
    assert error(api.get("/v1/admin/budgets?limit=500", **AS_ADMIN), 400)
