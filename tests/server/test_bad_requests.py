"""Bad requests get the error envelope with a message that says what was wrong, and change
nothing: malformed JSON, wrong types, floats or strings for integers, unknown fields and
units, huge or deeply nested bodies, scope values that are not allowed."""

from __future__ import annotations

from typing import Any

import pytest

USD = "USD_MICROCENTS"


def good() -> dict[str, Any]:
    return {"idempotency_key": "k", "subject": {"tenant": "acme", "workspace": "prod"},
            "action": {"kind": "llm.completion", "name": "m"},
            "estimate": {"unit": USD, "amount": 1000}}


def changed(path: str, value: Any) -> dict[str, Any]:
    body = good()
    target = body
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return body


CASES = [
    (changed("estimate.amount", 10.0), "estimate.amount", "integer"),
    (changed("estimate.amount", 10.5), "estimate.amount", "integer"),
    (changed("estimate.amount", "1000"), "estimate.amount", "integer"),
    (changed("estimate.amount", True), "estimate.amount", "integer"),
    (changed("estimate.amount", -1), "estimate.amount", "greater than or equal"),
    (changed("estimate.amount", 2**60), "estimate.amount", "less than or equal"),
    (changed("estimate.unit", "EUR"), "estimate.unit", "USD_MICROCENTS"),
    (changed("estimate", KeyError), "estimate", "required"),
    (changed("subject.colour", "red"), "subject.colour", "unknown field"),
    (changed("surprise", 1), "surprise", "unknown field"),
    (changed("ttl_ms", 10), "ttl_ms", "greater than or equal to 1000"),
    (changed("ttl_ms", "60000"), "ttl_ms", "integer"),
    (changed("grace_period_ms", 60_001), "grace_period_ms", "60000"),
    (changed("overage_policy", "SOMETIMES"), "overage_policy", "REJECT"),
    (changed("dry_run", "yes"), "dry_run", "boolean"),
    (changed("subject", {"dimensions": {"run": "r"}}), "subject", "at least one"),
    (changed("subject.workspace", "has space"), "workspace", "not allowed"),
    (changed("subject.workspace", "x" * 129), "subject.workspace", "128"),
    (changed("action.kind", "Not-A-Kind"), "kind", "category"),
    (changed("idempotency_key", ""), "idempotency_key", "at least 1"),
    (changed("metadata", "text"), "metadata", "dictionary"),
    (changed("subject", []), "subject", "dictionary"),
]


@pytest.mark.parametrize(("body", "field", "says"), CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_a_bad_reserve_body_is_400_naming_the_field(served: Any, body: dict[str, Any],
                                                    field: str, says: str) -> None:
    api = served.tenant("acme")
    answer = api.post("/v1/reservations", body)
    assert (answer.status, answer.body["error"]) == (400, "INVALID_REQUEST"), answer.body
    assert field in answer.body["message"] and says in answer.body["message"], answer.body
    assert served.guard.balances("tenant:acme")[0].reserved == 0


@pytest.mark.parametrize(("raw", "says"), [
    (b"{", "malformed JSON"),
    (b"", "needs a JSON body"),
    (b"[1, 2]", "JSON object"),
    (b'{"a": NaN}', "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b'{"idempotency_key": "k", "metadata": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,
     "nested"),
])
def test_a_body_that_is_not_a_json_object_is_400(served: Any, raw: bytes, says: str) -> None:
    api = served.tenant("acme")
    answer = api.post("/v1/reservations", raw=raw)
    assert answer.status == 400 and says in answer.body["message"], answer.body


def test_a_huge_body_is_refused_unread(served: Any) -> None:
    api = served.tenant("acme")
    body = good()
    body["metadata"] = {"blob": "x" * 200_000}
    answer = api.post("/v1/reservations", body)
    assert (answer.status, answer.body["error"]) == (413, "INVALID_REQUEST")
    assert "limit" in answer.body["message"]
    chunked = api.client.post(api.url + "/v1/reservations",
                              content=iter([b"{" + b" " * 70_000, b"}"]),
                              headers={"X-Cycles-API-Key": api.key or "",
                                       "Content-Type": "application/json"})
    assert chunked.status_code == 413


def test_a_subject_of_another_tenant_is_forbidden(served: Any) -> None:
    api = served.tenant("acme")
    answer = api.post("/v1/reservations", changed("subject.tenant", "rival"))
    assert (answer.status, answer.body["error"]) == (403, "FORBIDDEN")


def test_a_subject_without_tenant_is_the_keys_tenant(served: Any) -> None:
    api = served.tenant("acme")
    answer = api.post("/v1/reservations", changed("subject", {"workspace": "prod"}))
    assert answer.status == 200, answer.body
    assert answer.body["affected_scopes"] == ["tenant:acme", "tenant:acme/workspace:prod"]


def test_upper_case_values_are_lowered_as_scopes_are(served: Any) -> None:
    api = served.tenant("acme")
    answer = api.post("/v1/reservations", changed("subject", {"tenant": "ACME",
                                                              "workspace": "Prod"}))
    assert answer.status == 200, answer.body
    assert answer.body["scope_path"] == "tenant:acme/workspace:prod"


def test_the_idempotency_header_must_match_the_body(served: Any) -> None:
    api = served.tenant("acme")
    answer = api.post("/v1/reservations", good(), headers={"X-Idempotency-Key": "other"})
    assert answer.status == 400 and "X-Idempotency-Key" in answer.body["message"]
    same = api.post("/v1/reservations", good(), headers={"X-Idempotency-Key": "k"})
    assert same.status == 200


def test_a_commit_in_another_unit_is_a_unit_mismatch(served: Any) -> None:
    api = served.tenant("acme")
    rid = api.post("/v1/reservations", good()).body["reservation_id"]
    answer = api.post(f"/v1/reservations/{rid}/commit",
                      {"idempotency_key": "c", "actual": {"unit": "TOKENS", "amount": 1}})
    assert (answer.status, answer.body["error"]) == (400, "UNIT_MISMATCH")


def test_an_unknown_route_or_method_is_the_envelope(served: Any) -> None:
    api = served.tenant("acme")
    missing = api.call("GET", "/v2/nothing", check=False)
    assert (missing.status, missing.body["error"]) == (404, "NOT_FOUND")
    wrong = api.call("DELETE", "/v1/balances", check=False)
    assert wrong.status == 405 and wrong.body["error"] == "INVALID_REQUEST"


def test_fields_of_a_later_protocol_version_are_ignored(served: Any) -> None:
    api = served.tenant("acme")
    body = good()
    body["action"]["policy_keys"] = ["p"]
    body["observe_mode"] = True
    assert api.post("/v1/reservations", body).status == 200
