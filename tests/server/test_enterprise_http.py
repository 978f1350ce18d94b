"""The seed's enterprise scenario over HTTP, on both stores: a $10,000 tenant with three
department workspaces, provisioned through the admin plane. Marketing exhausts its budget and
is denied; the tenant's own budget admin (a tenant key, not the platform's admin key) moves
$500 from Engineering; Marketing resumes. Engineering and Support keep their balances and
their decisions at every step, and another tenant's keys are refused and change nothing.

The figures are those of examples/enterprise_reallocation.py. The move is made both ways a
tenant admin has: allotment's atomic transfer (POST /v1/admin/transfers), and the fund pair
(DEBIT Engineering, CREDIT Marketing) of the reference admin plane."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import runcycles as rc

from support.served import ADMIN_KEY, Api
from support.snapshots import differences, snapshot

USD = "USD_MICROCENTS"
DOLLAR = 100_000_000  # microcents
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}
DEPARTMENTS = {"marketing": 500, "engineering": 5_000, "support": 1_000}
UNAFFECTED = ("engineering", "support")
CALL = {"kind": "llm.completion", "name": "anthropic:claude-sonnet-4-6"}


def scope(workspace: str) -> str:
    return f"tenant:bigco/workspace:{workspace}"


def provision(url: str) -> dict[str, str]:
    """Everything through the admin plane: the tenants, their budgets, their keys. Answers
    the secrets by role."""
    admin = Api(url)

    def made(path: str, body: dict[str, Any]) -> Any:
        answer = admin.post(path, body, headers=ADMIN, check=False)
        assert answer.status == 201, (path, answer.body)
        return answer.body

    def budget(tenant: str, at: str, usd: int) -> None:
        made("/v1/admin/budgets", {"tenant_id": tenant, "scope": at, "unit": USD,
                                   "allocated": {"unit": USD, "amount": usd * DOLLAR}})

    made("/v1/admin/tenants", {"tenant_id": "bigco", "name": "BigCo"})
    budget("bigco", "tenant:bigco", 10_000)
    for name, usd in DEPARTMENTS.items():
        budget("bigco", scope(name), usd)
    made("/v1/admin/tenants", {"tenant_id": "rival", "name": "Rival"})
    budget("rival", "tenant:rival", 1_000)
    finance = ["budgets:read", "budgets:write", "balances:read"]
    return {
        "agents": made("/v1/admin/api-keys", {"tenant_id": "bigco", "name": "agents"}
                       )["key_secret"],
        "finance": made("/v1/admin/api-keys", {"tenant_id": "bigco", "name": "finance",
                                               "permissions": finance})["key_secret"],
        "rival-agents": made("/v1/admin/api-keys", {"tenant_id": "rival", "name": "agents"}
                             )["key_secret"],
        "rival-finance": made("/v1/admin/api-keys", {"tenant_id": "rival", "name": "finance",
                                                     "permissions": finance})["key_secret"],
    }


class Department:
    """One workspace's agents: the runcycles client with the tenant's runtime key."""

    def __init__(self, client: rc.CyclesClient, workspace: str) -> None:
        self.client, self.workspace = client, workspace
        self.calls = 0

    def _request(self, usd: int) -> dict[str, Any]:
        self.calls += 1
        return {"idempotency_key": f"{self.workspace}-{self.calls}",
                "subject": {"tenant": "bigco", "workspace": self.workspace}, "action": CALL,
                "estimate": {"unit": USD, "amount": usd * DOLLAR}}

    def decide(self, usd: int) -> rc.Decision:
        answer = self.client.decide(self._request(usd))
        assert answer.status == 200, answer.error_message
        return rc.DecisionResponse.model_validate(answer.body).decision

    def reserve(self, usd: int) -> rc.CyclesResponse:
        return self.client.create_reservation(self._request(usd))

    def work(self, usd: int, cost: int) -> None:
        """Reserve `usd`, do the work, commit what it cost."""
        held = self.reserve(usd)
        assert held.status == 200, held.error_message
        rid = rc.ReservationCreateResponse.model_validate(held.body).reservation_id
        assert rid is not None
        done = self.client.commit_reservation(rid, {
            "idempotency_key": f"{self.workspace}-{self.calls}-commit",
            "actual": {"unit": USD, "amount": cost * DOLLAR}})
        assert done.status == 200, done.error_message
        assert rc.CommitResponse.model_validate(done.body).charged.amount == cost * DOLLAR


@pytest.fixture
def world(served: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    secrets = provision(served.url)
    yield served, secrets


def balances(client: rc.CyclesClient, tenant: str) -> dict[str, rc.Balance]:
    """The tenant's USD balances by scope path, as the client parses them."""
    answer = client.get_balances(tenant=tenant, include_children="true")
    assert answer.status == 200, answer.error_message
    parsed = rc.BalanceResponse.model_validate(answer.body)
    return {row.scope_path: row for row in parsed.balances
            if row.remaining.unit == rc.Unit.USD_MICROCENTS}


