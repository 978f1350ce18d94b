"""The governance admin plane's reads over the audit log, in the Cycles governance admin
spec's shapes: the event stream (admin, one event, a tenant's own), the audit log and the
dashboard's overview. Both stores; the fields checked against the spec's schemas (Event and
AdminOverviewResponse are closed, AuditLogEntry open); filters, sorts and pages; walls
between tenants; bad queries refused naming the parameter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import allotment as al
from allotment.clock import system_ms
from allotment.server.governance import (
    CYCLES_EVENT_TYPES,
    EVENT_TYPES,
    event_of,
    event_type,
    log_entry,
)

from support.openapi import GOVERNANCE, conforms, validate
from support.served import ADMIN_KEY, Answer, Api, serving
from support.stores import STORE_KINDS, make_store

USD = "USD_MICROCENTS"
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}
LLM = al.Action("llm.completion", "openai:gpt-4o")

EVENT_REQUIRED = {"event_id", "event_type", "category", "timestamp", "tenant_id", "source"}
EVENT_ALLOWED = EVENT_REQUIRED | {"scope", "actor", "data", "correlation_id", "request_id",
                                  "trace_id"}  # Event (closed)
LOG_REQUIRED = {"log_id", "timestamp", "tenant_id", "operation", "status"}  # AuditLogEntry
OVERVIEW_REQUIRED = {"as_of", "event_window_seconds", "tenant_counts", "budget_counts",
                     "over_limit_scopes", "debt_scopes", "webhook_counts", "failing_webhooks",
                     "event_counts", "recent_denials", "recent_expiries"}
OVERVIEW_ALLOWED = OVERVIEW_REQUIRED | {"recent_denials_by_reason", "quota_health"}


@dataclass
class World:
    guard: al.Guard
    clock: al.ManualClock
    url: str
    acme_key: str
    beta_key: str


@pytest.fixture(params=STORE_KINDS)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """Three tenants with a history: acme (a denial over HTTP, an expiry, a credit, a
    commit over its estimate that left a budget over its limit, a workspace budget), beta
    (frozen: suspended) and owing (in debt); two webhook subscriptions, one paused."""
    clock = al.ManualClock(system_ms())
    store = make_store(request.param, clock)
    guard = al.Guard(store)
    guard.register_tenant("acme", "Acme")
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:beta", usd=5)
    guard.set_budget("tenant:owing", usd=1, overdraft_limit=2)  # dollars, as usd
    acme_key = guard.create_key("acme", permissions=["reservations:create", "events:read"])
    beta_key = guard.create_key("beta", permissions=["events:read"]).secret
    guard.subscribe_webhook("https://hooks.example.com/a", events="*")
    paused = guard.subscribe_webhook("https://hooks.example.com/b", events="*", tenant="beta")
    guard.enable_webhook(paused.id, False)
    with serving(guard) as url:
        clock.advance(10)
        denied = Api(url, acme_key.secret).post("/v1/reservations", {
            "idempotency_key": "big", "subject": {"tenant": "acme"},
            "action": {"kind": "llm.completion", "name": "openai:gpt-4o"},
            "estimate": {"unit": USD, "amount": al.usd(50).amount}}, check=False)
        assert denied.status == 409, denied.body
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
        clock.advance(2_000)
        assert guard.sweep() == 1
        clock.advance(10)
        guard.fund("tenant:acme", "CREDIT", al.usd(2), actor="ops", reason="goodwill")
        clock.advance(10)
        guard.set_budget("tenant:acme/workspace:w", usd=1)
        clock.advance(10)
        guard.reserve(al.Subject(tenant="acme", workspace="w"), LLM, al.usd("0.5")).commit(
            al.usd(3))  # over its estimate, and over what the workspace had
        clock.advance(10)
        guard.freeze("tenant:beta")
        clock.advance(10)
        guard.record(al.Subject(tenant="owing"), LLM, al.usd(2),
                     overage_policy="ALLOW_WITH_OVERDRAFT")
        yield World(guard, clock, url, acme_key.secret, beta_key)
    store.close()


def get(world: World, path: str, *, key: str | None = None) -> Answer:
    """A GET whose answer, whatever its status, is checked against the governance spec."""
    headers = {} if key is not None else ADMIN
    answer = Api(world.url, key).call("GET", path, headers=headers, check=False)
    validate("GET", path, answer.status, answer.body, GOVERNANCE)
    return answer


def every_page(world: World, path: str, field: str, *, key: str | None = None,
               limit: int = 2) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = ""
    joiner = "&" if "?" in path else "?"
    while True:
        answer = get(world, f"{path}{joiner}limit={limit}{cursor}", key=key)
        assert answer.status == 200, answer.body
        rows += answer.body[field]
        assert ("next_cursor" in answer.body) == answer.body["has_more"]
        if not answer.body["has_more"]:
            return rows
        cursor = f"&cursor={answer.body['next_cursor']}"


def test_every_event_type_given_is_one_of_the_protocols() -> None:
    assert EVENT_TYPES <= CYCLES_EVENT_TYPES and len(CYCLES_EVENT_TYPES) == 51


def test_the_event_stream_shows_each_recorded_change_newest_first(world: World) -> None:
    answer = get(world, "/v1/admin/events")
    assert answer.status == 200, answer.body
    events = answer.body["events"]
    assert answer.body["has_more"] is False
    assert "None" not in repr(answer.body)  # never a null, in `data` either
    for event in events:
        assert EVENT_REQUIRED <= set(event) <= EVENT_ALLOWED, event
        assert event["category"] == event["event_type"].split(".")[0]
        assert event["source"] == "allotment"
    crossed = [("owing", "budget.threshold_crossed")] * 3  # 50 %, 80 %, 100 %: newest first
    assert [(e["tenant_id"], e["event_type"]) for e in events] == [
        ("owing", "budget.debt_incurred"), ("owing", "budget.exhausted"), *crossed,
        ("beta", "budget.frozen"), ("acme", "reservation.commit_overage"),
        ("acme", "budget.over_limit_entered"), ("acme", "budget.exhausted"),
        *[("acme", kind) for _, kind in crossed], ("acme", "budget.created"),
        ("acme", "budget.funded"), ("acme", "reservation.expired"),
        ("acme", "reservation.denied"), ("owing", "budget.created"),
        ("beta", "webhook.paused"), ("beta", "webhook.created"),
        ("beta", "api_key.created"), ("beta", "budget.created"), ("acme", "api_key.created"),
        ("acme", "budget.created"), ("acme", "tenant.created")]  # same moment: id order
    denial, expired, funded = events[15], events[14], events[13]
    assert denial["scope"] == "tenant:acme" and "actor" not in denial  # not on record
    assert denial["data"]["reason"] == "BUDGET_EXCEEDED"
    assert denial["data"]["estimate"] == [{"unit": USD, "amount": al.usd(50).amount}]
    assert denial["data"]["action"] == {"kind": "llm.completion", "name": "openai:gpt-4o"}
    assert funded["data"]["actual"] == [{"unit": USD, "amount": al.usd(2).amount}]
    assert (funded["data"]["actor"], funded["data"]["reason"]) == ("ops", "goodwill")
    assert expired["actor"] == {"type": "system"}
    assert events[0]["timestamp"] >= events[-1]["timestamp"]
    # the notifications on record: the ledger's figures, the reservation that caused them
    debt, exhausted, overage = events[0], events[1], events[6]
    assert (debt["scope"], debt["data"]["detail"]) == ("tenant:owing", {
        "unit": USD, "remaining": -al.usd(1).amount, "allocated": al.usd(1).amount,
        "debt_incurred": al.usd(1).amount})
    assert exhausted["data"]["detail"]["remaining"] == -al.usd(1).amount
    assert [e["data"]["detail"]["threshold"] for e in events[2:5]] == [1.0, 0.8, 0.5]
    assert (overage["scope"], overage["data"]["estimate"], overage["data"]["actual"]) == (
        "tenant:acme/workspace:w", [{"unit": USD, "amount": al.usd("0.5").amount}],
        [{"unit": USD, "amount": al.usd(3).amount}])
    assert overage["data"]["reservation_id"] == events[7]["data"]["reservation_id"]

    one = get(world, f"/v1/admin/events/{denial['event_id']}")
    assert (one.status, one.body) == (200, denial)
    for missing in ("acme:99999", "nobody:1", "not-an-id"):
        gone = get(world, f"/v1/admin/events/{missing}")
        assert (gone.status, gone.body["error"]) == (404, "NOT_FOUND"), missing

    assert every_page(world, "/v1/admin/events", "events") == events
    assert every_page(world, "/v1/admin/events?sort_by=event_type&sort_dir=asc", "events",
                      limit=3) == get(world, "/v1/admin/events?sort_by=event_type&sort_dir=asc"
                                      ).body["events"]


@pytest.mark.parametrize(("query", "expected"), [
    ("tenant_id=beta", [("beta", "budget.frozen"), ("beta", "webhook.paused"),
                        ("beta", "webhook.created"), ("beta", "api_key.created"),
                        ("beta", "budget.created")]),
    ("category=webhook", [("beta", "webhook.paused"), ("beta", "webhook.created")]),
    ("category=api_key", [("beta", "api_key.created"), ("acme", "api_key.created")]),
    ("category=tenant", [("acme", "tenant.created")]),
    ("event_type=reservation.denied", [("acme", "reservation.denied")]),
    ("category=reservation&tenant_id=acme", [("acme", "reservation.commit_overage"),
                                             ("acme", "reservation.expired"),
                                             ("acme", "reservation.denied")]),
    ("scope=tenant:acme/workspace:", [
        ("acme", "reservation.commit_overage"), ("acme", "budget.over_limit_entered"),
        ("acme", "budget.exhausted"), *[("acme", "budget.threshold_crossed")] * 3,
        ("acme", "budget.created")]),
    ("event_type=budget.debt_incurred", [("owing", "budget.debt_incurred")]),
    ("search=WORKSPACE:W&event_type=budget.created", [("acme", "budget.created")]),
    ("correlation_id=anything", []), ("trace_id=" + "0" * 32, []),
    ("event_type=api_key.auth_failed", []),  # a Cycles type this server never produces
    ("sort_by=tenant_id&sort_dir=asc&category=budget", [
        ("acme", "budget.created"), ("acme", "budget.funded"), ("acme", "budget.created"),
        *[("acme", "budget.threshold_crossed")] * 3, ("acme", "budget.exhausted"),
        ("acme", "budget.over_limit_entered"), ("beta", "budget.created"),
        ("beta", "budget.frozen"), ("owing", "budget.created"),
        *[("owing", "budget.threshold_crossed")] * 3, ("owing", "budget.exhausted"),
        ("owing", "budget.debt_incurred")]),
])
def test_events_are_filtered_and_sorted(world: World, query: str,
                                        expected: list[tuple[str, str]]) -> None:
    answer = get(world, f"/v1/admin/events?{query}")
    assert answer.status == 200, answer.body
    assert [(e["tenant_id"], e["event_type"]) for e in answer.body["events"]] == expected


def test_events_between_two_moments(world: World) -> None:
    events = get(world, "/v1/admin/events?tenant_id=acme").body["events"]
    start, end = events[8]["timestamp"], events[7]["timestamp"]  # expired .. funded
    window = get(world, f"/v1/admin/events?tenant_id=acme&from={start}&to={end}").body
    assert [e["event_type"] for e in window["events"]] == [
        "budget.funded", "reservation.expired"]


def test_a_tenant_key_reads_its_own_tenants_events_only(world: World) -> None:
    own = get(world, "/v1/events", key=world.acme_key)
    assert own.status == 200, own.body
    assert {e["tenant_id"] for e in own.body["events"]} == {"acme"}
    assert own.body["events"] == [  # of the tenant-accessible categories: no key's events
        e for e in get(world, "/v1/admin/events?tenant_id=acme").body["events"]
        if e["category"] != "api_key"]
    beta = get(world, "/v1/events", key=world.beta_key).body["events"]
    assert [e["event_type"] for e in beta] == ["budget.frozen", "budget.created"]
    assert every_page(world, "/v1/events", "events", key=world.acme_key) == own.body["events"]
    named = get(world, "/v1/events?tenant_id=beta", key=world.acme_key)
    assert named.status == 400 and "tenant_id" in named.body["message"]
    runtime = world.guard.create_key("acme").secret  # the runtime plane's permissions only
    lacking = get(world, "/v1/events", key=runtime)
    assert (lacking.status, lacking.body["error"]) == (403, "FORBIDDEN")
    assert "events:read" in lacking.body["message"]
    nobody = Api(world.url).call("GET", "/v1/events", check=False)
    assert (nobody.status, nobody.body["error"]) == (401, "UNAUTHORIZED")
    for path in ("/v1/admin/events", "/v1/admin/events/acme:1", "/v1/admin/audit/logs",
                 "/v1/admin/overview"):
        refused = get(world, path, key=world.acme_key)
        assert (refused.status, refused.body["error"]) == (401, "UNAUTHORIZED"), path


def test_the_audit_log_shows_every_record_with_its_outcome(world: World) -> None:
    logs = every_page(world, "/v1/admin/audit/logs", "logs", limit=3)
    kept = sum(len(world.guard.audit(t, limit=1_000)) for t in ("acme", "beta", "owing"))
    assert len(logs) == kept
    assert "None" not in repr(logs)  # never a null
    for entry in logs:
        assert set(entry) >= LOG_REQUIRED, entry
        assert isinstance(entry["status"], int)
    assert logs == get(world, "/v1/admin/audit/logs?limit=100").body["logs"]
    (denial,) = [e for e in logs if e["operation"] == "reservation.denied"]
    assert (denial["status"], denial["error_code"]) == (409, "BUDGET_EXCEEDED")
    assert denial["subject"] == {"tenant": "acme"}
    assert denial["amount"] == {"unit": USD, "amount": al.usd(50).amount}
    (funded,) = [e for e in logs if e["operation"] == "budget.funded"]
    assert (funded["status"], funded["resource_type"], funded["resource_id"]) == (
        200, "budget", "tenant:acme")
    assert funded["metadata"]["actor"] == "ops"
    (over,) = [e for e in logs if e["operation"] == "reservation.committed"
               and e["metadata"].get("scopes")]
    assert over["metadata"]["scopes"] == ["tenant:acme", "tenant:acme/workspace:w"]

    def operations(query: str) -> list[str]:
        answer = get(world, f"/v1/admin/audit/logs?{query}")
        assert answer.status == 200, answer.body
        return [e["operation"] for e in answer.body["logs"]]

    assert operations("status=409") == ["reservation.denied"]
    assert operations("status_min=400&error_code_exclude=BUDGET_EXCEEDED") == []
    assert operations("error_code=BUDGET_EXCEEDED&tenant_id=acme") == ["reservation.denied"]
    assert operations("operation=budget.funded&operation=budget.status_changed") == [
        "budget.status_changed", "budget.funded"]
    assert operations("operation=budget.funded,budget.status_changed") == [
        "budget.status_changed", "budget.funded"]  # the spec's comma form
    assert operations("operation=no.such") == []
    assert set(operations("resource_type=reservation")) >= {"reservation.expired"}
    assert operations("tenant_id=__admin__") == [] and operations("key_id=k") == []
    assert operations("search=FUNDED") == ["budget.funded"]
    assert operations("sort_by=status&sort_dir=desc&limit=1") == ["reservation.denied"]


def test_the_overview_counts_and_names_what_needs_attention(world: World) -> None:
    answer = get(world, "/v1/admin/overview")
    assert answer.status == 200, answer.body
    view = answer.body
    assert OVERVIEW_REQUIRED <= set(view) <= OVERVIEW_ALLOWED, set(view)
    assert view["event_window_seconds"] == 3_600
    assert view["tenant_counts"] == {"total": 3, "active": 2, "suspended": 1, "closed": 0}
    assert view["budget_counts"] == {"total": 4, "active": 3, "frozen": 1, "closed": 0,
                                     "over_limit": 1, "with_debt": 1,
                                     "by_unit": {USD: 4}}
    assert view["over_limit_scopes"] == [
        {"scope": "tenant:acme/workspace:w", "unit": USD, "allocated": al.usd(1).amount,
         "remaining": 0, "debt": 0}]
    assert view["debt_scopes"] == [{"scope": "tenant:owing", "unit": USD,
                                    "debt": al.usd(1).amount,
                                    "overdraft_limit": al.usd(2).amount}]
    assert view["webhook_counts"] == {"total": 2, "active": 1, "disabled": 1,
                                      "with_failures": 0}
    assert view["failing_webhooks"] == []
    events = get(world, "/v1/admin/events").body["events"]
    assert view["event_counts"] == {"total_recent": len(events), "by_category": {
        "budget": 16, "reservation": 3, "tenant": 1, "api_key": 2, "webhook": 2}}
    assert [e["event_type"] for e in view["recent_denials"]] == ["reservation.denied"]
    assert view["recent_denials"][0] == events[15]
    assert [e["event_type"] for e in view["recent_expiries"]] == ["reservation.expired"]
    assert view["recent_denials_by_reason"] == {"BUDGET_EXCEEDED": 1}
    for event in (*view["recent_denials"], *view["recent_expiries"]):
        assert EVENT_REQUIRED <= set(event) <= EVENT_ALLOWED


@pytest.mark.parametrize(("path", "words"), [
    ("/v1/admin/events?event_type=budget.melted", ["event_type", "budget.melted"]),
    ("/v1/admin/events?category=weather", ["category"]),
    ("/v1/admin/events?limit=101", ["limit", "1..100"]),
    ("/v1/admin/events?from=yesterday", ["from", "RFC 3339"]),
    ("/v1/admin/events?from=1796000000000", ["from", "RFC 3339"]),
    ("/v1/admin/events?sort_by=colour", ["sort_by"]),
    ("/v1/admin/events?sort_dir=up", ["sort_dir"]),
    ("/v1/admin/events?cursor=%25%25", ["cursor"]),
    ("/v1/admin/events?search=" + "x" * 129, ["search", "128"]),
    ("/v1/admin/events?tenant=acme", ["unknown query parameters", "tenant"]),
    ("/v1/admin/events?tenant_id=Not%20A%20Tenant", ["tenant_id"]),
    ("/v1/admin/audit/logs?status=ok", ["status"]),
    ("/v1/admin/audit/logs?to=tomorrow", ["to"]),
    ("/v1/admin/audit/logs?limit=0", ["limit"]),
    ("/v1/admin/audit/logs?limit=1001", ["limit", "1..1000"]),
    ("/v1/admin/audit/logs?status=200&status_min=100", ["status", "status_min"]),
    ("/v1/admin/audit/logs?status_min=500&status_max=100", ["status_min", "above"]),
    ("/v1/admin/audit/logs?status_max=9999", ["status_max", "100-599"]),
    ("/v1/admin/audit/logs?error_code=" + ",".join(f"E{i}" for i in range(26)),
     ["error_code", "25"]),
    ("/v1/admin/events?from=0001-01-01T00:00:00%2B01:00", ["from", "1970"]),
    ("/v1/admin/overview?window=60", ["unknown query parameters"]),
    ("/v1/admin/events/acme:1?x=1", ["unknown query parameters"]),
])
def test_bad_queries_are_refused_naming_the_parameter(world: World, path: str,
                                                      words: list[str]) -> None:
    answer = get(world, path)
    assert (answer.status, answer.body["error"]) == (400, "INVALID_REQUEST"), answer.body
    for word in words:
        assert word in answer.body["message"], (word, answer.body["message"])


def test_a_cursor_belongs_to_its_list_and_sort(world: World) -> None:
    """A cursor names the list and sort that gave it: used with another it is refused,
    never read as a place in a different order."""
    first = get(world, "/v1/admin/events?sort_by=event_type&sort_dir=asc&limit=2").body
    cursor = first["next_cursor"]
    for path in (f"/v1/admin/events?limit=2&cursor={cursor}",
                 f"/v1/admin/events?sort_by=event_type&limit=2&cursor={cursor}",
                 f"/v1/admin/audit/logs?limit=2&cursor={cursor}"):
        refused = get(world, path)
        assert (refused.status, refused.body["error"]) == (400, "INVALID_REQUEST"), path
        assert "cursor" in refused.body["message"]
    following = get(world, f"/v1/admin/events?sort_by=event_type&sort_dir=asc&limit=2"
                           f"&cursor={cursor}")
    assert following.status == 200 and following.body["events"][0] not in first["events"]


@pytest.fixture(params=STORE_KINDS)
def long_logs(request: pytest.FixtureRequest) -> Iterator[World]:
    """Two tenants with long logs (150 credits each, interleaved in time) and, before them,
    one workspace budget each: matches only far back in every log."""
    clock = al.ManualClock(system_ms())
    store = make_store(request.param, clock)
    guard = al.Guard(store)
    for tenant in ("acme", "beta"):
        guard.set_budget(f"tenant:{tenant}", usd=10)
        guard.set_budget(f"tenant:{tenant}/workspace:w", usd=1)
    for n in range(150):
        clock.advance(1)
        guard.fund("tenant:acme" if n % 2 else "tenant:beta", "CREDIT", al.usd(1))
        guard.fund("tenant:beta" if n % 2 else "tenant:acme", "CREDIT", al.usd(1))
    yield from _served(store, guard, clock)


def _served(store: Any, guard: al.Guard, clock: al.ManualClock) -> Iterator[World]:
    """The admin's world over `guard` while the test runs (no tenant keys)."""
    with serving(guard) as url:
        yield World(guard, clock, url, "", "")
    store.close()


