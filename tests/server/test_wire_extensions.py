"""allotment's wire extensions over real HTTP, on both stores: the optional `allotment` body
field (several units, elastic estimates, token counts, whole results) and the
`X-Allotment-Extensions: 1` header of reads. A plain Cycles request gets the Cycles shape
exactly (checked against the OpenAPI file, no extra field); a request that used an extension
gets the Cycles part (also checked) and the `allotment` part; bad extension input is the error
envelope and changes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import allotment as al
from allotment.clock import system_ms

from support.openapi import validate
from support.served import Answer, Api, serving
from support.snapshots import snapshot

USD, TOK = "USD_MICROCENTS", "TOKENS"
WHOLE = {"X-Allotment-Extensions": "1"}


def usd(amount: int) -> dict[str, Any]:
    return {"unit": USD, "amount": amount}


def tok(amount: int) -> dict[str, Any]:
    return {"unit": TOK, "amount": amount}


def reserve_body(key: str = "r-1", estimate: Any = None, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "subject": {"tenant": "acme", "workspace": "prod"},
            "action": {"kind": "llm.completion", "name": "openai:gpt-4o"},
            "estimate": estimate or usd(1_000_000), **extra}


def event_body(key: str) -> dict[str, Any]:
    return {k: v for k, v in reserve_body(key).items() if k != "estimate"}


def extended(answer: Answer, method: str, path: str) -> dict[str, Any]:
    """The `allotment` part of an answer; the rest must be the Cycles shape exactly."""
    assert answer.status < 300, answer.body
    body = dict(answer.body)
    part = body.pop("allotment")
    validate(method, path, answer.status, body)
    return dict(part)


def funded(served: Any) -> Api:
    api = served.tenant("acme")
    served.guard.set_budget("tenant:acme", tokens=100_000, period="day")
    return api


def by_unit(guard: al.Guard) -> dict[str, Any]:
    return {b.unit.value: b for b in guard.balances("tenant:acme", include_children=False)}


def test_plain_requests_get_the_cycles_shape_and_nothing_more(served: Any) -> None:
    api = funded(served)
    made = api.post("/v1/reservations", reserve_body())
    rid = made.body["reservation_id"]
    answers = [made, api.post("/v1/decide", reserve_body("d")),
               api.post("/v1/reservations", reserve_body("dry", dry_run=True)),
               api.post(f"/v1/reservations/{rid}/extend",
                        {"idempotency_key": "e", "extend_by_ms": 1_000}),
               api.get(f"/v1/reservations/{rid}"), api.get("/v1/reservations?tenant=acme"),
               api.get("/v1/balances?tenant=acme"),
               api.post(f"/v1/reservations/{rid}/commit",
                        {"idempotency_key": "c", "actual": usd(10)}),
               api.post("/v1/events", {**event_body("ev"), "actual": usd(5)})]
    for answer in answers:  # each validated against the OpenAPI file by `Api`
        assert answer.status < 300, answer.body
        assert "allotment" not in answer.body


def test_an_estimate_in_several_units_is_held_at_once(served: Any) -> None:
    api = funded(served)
    made = api.post("/v1/reservations", reserve_body(
        estimate=usd(2_000_000), allotment={"estimate": [usd(2_000_000), tok(4_096)]}),
        check=False)
    part = extended(made, "POST", "/v1/reservations")
    assert made.body["reserved"] == usd(2_000_000)
    held = part["reservation"]
    assert held["id"] == made.body["reservation_id"]
    assert held["estimate"] == [usd(2_000_000), tok(4_096)]
    assert part["decision"] == {"outcome": "ALLOW"}
    assert {row["unit"]: row["reserved"] for row in part["balances"]} == {
        USD: 2_000_000, TOK: 4_096}
    rows = by_unit(served.guard)
    assert (rows[USD].reserved, rows[TOK].reserved) == (2_000_000, 4_096)
    rid = made.body["reservation_id"]
    done = api.post(f"/v1/reservations/{rid}/commit", {
        "idempotency_key": "c", "actual": usd(1_500_000),
        "allotment": {"actual": [usd(1_500_000), tok(1_000)],
                      "usage": {"input_tokens": 600, "output_tokens": 400}}}, check=False)
    settled = extended(done, "POST", f"/v1/reservations/{rid}/commit")
    assert done.body["charged"] == usd(1_500_000)
    assert done.body["released"] == usd(500_000)
    assert settled["charged"] == [usd(1_500_000), tok(1_000)]
    assert settled["released"] == [usd(500_000), tok(3_096)]
    rows = by_unit(served.guard)
    assert (rows[USD].spent, rows[TOK].spent, rows[USD].reserved, rows[TOK].reserved) == (
        1_500_000, 1_000, 0, 0)
    (usage,) = [row for row in served.guard.usage(tenant="acme") if row.unit is al.Unit.TOKENS]
    assert (usage.input_tokens, usage.output_tokens) == (600, 400)


def test_an_elastic_estimate_shrinks_to_what_fits(served: Any) -> None:
    api = served.tenant("acme", usd=Decimal("0.5"))  # $0.50: room for 40k output tokens
    elastic = {"fixed": [usd(10_000_000)], "per_mtok": [usd(1_000_000_000)],
               "max_tokens": 100_000, "floor": 1_000}
    made = api.post("/v1/reservations", reserve_body(
        estimate=usd(10_000_000), allotment={"elastic": elastic}), check=False)
    part = extended(made, "POST", "/v1/reservations")
    assert made.body["decision"] == "ALLOW_WITH_CAPS"
    assert made.body["caps"] == {"max_tokens": 40_000}
    assert made.body["reserved"] == usd(50_000_000)
    assert part["decision"] == {"outcome": "ALLOW_WITH_CAPS", "caps": {"max_tokens": 40_000}}
    assert part["reservation"]["estimate"] == [usd(50_000_000)]
    assert by_unit(served.guard)[USD].reserved == 50_000_000
    decided = api.post("/v1/decide", {**reserve_body("d", estimate=usd(10_000_000)),
                                      "allotment": {"elastic": elastic}}, check=False)
    assert extended(decided, "POST", "/v1/decide")["decision"]["outcome"] == "DENY"
    dry = api.post("/v1/reservations", reserve_body(
        "dry", estimate=usd(10_000_000), dry_run=True,
        allotment={"elastic": {**elastic, "max_tokens": 10_000}}), check=False)
    refusal = extended(dry, "POST", "/v1/reservations")["decision"]
    assert (refusal["outcome"], refusal["reason"], refusal["remaining"]) == (
        "DENY", "BUDGET_EXCEEDED", 0)
    assert dry.body["decision"] == "DENY" and "reserved" not in dry.body
    assert by_unit(served.guard)[USD].reserved == 50_000_000  # a dry run holds nothing


def test_release_extend_events_and_reads_answer_the_whole_result(served: Any) -> None:
    api = funded(served)
    rid = api.post("/v1/reservations", reserve_body(
        estimate=usd(1_000), allotment={"estimate": [usd(1_000), tok(10)]}),
        check=False).body["reservation_id"]
    stretched = api.post(f"/v1/reservations/{rid}/extend",
                         {"idempotency_key": "e", "extend_by_ms": 5_000, "allotment": {}},
                         check=False)
    part = extended(stretched, "POST", f"/v1/reservations/{rid}/extend")
    assert part == {"expires_at_ms": stretched.body["expires_at_ms"], "extensions": 1}
    got = api.get(f"/v1/reservations/{rid}", headers=WHOLE, check=False)
    whole = extended(got, "GET", f"/v1/reservations/{rid}")["reservation"]
    assert whole["estimate"] == [usd(1_000), tok(10)] and whole["extensions"] == 1
    listed = api.get("/v1/reservations?tenant=acme", headers=WHOLE, check=False)
    assert [r["id"] for r in extended(listed, "GET", "/v1/reservations")["reservations"]] == [
        rid]
    freed = api.post(f"/v1/reservations/{rid}/release",
                     {"idempotency_key": "rel", "allotment": {}}, check=False)
    assert extended(freed, "POST", f"/v1/reservations/{rid}/release")["released"] == [
        usd(1_000), tok(10)]
    debited = api.post("/v1/events", {**event_body("ev"), "actual": usd(7), "allotment": {
        "actual": [usd(7), tok(3)], "usage": {"input_tokens": 2, "output_tokens": 1}}},
        check=False)
    assert extended(debited, "POST", "/v1/events")["charged"] == [usd(7), tok(3)]
    rows = api.get("/v1/balances?scope=tenant:acme&include_children=false", headers=WHOLE,
                   check=False)
    whole_rows = extended(rows, "GET", "/v1/balances")["balances"]
    assert {(r["unit"], r["spent"], r.get("period")) for r in whole_rows} == {
        (USD, 7, None), (TOK, 3, "day")}
    plain = api.get("/v1/balances?scope=tenant:acme", check=False)  # scope needs the header
    assert (plain.status, plain.body["error"]) == (400, "INVALID_REQUEST")


def test_a_get_asking_for_the_whole_record_answers_an_expired_one() -> None:
    clock = al.ManualClock(system_ms())
    guard = al.Guard(al.MemoryStore(clock))
    guard.set_budget("tenant:acme", usd=1)
    api_key = guard.create_key("acme").secret
    with serving(guard) as url:
        api = Api(url, api_key)
        rid = api.post("/v1/reservations", reserve_body(ttl_ms=1_000, grace_period_ms=0)
                       ).body["reservation_id"]
        clock.advance(5_000)
        assert api.get(f"/v1/reservations/{rid}").status == 410  # the Cycles answer
        got = api.get(f"/v1/reservations/{rid}", headers=WHOLE, check=False)
        assert got.body["status"] == "EXPIRED"
        assert extended(got, "GET", f"/v1/reservations/{rid}")["reservation"][
            "status"] == "EXPIRED"


BAD = [
    ({"estimate": [usd(1), usd(2)]}, "given twice"),
    ({"estimate": [usd(5), tok(3)]}, "is not one of allotment.estimate"),
    ({"estimate": [{"unit": USD, "amount": 1.5}]}, "expected a JSON integer"),
    ({"estimate": [usd(1_000_000)], "elastic": {"per_mtok": [usd(1)], "max_tokens": 10}},
     "not both"),
    ({"elastic": {"per_mtok": [usd(1)], "max_tokens": 10, "floor": 11}}, "floor"),
    ({"estimate": []}, "allotment.estimate"),
    ({"colour": "blue"}, "allotment.colour: unknown field"),
    ("all of it", "allotment"),
]


@pytest.mark.parametrize(("ext", "said"), BAD)
def test_bad_extension_input_is_refused_and_changes_nothing(served: Any, ext: Any,
                                                            said: str) -> None:
    api = funded(served)
    before = snapshot(served.guard.store, "acme")
    refused = api.post("/v1/reservations", reserve_body(allotment=ext))
    assert (refused.status, refused.body["error"]) == (400, "INVALID_REQUEST")
    assert said in refused.body["message"], refused.body["message"]
    assert snapshot(served.guard.store, "acme") == before


def test_bad_settling_input_and_a_bad_header_are_refused(served: Any) -> None:
    api = funded(served)
    rid = api.post("/v1/reservations", reserve_body()).body["reservation_id"]
    before = snapshot(served.guard.store, "acme")
    for ext, said in [({"actual": [usd(3), tok(1)]}, "is not one of allotment.actual"),
                      ({"usage": {"input_tokens": -1}}, "input_tokens"),
                      ({"usage": {"input_tokens": "5"}}, "input_tokens")]:
        refused = api.post(f"/v1/reservations/{rid}/commit", {
            "idempotency_key": "c", "actual": usd(5), "allotment": ext})
        assert (refused.status, refused.body["error"]) == (400, "INVALID_REQUEST")
        assert said in refused.body["message"], refused.body["message"]
    refused = api.post(f"/v1/reservations/{rid}/release",
                       {"idempotency_key": "r", "allotment": {"reason": "x"}})
    assert refused.status == 400
    wrong = api.get(f"/v1/reservations/{rid}", headers={"X-Allotment-Extensions": "2"})
    assert (wrong.status, wrong.body["error"]) == (400, "INVALID_REQUEST")
    assert "X-Allotment-Extensions" in wrong.body["message"]
    assert snapshot(served.guard.store, "acme") == before


def test_an_extension_changes_what_an_idempotency_key_stands_for(served: Any) -> None:
    api = funded(served)
    first = api.post("/v1/reservations", reserve_body("k"))
    assert first.status == 200
    again = api.post("/v1/reservations", reserve_body(
        "k", allotment={"estimate": [usd(1_000_000), tok(5)]}))
    assert (again.status, again.body["error"]) == (409, "IDEMPOTENCY_MISMATCH")


def test_another_tenants_key_learns_nothing_through_an_extension(served: Any) -> None:
    api = funded(served)
    rival = served.tenant("rival")
    rid = api.post("/v1/reservations", reserve_body()).body["reservation_id"]
    before = snapshot(served.guard.store, "acme")
    for answer in [rival.get(f"/v1/reservations/{rid}", headers=WHOLE),
                   rival.get("/v1/balances?scope=tenant:acme", headers=WHOLE),
                   rival.post(f"/v1/reservations/{rid}/release",
                              {"idempotency_key": "x", "allotment": {}}),
                   rival.post("/v1/reservations", reserve_body(
                       allotment={"estimate": [usd(1_000_000), tok(1)]}))]:
        assert (answer.status, answer.body["error"]) == (403, "FORBIDDEN"), answer.body
        assert "allotment" not in answer.body
    assert snapshot(served.guard.store, "acme") == before


def test_the_server_announces_itself_unless_told_to_speak_plain_cycles() -> None:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=1)
    secret = guard.create_key("acme").secret
    with serving(guard) as url:
        told = Api(url).get("/v1/allotment", check=False)
        assert (told.status, told.body) == (200, {"server": "allotment", "extensions": 1})
    with serving(guard, extensions=False) as url:
        api = Api(url, secret)
        assert api.get("/v1/allotment", check=False).status == 404
        refused = api.post("/v1/reservations", reserve_body(
            allotment={"estimate": [usd(1_000_000), tok(1)]}))
        assert (refused.status, refused.body["message"]) == (
            400, "allotment: unknown field")
        plain = api.post("/v1/reservations", reserve_body())
        rid = plain.body["reservation_id"]
        assert "allotment" not in api.get(f"/v1/reservations/{rid}", headers=WHOLE).body