def figures(row: rc.Balance) -> tuple[int, int, int, int]:
    """allocated, remaining, reserved, spent of a balance, in microcents."""
    def amount(value: Any) -> int:
        return 0 if value is None else int(value.amount)

    return (amount(row.allocated), amount(row.remaining), amount(row.reserved),
            amount(row.spent))


def moved_by_transfer(finance: Api) -> None:
    """One atomic step; a retry under the same idempotency key does not move it twice."""
    body = {"source": scope("engineering"), "destination": scope("marketing"),
            "amount": {"unit": USD, "amount": 500 * DOLLAR},
            "idempotency_key": "q4-realloc-1"}
    moved = finance.post("/v1/admin/transfers", body, check=False)
    assert moved.status == 200, moved.body
    assert finance.post("/v1/admin/transfers", body, check=False).body == moved.body
    assert moved.body["source"]["allocated"] == {"unit": USD, "amount": 4_500 * DOLLAR}
    assert moved.body["destination"]["remaining"] == {"unit": USD, "amount": 520 * DOLLAR}


def moved_by_fund_pair(finance: Api) -> None:
    """DEBIT then CREDIT, each under its own key; a retried DEBIT does not move it twice."""
    def fund(workspace: str, operation: str, amount: Any, key: str) -> Any:
        answer = finance.post(f"/v1/admin/budgets/fund?scope={scope(workspace)}&unit={USD}",
                              {"operation": operation, "amount": amount,
                               "idempotency_key": key}, check=False)
        assert answer.status == 200, answer.body
        return answer.body

    out = fund("engineering", "DEBIT", 500 * DOLLAR, "q4-realloc-1-out")
    again = fund("engineering", "DEBIT", 500 * DOLLAR, "q4-realloc-1-out")
    assert again["new_allocated"] == out["new_allocated"]
    into = fund("marketing", "CREDIT", {"unit": USD, "amount": 500 * DOLLAR}, "q4-realloc-1-in")
    assert into["new_remaining"] == {"unit": USD, "amount": 520 * DOLLAR}


@pytest.mark.parametrize("move", [moved_by_transfer, moved_by_fund_pair],
                         ids=["transfer", "fund-pair"])
def test_the_enterprise_admin_reallocates_between_departments_over_http(
        world: Any, move: Any) -> None:
    served, secrets = world
    config = rc.CyclesConfig(base_url=served.url, api_key=secrets["agents"], tenant="bigco",
                             journal_enabled=False, retry_enabled=False)
    with rc.CyclesClient(config) as client:
        teams = {name: Department(client, name) for name in DEPARTMENTS}
        finance = Api(served.url, secrets["finance"])
        rows = balances(client, "bigco")
        assert figures(rows["tenant:bigco"]) == (10_000 * DOLLAR, 10_000 * DOLLAR, 0, 0)
        for name, usd in DEPARTMENTS.items():
            assert figures(rows[scope(name)]) == (usd * DOLLAR, usd * DOLLAR, 0, 0)

        def unaffected(step: Any, *, engineering_allocated: int = 0) -> None:
            """Run `step`; Engineering and Support read the same before and after it (but
            for an allocation the step moves on purpose), and both are still allowed."""
            before = balances(client, "bigco")
            step()
            after = balances(client, "bigco")
            for name in UNAFFECTED:
                allocated, remaining, reserved, spent = figures(before[scope(name)])
                moved = engineering_allocated if name == "engineering" else 0
                assert figures(after[scope(name)]) == (
                    allocated + moved, remaining + moved, reserved, spent), name
                assert teams[name].decide(50) == rc.Decision.ALLOW, name

        # Every department works; Marketing spends $480 of its $500.
        for name in UNAFFECTED:
            teams[name].work(50, 42)
        unaffected(lambda: teams["marketing"].work(480, 480))

        # Marketing is exhausted: a $50 call is denied (and decided DENY); nobody else notices.
        def denied() -> None:
            refused = teams["marketing"].reserve(50)
            assert refused.status == 409, refused.body
            assert refused.body is not None and refused.body["error"] == "BUDGET_EXCEEDED"
            assert teams["marketing"].decide(50) == rc.Decision.DENY
        unaffected(denied)
        for name in UNAFFECTED:  # Engineering and Support keep working meanwhile
            teams[name].work(50, 42)

        # The tenant's own budget admin (its key, not the platform's) moves $500 from
        # Engineering to Marketing.
        unaffected(lambda: move(finance), engineering_allocated=-500 * DOLLAR)
        looked = finance.get(f"/v1/admin/budgets/lookup?scope={scope('marketing')}&unit={USD}",
                             check=False)
        assert looked.body["allocated"]["amount"] == 1_000 * DOLLAR

        # Marketing resumes.
        assert teams["marketing"].decide(50) == rc.Decision.ALLOW
        unaffected(lambda: teams["marketing"].work(50, 45))

        rows = balances(client, "bigco")
        assert figures(rows[scope("marketing")]) == (
            1_000 * DOLLAR, 475 * DOLLAR, 0, 525 * DOLLAR)
        assert figures(rows[scope("engineering")]) == (
            4_500 * DOLLAR, 4_416 * DOLLAR, 0, 84 * DOLLAR)
        assert figures(rows[scope("support")]) == (1_000 * DOLLAR, 916 * DOLLAR, 0, 84 * DOLLAR)
        assert figures(rows["tenant:bigco"]) == (
            10_000 * DOLLAR, 9_307 * DOLLAR, 0, 693 * DOLLAR)