def _pages_add_up(world: World, path: str) -> list[dict[str, Any]]:
    """Pages of 7 through `path` give what one large page gives, in the same order; the
    large page's rows."""
    field = "logs" if "audit" in path else "events"
    joiner = "&" if "?" in path else "?"
    whole = get(world, f"{path}{joiner}limit=100").body
    pieces = every_page(world, path, field, limit=7)
    assert whole[field] and pieces[:len(whole[field])] == whole[field], path
    if not whole["has_more"]:
        assert pieces == whole[field]
    return list(whole[field])


@pytest.mark.parametrize("path", [
    "/v1/admin/events", "/v1/admin/events?sort_dir=asc", "/v1/admin/audit/logs",
    "/v1/admin/events?scope=tenant:acme/workspace:w", "/v1/admin/events?search=workspace",
    "/v1/admin/audit/logs?resource_id=tenant:beta/workspace:w",
    "/v1/admin/events?event_type=budget.created", "/v1/admin/events?tenant_id=beta",
])
def test_pages_of_a_long_log_in_any_order_are_the_whole_answer_in_pieces(
        long_logs: World, path: str) -> None:
    """Newest first, a tenant's log is read only as far back as the page needs (reads that
    grow while matches are sparse); every page of every filter still adds up to the one
    answer a page large enough gives, in the same order."""
    whole = _pages_add_up(long_logs, path)  # the audit log's 604: its first 100
    field = "logs" if "audit" in path else "events"
    first = get(long_logs, f"{path}{'&' if '?' in path else '?'}limit=3").body
    assert first[field] == whole[:3] and first["has_more"] is (len(whole) > 3)


