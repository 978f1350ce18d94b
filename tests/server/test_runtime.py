"""The runtime plane over real HTTP, on both stores: each route's happy path, replays and
refusals, every body checked against the OpenAPI file (see `support.served`)."""

from __future__ import annotations

import time
from typing import Any

import allotment as al

from support.served import ADMIN_KEY, Api

USD = "USD_MICROCENTS"


def reserve_body(key: str = "r-1", amount: int = 1_000_000, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "subject": {"tenant": "acme", "workspace": "prod"},
            "action": {"kind": "llm.completion", "name": "openai:gpt-4o"},
            "estimate": {"unit": USD, "amount": amount}, **extra}


def test_reserve_then_commit_charges_the_actual_and_releases_the_rest(served: Any) -> None:
    api = served.tenant("acme")
    made = api.post("/v1/reservations", reserve_body())
    assert made.status == 200, made.body
    body = made.body
    assert body["decision"] == "ALLOW"
    assert body["affected_scopes"] == ["tenant:acme", "tenant:acme/workspace:prod"]
    assert body["scope_path"] == "tenant:acme/workspace:prod"
    assert body["reserved"] == {"unit": USD, "amount": 1_000_000}
    assert 0 < body["remaining_ttl_ms"] <= 60_000
    assert [b["scope_path"] for b in body["balances"]] == ["tenant:acme"]
    assert body["balances"][0]["remaining"]["amount"] == 1_000_000_000 - 1_000_000
    rid = body["reservation_id"]
    done = api.post(f"/v1/reservations/{rid}/commit",
                    {"idempotency_key": "c-1", "actual": {"unit": USD, "amount": 400_000}})
    assert done.status == 200, done.body
    assert done.body["status"] == "COMMITTED"
    assert done.body["charged"] == {"unit": USD, "amount": 400_000}
    assert done.body["released"] == {"unit": USD, "amount": 600_000}
    assert served.guard.balances("tenant:acme")[0].spent == 400_000
    again = api.post(f"/v1/reservations/{rid}/commit",
                     {"idempotency_key": "c-1", "actual": {"unit": USD, "amount": 400_000}})
    assert again.status == 200 and again.body == done.body
    other = api.post(f"/v1/reservations/{rid}/commit",
                     {"idempotency_key": "c-2", "actual": {"unit": USD, "amount": 400_000}})
    assert (other.status, other.body["error"]) == (409, "RESERVATION_FINALIZED")
    mismatch = api.post(f"/v1/reservations/{rid}/commit",
                        {"idempotency_key": "c-1", "actual": {"unit": USD, "amount": 1}})
    assert (mismatch.status, mismatch.body["error"]) == (409, "IDEMPOTENCY_MISMATCH")
    assert served.guard.balances("tenant:acme")[0].spent == 400_000


def test_a_reserve_replay_returns_the_same_reservation(served: Any) -> None:
    api = served.tenant("acme")
    first = api.post("/v1/reservations", reserve_body())
    second = api.post("/v1/reservations", reserve_body())
    assert second.body["reservation_id"] == first.body["reservation_id"]
    assert second.body["balances"] == first.body["balances"]
    changed = api.post("/v1/reservations", reserve_body(amount=2))
    assert (changed.status, changed.body["error"]) == (409, "IDEMPOTENCY_MISMATCH")
    assert served.guard.balances("tenant:acme")[0].reserved == 1_000_000


def test_release_returns_the_whole_estimate(served: Any) -> None:
    api = served.tenant("acme")
    rid = api.post("/v1/reservations", reserve_body()).body["reservation_id"]
    released = api.post(f"/v1/reservations/{rid}/release",
                        {"idempotency_key": "rel-1", "reason": "tool failed"})
    assert released.status == 200
    assert released.body["status"] == "RELEASED"
    assert released.body["released"] == {"unit": USD, "amount": 1_000_000}
    assert served.guard.balances("tenant:acme")[0].reserved == 0
    late = api.post(f"/v1/reservations/{rid}/commit",
                    {"idempotency_key": "c", "actual": {"unit": USD, "amount": 1}})
    assert (late.status, late.body["error"]) == (409, "RESERVATION_FINALIZED")


def test_extend_moves_the_expiry_from_the_current_one(served: Any) -> None:
    api = served.tenant("acme")
    made = api.post("/v1/reservations", reserve_body(ttl_ms=60_000)).body
    extended = api.post(f"/v1/reservations/{made['reservation_id']}/extend",
                        {"idempotency_key": "e-1", "extend_by_ms": 30_000})
    assert extended.status == 200, extended.body
    assert extended.body["status"] == "ACTIVE"
    assert extended.body["expires_at_ms"] == made["expires_at_ms"] + 30_000
    assert set(extended.body) == {"status", "expires_at_ms", "remaining_ttl_ms"}


