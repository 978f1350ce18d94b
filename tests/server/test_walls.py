"""Tenants are walls over HTTP: a key of tenant B on any route that touches tenant A's
reservations or scopes gets 403, learns nothing (an existing and a made-up reservation of A
answer alike) and changes nothing; revoked, expired, unknown and missing keys get 401; a key
without the route's permission gets 403."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from support.served import ADMIN_KEY, Api

USD = "USD_MICROCENTS"
SUBJECT = {"subject": {"tenant": "acme"}, "action": {"kind": "llm.completion", "name": "m"}}


def _routes(rid: str) -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/v1/reservations", {"idempotency_key": "x", **SUBJECT,
                                      "estimate": {"unit": USD, "amount": 1}}),
        ("POST", "/v1/reservations", {"idempotency_key": "y", **SUBJECT, "dry_run": True,
                                      "estimate": {"unit": USD, "amount": 1}}),
        ("POST", "/v1/decide", {"idempotency_key": "x", **SUBJECT,
                                "estimate": {"unit": USD, "amount": 1}}),
        ("POST", "/v1/events", {"idempotency_key": "x", **SUBJECT,
                                "actual": {"unit": USD, "amount": 1}}),
        ("POST", f"/v1/reservations/{rid}/commit",
         {"idempotency_key": "x", "actual": {"unit": USD, "amount": 1}}),
        ("POST", f"/v1/reservations/{rid}/release", {"idempotency_key": "x"}),
        ("POST", f"/v1/reservations/{rid}/extend", {"idempotency_key": "x",
                                                    "extend_by_ms": 1_000}),
        ("GET", f"/v1/reservations/{rid}", None),
        ("GET", "/v1/balances?tenant=acme", None),
        ("GET", "/v1/reservations?tenant=acme", None),
    ]


def _state(served: Any, rid: str) -> Any:
    info = served.guard.get(rid)
    return (served.guard.balances("tenant:acme"), info.status, info.expires_at_ms,
            info.extensions)


def test_another_tenants_key_is_refused_on_every_route(served: Any) -> None:
    acme = served.tenant("acme")
    rival = served.tenant("rival")
    rid = acme.post("/v1/reservations", {"idempotency_key": "r", **SUBJECT,
                                         "estimate": {"unit": USD, "amount": 5}}
                    ).body["reservation_id"]
    before = _state(served, rid)
    made_up = f"acme:{'f' * 32}"
    for method, path, body in _routes(rid):
        refused = rival.call(method, path, body)
        assert (refused.status, refused.body["error"]) == (403, "FORBIDDEN"), (path,
                                                                                refused.body)
        ghost = rival.call(method, path.replace(rid, made_up), body)
        if rid in path:  # a reservation that never existed answers exactly alike
            assert (ghost.status, ghost.body["error"],
                    ghost.body["message"]) == (403, "FORBIDDEN", refused.body["message"])
    assert _state(served, rid) == before
    assert rival.get("/v1/balances?tenant=rival").status == 200


@pytest.mark.parametrize("secret", ["", "nonsense", "alk_acme:" + "0" * 32 + "." + "x" * 43])
def test_an_unknown_or_missing_key_is_401(served: Any, secret: str) -> None:
    served.tenant("acme")
    api = Api(served.url)
    headers = {"X-Cycles-API-Key": secret} if secret else {}
    for method, path, body in _routes(f"acme:{'0' * 32}"):
        answer = api.call(method, path, body, headers=headers)
        assert (answer.status, answer.body["error"]) == (401, "UNAUTHORIZED"), path


def test_a_revoked_key_is_401_from_the_next_request(served: Any) -> None:
    acme = served.tenant("acme")
    assert acme.get("/v1/balances?tenant=acme").status == 200
    key = served.guard.keys("acme")[0]
    served.guard.revoke_key(key.key_id)
    for method, path, body in _routes(f"acme:{'0' * 32}"):
        assert acme.call(method, path, body).status == 401, path
    assert served.guard.balances("tenant:acme")[0].spent == 0


def test_an_expired_key_is_401(served: Any) -> None:
    """(Expiry by the store's clock is tested with a manual clock in test_keys.py.)"""
    acme = served.tenant("acme", expires=int(time.time() * 1000) - 1)
    answer = acme.get("/v1/balances?tenant=acme")
    assert (answer.status, answer.body["error"]) == (401, "UNAUTHORIZED")


def test_a_key_without_the_routes_permission_is_403(served: Any) -> None:
    reader = served.tenant("acme", permissions=["balances:read"])
    assert reader.get("/v1/balances?tenant=acme").status == 200
    refused = reader.post("/v1/reservations", {"idempotency_key": "r", **SUBJECT,
                                               "estimate": {"unit": USD, "amount": 5}})
    assert refused.status == 403 and "reservations:create" in refused.body["message"]
    assert served.guard.balances("tenant:acme")[0].reserved == 0


def test_the_admin_key_may_read_and_release_any_reservation_only(served: Any) -> None:
    acme = served.tenant("acme")
    rid = acme.post("/v1/reservations", {"idempotency_key": "r", **SUBJECT,
                                         "estimate": {"unit": USD, "amount": 5}}
                    ).body["reservation_id"]
    admin = Api(served.url)
    header = {"X-Admin-API-Key": ADMIN_KEY}
    assert admin.get(f"/v1/reservations/{rid}", headers=header).body["status"] == "ACTIVE"
    wrong = admin.get(f"/v1/reservations/{rid}", headers={"X-Admin-API-Key": "guess"})
    assert wrong.status == 401
    commit = admin.post(f"/v1/reservations/{rid}/commit",
                        {"idempotency_key": "c", "actual": {"unit": USD, "amount": 1}},
                        headers=header)
    assert commit.status == 401  # the admin key is not a tenant key
    released = admin.post(f"/v1/reservations/{rid}/release", {"idempotency_key": "x"},
                          headers=header)
    assert released.status == 200 and released.body["status"] == "RELEASED"


def _envelope_routes() -> list[tuple[str, str, Any]]:
    """allotment's own routes a tenant key with budgets:write may call, aimed at acme."""
    corp = "tenant:acme/workspace:"
    return [
        ("POST", "/v1/admin/quotas", {"scope": "tenant:acme", "calls": 1, "window": "day"}),
        ("POST", "/v1/admin/quotas", {"tenant_id": "acme", "scope": "tenant:acme",
                                      "calls": 1, "window": "day"}),
        ("DELETE", "/v1/admin/quotas?scope=tenant:acme&kind=concurrent", None),
        ("DELETE", "/v1/admin/quotas?scope=tenant:acme&kind=concurrent&tenant_id=acme", None),
        ("PUT", "/v1/admin/access", {"scope": "tenant:acme", "models_deny": ["*"]}),
        ("PUT", "/v1/admin/access", {"tenant_id": "acme", "scope": "tenant:rival",
                                     "models_deny": ["*"]}),
        ("DELETE", "/v1/admin/access?scope=tenant:acme", None),
        ("POST", "/v1/admin/transfers", {"source": f"{corp}a", "destination": f"{corp}b",
                                         "amount": {"unit": USD, "amount": 1}}),
        ("POST", "/v1/admin/transfers", {"source": "tenant:rival", "destination": f"{corp}b",
                                         "amount": {"unit": USD, "amount": 1}}),
        ("POST", "/v1/admin/transfers", {"tenant_id": "acme", "source": f"{corp}a",
                                         "destination": f"{corp}b",
                                         "amount": {"unit": USD, "amount": 1}}),
    ]


def test_another_tenants_budget_admin_cannot_touch_its_rules_or_money(served: Any) -> None:
    guard = served.guard
    acme = served.tenant("acme")
    for workspace in ("a", "b"):
        guard.set_budget(f"tenant:acme/workspace:{workspace}", usd=5)
    guard.set_quota("tenant:acme", concurrent=3)
    rival = served.tenant("rival", permissions=["budgets:write", "admin:write"])
    before = (guard.balances("tenant:acme"), guard.audit("acme"))
    for method, path, body in _envelope_routes():
        refused = rival.call(method, path, body, check=False)
        assert (refused.status, refused.body["error"]) == (403, "FORBIDDEN"), (path, body,
                                                                                refused.body)
        ghost = rival.call(method, path.replace("acme", "ghost"),
                           json.loads(json.dumps(body).replace("acme", "ghost")), check=False)
        assert (ghost.status, ghost.body["message"].replace("ghost", "acme")) == (
            403, refused.body["message"])  # a tenant that does not exist answers alike
    assert (guard.balances("tenant:acme"), guard.audit("acme")) == before
    assert acme.get("/v1/balances?tenant=acme").status == 200
    reader = served.tenant("acme", usd=None, permissions=["budgets:read"])
    before = (guard.balances("tenant:acme"), guard.audit("acme"))  # its key is on record
    for method, path, body in _envelope_routes()[:1]:
        refused = reader.call(method, path, body, check=False)
        assert refused.status == 403 and "budgets:write" in refused.body["message"]
    for method, path, body in _envelope_routes():
        missing = Api(served.url).call(method, path, body, check=False)
        assert (missing.status, missing.body["error"]) == (401, "UNAUTHORIZED"), path
    assert (guard.balances("tenant:acme"), guard.audit("acme")) == before


def _operator_routes(hook: str, event: str) -> list[tuple[str, str, Any]]:
    """The operators' routes (audit, reports, usage, webhooks) aimed at acme."""
    return [
        ("GET", "/v1/audit?tenant=acme", None), ("GET", "/v1/reports?tenant=acme", None),
        ("GET", "/v1/usage?tenant=acme", None), ("GET", "/v1/webhooks?tenant_id=acme", None),
        ("GET", "/v1/webhooks/deliveries?tenant_id=acme", None),
        ("GET", f"/v1/webhooks/deliveries?webhook_id={hook}", None),
        ("GET", f"/v1/webhooks/deliveries?event_id={event}", None),
        ("POST", "/v1/webhooks", {"tenant_id": "acme", "url": "https://hooks.example.com/a",
                                  "events": ["*"]}),
        ("POST", "/v1/webhooks/replay", {"event_id": event, "webhook_id": hook}),
        ("PATCH", f"/v1/webhooks/{hook}", {"enabled": False}),
        ("PATCH", f"/v1/webhooks/{hook}", {"url": "https://hooks.example.com/moved",
                                           "events": ["*"]}),
        ("DELETE", f"/v1/webhooks/{hook}", None),
        ("GET", f"/v1/webhooks/{hook}/deliveries", None),
        ("GET", f"/v1/webhooks/{hook}", None),
        ("POST", f"/v1/webhooks/{hook}/test", None),
    ]


def test_another_tenants_key_cannot_read_acmes_records_or_touch_its_webhooks(
        served: Any) -> None:
    guard = served.guard
    served.tenant("acme")
    hook = guard.tenant("acme").subscribe_webhook("https://hooks.example.com/acme",
                                                  events=["reservation.denied"]).id
    event = "acme/evt_" + "0" * 20
    rival = served.tenant("rival", permissions=["admin:write"])
    before = (guard.balances("tenant:acme"), guard.audit("acme"), guard.webhooks("acme"))
    for method, path, body in _operator_routes(hook, event):
        refused = rival.call(method, path, body, check=False)
        assert (refused.status, refused.body["error"]) == (403, "FORBIDDEN"), (path,
                                                                                refused.body)
        assert "hooks.example.com" not in json.dumps(refused.body)
        ghost = rival.call(method, path.replace("acme", "ghost"),
                           json.loads(json.dumps(body).replace("acme", "ghost")), check=False)
        assert (ghost.status, ghost.body["message"].replace("ghost", "acme")) == (
            403, refused.body["message"])  # a tenant that does not exist answers alike
        missing = Api(served.url).call(method, path, body, check=False)
        assert (missing.status, missing.body["error"]) == (401, "UNAUTHORIZED"), path
    assert (guard.balances("tenant:acme"), guard.audit("acme"), guard.webhooks("acme")) == before


def test_the_same_wire_subject_is_each_keys_own_tenant(served: Any) -> None:
    """Subjects built from the wire are reused per wire values and tenant: two tenants
    naming the same scopes (without the tenant) each reserve in their own ledgers, and a
    subject another tenant's key names is refused every time."""
    acme, beta = served.tenant("acme"), served.tenant("beta")
    body = {"subject": {"workspace": "prod", "app": "chat"},
            "action": {"kind": "llm.completion", "name": "m"},
            "estimate": {"unit": USD, "amount": 1_000}}
    for api, tenant in ((acme, "acme"), (beta, "beta"), (acme, "acme"), (beta, "beta")):
        made = api.post("/v1/reservations", {"idempotency_key": f"k-{time.time_ns()}", **body})
        assert made.status == 200, made.body
        assert made.body["scope_path"] == f"tenant:{tenant}/workspace:prod/app:chat"
        assert made.body["balances"][0]["scope_path"] == f"tenant:{tenant}"
    named = {**body, "subject": {"tenant": "acme", "workspace": "prod", "app": "chat"}}
    for _ in range(2):
        refused = beta.post("/v1/reservations", {"idempotency_key": "n", **named})
        assert refused.status == 403, refused.body
    bad = {**body, "subject": {"workspace": "Prod Space"}}  # not a scope name
    for _ in range(2):
        assert acme.post("/v1/reservations", {"idempotency_key": "b", **bad}).status == 400
    assert beta.get("/v1/balances?tenant=beta").body["balances"][0]["reserved"]["amount"] \
        == 2_000


def test_a_bad_key_is_401_before_anything_else_is_wrong(served: Any) -> None:
    """The runtime routes leave the key check to the store call they make; a refusal found
    before that call (a bad body, another tenant's scope or reservation) still answers 401
    for a bad key, 403 for a key without the permission, and names no tenant."""
    acme = served.tenant("acme")
    served.tenant("rival")
    reader = served.tenant("acme", permissions=["balances:read"])
    rid = acme.post("/v1/reservations", {"idempotency_key": "r", **SUBJECT,
                                         "estimate": {"unit": USD, "amount": 5}}
                    ).body["reservation_id"]
    served.guard.revoke_key(served.guard.keys("acme")[0].key_id)
    before = _state(served, rid)
    wrongs = [("POST", "/v1/reservations", {"estimate": "five"}),
              ("POST", "/v1/reservations", {"idempotency_key": "z", "subject": {
                  "tenant": "rival"}, "action": SUBJECT["action"],
                  "estimate": {"unit": USD, "amount": 1}}),
              ("POST", f"/v1/reservations/{rid}/commit", {"actual": 1.5}),
              ("POST", f"/v1/reservations/rival:{'0' * 32}/commit",
               {"idempotency_key": "c", "actual": {"unit": USD, "amount": 1}}),
              ("GET", "/v1/balances?tenant=rival", None),
              ("GET", "/v1/balances?colour=blue", None)]
    for method, path, body in wrongs:
        answer = acme.call(method, path, body)
        assert (answer.status, answer.body["error"]) == (401, "UNAUTHORIZED"), (path,
                                                                                answer.body)
        assert "x-cycles-tenant" not in answer.headers, path
        if method == "POST":
            refused = reader.call(method, path, body)
            assert (refused.status, refused.body["error"]) == (403, "FORBIDDEN"), path
            assert "reservations:" in refused.body["message"], refused.body
    assert _state(served, rid) == before
