"""The operators' routes on a real server over each store: the audit log, the report and the
usage export (streamed, the same bytes as the library's export, adding up to the ledgers),
webhook subscriptions with the delivery log and replay; bad parameters refused with the error
envelope; the admin key for any tenant, a tenant's key for its own only."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

import allotment as al
from allotment.server.records import audit_json, delivery_json, report_json
from allotment.usage import read_usage, write_usage
from allotment.webhooks import Dispatcher

from support.openapi import GOVERNANCE, conforms, validate
from support.served import ADMIN_KEY, Api
from support.webhooks import Receiver

GPT = al.Action("llm.completion", "openai:gpt-4o")
MINI = al.Action("llm.completion", "openai:gpt-4o-mini")
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}
READER = ["budgets:read", "webhooks:read", "webhooks:write"]


def month() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m")


def traffic(guard: al.Guard) -> None:
    """Spend of two tenants under several scopes and models, and one denial."""
    guard.set_budget("tenant:globex", usd=100)
    prod = al.Subject(tenant="acme", workspace="prod", dimensions={"run": "r1"})
    for action, cost, tokens in ((GPT, "0.031", 1200), (MINI, "0.002", 300),
                                 (GPT, "0.5", 9000)):
        guard.reserve(prod, action, al.usd(1)).commit(
            al.usd(cost), usage=al.TokenUsage(input_tokens=tokens, output_tokens=10))
    guard.reserve(al.Subject(tenant="acme", workspace="dev"), MINI,
                  al.usd(1)).commit(al.usd("0.25"))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme", workspace="prod"), GPT, al.usd(500))
    guard.reserve(al.Subject(tenant="globex"), MINI, al.usd(1)).commit(al.usd("0.75"))


def get(api: Api, path: str, **params: Any) -> Any:
    """A GET with query parameters (repeated ones as lists), not checked against the
    Cycles spec: these paths are allotment's own."""
    query = httpx.QueryParams(params)
    return api.call("GET", f"{path}?{query}" if params else path, check=False,
                    headers=api_headers(api))


def spec_get(api: Api, path: str, **params: Any) -> Any:
    """A GET of a governance spec route, its answer (any status) checked against that spec."""
    answer = get(api, path, **params)
    validate("GET", path, answer.status, answer.body, GOVERNANCE)
    return answer


def api_headers(api: Api) -> dict[str, str]:
    return ADMIN if api.key is None else {}


def admin(served: Any) -> Api:
    return Api(served.url)


def refused(answer: Any, status: int, code: str, *words: str) -> None:
    assert (answer.status, answer.body["error"]) == (status, code), answer.body
    for word in words:
        assert word in answer.body["message"], answer.body


# -- audit and report ----------------------------------------------------------------------------

def test_the_audit_log_for_the_admin_and_the_tenants_own_key(served: Any) -> None:
    acme = served.tenant("acme", usd=10, permissions=["budgets:read"])
    traffic(served.guard)
    every = served.guard.audit("acme", limit=1_000)
    answer = get(admin(served), "/v1/audit", tenant="acme", limit=1_000)
    assert answer.status == 200 and answer.body["tenant"] == "acme"
    assert answer.body["records"] == [audit_json(r) for r in every]
    assert get(acme, "/v1/audit", limit=1_000).body == answer.body  # its own, unnamed
    assert get(acme, "/v1/audit", tenant="acme", limit=1_000).body == answer.body
    assert answer.headers["X-Cycles-Tenant"] == "acme"

    denied = get(acme, "/v1/audit", type="reservation.denied").body["records"]
    (denial,) = denied
    assert denial["reason"] == "BUDGET_EXCEEDED"
    assert denial["estimate"] == [{"unit": "USD_MICROCENTS", "amount": al.usd(500).amount}]
    assert isinstance(denial["detail"]["limit"], int)  # integer money, never a float
    both = get(acme, "/v1/audit", type=["reservation.denied", "budget.set"]).body["records"]
    assert {r["type"] for r in both} == {"reservation.denied", "budget.set"}

    newest = get(acme, "/v1/audit", limit=2).body["records"]
    assert [r["seq"] for r in newest] == [r.seq for r in every[-2:]]
    last = every[-1]
    since = get(acme, "/v1/audit", since=last.at_ms, limit=1_000).body["records"]
    assert since and all(r["at_ms"] >= last.at_ms for r in since)
    iso = datetime.fromtimestamp(last.at_ms / 1000, timezone.utc).isoformat()
    assert get(acme, "/v1/audit", since=iso, limit=1_000).body["records"] == since