def test_get_returns_the_reservation_as_it_stands(served: Any) -> None:
    api = served.tenant("acme")
    rid = api.post("/v1/reservations", reserve_body(
        subject={"tenant": "acme", "agent": "bot", "dimensions": {"run": "r1"}},
        action={"kind": "unknown", "name": "unknown", "tags": ["beta"]})).body["reservation_id"]
    got = api.get(f"/v1/reservations/{rid}")
    assert got.status == 200, got.body
    assert got.body["status"] == "ACTIVE"
    assert got.body["subject"] == {"tenant": "acme", "agent": "bot",
                                   "dimensions": {"run": "r1"}}
    assert got.body["action"] == {"kind": "unknown", "name": "unknown", "tags": ["beta"]}
    api.post(f"/v1/reservations/{rid}/commit",
             {"idempotency_key": "c", "actual": {"unit": USD, "amount": 5}})
    got = api.get(f"/v1/reservations/{rid}").body
    assert got["status"] == "COMMITTED" and got["committed"]["amount"] == 5
    assert "finalized_at_ms" in got
    mixed = api.post("/v1/reservations", reserve_body(
        "mixed", subject={"tenant": "acme", "dimensions": {"user": "Alice|Ops/EU"}})).body
    got = api.get(f"/v1/reservations/{mixed['reservation_id']}").body
    assert got["subject"]["dimensions"] == {"user": "Alice|Ops/EU"}
    missing = api.get(f"/v1/reservations/acme:{'0' * 32}")
    assert (missing.status, missing.body["error"]) == (404, "NOT_FOUND")
    not_ours = api.get("/v1/reservations/rsv_123")
    assert (not_ours.status, not_ours.body["error"]) == (404, "NOT_FOUND")


def test_commit_over_the_estimate_follows_the_overage_policy(served: Any) -> None:
    api = served.tenant("acme", usd=1)  # 100,000,000 microcents
    # REJECT: an excess the budget cannot cover is refused, nothing moves, the reservation
    # stays open (allotment's REJECT lets an excess that fits through)
    rid = api.post("/v1/reservations", reserve_body(
        "r-rej", 90_000_000, overage_policy="REJECT")).body["reservation_id"]
    over = api.post(f"/v1/reservations/{rid}/commit",
                    {"idempotency_key": "c", "actual": {"unit": USD, "amount": 150_000_000}})
    assert (over.status, over.body["error"]) == (409, "BUDGET_EXCEEDED")
    assert api.get(f"/v1/reservations/{rid}").body["status"] == "ACTIVE"
    api.post(f"/v1/reservations/{rid}/release", {"idempotency_key": "rel"})
    # ALLOW_IF_AVAILABLE: charged up to what remains, the budget marked over its limit
    rid = api.post("/v1/reservations", reserve_body(
        "r-avail", 90_000_000, overage_policy="ALLOW_IF_AVAILABLE")).body["reservation_id"]
    capped = api.post(f"/v1/reservations/{rid}/commit",
                      {"idempotency_key": "c", "actual": {"unit": USD, "amount": 150_000_000}})
    assert capped.status == 200, capped.body
    assert capped.body["charged"]["amount"] == 100_000_000
    assert capped.body["balances"][0].get("is_over_limit") is True
    refused = api.post("/v1/reservations", reserve_body("r-next", 1))
    assert (refused.status, refused.body["error"]) == (409, "OVERDRAFT_LIMIT_EXCEEDED")


def test_commit_with_overdraft_creates_debt_within_the_limit(served: Any) -> None:
    served.guard.set_budget("tenant:od", usd=1, overdraft_limit=1)
    api = served.tenant("od", usd=None)
    body = reserve_body("r", 90_000_000, overage_policy="ALLOW_WITH_OVERDRAFT",
                        subject={"tenant": "od"})
    rid = api.post("/v1/reservations", body).body["reservation_id"]
    done = api.post(f"/v1/reservations/{rid}/commit",
                    {"idempotency_key": "c", "actual": {"unit": USD, "amount": 150_000_000}})
    assert done.status == 200, done.body
    row = done.body["balances"][0]
    assert row["debt"]["amount"] == 50_000_000 and row["remaining"]["amount"] == -50_000_000
    # remaining is below zero: even an estimate of 0 does not fit
    refused = api.post("/v1/reservations", {**body, "idempotency_key": "r2",
                                            "estimate": {"unit": USD, "amount": 0}})
    assert (refused.status, refused.body["error"]) == (409, "BUDGET_EXCEEDED")


