"""allotment's own routes: plans (define, list, assign, upgrade mid-month), a tenant's mode,
quotas and access rules, transfers, the sweep, the tenant list and status. Each happy path
is checked on the guard's own state; each bad body is 400 naming the field and changes
nothing; the admin-only routes refuse tenant keys."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import allotment as al
from allotment.server.tiers import MAX_PLANS

from support.openapi import spec
from support.served import ADMIN_KEY, Answer, Api, serving

USD = "USD_MICROCENTS"
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}
PLANS = yaml.safe_load(Path("examples/plans.yaml").read_text())["plans"]
MINI = al.Action("llm.completion", "openai:gpt-4o-mini")


def envelope(answer: Answer, status: int, *words: str) -> None:
    """An error answer: the status, the Cycles error envelope, a message naming `words`."""
    assert answer.status == status, answer.body
    jsonschema.Draft202012Validator(
        {**spec()["components"]["schemas"]["ErrorResponse"],
         "components": spec()["components"]}).validate(answer.body)
    for word in words:
        assert word in answer.body["message"], (word, answer.body["message"])


def admin(served: Any) -> Api:
    return Api(served.url)


def call(api: Api, method: str, path: str, body: Any = None, **options: Any) -> Answer:
    options.setdefault("headers", ADMIN)
    return api.call(method, path, body, check=False, **options)


def test_plans_are_defined_listed_assigned_and_upgraded_mid_month(served: Any) -> None:
    api, guard = admin(served), served.guard
    made = call(api, "PUT", "/v1/admin/plans/starter", PLANS["starter"])
    assert made.status == 201, made.body
    assert made.body == al.Plan.from_dict(PLANS["starter"], "starter").model_dump(
        mode="json", exclude_defaults=True)
    again = call(api, "PUT", "/v1/admin/plans/starter", {**PLANS["starter"], "name": "starter"})
    assert (again.status, again.body) == (200, made.body)
    assert call(api, "PUT", "/v1/admin/plans/free", PLANS["free"]).status == 201
    listed = call(api, "GET", "/v1/admin/plans").body["plans"]
    assert [p["name"] for p in listed] == ["free", "starter"]
    assert call(api, "GET", "/v1/admin/plans/starter").body == made.body
    envelope(call(api, "GET", "/v1/admin/plans/pro"), 404, "no plan 'pro'")

    assert call(api, "GET", "/v1/admin/tenants/acme/plan").body == {"tenant_id": "acme"}
    assigned = call(api, "PUT", "/v1/admin/tenants/acme/plan",
                    {"plan": "starter", "actor": "ops@example.com", "reason": "signup"})
    assert assigned.body == {"tenant_id": "acme", "plan": "starter"}
    assert guard.plan_of("acme") == "starter"
    guard.reserve(al.Subject(tenant="acme", dimensions={"session": "s1"}), MINI,
                  al.usd(1)).commit(al.usd(1))
    (month,) = [r for r in guard.balances("tenant:acme") if r.scope == "tenant:acme"]
    assert (month.allocated, month.spent) == (al.usd(50).amount, al.usd(1).amount)

    pro = {**PLANS["pro"], "name": "pro"}  # a whole plan, not one of the catalog
    upgraded = call(api, "PUT", "/v1/admin/tenants/acme/plan", {"plan": pro})
    assert upgraded.body == {"tenant_id": "acme", "plan": "pro", "previous_plan": "starter"}
    (month,) = [r for r in guard.balances("tenant:acme") if r.scope == "tenant:acme"
                and r.unit is al.Unit.USD_MICROCENTS]
    assert (month.allocated, month.spent) == (al.usd(500).amount, al.usd(1).amount)
    shown = call(api, "GET", "/v1/admin/tenants/acme/plan").body
    assert (shown["plan"], shown["actor"]) == ("pro", "admin-key")
    assert isinstance(shown["assigned_at_ms"], int)


@pytest.mark.parametrize(("body", "words"), [
    ({"budgets": [{"usd": 0.5}]}, ["budgets[0].usd", "JSON integer", "not exact"]),
    ({"budgets": [{"tokens": 5.0}]}, ["budgets[0].tokens"]),
    ({"budgets": [{"usd": 5}], "tiers": []}, ["tiers: unknown field"]),
    ({"budgets": [{"usd": 5, "colour": "red"}]}, ["colour"]),
    ({"budgets": [{"usd": 5}, {"tokens": 10, "usd": 1}]}, ["budgets[1]"]),
    ({"quotas": [{"calls": 5}]}, ["window"]),
    ({"name": "other", "budgets": [{"usd": 5}]}, ["names plan 'other'"]),
    ({"budgets": {"usd": 5}}, ["budgets"]),
])
def test_a_bad_plan_is_refused_and_changes_nothing(served: Any, body: Any,
                                                   words: list[str]) -> None:
    api = admin(served)
    envelope(call(api, "PUT", "/v1/admin/plans/tier", body), 400, *words)
    if "name" not in body:  # the same plan given whole to a tenant is refused alike
        envelope(call(api, "PUT", "/v1/admin/tenants/acme/plan",
                      {"plan": {"name": "tier", **body}}), 400)
    assert call(api, "GET", "/v1/admin/plans").body == {"plans": []}
    assert served.guard.plan_of("acme") is None and served.guard.tenants() == ()


def test_assigning_an_unknown_plan_or_a_bad_body_is_refused(served: Any) -> None:
    api = admin(served)
    envelope(call(api, "PUT", "/v1/admin/tenants/acme/plan", {"plan": "gold"}), 404,
             "no plan 'gold'")
    envelope(call(api, "PUT", "/v1/admin/tenants/acme/plan", {"plan": 7}), 400, "plan")
    envelope(call(api, "PUT", "/v1/admin/tenants/acme/plan", {"plan": {"budgets": []}}),
             400, "plan.name: required")
    envelope(call(api, "PUT", "/v1/admin/tenants/acme/plan", None, raw=b"{plan"), 400,
             "malformed JSON")
    envelope(call(api, "PUT", "/v1/admin/tenants/Not%20A%20Name/plan", {"plan": "gold"}), 400)
    assert served.guard.tenants() == ()


def test_huge_or_deep_bodies_are_refused_unread(served: Any) -> None:
    api = admin(served)
    huge = b'{"budgets": [{"usd": 1, "scope": "' + b"x" * 70_000 + b'"}]}'
    envelope(call(api, "PUT", "/v1/admin/plans/tier", raw=huge), 413, "over the limit")
    deep = {"budgets": [{"usd": 1, "degrade": [{"model": {}}]}]}
    node = deep["budgets"][0]["degrade"][0]["model"]
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    envelope(call(api, "PUT", "/v1/admin/plans/tier", deep), 400, "nested")
    envelope(call(api, "POST", "/v1/admin/transfers", raw=huge), 413)
    assert call(api, "GET", "/v1/admin/plans").body == {"plans": []}


def test_the_catalog_of_plans_is_bounded() -> None:
    tier = al.Plan.from_dict({"budgets": [{"usd": 1}]}, "tier")
    full = {f"p{i}": tier.model_copy(update={"name": f"p{i}"}) for i in range(MAX_PLANS)}
    with serving(al.Guard(), plans=full) as url:
        api = Api(url)
        envelope(call(api, "PUT", "/v1/admin/plans/one-more", {"budgets": [{"usd": 1}]}), 409,
                 f"holds {MAX_PLANS} plans")
        assert call(api, "PUT", "/v1/admin/plans/p0", {"budgets": [{"usd": 2}]}).status == 200
        assert len(call(api, "GET", "/v1/admin/plans").body["plans"]) == MAX_PLANS


def test_mode_switches_a_tenant_to_shadow_and_back(served: Any) -> None:
    api, guard = admin(served), served.guard
    guard.set_budget("tenant:acme", usd=1)
    shadow = call(api, "PUT", "/v1/admin/tenants/acme/mode", {"mode": "shadow"})
    assert shadow.body == {"tenant_id": "acme", "mode": "shadow", "follows_guard": False}
    guard.reserve(al.Subject(tenant="acme"), MINI, al.usd(5)).release()  # not denied
    assert call(api, "PUT", "/v1/admin/tenants/acme/mode", {"mode": None}).body == {
        "tenant_id": "acme", "mode": "enforce", "follows_guard": True}
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme"), MINI, al.usd(5))
    envelope(call(api, "PUT", "/v1/admin/tenants/acme/mode", {"mode": "loud"}), 400, "mode")
    envelope(call(api, "PUT", "/v1/admin/tenants/acme/mode", {}), 400, "mode: required")
    with pytest.raises(al.BudgetExceeded):  # the refused bodies changed nothing
        guard.reserve(al.Subject(tenant="acme"), MINI, al.usd(5))


def _reserve(api: Api, key: str, **subject: Any) -> Answer:
    return api.post("/v1/reservations", {
        "idempotency_key": key, "subject": {"tenant": "acme", **subject},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": USD, "amount": 1}})


def test_quotas_are_set_and_removed_by_the_admin_or_the_tenants_own_admin(served: Any
                                                                          ) -> None:
    api = admin(served)
    worker = served.tenant("acme")
    owner = served.tenant("acme", usd=None, permissions=["budgets:write"])
    made = call(api, "POST", "/v1/admin/quotas", {"tenant_id": "acme", "scope": "tenant:acme",
                                                  "calls": 1, "window": "minute"})
    assert made.body == {"tenant_id": "acme", "scope": "tenant:acme", "kind": "calls",
                         "limit": 1, "action_kind": "*", "window": "minute"}
    assert _reserve(worker, "a").status == 200
    throttled = _reserve(worker, "b")
    assert (throttled.status, throttled.body["error"]) == (429, "LIMIT_EXCEEDED")
    removed = call(owner, "DELETE",
                   "/v1/admin/quotas?scope=tenant:acme&kind=calls&window=minute", headers={})
    assert removed.status == 200 and removed.body["removed"] is True
    assert _reserve(worker, "c").status == 200
    own = call(owner, "POST", "/v1/admin/quotas",
               {"scope": "tenant:acme/workspace:w", "concurrent": 1}, headers={})
    assert own.status == 200 and "window" not in own.body
    (record,) = served.guard.audit("acme", types=["quota.set"])[-1:]
    assert record.actor is not None and record.actor.startswith("key:")


@pytest.mark.parametrize(("body", "words"), [
    ({"calls": 5, "runs": 5, "window": "day"}, ["exactly one of"]),
    ({"calls": 5.0, "window": "day"}, ["calls", "JSON integer"]),
    ({"calls": "5", "window": "day"}, ["calls"]),
    ({"calls": 0, "window": "day"}, ["calls"]),
    ({"calls": 5}, ["window"]),
    ({"concurrent": 5, "window": "day"}, ["no window"]),
    ({"calls": 5, "window": "fortnight"}, ["fortnight"]),
    ({"calls": 5, "window": "day", "burst": 2}, ["burst: unknown field"]),
])
def test_a_bad_quota_is_refused_and_changes_nothing(served: Any, body: Any,
                                                    words: list[str]) -> None:
    worker = served.tenant("acme")
    envelope(call(admin(served), "POST", "/v1/admin/quotas",
                  {"tenant_id": "acme", "scope": "tenant:acme", **body}), 400, *words)
    assert served.guard.audit("acme", types=["quota.set"]) == ()
    assert all(_reserve(worker, f"k{i}").status == 200 for i in range(3))


def test_access_rules_and_required_dimensions_are_set_and_cleared(served: Any) -> None:
    api = admin(served)
    worker = served.tenant("acme")
    rule = {"tenant_id": "acme", "scope": "tenant:acme", "required_dimensions": ["user"],
            "models_deny": ["gpt-4o*"]}
    made = call(api, "PUT", "/v1/admin/access", {**rule, "required_dimensions": ["user",
                                                                                  "user"]})
    assert made.body == rule  # the rule as the guard keeps it
    missing = _reserve(worker, "a")
    assert missing.status == 400 and missing.body["details"]["missing_dimensions"] == ["user"]
    assert _reserve(worker, "b", dimensions={"user": "u1"}).status == 200
    cleared = call(api, "DELETE", "/v1/admin/access?scope=tenant:acme&tenant_id=acme")
    assert cleared.body == {"tenant_id": "acme", "scope": "tenant:acme", "cleared": True}
    assert _reserve(worker, "c").status == 200
    for body, words in (({"required_dimensions": ["workspace"]}, ["scope level"]),
                        ({"max_tokens_per_call": 0}, ["max_tokens_per_call"]),
                        ({"models_allow": "gpt-4o"}, ["models_allow"]),
                        ({"scope": "tenant:acme/run:r1"}, ["standard scope"])):
        envelope(call(api, "PUT", "/v1/admin/access",
                      {"tenant_id": "acme", "scope": "tenant:acme", **body}), 400, *words)
    envelope(call(api, "DELETE", "/v1/admin/access?tenant_id=acme"), 400, "scope")
    envelope(call(api, "DELETE", "/v1/admin/access?scope=tenant:acme&tenant_id=acme&x=1"),
             400, "unknown query parameter(s): x")
    envelope(call(api, "PUT", "/v1/admin/access", {"scope": "tenant:acme"}), 400,
             "tenant_id: required")
    assert _reserve(worker, "d").status == 200


def test_the_enterprise_admin_moves_500_dollars_between_departments(served: Any) -> None:
    guard = served.guard
    guard.set_budget("tenant:corp", usd=10_000)
    departments = {"engineering": 5_000, "marketing": 3_000, "support": 2_000}
    for department, usd in departments.items():
        guard.set_budget(f"tenant:corp/workspace:{department}", usd=usd)
    guard.record(al.Subject(tenant="corp", workspace="marketing"), MINI, al.usd(3_000))
    owner = served.tenant("corp", usd=None, permissions=["budgets:write"])
    support = guard.balances("tenant:corp/workspace:support")
    marketing = al.Subject(tenant="corp", workspace="marketing")
    with pytest.raises(al.BudgetExceeded):  # marketing is exhausted
        guard.reserve(marketing, MINI, al.usd(100))
    move = {"source": "tenant:corp/workspace:engineering",
            "destination": "tenant:corp/workspace:marketing",
            "amount": {"unit": USD, "amount": al.usd(500).amount},
            "idempotency_key": "move-500", "reason": "campaign"}
    moved = call(owner, "POST", "/v1/admin/transfers", move, headers={})
    assert moved.status == 200, moved.body
    assert moved.body["source"]["allocated"]["amount"] == al.usd(4_500).amount
    assert moved.body["destination"]["remaining"]["amount"] == al.usd(500).amount
    assert moved.body["source"]["created_at"] != "1970-01-01T00:00:00Z"  # dated, not unknown
    replay = call(owner, "POST", "/v1/admin/transfers", move,
                  headers={"X-Idempotency-Key": "move-500"})
    assert replay.body == moved.body
    guard.reserve(marketing, MINI, al.usd(100)).commit(al.usd(100))  # spends again
    (engineering,) = guard.balances("tenant:corp/workspace:engineering")
    assert engineering.allocated == al.usd(4_500).amount  # moved once
    envelope(call(owner, "POST", "/v1/admin/transfers",
                  {**move, "amount": {"unit": USD, "amount": 1}}, headers={}), 409)
    envelope(call(owner, "POST", "/v1/admin/transfers", {**move, "idempotency_key": "m2"},
                  headers={"X-Idempotency-Key": "other"}), 400, "differ")
    too_much = call(owner, "POST", "/v1/admin/transfers",
                    {**move, "idempotency_key": "m3",
                     "amount": {"unit": USD, "amount": al.usd(9_000).amount}}, headers={})
    envelope(too_much, 409)
    for body, words in (({"amount": {"unit": USD, "amount": 1.5}}, ["amount.amount"]),
                        ({"amount": {"unit": "EUR", "amount": 1}}, ["amount.unit"]),
                        ({"amount": 100}, ["amount"]),
                        ({"source": None}, ["source"])):
        envelope(call(owner, "POST", "/v1/admin/transfers",
                      {**move, "idempotency_key": "m4", **body}, headers={}), 400, *words)
    assert guard.balances("tenant:corp/workspace:support") == support
    (engineering,) = guard.balances("tenant:corp/workspace:engineering")
    assert engineering.allocated == al.usd(4_500).amount
    by_admin = call(admin(served), "POST", "/v1/admin/transfers",
                    {**move, "tenant_id": "corp", "idempotency_key": "by-admin",
                     "source": move["destination"], "destination": move["source"],
                     "amount": {"unit": USD, "amount": al.usd(400).amount}})
    assert by_admin.body["destination"]["allocated"]["amount"] == al.usd(4_900).amount
    assert by_admin.body["source"]["remaining"]["amount"] == 0


def test_the_sweep_expires_overdue_reservations(served: Any) -> None:
    guard = al.Guard(served.guard.store, ttl_ms=1_000, grace_ms=0)
    guard.set_budget("tenant:acme", usd=1)
    held = guard.reserve(al.Subject(tenant="acme"), MINI, al.usd("0.5"))
    api = admin(served)
    envelope(call(api, "POST", "/v1/admin/sweep", {"limit": 0}), 400, "limit")
    envelope(call(api, "POST", "/v1/admin/sweep", {"limit": 5, "all": True}), 400, "all")
    time.sleep(1.1)
    assert call(api, "POST", "/v1/admin/sweep", {"limit": 10}).body == {"expired": 1,
                                                                        "limit": 10}
    assert guard.get(held.id).status is al.ReservationStatus.EXPIRED
    assert call(api, "POST", "/v1/admin/sweep").body == {"expired": 0, "limit": 1_000}


def test_tenants_are_listed_suspended_and_resumed(served: Any) -> None:
    api, guard = admin(served), served.guard
    made = call(api, "POST", "/v1/admin/tenants", {"tenant_id": "acme", "name": "Acme"}).body
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme/workspace:w", usd=1)
    guard.set_budget("tenant:lib", usd=1)  # a tenant the library made, without a record
    listed = call(api, "GET", "/v1/admin/tenants").body
    assert listed == {"tenants": [made, {"tenant_id": "lib", "name": "lib", "status": "ACTIVE",
                                         "created_at": "1970-01-01T00:00:00Z"}],
                      "has_more": False}  # created_at is required: unknown, the epoch
    suspended = call(api, "PATCH", "/v1/admin/tenants/acme", {"status": "SUSPENDED"})
    assert suspended.body == {**made, "status": "SUSPENDED"}
    assert all(r.status is al.BudgetStatus.FROZEN for r in guard.balances("tenant:acme"))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme", workspace="w"), MINI, al.usd("0.01"))
    assert call(api, "GET", "/v1/admin/tenants/acme").body["status"] == "SUSPENDED"
    again = call(api, "POST", "/v1/admin/tenants", {"tenant_id": "acme", "name": "Acme"})
    assert (again.status, again.body["status"]) == (200, "SUSPENDED")  # as it stands
    assert [t["tenant_id"] for t in call(api, "GET", "/v1/admin/tenants?status=SUSPENDED"
                                         ).body["tenants"]] == ["acme"]
    for body, status, words in (
            ({"name": "Other"}, 400, ["name"]),
            ({"metadata": {"a": "b"}}, 400, ["metadata"]), ({"status": "GONE"}, 400,
                                                            ["status"]),
            ({"colour": 1}, 400, ["colour: unknown field"])):
        envelope(call(api, "PATCH", "/v1/admin/tenants/acme", body), status, *words)
    assert call(api, "GET", "/v1/admin/tenants/acme").body["status"] == "SUSPENDED"
    resumed = call(api, "PATCH", "/v1/admin/tenants/acme", {"status": "ACTIVE",
                                                            "name": "Acme"})
    assert resumed.body == made
    guard.reserve(al.Subject(tenant="acme", workspace="w"), MINI, al.usd("0.01")).release()
    envelope(call(api, "PATCH", "/v1/admin/tenants/nobody", {"status": "ACTIVE"}), 404)
    lib = call(api, "PATCH", "/v1/admin/tenants/lib", {"status": "SUSPENDED"})  # no record
    assert (lib.status, lib.body["status"]) == (200, "SUSPENDED")
    assert call(api, "PATCH", "/v1/admin/tenants/lib", {"status": "ACTIVE"}
                ).body["status"] == "ACTIVE"
    call(api, "POST", "/v1/admin/tenants", {"tenant_id": "beta", "name": "Beta"})
    guard.set_budget("tenant:beta/workspace:w", usd=1)  # no budget at the tenant's root
    assert call(api, "PATCH", "/v1/admin/tenants/beta", {"status": "SUSPENDED"}
                ).body["status"] == "SUSPENDED"
    assert call(api, "GET", "/v1/admin/tenants/beta").body["status"] == "SUSPENDED"
    guard.set_budget("tenant:runs", usd=1, per="run")  # a template: no ledger to read yet
    call(api, "PATCH", "/v1/admin/tenants/runs", {"status": "SUSPENDED"})
    assert call(api, "GET", "/v1/admin/tenants/runs").body["status"] == "SUSPENDED"
    assert [t["tenant_id"] for t in call(api, "GET", "/v1/admin/tenants?status=SUSPENDED"
                                         ).body["tenants"]] == ["beta", "runs"]
    call(api, "POST", "/v1/admin/tenants", {"tenant_id": "empty", "name": "Empty"})
    envelope(call(api, "PATCH", "/v1/admin/tenants/empty", {"status": "SUSPENDED"}), 409,
             "no open budgets")
    assert call(api, "GET", "/v1/admin/tenants?status=CLOSED").body["tenants"] == []
    envelope(call(api, "GET", "/v1/admin/tenants?status=GONE"), 400, "status")


def test_closing_a_tenant_cascades_and_leaves_it_readable_only(served: Any) -> None:
    """PATCH status CLOSED: the tenant's open reservations released, budgets closed, keys
    revoked (its key then gets 401), in one step; its budgets refuse changes with 409
    TENANT_CLOSED and stay readable; closing again answers the same; the neighbour is
    untouched."""
    api, guard = admin(served), served.guard
    made = call(api, "POST", "/v1/admin/tenants", {"tenant_id": "acme", "name": "Acme"}).body
    worker, neighbour = served.tenant("acme"), served.tenant("beta")
    held = _reserve(worker, "open-1")
    assert held.status == 200, held.body
    beta_held = neighbour.post("/v1/reservations", {
        "idempotency_key": "b-1", "subject": {"tenant": "beta"},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": USD, "amount": 1}}).body
    closed = call(api, "PATCH", "/v1/admin/tenants/acme", {"status": "CLOSED"})
    assert closed.status == 200, closed.body
    assert closed.body == {**made, "status": "CLOSED", "closed_at": closed.body["closed_at"]}
    assert call(api, "GET", "/v1/admin/tenants/acme").body == closed.body
    again = call(api, "POST", "/v1/admin/tenants", {"tenant_id": "acme", "name": "Acme"})
    assert (again.status, again.body) == (200, closed.body)  # closed, and when
    assert [t["tenant_id"] for t in call(api, "GET", "/v1/admin/tenants?status=CLOSED"
                                         ).body["tenants"]] == ["acme"]
    assert guard.get(held.body["reservation_id"]).status is al.ReservationStatus.RELEASED
    rows = guard.balances("tenant:acme")
    assert [(r.status, r.reserved) for r in rows] == [(al.BudgetStatus.CLOSED, 0)]
    refused = worker.post(f"/v1/reservations/{held.body['reservation_id']}/commit", {
        "idempotency_key": "c-1", "actual": {"unit": USD, "amount": 1}}, check=False)
    envelope(refused, 401)
    envelope(call(api, "POST", "/v1/admin/budgets", {
        "tenant_id": "acme", "scope": "tenant:acme/workspace:w", "unit": USD,
        "allocated": {"unit": USD, "amount": 5}}), 409, "closed")
    envelope(call(api, "POST", "/v1/admin/budgets/fund?scope=tenant:acme&unit=" + USD
                  + "&tenant_id=acme", {"operation": "CREDIT",
                                        "amount": {"unit": USD, "amount": 5}}),
             409, "closed")
    envelope(call(api, "PATCH", "/v1/admin/tenants/acme", {"status": "ACTIVE"}), 409,
             "for good")
    looked = call(api, "GET", f"/v1/admin/budgets/lookup?scope=tenant:acme&unit={USD}")
    assert (looked.status, looked.body["status"]) == (200, "CLOSED")
    again = call(api, "PATCH", "/v1/admin/tenants/acme", {"status": "CLOSED"})
    assert (again.status, again.body) == (200, closed.body)
    assert guard.balances("tenant:acme") == rows
    assert guard.get(beta_held["reservation_id"]).status is al.ReservationStatus.ACTIVE
    assert neighbour.get("/v1/balances?tenant=beta").status == 200


def test_tenants_come_in_pages_by_id(served: Any) -> None:
    api, guard = admin(served), served.guard
    names = [f"t{i:02d}" for i in range(7)]
    for name in reversed(names):
        guard.set_budget(f"tenant:{name}", usd=1)
    for filtered in ("&status=ACTIVE", ""):  # a page of every row, or of the names first
        found, cursor, pages = [], "", 0
        while True:
            answer = call(api, "GET", f"/v1/admin/tenants?limit=3{filtered}{cursor}").body
            found += [t["tenant_id"] for t in answer["tenants"]]
            assert {t["status"] for t in answer["tenants"]} == {"ACTIVE"}
            pages += 1
            assert ("next_cursor" in answer) == answer["has_more"]
            if not answer["has_more"]:
                break
            cursor = f"&cursor={answer['next_cursor']}"
        assert found == names and pages == 3
    guard.set_budget("tenant:t00a", usd=1)  # a tenant added before the cursor's row
    first = call(api, "GET", "/v1/admin/tenants?limit=2").body
    assert [t["tenant_id"] for t in first["tenants"]] == ["t00", "t00a"]
    for bad in ("limit=0", "limit=201", "limit=x", "cursor=%%%"):
        envelope(call(api, "GET", f"/v1/admin/tenants?{bad}"), 400, bad.split("=")[0])

ADMIN_ONLY = [
    ("GET", "/v1/admin/plans", None), ("GET", "/v1/admin/plans/free", None),
    ("PUT", "/v1/admin/plans/free", PLANS["free"]),
    ("GET", "/v1/admin/tenants/acme/plan", None),
    ("PUT", "/v1/admin/tenants/acme/plan", {"plan": {**PLANS["free"], "name": "free"}}),
    ("PUT", "/v1/admin/tenants/acme/mode", {"mode": "shadow"}),
    ("POST", "/v1/admin/sweep", {"limit": 5}),
    ("GET", "/v1/admin/tenants", None),
    ("PATCH", "/v1/admin/tenants/acme", {"status": "SUSPENDED"}),
    ("PATCH", "/v1/admin/tenants/acme", {"status": "CLOSED"}),
    ("POST", "/v1/admin/tenants/bulk-action", {"filter": {"search": "acme"},
                                               "action": "CLOSE", "idempotency_key": "k"}),
    ("POST", "/v1/admin/budgets/bulk-action", {
        "filter": {"tenant_id": "acme"}, "action": "DEBIT",
        "amount": {"unit": "USD_MICROCENTS", "amount": 1}, "idempotency_key": "k"}),
    ("GET", "/v1/admin/events", None), ("GET", "/v1/admin/events/acme:1", None),
    ("GET", "/v1/admin/audit/logs", None), ("GET", "/v1/admin/overview", None),
    ("GET", "/v1/admin/webhooks/acme/whk_" + "0" * 24 + "/deliveries", None),
    ("GET", "/v1/admin/webhooks", None), ("GET", "/v1/admin/webhooks/acme/whk_" + "0" * 24,
                                          None),
    ("PATCH", "/v1/admin/webhooks/acme/whk_" + "0" * 24, {"status": "PAUSED"}),
    ("DELETE", "/v1/admin/webhooks/acme/whk_" + "0" * 24, None),
    ("POST", "/v1/admin/webhooks?tenant_id=acme", {"url": "https://hooks.example.com/a",
                                                   "event_types": ["budget.exhausted"]}),
    ("POST", "/v1/admin/webhooks/acme/whk_" + "0" * 24 + "/replay", {}),
    ("POST", "/v1/admin/webhooks/acme/whk_" + "0" * 24 + "/test", None),
    ("GET", "/v1/admin/config/webhook-security", None),
    ("PUT", "/v1/admin/config/webhook-security", {"allow_http": True}),
    ("PATCH", "/v1/admin/webhooks/acme/whk_" + "0" * 24, {"url": "https://a.example.com/"}),
    ("POST", "/v1/admin/webhooks/bulk-action", {"filter": {"tenant_id": "acme"},
                                                "action": "PAUSE", "idempotency_key": "k"}),
]


def test_the_admin_only_routes_refuse_tenant_keys_and_wrong_admin_keys(served: Any) -> None:
    served.guard.set_budget("tenant:acme", usd=1)
    powerful = served.tenant("acme", usd=None, permissions=["admin:write"])
    before = (served.guard.balances("tenant:acme"), served.guard.audit("acme"))
    for method, path, body in ADMIN_ONLY:
        envelope(call(powerful, method, path, body, headers={}), 401, "X-Admin-API-Key")
        envelope(call(powerful, method, path, body, headers={"X-Admin-API-Key": "guess"}),
                 401)
    assert (served.guard.balances("tenant:acme"), served.guard.audit("acme")) == before
    assert served.guard.plan_of("acme") is None