def test_the_report_for_the_admin_and_the_tenants_own_key(served: Any) -> None:
    acme = served.tenant("acme", usd=10, permissions=["admin:read"])
    traffic(served.guard)
    answer = get(admin(served), "/v1/reports", tenant="acme", period="month")
    assert answer.status == 200
    assert answer.body["rows"] == [report_json(r) for r in served.guard.report("acme")]
    rows = {r["scope"]: r for r in answer.body["rows"]}
    prod = rows["tenant:acme/workspace:prod"]
    assert prod["commits"] == 3
    assert prod["committed"] == {"USD_MICROCENTS": al.usd("0.533").amount}
    assert rows["tenant:acme"]["denials"] == {"BUDGET_EXCEEDED": 1}  # the scope that refused
    assert get(acme, "/v1/reports").body == answer.body
    by_run = get(acme, "/v1/reports", by="run", top=1, period="day").body
    assert by_run["by"] == "run"
    assert [r["scope"] for r in by_run["rows"]] == ["tenant:acme/run:r1"]
    assert by_run["rows"] == [report_json(r) for r in served.guard.report(
        "acme", period="day", by="run", top=1)]


@pytest.mark.parametrize(("path", "params", "words"), [
    ("/v1/audit", {"tenant": "acme", "limit": "ten"}, ["limit", "'ten' is not an integer"]),
    ("/v1/audit", {"tenant": "acme", "limit": 0}, ["limit"]),
    ("/v1/audit", {"tenant": "acme", "since": "yesterday"}, ["since", "ISO-8601"]),
    ("/v1/audit", {"tenant": "acme", "since": "2026-12-01T00:00:00"}, ["since", "zone"]),
    ("/v1/audit", {"tenant": "acme", "type": "reservation.nope"}, ["reservation.nope"]),
    ("/v1/audit", {"tenant": "acme", "tenat": "acme"}, ["unknown query parameters",
                                                        "tenat"]),
    ("/v1/audit", {}, ["tenant: required with the admin key"]),
    ("/v1/audit", {"tenant": "Not A Name!"}, ["tenant"]),
    ("/v1/reports", {"tenant": "acme", "period": "fortnight"}, ["period", "fortnight"]),
    ("/v1/reports", {"tenant": "acme", "top": "-1"}, ["top"]),
    ("/v1/reports", {"tenant": "acme", "at": "noon"}, ["at", "not an integer"]),
    ("/v1/reports", {}, ["tenant: required"]),
    ("/v1/usage", {"period": "November"}, ["period", "'2026-11'"]),
    ("/v1/usage", {"format": "xml"}, ["format", "'csv' or 'json'"]),
    ("/v1/usage", {"tenant": "acme", "page": 2}, ["unknown query parameters"]),
    ("/v1/webhooks", {"tenant": "acme"}, ["unknown query parameters"]),
    ("/v1/webhooks/deliveries", {"event_id": "evt_zz"}, ["event_id"]),
    ("/v1/webhooks/deliveries", {"limit": "all"}, ["limit"]),
])
def test_bad_parameters_get_the_envelope_and_say_what_is_wrong(
        served: Any, path: str, params: dict[str, Any], words: list[str]) -> None:
    served.guard.set_budget("tenant:acme", usd=10)
    before = served.guard.audit("acme")
    refused(get(admin(served), path, **params), 400, "INVALID_REQUEST", *words)
    assert served.guard.audit("acme") == before


ROUTES = [("GET", "/v1/audit?tenant=acme", None), ("GET", "/v1/reports?tenant=acme", None),
          ("GET", "/v1/usage?tenant=acme", None), ("GET", "/v1/webhooks", None),
          ("GET", "/v1/webhooks/deliveries", None), ("GET", "/v1/events", None),
          ("POST", "/v1/webhooks", {"url": "https://hooks.example.com/a", "events": ["*"]}),
          ("POST", "/v1/webhooks/replay", {"event_id": "acme/evt_0123456789ab01234567"}),
          ("PATCH", "/v1/webhooks/acme/whk_0123456789abcdef01234567", {"enabled": False}),
          ("DELETE", "/v1/webhooks/acme/whk_0123456789abcdef01234567", None),
          ("GET", "/v1/webhooks/acme/whk_0123456789abcdef01234567", None),
          ("POST", "/v1/webhooks/acme/whk_0123456789abcdef01234567/test", None)]


def test_no_key_a_wrong_key_or_a_missing_permission_is_refused(served: Any) -> None:
    runtime_only = served.tenant("acme")  # the default permissions: the runtime plane
    nobody = Api(served.url)
    for method, path, body in ROUTES:
        refused(nobody.call(method, path, body, check=False), 401, "UNAUTHORIZED")
        wrong = nobody.call(method, path, body, check=False, headers={"X-Admin-API-Key": "x"})
        refused(wrong, 401, "UNAUTHORIZED")
        guess = nobody.call(method, path, body, check=False,
                            headers={"X-Cycles-API-Key": "alk_acme:" + "0" * 32 + "." + "x" * 43})
        refused(guess, 401, "UNAUTHORIZED")
        refused(runtime_only.call(method, path, body, check=False), 403, "FORBIDDEN",
                "lacks the")