def test_a_live_denial_is_an_error_and_a_dry_run_denial_a_decision(served: Any) -> None:
    api = served.tenant("acme", usd=1)
    denied = api.post("/v1/reservations", reserve_body(amount=200_000_000))
    assert (denied.status, denied.body["error"]) == (409, "BUDGET_EXCEEDED")
    assert denied.body["details"]["reason_code"] == "BUDGET_EXCEEDED"
    dry = api.post("/v1/reservations", reserve_body("dry", 200_000_000, dry_run=True))
    assert dry.status == 200
    assert dry.body["decision"] == "DENY" and dry.body["reason_code"] == "BUDGET_EXCEEDED"
    assert "reservation_id" not in dry.body and "expires_at_ms" not in dry.body
    fits = api.post("/v1/reservations", reserve_body("dry2", 1, dry_run=True))
    assert fits.body["decision"] == "ALLOW"
    assert served.guard.balances("tenant:acme")[0].reserved == 0


def test_no_budget_is_not_found_live_and_a_denial_when_deciding(served: Any) -> None:
    api = served.tenant("nobudget", usd=None)
    body = reserve_body(subject={"tenant": "nobudget"})
    live = api.post("/v1/reservations", body)
    assert (live.status, live.body["error"]) == (404, "NOT_FOUND")
    assert live.body["message"].startswith("Budget not found for provided scope")
    decided = api.post("/v1/decide", {k: v for k, v in body.items()})
    assert decided.status == 200
    assert decided.body["decision"] == "DENY"
    assert decided.body["reason_code"] == "BUDGET_NOT_FOUND"


def test_decide_changes_nothing(served: Any) -> None:
    api = served.tenant("acme")
    decided = api.post("/v1/decide", {k: v for k, v in reserve_body().items()})
    assert decided.status == 200
    assert decided.body == {"decision": "ALLOW",
                            "affected_scopes": ["tenant:acme", "tenant:acme/workspace:prod"]}
    assert served.guard.balances("tenant:acme")[0].reserved == 0


def test_an_event_is_a_direct_debit_answered_201(served: Any) -> None:
    api = served.tenant("acme", usd=1)
    body = {"idempotency_key": "ev-1", "subject": {"tenant": "acme"},
            "action": {"kind": "tool.search", "name": "web"},
            "actual": {"unit": USD, "amount": 30_000_000}}
    made = api.post("/v1/events", body)
    assert made.status == 201, made.body
    assert made.body["status"] == "APPLIED" and "charged" not in made.body
    again = api.post("/v1/events", body)
    assert again.status == 201 and again.body["event_id"] == made.body["event_id"]
    assert served.guard.balances("tenant:acme")[0].spent == 30_000_000
    capped = api.post("/v1/events", {**body, "idempotency_key": "ev-2",
                                     "actual": {"unit": USD, "amount": 90_000_000}})
    assert capped.status == 201
    assert capped.body["charged"] == {"unit": USD, "amount": 70_000_000}
    rejected = api.post("/v1/events", {**body, "idempotency_key": "ev-3",
                                       "overage_policy": "REJECT"})
    assert (rejected.status, rejected.body["error"]) == (409, "BUDGET_EXCEEDED")


def test_events_and_commits_have_separate_key_namespaces(served: Any) -> None:
    api = served.tenant("acme")
    rid = api.post("/v1/reservations", reserve_body()).body["reservation_id"]
    api.post(f"/v1/reservations/{rid}/commit",
             {"idempotency_key": "shared", "actual": {"unit": USD, "amount": 10}})
    event = api.post("/v1/events", {"idempotency_key": "shared", "subject": {"tenant": "acme"},
                                    "action": {"kind": "llm.completion", "name": "m"},
                                    "actual": {"unit": USD, "amount": 20}})
    assert event.status == 201
    assert served.guard.balances("tenant:acme")[0].spent == 30


