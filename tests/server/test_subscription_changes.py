"""Changing a subscription in place and sending it a test event, over a real server on each
store: on the governance admin plane (`PATCH` and `POST .../test` under
`/v1/admin/webhooks`, answers checked against the governance spec) and on the tenant plane
(`GET`, `PATCH` and `POST .../test` under `/v1/webhooks`). What a receiver gets is checked
by its own signature code; a refused change leaves the subscription as it was."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

import allotment as al
from allotment.server.hooks_routes import TESTS_PER_MINUTE
from allotment.webhook_security import DEFAULT_BLOCKED
from allotment.webhooks import Dispatcher

from support.openapi import GOVERNANCE, conforms, validate
from support.served import ADMIN_KEY, Api, serving
from support.stores import STORE_KINDS, make_store
from support.webhooks import Receiver

ADMIN = {"X-Admin-API-Key": ADMIN_KEY}
GPT = al.Action("llm.completion", "openai:gpt-4o")
LOOPBACK = ["127.0.0.1/32"]


class Served:
    def __init__(self, guard: al.Guard, url: str) -> None:
        self.guard, self.url = guard, url
        self.root = Api(url)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return self.root.call(method, path, body, headers=ADMIN, check=False)


@pytest.fixture(params=STORE_KINDS)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """A server whose test sends may reach a receiver on loopback (as the dispatcher that
    sends its deliveries may)."""
    store = make_store(request.param, al.clock.system_ms)
    guard = al.Guard(store)
    with serving(guard, dispatcher=Dispatcher(guard, allow=LOOPBACK)) as url:
        yield Served(guard, url)
    store.close()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    first, second = Receiver(), Receiver()
    yield first, second
    first.close()
    second.close()


def refused(answer: Any, status: int, code: str, *words: str) -> None:
    assert (answer.status, answer.body["error"]) == (status, code), answer.body
    for word in words:
        assert word in answer.body["message"], answer.body


def subscribed(served: Served, receiver: Receiver, owner: str = "?tenant_id=acme",
               **body: Any) -> dict[str, Any]:
    """A subscription made on the admin plane to `receiver`, which learns its secret."""
    made = served.admin("POST", f"/v1/admin/webhooks{owner}", {
        "url": receiver.url, "event_types": ["reservation.denied"], **body})
    assert made.status == 201, made.body
    receiver.secrets.append(made.body["signing_secret"])
    return dict(made.body["subscription"])


def deny(guard: al.Guard) -> None:
    """One `reservation.denied` event for acme."""
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(500))


def test_the_admin_changes_a_subscription_and_its_deliveries_follow(
        served: Served, receivers: tuple[Receiver, Receiver]) -> None:
    first, moved = receivers
    served.guard.set_budget("tenant:acme", usd=10)
    hook = subscribed(served, first, event_types=["budget.exhausted"])
    path = f"/v1/admin/webhooks/{hook['subscription_id']}"

    changed = served.admin("PATCH", path, {
        "url": moved.url, "event_categories": ["reservation"],
        "signing_secret": "the rotated secret of the receiver", "status": "PAUSED"})
    assert changed.status == 200, changed.body
    validate("PATCH", path, 200, changed.body, GOVERNANCE)
    assert (changed.body["url"], changed.body["status"], changed.body["created_at"]) == (
        moved.url, "PAUSED", hook["created_at"])
    assert changed.body["event_types"] == ["reservation.commit_overage", "reservation.denied",
                                           "reservation.expired"]
    assert "signing_secret" not in changed.body
    resumed = served.admin("PATCH", path, {"status": "ACTIVE"})
    assert resumed.body["status"] == "ACTIVE" and resumed.body["url"] == moved.url
    assert [(r.type, r.actor) for r in served.guard.audit("acme")][-3:] == [
        ("webhook.created", "admin-key"), ("webhook.updated", "admin-key"),
        ("webhook.updated", "admin-key")]  # who changed it is on the tenant's record

    moved.secrets.append("the rotated secret of the receiver")
    deny(served.guard)
    Dispatcher(served.guard, allow=LOOPBACK).run_once()
    assert first.requests == 0 and moved.bad_signatures == 0
    assert [event["event_type"] for _, event in moved.accepted] == ["reservation.denied"]

    before = served.guard.webhooks("acme")
    for bad, words in (({"name": "ops"}, ["name"]),
                       ({"event_types": []}, ["event_types", "select no event"]),
                       ({"event_types": ["api_key.created"]}, ["api_key.created"]),
                       ({"event_categories": ["system"], "status": "PAUSED"}, ["system"]),
                       ({"signing_secret": "short", "url": first.url}, ["secret", "16"]),
                       ({"url": "ftp://hooks.example.com"}, ["url"]),
                       ({"status": "DISABLED"}, ["status"]),
                       ({}, ["at least one of"])):
        answer = served.admin("PATCH", path, bad)
        refused(answer, 400, "INVALID_REQUEST", *words)
        validate("PATCH", path, 400, answer.body, GOVERNANCE)
        assert "short" not in answer.body["message"]  # a secret is never repeated back
    assert served.guard.webhooks("acme") == before
    refused(served.admin("PATCH", "/v1/admin/webhooks/acme/whk_" + "0" * 24,
                         {"status": "PAUSED"}), 404, "NOT_FOUND")


def test_the_admin_sends_a_test_event_that_is_logged_nowhere(
        served: Served, receivers: tuple[Receiver, Receiver]) -> None:
    receiver, failing = receivers
    served.guard.set_budget("tenant:acme", usd=10)
    ids = [subscribed(served, receiver)["subscription_id"],
           subscribed(served, receiver, owner="")["subscription_id"]]
    for hook_id, tenant in zip(ids, ["acme", "__system__"], strict=True):
        path = f"/v1/admin/webhooks/{hook_id}/test"
        sent = served.admin("POST", path)
        assert sent.status == 200, sent.body
        validate("POST", path, 200, sent.body, GOVERNANCE)
        assert (sent.body["success"], sent.body["response_status"]) == (True, 204)
        assert "error_message" not in sent.body
        event_id, event = receiver.accepted[-1]
        assert event_id == sent.body["event_id"] and event["tenant_id"] == tenant
        assert (event["event_type"], event["data"]["webhook_id"]) == ("system.webhook_test",
                                                                      hook_id)
        conforms("Event", event, GOVERNANCE)
    assert receiver.bad_signatures == 0
    views = served.admin("GET", "/v1/admin/webhooks").body["subscriptions"]
    assert {view["consecutive_failures"] for view in views} == {0}
    assert all("last_triggered_at" not in view for view in views)  # a test is no delivery
    assert served.guard.webhook_deliveries() == ()

    failing.fail = 1
    broken = subscribed(served, failing, signing_secret="a secret the failing receiver knows")
    path = f"/v1/admin/webhooks/{broken['subscription_id']}/test"
    answer = served.admin("POST", path)
    validate("POST", path, 200, answer.body, GOVERNANCE)
    assert (answer.body["success"], answer.body["response_status"],
            answer.body["error_message"]) == (False, 500, "HTTP 500")
    refused(served.admin("POST", "/v1/admin/webhooks/acme/whk_" + "0" * 24 + "/test"), 404,
            "NOT_FOUND")


def test_a_tenant_reads_changes_and_tests_its_own_subscriptions_only(
        served: Served, receivers: tuple[Receiver, Receiver]) -> None:
    receiver, _ = receivers
    guard = served.guard
    guard.set_budget("tenant:acme", usd=10)
    acme = Api(served.url, guard.create_key("acme", permissions=[
        "webhooks:read", "webhooks:write"]).secret)
    reader = Api(served.url, guard.create_key("acme", permissions=["webhooks:read"]).secret)
    rival = Api(served.url, guard.create_key("rival", permissions=["admin:write"]).secret)
    made = acme.post("/v1/webhooks", {"url": "https://hooks.example.com/a",
                                      "events": ["budget.exhausted"]}, check=False)
    hook_id = made.body["webhook_id"]
    everyone = guard.subscribe_webhook("https://hooks.example.com/all", events="*").id

    one = acme.call("GET", f"/v1/webhooks/{hook_id}", check=False)
    assert one.status == 200 and one.body["url"] == "https://hooks.example.com/a"
    assert "secret" not in one.body
    assert Api(served.url).call("GET", f"/v1/webhooks/{hook_id}", headers=ADMIN,
                                check=False).body == one.body
    rotated = "whsec_" + base64.b64encode(b"r" * 32).decode()
    changed = acme.call("PATCH", f"/v1/webhooks/{hook_id}", {
        "url": receiver.url, "events": ["reservation.denied"], "secret": rotated},
        check=False)
    assert changed.status == 200, changed.body
    assert (changed.body["url"], changed.body["events"]) == (receiver.url,
                                                            ["reservation.denied"])
    assert "secret" not in changed.body
    (record,) = guard.audit("acme", types=["webhook.updated"])
    assert (record.actor, record.detail["secret_rotated"]) == (
        f"key:{acme.key.partition('.')[0].removeprefix('alk_')}", True)
    receiver.secrets.append(rotated)
    path = f"/v1/webhooks/{hook_id}/test"
    sent = acme.call("POST", path, check=False)
    assert sent.status == 200, sent.body
    validate("POST", path, 200, sent.body, GOVERNANCE)
    assert sent.body["success"] is True and receiver.bad_signatures == 0
    assert receiver.types() == ["system.webhook_test"]  # signed with the rotated secret

    before = (guard.webhooks(), guard.webhooks("acme"))
    refused(reader.call("POST", path, check=False), 403, "FORBIDDEN", "webhooks:write")
    refused(reader.call("PATCH", f"/v1/webhooks/{hook_id}", {"enabled": False},
                        check=False), 403, "FORBIDDEN", "webhooks:write")
    refused(acme.call("PATCH", f"/v1/webhooks/{hook_id}", {"events": ["budget.melted"]},
                      check=False), 400, "INVALID_REQUEST", "budget.melted")
    refused(acme.call("PATCH", f"/v1/webhooks/{hook_id}", {}, check=False), 400,
            "INVALID_REQUEST", "at least one of")
    ghost = "acme/whk_" + "0" * 24
    for target in (hook_id, ghost, everyone):  # theirs, one that never was, the global one
        for method, tail, body in (("GET", "", None), ("POST", "/test", None),
                                   ("PATCH", "", {"enabled": False})):
            answer = rival.call(method, f"/v1/webhooks/{target}{tail}", body, check=False)
            refused(answer, 403, "FORBIDDEN")
            assert "hooks.example.com" not in str(answer.body)
    for method, tail in (("GET", ""), ("POST", "/test")):
        refused(acme.call(method, f"/v1/webhooks/{ghost}{tail}", check=False), 404,
                "NOT_FOUND")
    assert (guard.webhooks(), guard.webhooks("acme")) == before
    assert len(receiver.accepted) == 1

    # a tenant's test sends are limited (each is a request to a URL the tenant chose): of
    # 2N + 1 more, at least one is refused whatever minute they fall in
    statuses = [acme.call("POST", path, check=False) for _ in range(2 * TESTS_PER_MINUTE + 1)]
    throttled = next(answer for answer in statuses if answer.status == 429)
    refused(throttled, 429, "LIMIT_EXCEEDED", f"at most {TESTS_PER_MINUTE} test sends")
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert all(answer.status in (200, 429) for answer in statuses)
    assert served.admin("POST", f"/v1/admin/webhooks/{hook_id}/test").status == 200  # not counted


def test_the_admin_reads_and_replaces_where_webhooks_may_go(served: Served) -> None:
    path = "/v1/admin/config/webhook-security"
    first = served.admin("GET", path)
    assert first.status == 200, first.body
    validate("GET", path, 200, first.body, GOVERNANCE)
    assert first.body == {"blocked_cidr_ranges": list(DEFAULT_BLOCKED),
                          "allowed_url_patterns": [], "allow_http": True}
    strict = {"blocked_cidr_ranges": ["10.0.0.0/8", "fc00::/7", "127.0.0.1/8"],
              "allowed_url_patterns": ["https://*.example.com/*"], "allow_http": False}
    replaced = served.admin("PUT", path, strict)
    assert replaced.status == 200, replaced.body
    validate("PUT", path, 200, replaced.body, GOVERNANCE)
    assert replaced.body == {**strict, "blocked_cidr_ranges": [  # each in canonical form
        "10.0.0.0/8", "fc00::/7", "127.0.0.0/8"]}
    assert served.admin("GET", path).body == replaced.body
    served.guard.set_budget("tenant:acme", usd=1)
    acme = Api(served.url, served.guard.create_key("acme", permissions=[
        "webhooks:write"]).secret)
    for answer, words in (
            (served.admin("POST", "/v1/admin/webhooks", {
                "url": "http://hooks.example.com/a", "event_types": ["budget.exhausted"]}),
             ["https:// only"]),
            (acme.post("/v1/webhooks", {"url": "https://hooks.example.org/a",
                                        "events": ["budget.exhausted"]}, check=False),
             ["allowed URL patterns", "https://*.example.com/*"])):
        refused(answer, 400, "INVALID_REQUEST", *words)
    assert served.guard.webhooks() == () and served.guard.webhooks("acme") == ()
    assert acme.post("/v1/webhooks", {"url": "https://hooks.example.com/a",
                                      "events": ["budget.exhausted"]}, check=False).status == 201
    for bad, words in (({"blocked_cidr_ranges": ["nope"]}, ["blocked_cidr_ranges[0]"]),
                       ({"allow_http": "no"}, ["allow_http"]),
                       ({"blocked_cidr_ranges": ["10.0.0.0/8"], "colour": "red"}, ["colour"])):
        answer = served.admin("PUT", path, bad)
        refused(answer, 400, "INVALID_REQUEST", *words)
        validate("PUT", path, 400, answer.body, GOVERNANCE)
    assert served.admin("GET", path).body == replaced.body
    defaults = served.admin("PUT", path, {})
    assert defaults.body == first.body  # what is left out takes its default