def test_another_tenants_key_is_refused_and_learns_nothing(served: Any,
                                                           receiver: Receiver) -> None:
    acme = served.tenant("acme", permissions=READER)
    rival = served.tenant("rival", permissions=["admin:write"])  # every right, in its tenant
    traffic(served.guard)
    hook = acme.post("/v1/webhooks", {"url": receiver.url, "events": ["*"]}, check=False)
    assert hook.status == 201
    receiver.secrets.append(hook.body["secret"])
    served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(9)).commit(al.usd(9))
    Dispatcher(served.guard, allow=["127.0.0.1/32"]).run_once()
    event = served.guard.webhook_deliveries(tenant="acme")[0].event_id

    def state() -> Any:
        return (served.guard.balances("tenant:acme"), served.guard.audit("acme", limit=1_000),
                served.guard.webhooks("acme"),
                served.guard.webhook_deliveries(tenant="acme", limit=1_000))

    before = state()
    hook_id = hook.body["webhook_id"]
    ghost_id = "acme/whk_" + "0" * 24
    for method, path, body in [
            ("GET", "/v1/audit?tenant=acme", None), ("GET", "/v1/reports?tenant=acme", None),
            ("GET", "/v1/usage?tenant=acme", None), ("GET", "/v1/webhooks?tenant_id=acme", None),
            ("GET", f"/v1/webhooks/deliveries?webhook_id={hook_id}", None),
            ("GET", f"/v1/webhooks/deliveries?event_id={event}", None),
            ("GET", "/v1/webhooks/deliveries?tenant_id=acme", None),
            ("POST", "/v1/webhooks", {"url": receiver.url, "events": ["*"],
                                      "tenant_id": "acme"}),
            ("POST", "/v1/webhooks/replay", {"event_id": event, "webhook_id": hook_id}),
            ("PATCH", f"/v1/webhooks/{hook_id}", {"enabled": False}),
            ("PATCH", f"/v1/webhooks/{hook_id}", {"secret": "whsec_" + "A" * 32}),
            ("DELETE", f"/v1/webhooks/{hook_id}", None),
            ("GET", f"/v1/webhooks/{hook_id}", None),
            ("POST", f"/v1/webhooks/{hook_id}/test", None)]:
        answer = rival.call(method, path, body, check=False)
        refused(answer, 403, "FORBIDDEN")
        assert "receiver" not in str(answer.body) and receiver.url not in str(answer.body)
        if hook_id in path:  # a subscription that never existed answers exactly alike
            ghost = rival.call(method, path.replace(hook_id, ghost_id), body, check=False)
            refused(ghost, 403, "FORBIDDEN")
            assert ghost.body["message"] == answer.body["message"].replace(hook_id, ghost_id)
    assert state() == before
    # what the rival's key does see is its own: its budget, no subscription, no usage
    assert [r["type"] for r in get(rival, "/v1/audit").body["records"]] == [
        "budget.set", "api_key.created"]
    assert get(rival, "/v1/webhooks").body["webhooks"] == []
    assert get(rival, "/v1/webhooks/deliveries").body["deliveries"] == []
    export = httpx.get(served.url + "/v1/usage", headers={"X-Cycles-API-Key": rival.key or ""})
    assert export.text.splitlines() == [",".join(al.usage.COLUMNS)]


# -- usage ----------------------------------------------------------------------------------

def test_the_usage_export_is_the_librarys_export_streamed(served: Any) -> None:
    served.tenant("acme", usd=10)
    traffic(served.guard)
    for fmt in ("csv", "json"):
        expected = io.StringIO()
        write_usage(served.guard.usage(period=month()), expected, fmt)
        with httpx.stream("GET", served.url + "/v1/usage", headers=ADMIN,
                          params={"period": month(), "format": fmt}) as answer:
            assert answer.status_code == 200
            assert answer.headers.get("transfer-encoding") == "chunked"  # streamed
            assert "X-Request-Id" in answer.headers
            body = answer.read().decode()
        assert body == expected.getvalue()
    rows = list(read_usage(io.StringIO(body), "json"))
    assert {r.tenant for r in rows} == {"acme", "globex"}
    # row by row against the ledgers: each tenant's spend adds up to what it was charged
    for tenant in ("acme", "globex"):
        charged: dict[str, int] = {}
        for ledger in served.guard.balances(f"tenant:{tenant}"):
            scope = ledger.scope
            charged[scope] = charged.get(scope, 0) + ledger.spent + ledger.debt
        mine = [r for r in rows if r.tenant == tenant and r.unit is al.Unit.USD_MICROCENTS]
        assert sum(r.spend for r in mine) == charged[f"tenant:{tenant}"]
        for scope in {r.scope for r in mine}:
            if scope in charged:
                assert sum(r.spend for r in mine if r.scope == scope) == charged[scope]
    gpt = next(r for r in rows if r.model == "openai:gpt-4o")
    assert (gpt.scope, gpt.calls, gpt.denials, gpt.input_tokens, gpt.spend) == (
        "tenant:acme/workspace:prod", 2, 1, 10_200, al.usd("0.531").amount)