def test_the_newest_events_come_first_across_tenants(long_logs: World) -> None:
    events = get(long_logs, "/v1/admin/events?limit=4").body["events"]
    assert [(e["tenant_id"], e["event_type"]) for e in events] == [
        ("beta", "budget.funded"), ("acme", "budget.funded"),  # the last moment: both,
        ("beta", "budget.funded"), ("acme", "budget.funded")]  # the larger id first
    assert events[0]["timestamp"] == events[1]["timestamp"] > events[2]["timestamp"]
    old = get(long_logs, "/v1/admin/events?scope=tenant:acme/workspace:w&limit=1").body
    assert [e["event_type"] for e in old["events"]] == ["budget.created"]
    assert old["has_more"] is False


def test_a_keys_records_give_its_events_and_entries() -> None:
    guard = al.Guard()
    made = guard.create_key("acme", name="worker")
    guard.update_key(made.key.key_id, name="batch")  # a rename: on record, no event type
    guard.update_key(made.key.key_id, permissions=["balances:read"])
    guard.revoke_key(made.key.key_id)
    records = guard.audit("acme")
    assert [event_type(r) for r in records] == [
        "api_key.created", None, "api_key.permissions_changed", "api_key.revoked"]
    assert {(log_entry(r)["resource_type"], log_entry(r)["resource_id"]) for r in records} == {
        ("api_key", made.key.key_id)}