def test_balances_filter_by_segment_and_page(served: Any) -> None:
    api = served.tenant("acme")
    for workspace in ("a", "b", "c"):
        served.guard.set_budget(f"tenant:acme/workspace:{workspace}", usd=1)
        served.guard.set_budget(f"tenant:acme/workspace:{workspace}/agent:bot", usd=1)
    everything = api.get("/v1/balances?tenant=acme")
    assert len(everything.body["balances"]) == 7
    assert "next_cursor" not in everything.body
    one = api.get("/v1/balances?workspace=b").body["balances"]
    assert [b["scope_path"] for b in one] == ["tenant:acme/workspace:b",
                                             "tenant:acme/workspace:b/agent:bot"]
    assert one[1]["scope"] == "agent:bot"
    agents = api.get("/v1/balances?agent=bot").body["balances"]
    assert len(agents) == 3
    seen, cursor = [], None
    while True:
        page = api.get("/v1/balances?tenant=acme&limit=3"
                       + (f"&cursor={cursor}" if cursor else "")).body
        seen += [b["scope_path"] for b in page["balances"]]
        if not page.get("has_more"):
            break
        cursor = page["next_cursor"]
    assert seen == [b["scope_path"] for b in everything.body["balances"]]
    for query, word in (("", "give at least one"), ("?tenant=acme&limit=0", "limit"),
                        ("?tenant=acme&cursor=xyz", "cursor"), ("?colour=red", "unknown")):
        refused = api.get("/v1/balances" + query)
        assert refused.status == 400 and word in refused.body["message"], refused.body


def test_an_expired_reservation_is_gone_410(served: Any) -> None:
    api = served.tenant("acme")
    rid = api.post("/v1/reservations", reserve_body(ttl_ms=1_000, grace_period_ms=0)
                   ).body["reservation_id"]
    time.sleep(1.2)
    late = api.post(f"/v1/reservations/{rid}/commit",
                    {"idempotency_key": "c", "actual": {"unit": USD, "amount": 1}})
    assert (late.status, late.body["error"]) == (410, "RESERVATION_EXPIRED")
    assert api.get(f"/v1/reservations/{rid}").status == 410
    extend = api.post(f"/v1/reservations/{rid}/extend",
                      {"idempotency_key": "e", "extend_by_ms": 1_000})
    assert extend.status == 410
    assert served.guard.balances("tenant:acme")[0].reserved == 0