def test_a_tenant_key_exports_its_own_usage_only(served: Any) -> None:
    acme = served.tenant("acme", usd=10, permissions=["budgets:read"])
    traffic(served.guard)
    headers = {"X-Cycles-API-Key": acme.key or ""}
    own = httpx.get(served.url + "/v1/usage", headers=headers, params={"format": "json"})
    assert own.status_code == 200 and own.headers["X-Cycles-Tenant"] == "acme"
    expected = io.StringIO()
    write_usage(served.guard.usage(tenant="acme"), expected, "json")
    assert own.text == expected.getvalue() and "globex" not in own.text
    named = httpx.get(served.url + "/v1/usage", headers=headers, params={"tenant": "acme"})
    assert named.status_code == 200 and named.text.count("\n") == 4  # header, three rows
    other = httpx.get(served.url + "/v1/usage", headers=headers, params={"tenant": "globex"})
    assert other.status_code == 403 and "globex" not in other.text


# -- webhooks -------------------------------------------------------------------------------

@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def test_global_and_tenant_subscriptions_with_the_log_and_replay(served: Any,
                                                                 receiver: Receiver) -> None:
    acme = served.tenant("acme", usd=10, permissions=READER)
    root = admin(served)
    made = root.post("/v1/webhooks", {"url": receiver.url, "events": ["budget.exhausted"]},
                     headers=ADMIN, check=False)
    assert made.status == 201 and made.body["secret"].startswith("whsec_")
    assert "tenant_id" not in made.body  # a global one
    own = acme.post("/v1/webhooks", {"url": receiver.url, "events": ["*"]}, check=False)
    assert own.status == 201 and own.body["tenant_id"] == "acme"
    assert own.body["webhook_id"].startswith("acme/whk_")
    receiver.secrets += [made.body["secret"], own.body["secret"]]

    listed = get(root, "/v1/webhooks").body["webhooks"]
    assert [h["webhook_id"] for h in listed] == [made.body["webhook_id"]]
    assert all("secret" not in h for h in listed)  # shown once only
    mine = get(acme, "/v1/webhooks").body["webhooks"]
    assert [h["webhook_id"] for h in mine] == [own.body["webhook_id"]]
    assert get(root, "/v1/webhooks", tenant_id="acme").body["webhooks"] == mine

    served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(10)).commit(al.usd(10))
    dispatcher = Dispatcher(served.guard, allow=["127.0.0.1/32"])
    dispatcher.run_once()
    assert receiver.bad_signatures == 0
    assert {doc["type"] for _, doc in receiver.accepted} >= {"budget.exhausted",
                                                              "budget.threshold_crossed"}
    log = get(acme, "/v1/webhooks/deliveries").body["deliveries"]
    assert log == [delivery_json(d)
                   for d in served.guard.tenant("acme").webhook_deliveries()]
    assert {(d["webhook_id"], d["status"], d["last_status"]) for d in log} == {
        (own.body["webhook_id"], "delivered", 204)}
    exhausted = next(d for d in log if d["event_type"] == "budget.exhausted")
    assert get(acme, "/v1/webhooks/deliveries",
               event_id=exhausted["event_id"]).body["deliveries"] == [exhausted]

    replayed = acme.post("/v1/webhooks/replay", {"event_id": exhausted["event_id"],
                                                 "webhook_id": own.body["webhook_id"]},
                         check=False)
    assert (replayed.status, replayed.body["queued"]) == (200, 1)
    count = len(receiver.accepted)
    dispatcher.run_once()
    assert receiver.ids[count:] == [exhausted["event_id"]]  # the same event, again
    everywhere = root.post("/v1/webhooks/replay", {"event_id": exhausted["event_id"]},
                           headers=ADMIN, check=False)
    assert everywhere.status == 200 and everywhere.body["queued"] >= 1

    paused = acme.call("PATCH", f"/v1/webhooks/{own.body['webhook_id']}", {"enabled": False},
                       check=False)
    assert paused.status == 200 and paused.body["enabled"] is False
    assert served.guard.webhooks("acme")[0].enabled is False
    resumed = root.call("PATCH", f"/v1/webhooks/{own.body['webhook_id']}", {"enabled": True},
                        headers=ADMIN, check=False)
    assert resumed.body["enabled"] is True
    gone = acme.call("DELETE", f"/v1/webhooks/{own.body['webhook_id']}", check=False)
    assert gone.status == 200 and served.guard.webhooks("acme") == ()
    again = acme.call("DELETE", f"/v1/webhooks/{own.body['webhook_id']}", check=False)
    refused(again, 404, "NOT_FOUND")
    removed = root.call("DELETE", f"/v1/webhooks/{made.body['webhook_id']}", headers=ADMIN,
                        check=False)
    assert removed.status == 200 and served.guard.webhooks() == ()


