"""Edges of the wire that the schemathesis run found, pinned as plain cases; and every
response the OpenAPI file defines for the admin key on the runtime plane (list, get and
release of any tenant's reservation), each validated against it by `Api`."""

from __future__ import annotations

import time
from typing import Any

import pytest

from support.served import ADMIN_KEY, Api

USD = "USD_MICROCENTS"
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}


def reserve(api: Api, key: str = "r") -> str:
    made = api.post("/v1/reservations", {
        "idempotency_key": key, "subject": {"tenant": "acme"},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": USD, "amount": 1_000}})
    assert made.status == 200, made.body
    return str(made.body["reservation_id"])


@pytest.mark.parametrize(("path", "allowed"), [
    ("/v1/reservations", "GET, HEAD, POST"),
    ("/v1/reservations/acme:00000000000000000000000000000000", "GET, HEAD"),
    ("/v1/reservations/acme:00000000000000000000000000000000/commit", "POST"),
    ("/v1/balances", "GET, HEAD"),
])
def test_a_method_a_path_does_not_take_is_405_with_every_method_it_does(
        served: Any, path: str, allowed: str) -> None:
    answer = served.tenant("acme").call("TRACE", path, check=False)
    assert (answer.status, answer.body["error"]) == (405, "INVALID_REQUEST")
    assert answer.headers["Allow"] == allowed


def test_a_release_reason_may_be_empty(served: Any) -> None:
    api = served.tenant("acme")
    rid = reserve(api)
    released = api.post(f"/v1/reservations/{rid}/release",
                        {"idempotency_key": "x", "reason": ""})
    assert (released.status, released.body["status"]) == (200, "RELEASED")


def test_include_children_is_a_boolean(served: Any) -> None:
    api = served.tenant("acme")
    for flag in ("true", "false"):
        assert api.get(f"/v1/balances?tenant=acme&include_children={flag}").status == 200
    for flag in ("yes", "", "1"):
        refused = api.get(f"/v1/balances?tenant=acme&include_children={flag}")
        assert refused.status == 400 and "include_children" in refused.body["message"]


def test_every_admin_key_answer_on_the_runtime_plane_is_the_specs(served: Any) -> None:
    acme = served.tenant("acme")
    rid = reserve(acme)
    admin = Api(served.url)
    wrong = {"X-Admin-API-Key": "guess"}
    # list: 200, 400 (no tenant), 401 (a wrong admin key)
    listed = admin.get("/v1/reservations?tenant=acme", headers=ADMIN)
    assert [r["reservation_id"] for r in listed.body["reservations"]] == [rid]
    assert admin.get("/v1/reservations?tenant=acme&status=DONE", headers=ADMIN).status == 400
    assert admin.get("/v1/reservations?tenant=acme", headers=wrong).status == 401
    # get: 200, 401, 404 (an id of no tenant)
    assert admin.get(f"/v1/reservations/{rid}", headers=ADMIN).body["status"] == "ACTIVE"
    assert admin.get(f"/v1/reservations/{rid}", headers=wrong).status == 401
    missing = admin.get("/v1/reservations/not-an-id", headers=ADMIN)
    assert (missing.status, missing.body["error"]) == (404, "NOT_FOUND")
    # release: 200, then 409 RESERVATION_FINALIZED, 400, 401, 404
    released = admin.post(f"/v1/reservations/{rid}/release", {"idempotency_key": "a"},
                          headers=ADMIN)
    assert (released.status, released.body["released"]["amount"]) == (200, 1_000)
    again = admin.post(f"/v1/reservations/{rid}/release", {"idempotency_key": "b"},
                       headers=ADMIN)
    assert (again.status, again.body["error"]) == (409, "RESERVATION_FINALIZED")
    other = reserve(acme, "r2")
    bad = admin.post(f"/v1/reservations/{other}/release", {"idempotency_key": ""},
                     headers=ADMIN)
    assert (bad.status, bad.body["error"]) == (400, "INVALID_REQUEST")
    assert admin.post(f"/v1/reservations/{other}/release", {"idempotency_key": "c"},
                      headers=wrong).status == 401
    nowhere = admin.post("/v1/reservations/not-an-id/release", {"idempotency_key": "d"},
                         headers=ADMIN)
    assert nowhere.status == 404
    assert served.guard.balances("tenant:acme")[0].reserved == 1_000  # `other` is held


def test_the_admin_key_finds_an_expired_reservation_gone_410(served: Any) -> None:
    acme = served.tenant("acme")
    rid = acme.post("/v1/reservations", {
        "idempotency_key": "short", "subject": {"tenant": "acme"},
        "action": {"kind": "llm.completion", "name": "m"},
        "estimate": {"unit": USD, "amount": 1}, "ttl_ms": 1_000, "grace_period_ms": 0}
    ).body["reservation_id"]
    time.sleep(1.2)
    admin = Api(served.url)
    gone = admin.get(f"/v1/reservations/{rid}", headers=ADMIN)
    assert (gone.status, gone.body["error"]) == (410, "RESERVATION_EXPIRED")
    late = admin.post(f"/v1/reservations/{rid}/release", {"idempotency_key": "x"},
                      headers=ADMIN)
    assert (late.status, late.body["error"]) == (410, "RESERVATION_EXPIRED")