def test_trace_ids_follow_traceparent_then_the_cycles_header(served: Any) -> None:
    api = served.tenant("acme")
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    mine = "a" * 32
    both = api.get("/v1/balances?tenant=acme",
                   headers={"traceparent": parent, "X-Cycles-Trace-Id": mine})
    assert both.headers["X-Cycles-Trace-Id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    header = api.get("/v1/balances?tenant=acme", headers={"X-Cycles-Trace-Id": mine})
    assert header.headers["X-Cycles-Trace-Id"] == mine
    bad = api.get("/v1/balances?tenant=acme",
                  headers={"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                           "X-Cycles-Trace-Id": "0" * 32})
    assert bad.status == 200
    assert bad.headers["X-Cycles-Trace-Id"] not in ("0" * 32, mine)
    error = api.get("/v1/balances", headers={"X-Cycles-Trace-Id": mine})
    assert error.body["trace_id"] == mine


def test_a_health_probe_needs_no_key(served: Any) -> None:
    assert Api(served.url).get("/actuator/health/readiness").status == 200


def test_the_guard_sees_what_the_wire_did(served: Any) -> None:
    api = served.tenant("acme")
    rid = api.post("/v1/reservations", reserve_body()).body["reservation_id"]
    assert served.guard.get(rid).status is al.ReservationStatus.ACTIVE


def test_a_unit_no_budget_holds_is_a_unit_mismatch_and_no_budget_not_found(
        served: Any) -> None:
    api = served.tenant("acme")
    tokens = reserve_body(estimate={"unit": "TOKENS", "amount": 5})
    for path in ("/v1/reservations", "/v1/decide"):
        body = tokens if path == "/v1/reservations" else {
            k: v for k, v in tokens.items()}
        answer = api.post(path, body)
        assert (answer.status, answer.body["error"]) == (400, "UNIT_MISMATCH"), path
    event = api.post("/v1/events", {"idempotency_key": "e", "subject": {"tenant": "acme",
                                                                        "app": "x"},
                                    "action": {"kind": "tool.search", "name": "w"},
                                    "actual": {"unit": "TOKENS", "amount": 5}})
    assert (event.status, event.body["error"]) == (400, "UNIT_MISMATCH")
    nobody = served.tenant("empty", usd=None)
    event = nobody.post("/v1/events", {"idempotency_key": "e", "subject": {"tenant": "empty"},
                                       "action": {"kind": "tool.search", "name": "w"},
                                       "actual": {"unit": USD, "amount": 5}})
    assert (event.status, event.body["error"]) == (404, "NOT_FOUND")


def test_a_quota_refusal_is_429_with_retry_after(served: Any) -> None:
    api = served.tenant("acme")
    served.guard.set_quota("tenant:acme", calls=1, window="hour")
    assert api.post("/v1/reservations", reserve_body("q1")).status == 200
    refused = api.post("/v1/reservations", reserve_body("q2"))
    assert (refused.status, refused.body["error"]) == (429, "LIMIT_EXCEEDED")
    assert 0 < int(refused.headers["Retry-After"]) <= 3_600
    assert refused.body["details"]["reason_code"] == "QUOTA_EXCEEDED"


def test_extensions_stop_at_the_limit(served: Any) -> None:
    api = served.tenant("acme")
    rid = api.post("/v1/reservations", reserve_body()).body["reservation_id"]
    for i in range(10):
        assert api.post(f"/v1/reservations/{rid}/extend",
                        {"idempotency_key": f"e{i}", "extend_by_ms": 1_000}).status == 200
    refused = api.post(f"/v1/reservations/{rid}/extend",
                       {"idempotency_key": "e-last", "extend_by_ms": 1_000})
    assert (refused.status, refused.body["error"]) == (409, "MAX_EXTENSIONS_EXCEEDED")
    replay = api.post(f"/v1/reservations/{rid}/extend",
                      {"idempotency_key": "e0", "extend_by_ms": 1_000})
    assert replay.status == 200


def test_list_pages_through_the_tenants_reservations_only(served: Any) -> None:
    api = served.tenant("acme")
    rival = served.tenant("rival")
    made = [api.post("/v1/reservations", reserve_body(f"l{i}", 1_000 + i,
                                                      subject={"tenant": "acme",
                                                               "agent": f"a{i % 2}"})
                     ).body["reservation_id"] for i in range(5)]
    rival.post("/v1/reservations", reserve_body("x", subject={"tenant": "rival"}))
    api.post(f"/v1/reservations/{made[0]}/release", {"idempotency_key": "rel"})
    seen, cursor = [], None
    for _ in range(20):
        page = api.get("/v1/reservations?limit=2"
                       + (f"&cursor={cursor}" if cursor else "")).body
        assert "reservations" in page and len(page["reservations"]) <= 2, page
        seen += [row["reservation_id"] for row in page["reservations"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            assert "has_more" not in page
            break
    assert sorted(seen) == sorted(made)
    active = api.get("/v1/reservations?status=ACTIVE").body["reservations"]
    assert sorted(r["reservation_id"] for r in active) == sorted(made[1:])
    agent = api.get("/v1/reservations?agent=a1&sort_by=reserved&sort_dir=asc").body
    assert [r["reserved"]["amount"] for r in agent["reservations"]] == [1_001, 1_003]
    assert api.get("/v1/reservations?tenant=rival").status == 403
    assert api.get("/v1/reservations?from=2099-01-01T00:00:00Z").body["reservations"] == []
    window = api.get("/v1/reservations?from=&to=").body["reservations"]
    assert len(window) == 5
    for query in ("status=DONE", "sort_by=colour", "sort_dir=up", "limit=500",
                  "from=2027-01-02T00:00:00Z&to=2027-01-01T00:00:00Z", "from=yesterday",
                  "idempotency_key=l1"):
        refused = api.get(f"/v1/reservations?{query}")
        assert refused.status == 400, (query, refused.body)
    admin = Api(served.url)
    listed = admin.get("/v1/reservations?tenant=acme",
                       headers={"X-Admin-API-Key": ADMIN_KEY}).body["reservations"]
    assert len(listed) == 5
    assert admin.get("/v1/reservations", headers={"X-Admin-API-Key": ADMIN_KEY}).status == 400


def test_a_missing_required_dimension_is_a_bad_request_and_a_denial_when_deciding(
        served: Any) -> None:
    api = served.tenant("acme")
    served.guard.set_budget("tenant:acme", usd=1, per="run", required=True)
    live = api.post("/v1/reservations", reserve_body())
    assert (live.status, live.body["error"]) == (400, "INVALID_REQUEST"), live.body
    assert live.body["details"]["missing_dimensions"] == ["run"]
    decided = api.post("/v1/decide", {k: v for k, v in reserve_body().items()})
    assert decided.body["reason_code"] == "DIMENSION_REQUIRED"
    with_run = reserve_body("with-run", subject={"tenant": "acme", "dimensions": {"run": "r1"}})
    assert api.post("/v1/reservations", with_run).status == 200