DELIVERY_REQUIRED = {"delivery_id", "subscription_id", "event_id", "status", "attempted_at"}
DELIVERY_ALLOWED = DELIVERY_REQUIRED | {  # WebhookDelivery of the governance spec (closed)
    "event_type", "completed_at", "attempts", "response_status", "response_time_ms",
    "error_message", "next_retry_at", "trace_id", "trace_flags", "traceparent_inbound_valid"}


def test_a_subscriptions_deliveries_in_the_governance_specs_shape(served: Any,
                                                                  receiver: Receiver) -> None:
    acme = served.tenant("acme", usd=10, permissions=READER)
    root = admin(served)
    made = root.post("/v1/webhooks", {"url": receiver.url, "events": ["budget.exhausted"]},
                     headers=ADMIN, check=False).body
    own = acme.post("/v1/webhooks", {"url": receiver.url, "events": ["*"]}, check=False).body
    receiver.secrets += [made["secret"], own["secret"]]
    served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(10)).commit(al.usd(10))
    Dispatcher(served.guard, allow=["127.0.0.1/32"]).run_once()
    with pytest.raises(al.BudgetExceeded):  # a denial: its event not sent yet
        served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(1))
    hook, mine = made["webhook_id"], own["webhook_id"]

    listed = spec_get(acme, f"/v1/webhooks/{mine}/deliveries")
    assert listed.status == 200, listed.body
    rows = listed.body["deliveries"]
    assert listed.body["has_more"] is False and "next_cursor" not in listed.body
    assert "None" not in repr(rows)  # never a null
    for row in rows:
        assert DELIVERY_REQUIRED <= set(row) <= DELIVERY_ALLOWED, row
        assert row["subscription_id"] == mine
        assert row["delivery_id"] == f"{mine}:{row['event_id']}"
        assert row["attempted_at"].endswith("Z")
    log = served.guard.tenant("acme").webhook_deliveries(webhook_id=mine)
    assert sorted(r["event_id"] for r in rows) == sorted(d.event_id for d in log)
    assert [r["attempted_at"] for r in rows] == sorted(
        (r["attempted_at"] for r in rows), reverse=True)  # newest first
    statuses = {(r["event_type"], r["status"]) for r in rows}
    assert ("budget.exhausted", "SUCCESS") in statuses
    assert ("reservation.denied", "PENDING") in statuses
    sent = next(r for r in rows if r["status"] == "SUCCESS")
    assert (sent["attempts"], sent["response_status"]) == (1, 204)
    assert sent["completed_at"] == sent["attempted_at"]
    assert all("completed_at" not in r for r in rows if r["status"] == "PENDING")

    assert spec_get(root, f"/v1/admin/webhooks/{mine}/deliveries").body["deliveries"] == rows
    pending = spec_get(acme, f"/v1/webhooks/{mine}/deliveries", status="PENDING").body
    assert [r["event_type"] for r in pending["deliveries"]] == ["reservation.denied"]
    paged, cursor = [], {}
    while True:
        page = spec_get(acme, f"/v1/webhooks/{mine}/deliveries", limit=1, **cursor).body
        paged += page["deliveries"]
        if not page["has_more"]:
            break
        cursor = {"cursor": page["next_cursor"]}
    assert paged == rows
    late = spec_get(acme, f"/v1/webhooks/{mine}/deliveries", **{"from": "2999-01-01T00:00:00Z"})
    assert late.body == {"deliveries": [], "has_more": False}
    global_rows = spec_get(root, f"/v1/admin/webhooks/{hook}/deliveries").body["deliveries"]
    assert [(r["event_type"], r["status"]) for r in global_rows] == [
        ("budget.exhausted", "SUCCESS")]

    # walls and bad requests: another tenant's subscription is 403 whether it exists or
    # not, the admin route is the admin key's, a subscription not there is 404
    globex = served.tenant("globex", permissions=READER)
    for other in (mine, "acme/whk_" + "0" * 24):
        refused(spec_get(globex, f"/v1/webhooks/{other}/deliveries"), 403, "FORBIDDEN")
    refused(spec_get(acme, f"/v1/admin/webhooks/{mine}/deliveries"), 401, "UNAUTHORIZED")
    refused(spec_get(acme, "/v1/webhooks/acme/whk_" + "0" * 24 + "/deliveries"), 404, "NOT_FOUND")
    refused(spec_get(root, "/v1/admin/webhooks/whk_" + "0" * 24 + "/deliveries"), 404,
            "NOT_FOUND")
    for query, words in (({"status": "DONE"}, ["status", "RETRYING"]),
                         ({"limit": 101}, ["limit", "1..100"]),
                         ({"colour": "red"}, ["unknown query parameters"]),
                         ({"cursor": "e30"}, ["cursor"]),
                         ({"to": "soon"}, ["to"])):
        refused(spec_get(acme, f"/v1/webhooks/{mine}/deliveries", **query), 400,
                "INVALID_REQUEST", *words)
    refused(spec_get(acme, "/v1/webhooks/not-an-id/deliveries"), 400, "INVALID_REQUEST",
            "webhook_id")
    first = spec_get(acme, f"/v1/webhooks/{mine}/deliveries", limit=1).body["next_cursor"]
    refused(spec_get(root, f"/v1/admin/webhooks/{hook}/deliveries", cursor=first), 400,
            "INVALID_REQUEST", "another list")


