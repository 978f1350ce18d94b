"""The operators' commands against a running server (real uvicorn on loopback, each store
kind): provisioning and balances over HTTP, and the commands the server has no route for
yet refused clearly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import allotment as al
from allotment.clock import system_ms

from support.cli import PLANS, Cli
from support.served import ADMIN_KEY, serving
from support.stores import STORE_KINDS, make_store

MINI = al.Action("llm.completion", "openai:gpt-4o-mini")


@pytest.fixture(params=STORE_KINDS)
def remote(request: pytest.FixtureRequest) -> Iterator[Cli]:
    store = make_store(request.param, system_ms)
    guard = al.Guard(store)
    with serving(guard) as url:
        yield Cli(guard, None, ["--server", url, "--key", ADMIN_KEY])
    store.close()


def test_provisioning_and_balances_over_the_server(remote: Cli) -> None:
    made = json.loads(remote.run("tenants", "create", "acme", "--name", "Acme Corp",
                                 "--json").stdout)
    assert (made["tenant_id"], made["name"]) == ("acme", "Acme Corp")
    assert remote.guard.tenant_info("acme") is not None

    key = json.loads(remote.run("keys", "create", "acme", "--name", "worker",
                                "--permission", "budgets:read", "--json").stdout)
    assert remote.guard.authenticate_key(key["key_secret"]) is not None
    listed = json.loads(remote.run("keys", "list", "acme", "--json").stdout)["keys"]
    assert [k["key_id"] for k in listed] == [key["key_id"]]

    remote.run("budgets", "set", "tenant:acme", "--usd", "10")
    remote.run("budgets", "set", "tenant:acme/workspace:prod", "--usd", "4")
    remote.guard.reserve(al.Subject(tenant="acme", workspace="prod"), MINI,
                         al.usd(1)).commit(al.usd(1))
    lines = remote.run("balances", "acme").stdout.splitlines()
    assert lines[2].startswith("tenant:acme ") and "$9.00" in lines[2]
    assert lines[3].startswith("  workspace:prod ") and "[#####...............]  25%" in lines[3]
    rows = json.loads(remote.run("balances", "acme", "--json").stdout)["balances"]
    assert [(r["scope"], r["spent"]) for r in rows] == [
        ("tenant:acme", al.usd(1).amount), ("tenant:acme/workspace:prod", al.usd(1).amount)]

    # the tenant's own key (budgets:read) reads its own balances, nothing else
    tenant_cli = Cli(remote.guard, None, [*remote.extra[:2], "--key", key["key_secret"]])
    assert json.loads(tenant_cli.run("balances", "acme", "--json").stdout)["balances"] == rows
    other = tenant_cli.run("balances", "globex", code=1)
    assert "403" in other.output

    remote.run("tenants", "suspend", "acme")
    assert [t["status"] for t in json.loads(remote.run("tenants", "list", "--json").stdout)[
        "tenants"] if t["tenant_id"] == "acme"] == ["SUSPENDED"]
    with pytest.raises(al.BudgetExceeded) as denied:
        remote.guard.reserve(al.Subject(tenant="acme"), MINI, al.usd("0.01"))
    assert denied.value.decision.reason == "BUDGET_FROZEN"
    remote.run("tenants", "resume", "acme")

    revoked = json.loads(remote.run("keys", "revoke", key["key_id"], "--json").stdout)
    assert revoked["status"] == "REVOKED"
    assert remote.guard.authenticate_key(key["key_secret"]) is None

    closed = json.loads(remote.run("tenants", "close", "acme", "--yes", "--json").stdout)
    assert (closed["tenant_id"], closed["status"]) == ("acme", "CLOSED")
    listed = json.loads(remote.run("tenants", "list", "--json").stdout)["tenants"]
    assert [t.get("closed_at") for t in listed if t["tenant_id"] == "acme"] == [
        closed["closed_at"]]
    assert "closed at " in remote.run("tenants", "close", "acme", "--yes").stdout
    assert {r.status for r in remote.guard.balances("tenant:acme")} == {al.BudgetStatus.CLOSED}


def test_what_the_server_cannot_do_yet_is_refused_clearly(remote: Cli) -> None:
    remote.run("budgets", "set", "tenant:acme", "--usd", "10")
    changed = remote.run("budgets", "set", "tenant:acme", "--usd", "20", code=1)
    assert "changing an existing budget is not available over --server yet" in changed.output
    periodic = remote.run("budgets", "set", "tenant:acme", "--usd", "20", "--period", "month",
                          code=2)
    assert "--period and --per are not available over --server yet" in periodic.output
    (row,) = remote.guard.balances("tenant:acme")
    assert row.allocated == al.usd(10).amount  # nothing changed


def test_a_wrong_key_or_no_server_is_a_clear_failure(remote: Cli) -> None:
    url = remote.extra[1]
    wrong = Cli(remote.guard, None, ["--server", url, "--key", "not-the-key"])
    assert "401" in wrong.run("keys", "list", "acme", code=1).output
    gone = Cli(remote.guard, None, ["--server", "http://127.0.0.1:9", "--key", ADMIN_KEY])
    assert "unreachable" in gone.run("keys", "list", "acme", code=3).output
    bad = Cli(remote.guard, None, ["--server", "localhost:7878"])
    assert "give the server's URL" in bad.run("keys", "list", "acme", code=2).output


def test_plans_apply_over_the_server_prints_what_changed_and_twice_changes_nothing(
        remote: Cli, tmp_path: Path) -> None:
    guard = remote.guard
    first = remote.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "starter").stdout
    assert "acme: plan (none) -> starter" in first
    assert "+ budget usd month at (tenant): 50" in first
    assert guard.plan_of("acme") == "starter"
    records = len(guard.audit("acme", limit=100_000))
    again = remote.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "starter").stdout
    assert "acme: unchanged (plan starter" in again
    assert len(guard.audit("acme", limit=100_000)) == records  # not one write

    guard.reserve(al.Subject(tenant="acme", dimensions={"session": "s1"}), MINI,
                  al.usd(1)).commit(al.usd("0.75"))
    upgrade = remote.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "pro",
                         "--actor", "ops@example.com").stdout
    assert "acme: plan starter -> pro" in upgrade
    assert "~ quota runs day at (tenant): 500 -> 1000" in upgrade
    assert ("ledger tenant:acme USD_MICROCENTS month: allocated $50.00 -> $500.00 "
            "(spent $0.75, kept)") in upgrade
    assert guard.audit("acme", types=["plan.assigned"])[-1].actor == "ops@example.com"
    (result,) = json.loads(remote.run("plans", "apply", PLANS, "--tenant", "acme", "--plan",
                                      "pro", "--json").stdout)["applied"]
    assert (result["changed"], result["plan_after"]) == (False, "pro")
    guard.set_budget("tenant:acme", usd=99, period="month")  # a change by hand
    forced = remote.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "pro",
                        "--force").stdout
    assert "allocated $99.00 -> $500.00 (spent $0.75, kept)" in forced

    remote.run("plans", "apply", PLANS, "--tenant", "globex", "--plan", "free")
    edited = tmp_path / "plans.yaml"
    edited.write_text(Path(PLANS).read_text().replace("{usd: 10, period: month}",
                                                      "{usd: 15, period: month}"))
    out = remote.run("plans", "apply", str(edited)).stdout
    assert "globex: plan free re-installed" in out and "allocated $10.00 -> $15.00" in out
    assert "acme: unchanged (plan pro" in out and "[2/2]" in out
    listed = json.loads(remote.run("tenants", "list", "--json").stdout)["tenants"]
    assert listed == [{"tenant_id": "acme", "name": None, "plan": "pro", "status": "ACTIVE"},
                      {"tenant_id": "globex", "name": None, "plan": "free",
                       "status": "ACTIVE"}]


def test_plans_apply_needs_the_admin_key_on_a_server(remote: Cli) -> None:
    secret = remote.guard.create_key("acme", permissions=["admin:write"]).secret
    tenant_cli = Cli(remote.guard, None, [*remote.extra[:2], "--key", secret])
    refused = tenant_cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "free",
                             code=1)
    assert "401" in refused.output and remote.guard.plan_of("acme") is None


def test_sweep_over_the_server_expires_in_batches(remote: Cli) -> None:
    guard = al.Guard(remote.guard.store, ttl_ms=1_000, grace_ms=0)
    guard.set_budget("tenant:acme", usd=1)
    held = [guard.reserve(al.Subject(tenant="acme"), MINI, al.usd("0.1")) for _ in range(3)]
    time.sleep(1.1)
    swept = json.loads(remote.run("sweep", "--batch", "2", "--json").stdout)
    assert swept == {"expired": 3, "batches": 2}
    assert {guard.get(h.id).status for h in held} == {al.ReservationStatus.EXPIRED}
    assert "0 overdue reservation(s) expired" in remote.run("sweep").stdout