def test_another_tenants_keys_are_refused_and_change_nothing(world: Any) -> None:
    """Another tenant's budget admin and agents get 403 on BigCo's budgets, balances and
    subjects, learn nothing but the refusal, and BigCo's whole state is unchanged."""
    served, secrets = world
    Department(rc.CyclesClient(rc.CyclesConfig(
        base_url=served.url, api_key=secrets["agents"], tenant="bigco",
        journal_enabled=False, retry_enabled=False)), "marketing").work(480, 480)
    store = served.guard.store
    before = snapshot(store, "bigco")
    rival_finance = Api(served.url, secrets["rival-finance"])
    rival_agents = Api(served.url, secrets["rival-agents"])
    where = f"scope={scope('engineering')}&unit={USD}"
    refusals = [
        (rival_finance, "POST", f"/v1/admin/budgets/fund?{where}",
         {"operation": "DEBIT", "amount": 500 * DOLLAR}),
        (rival_finance, "POST", f"/v1/admin/budgets/fund?scope={scope('marketing')}"
         f"&unit={USD}", {"operation": "CREDIT", "amount": 500 * DOLLAR}),
        (rival_finance, "POST", f"/v1/admin/budgets/fund?{where}&tenant_id=bigco",
         {"operation": "DEBIT", "amount": 500 * DOLLAR}),
        (rival_finance, "GET", f"/v1/admin/budgets/lookup?{where}", None),
        (rival_finance, "GET", "/v1/admin/budgets?tenant_id=bigco", None),
        (rival_finance, "POST", "/v1/admin/budgets", {
            "tenant_id": "bigco", "scope": scope("rogue"), "unit": USD,
            "allocated": {"unit": USD, "amount": DOLLAR}}),
        (rival_agents, "POST", "/v1/reservations", {
            "idempotency_key": "steal", "subject": {"tenant": "bigco", "workspace": "marketing"},
            "action": CALL, "estimate": {"unit": USD, "amount": DOLLAR}}),
        (rival_agents, "GET", "/v1/balances?tenant=bigco", None),
        (rival_finance, "POST", "/v1/admin/transfers", {
            "source": scope("engineering"), "destination": "tenant:rival",
            "amount": {"unit": USD, "amount": 500 * DOLLAR}}),
        (rival_finance, "POST", "/v1/admin/transfers", {
            "tenant_id": "bigco", "source": scope("engineering"),
            "destination": scope("marketing"), "amount": {"unit": USD, "amount": DOLLAR}}),
        # the tenant's own agents' key has no budgets:write: it cannot move money either
        (Api(served.url, secrets["agents"]), "POST", f"/v1/admin/budgets/fund?{where}",
         {"operation": "DEBIT", "amount": 500 * DOLLAR}),
        (Api(served.url, secrets["agents"]), "POST", "/v1/admin/transfers", {
            "source": scope("engineering"), "destination": scope("marketing"),
            "amount": {"unit": USD, "amount": 500 * DOLLAR}}),
    ]
    for api, method, path, body in refusals:
        refused = api.call(method, path, body, check=False)
        assert (refused.status, refused.body["error"]) == (403, "FORBIDDEN"), (path,
                                                                                refused.body)
        assert set(refused.body) == {"error", "message", "request_id", "trace_id"}
    assert differences(before, snapshot(store, "bigco")) == []