SUBSCRIPTION_REQUIRED = {"subscription_id", "tenant_id", "url", "event_types", "status",
                         "created_at"}
SUBSCRIPTION_ALLOWED = SUBSCRIPTION_REQUIRED | {  # WebhookSubscription (closed), no secret
    "name", "description", "event_categories", "scope_filter", "thresholds", "headers",
    "retry_policy", "disable_after_failures", "consecutive_failures", "updated_at",
    "last_triggered_at", "last_success_at", "last_failure_at", "metadata"}


def test_the_admin_reads_pauses_and_removes_subscriptions_in_the_specs_shape(
        served: Any) -> None:
    failing, working = Receiver(fail=100), Receiver()
    try:
        root = admin(served)
        served.tenant("acme", usd=10)
        served.guard.set_budget("tenant:beta", usd=10)
        everyone = served.guard.subscribe_webhook(working.url, events=["budget.exhausted"])
        acme = served.guard.subscribe_webhook(failing.url, events="*", tenant="acme")
        beta = served.guard.subscribe_webhook(
            working.url, events=["reservation.denied", "tenant.mode_changed"], tenant="beta")
        failing.secrets.append(acme.secret or "")
        working.secrets += [everyone.secret or "", beta.secret or ""]
        served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(10)).commit(al.usd(10))
        Dispatcher(served.guard, allow=["127.0.0.1/32"], max_attempts=1).run_once()

        listed = spec_get(root, "/v1/admin/webhooks")
        assert listed.status == 200, listed.body
        views = listed.body["subscriptions"]
        assert listed.body["has_more"] is False and "None" not in repr(views)
        for view in views:
            assert SUBSCRIPTION_REQUIRED <= set(view) <= SUBSCRIPTION_ALLOWED, view
        assert views[0]["subscription_id"] == acme.id  # most failures first
        by_id = {v["subscription_id"]: v for v in views}
        assert set(by_id) == {everyone.id, acme.id, beta.id}
        mine = by_id[acme.id]
        assert (mine["tenant_id"], mine["status"], mine["url"]) == ("acme", "ACTIVE",
                                                                   failing.url)
        assert mine["consecutive_failures"] >= 2  # every event sent to it was given up
        assert "last_failure_at" in mine and "last_success_at" not in mine
        assert {"budget.exhausted", "reservation.denied", "tenant.closed"} <= set(
            mine["event_types"]) and "spend.unrecorded" not in mine["event_types"]
        assert by_id[everyone.id]["tenant_id"] == "__system__"
        assert by_id[everyone.id]["consecutive_failures"] == 0
        assert "last_success_at" in by_id[everyone.id]
        assert by_id[beta.id]["event_types"] == ["reservation.denied"]

        def ids(**query: Any) -> list[str]:
            answer = spec_get(root, "/v1/admin/webhooks", **query)
            assert answer.status == 200, answer.body
            return [v["subscription_id"] for v in answer.body["subscriptions"]]

        assert ids(tenant_id="acme") == [acme.id]
        assert ids(tenant_id="__system__") == [everyone.id]
        assert ids(event_type="reservation.denied") == sorted(
            [acme.id, beta.id], key=lambda i: (by_id[i]["consecutive_failures"], i),
            reverse=True)
        assert ids(search=str(failing.url).split("//")[1]) == [acme.id]
        assert ids(sort_by="tenant_id", sort_dir="asc") == [everyone.id, acme.id, beta.id]
        paged, cursor = [], {}
        while True:
            page = spec_get(root, "/v1/admin/webhooks", limit=1, **cursor).body
            paged += page["subscriptions"]
            if not page["has_more"]:
                break
            cursor = {"cursor": page["next_cursor"]}
        assert paged == views
        assert spec_get(root, "/v1/admin/webhooks", limit=200).status == 200  # the dashboard's

        one = spec_get(root, f"/v1/admin/webhooks/{acme.id}")
        assert (one.status, one.body) == (200, mine)
        paused = root.call("PATCH", f"/v1/admin/webhooks/{acme.id}", {"status": "PAUSED"},
                           headers=ADMIN, check=False)
        assert (paused.status, paused.body["status"]) == (200, "PAUSED"), paused.body
        validate("PATCH", f"/v1/admin/webhooks/{acme.id}", 200, paused.body, GOVERNANCE)
        assert served.guard.webhooks("acme")[0].enabled is False
        assert ids(status="PAUSED") == [acme.id]
        for bad, words in (({"status": "DISABLED"}, ["status"]),
                           ({}, ["at least one of"])):
            answer = root.call("PATCH", f"/v1/admin/webhooks/{acme.id}", bad, headers=ADMIN,
                               check=False)
            refused(answer, 400, "INVALID_REQUEST", *words)
            validate("PATCH", f"/v1/admin/webhooks/{acme.id}", 400, answer.body, GOVERNANCE)
        assert served.guard.webhooks("acme")[0].enabled is False  # nothing changed
        gone = root.call("DELETE", f"/v1/admin/webhooks/{beta.id}", headers=ADMIN,
                         check=False)
        assert gone.status == 204 and served.guard.webhooks("beta") == ()
        for method in ("GET", "DELETE"):
            refused(root.call(method, f"/v1/admin/webhooks/{beta.id}", headers=ADMIN,
                              check=False), 404, "NOT_FOUND")
        for query, words in (({"status": "ON"}, ["status"]), ({"limit": 201}, ["limit"]),
                             ({"sort_by": "colour"}, ["sort_by"]),
                             ({"event_type": "budget.melted"}, ["event_type"]),
                             ({"tenant_id": "Not A Tenant"}, ["tenant_id"])):
            refused(spec_get(root, "/v1/admin/webhooks", **query), 400, "INVALID_REQUEST", *words)
    finally:
        failing.close()
        working.close()