def test_a_webhooks_records_give_its_events_and_entries() -> None:
    guard = al.Guard()
    made = guard.subscribe_webhook("https://hooks.example.com/a", tenant="acme",
                                   events=["budget.exhausted"])
    guard.enable_webhook(made.id, False)
    guard.enable_webhook(made.id, True)
    guard.update_webhook(made.id, url="https://hooks.example.com/b", enabled=False)
    guard.remove_webhook(made.id)
    records = guard.audit("acme")
    assert [event_type(r) for r in records] == [
        "webhook.created", "webhook.paused", "webhook.resumed", "webhook.updated",
        "webhook.deleted"]
    assert {(log_entry(r)["resource_type"], log_entry(r)["resource_id"]) for r in records} == {
        ("webhook", made.id)}
    for r in records:
        conforms("Event", event_of(r, str(event_type(r))), GOVERNANCE)


@pytest.fixture(params=STORE_KINDS)
def many_logs(request: pytest.FixtureRequest) -> Iterator[World]:
    """25 tenants with logs of different lengths, written in interleaved rounds, two tenants
    at each moment (ties broken by id), one tenant's workspace budget far back."""
    clock = al.ManualClock(system_ms())
    store = make_store(request.param, clock)
    guard = al.Guard(store)
    names = [f"t{i:02d}" for i in range(25)]
    for name in names:
        guard.set_budget(f"tenant:{name}", usd=10)
    guard.set_budget("tenant:t07/workspace:w", usd=1)
    for round_ in range(12):
        for i, name in enumerate(names):
            if round_ <= i % 12:
                if i % 2 == 0:
                    clock.advance(1)
                guard.fund(f"tenant:{name}", "CREDIT", al.usd(1))
    yield from _served(store, guard, clock)


@pytest.mark.parametrize("path", [
    "/v1/admin/events", "/v1/admin/audit/logs", "/v1/admin/events?search=workspace",
    "/v1/admin/events?event_type=budget.created", "/v1/admin/audit/logs?resource_type=budget",
])
def test_a_page_merged_from_many_tenants_is_the_whole_answer_in_pieces(
        many_logs: World, path: str) -> None:
    """Newest first, each tenant's log is read only as far as it may still reach the page;
    small pages through every tenant add up to the answer one large read gives."""
    pieces = _pages_add_up(many_logs, path)
    stamps = [row["timestamp"] for row in pieces]
    assert stamps == sorted(stamps, reverse=True)