def test_the_admin_makes_subscriptions_that_deliver_as_the_cycles_dispatcher_does(
        served: Any) -> None:
    """A subscription made on the admin plane is signed and shaped as the Cycles
    dispatcher's: `X-Cycles-Signature` over the spec's Event body."""
    receiver = Receiver()
    try:
        root = admin(served)
        served.tenant("acme", usd=10)
        made = root.call("POST", "/v1/admin/webhooks?tenant_id=acme", {
            "url": receiver.url, "event_types": ["budget.exhausted"],
            "event_categories": ["reservation"]}, headers=ADMIN, check=False)
        assert made.status == 201, made.body
        validate("POST", "/v1/admin/webhooks", 201, made.body, GOVERNANCE)
        sub = made.body["subscription"]
        assert (sub["tenant_id"], sub["status"]) == ("acme", "ACTIVE")
        assert sub["event_types"] == ["budget.exhausted", "reservation.commit_overage",
                                      "reservation.denied", "reservation.expired"]
        own_secret = "a-shared-secret-of-the-receiver"
        everyone = root.call("POST", "/v1/admin/webhooks", {
            "url": receiver.url, "event_types": ["reservation.denied"],
            "signing_secret": own_secret}, headers=ADMIN, check=False)
        assert everyone.status == 201 and everyone.body["signing_secret"] == own_secret
        assert everyone.body["subscription"]["tenant_id"] == "__system__"
        receiver.secrets += [made.body["signing_secret"], own_secret]
        assert served.guard.webhooks("acme")[0].format == "cycles"

        served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(10)).commit(al.usd(10))
        with pytest.raises(al.BudgetExceeded):
            served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(1))
        Dispatcher(served.guard, allow=["127.0.0.1/32"]).run_once()
        assert receiver.bad_signatures == 0 and receiver.accepted
        for event_id, event in receiver.accepted:
            conforms("Event", event, GOVERNANCE)
            assert event["event_id"] == event_id and event["tenant_id"] == "acme"
            assert event["source"] == "allotment"
        kinds = sorted(event["event_type"] for _, event in receiver.accepted)
        assert kinds == ["budget.exhausted", "reservation.denied", "reservation.denied"]
        exhausted = next(e for _, e in receiver.accepted
                         if e["event_type"] == "budget.exhausted")
        assert (exhausted["scope"], exhausted["data"]["remaining"]) == ("tenant:acme", 0)

        # replay: every event of a window that went to the subscription, oldest first
        hook_id = sub["subscription_id"]
        replay = f"/v1/admin/webhooks/{hook_id}/replay"
        sent_to_acme = sorted({event_id for event_id, e in receiver.accepted
                               if e["event_type"] in sub["event_types"]})  # 2 events
        again = root.call("POST", replay, {"from": "2020-01-01T00:00:00Z",
                                           "max_events": 10}, headers=ADMIN, check=False)
        assert (again.status, again.body["events_queued"]) == (202, 2), again.body
        validate("POST", replay, 202, again.body, GOVERNANCE)
        count = len(receiver.accepted)
        Dispatcher(served.guard, allow=["127.0.0.1/32"]).run_once()
        assert sorted(receiver.ids[count:]) == sent_to_acme  # the same events, again
        only_denied = root.call("POST", replay, {"event_types": ["reservation.denied"]},
                                headers=ADMIN, check=False)
        assert only_denied.body["events_queued"] == 1
        later = root.call("POST", replay, {"from": "2999-01-01T00:00:00Z"}, headers=ADMIN,
                          check=False)
        assert (later.status, later.body["events_queued"]) == (202, 0)
        for bad, words in (({"max_events": 1}, ["max_events", "2 events"]),
                           ({"max_events": 1001}, ["max_events"]),
                           ({"from": "yesterday"}, ["from"]),
                           ({"event_types": ["budget.melted"]}, ["budget.melted"])):
            refused(root.call("POST", replay, bad, headers=ADMIN, check=False), 400,
                    "INVALID_REQUEST", *words)
        refused(root.call("POST", "/v1/admin/webhooks/acme/whk_" + "0" * 24 + "/replay", {},
                          headers=ADMIN, check=False), 404, "NOT_FOUND")

        for bad, words in (({"url": receiver.url, "event_types": ["api_key.created"]},
                            ["api_key.created", "budget.exhausted"]),
                           ({"url": receiver.url, "event_types": ["budget.exhausted"],
                             "event_categories": ["system"]}, ["system"]),
                           ({"url": receiver.url, "event_types": ["budget.exhausted"],
                             "name": "ops"}, ["name"]),
                           ({"url": receiver.url}, ["event_types"]),
                           ({"url": receiver.url, "event_types": ["budget.exhausted"],
                             "signing_secret": "short"}, ["secret", "16"])):
            answer = root.call("POST", "/v1/admin/webhooks", bad, headers=ADMIN, check=False)
            refused(answer, 400, "INVALID_REQUEST", *words)
        assert len(served.guard.webhooks()) == 1 and len(served.guard.webhooks("acme")) == 1
    finally:
        receiver.close()


def test_a_tenant_key_can_only_subscribe_its_own_tenant(served: Any) -> None:
    acme = served.tenant("acme", permissions=["webhooks:write"])
    body = {"url": "https://hooks.example.com/a", "events": ["budget.exhausted"]}
    made = acme.post("/v1/webhooks", {**body, "tenant_id": "acme"}, check=False)
    assert made.status == 201 and made.body["tenant_id"] == "acme"
    refused(acme.post("/v1/webhooks", {**body, "tenant_id": "globex"}, check=False), 403,
            "FORBIDDEN")
    refused(get(acme, "/v1/webhooks"), 403, "FORBIDDEN", "webhooks:read")
    assert served.guard.webhooks() == () and served.guard.webhooks("globex") == ()


@pytest.mark.parametrize(("body", "words"), [
    ({"url": "ftp://hooks.example.com", "events": ["*"]}, ["url", "http"]),
    ({"url": "https://hooks.example.com", "events": []}, ["events"]),
    ({"url": "https://hooks.example.com", "events": ["budget.nope"]}, ["budget.nope"]),
    ({"url": "https://hooks.example.com", "events": ["*"], "secret": "hunter2"},
     ["secret", "whsec_"]),
    ({"url": "https://hooks.example.com", "events": ["*"], "colour": "red"}, ["colour"]),
    ({"url": "https://hooks.example.com", "events": "*"}, ["events"]),
])
def test_bad_subscriptions_are_refused_and_nothing_is_made(served: Any, body: Any,
                                                           words: list[str]) -> None:
    answer = admin(served).post("/v1/webhooks", body, headers=ADMIN, check=False)
    refused(answer, 400, "INVALID_REQUEST", *words)
    assert served.guard.webhooks() == ()


def test_a_destination_on_a_private_address_is_refused_when_sending(
        served: Any, receiver: Receiver) -> None:
    """As the library does: the subscription is kept, the dispatcher (without an allow list)
    refuses to send to loopback and logs why."""
    acme = served.tenant("acme", usd=10, permissions=READER)
    made = acme.post("/v1/webhooks", {"url": receiver.url, "events": ["*"]}, check=False)
    assert made.status == 201
    served.guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(9)).commit(al.usd(9))
    Dispatcher(served.guard).run_once()
    rows = get(acme, "/v1/webhooks/deliveries").body["deliveries"]
    assert rows and all(row["status"] == "failed" and "loopback" in row["last_error"]
                        for row in rows)
    assert receiver.requests == 0
