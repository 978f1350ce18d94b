"""`allotment audit`, `report` and `usage export` over a running server (real uvicorn on
loopback, each store kind) print exactly what they print on the store itself; a tenant's own
key reads its own tenant only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import allotment as al
from allotment.clock import system_ms

from support.cli import Cli
from support.served import ADMIN_KEY, serving
from support.stores import STORE_KINDS, make_store

GPT = al.Action("llm.completion", "openai:gpt-4o")
MINI = al.Action("llm.completion", "openai:gpt-4o-mini")


@dataclass
class Both:
    """The same store through the server (`remote`) and directly (`local`)."""

    remote: Cli
    local: Cli
    url: str

    @property
    def guard(self) -> al.Guard:
        return self.local.guard

    def with_key(self, key: str) -> Cli:
        return Cli(self.guard, None, ["--server", self.url, "--key", key])


@pytest.fixture(params=STORE_KINDS)
def both(request: pytest.FixtureRequest) -> Iterator[Both]:
    store = make_store(request.param, system_ms)
    guard = al.Guard(store)
    with serving(guard) as url:
        yield Both(Cli(guard, None, ["--server", url, "--key", ADMIN_KEY]),
                   Cli(guard, getattr(store, "url", None) if request.param == "redis" else None),
                   url)
    store.close()


def traffic(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=2)
    guard.set_budget("tenant:globex", usd=5)
    run = al.Subject(tenant="acme", workspace="prod", dimensions={"run": "r1"})
    for action, cost in ((GPT, "0.5"), (MINI, "0.02"), (GPT, "1.1")):
        guard.reserve(run, action, al.usd(1)).commit(
            al.usd(cost), usage=al.TokenUsage(input_tokens=1000, output_tokens=50))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(run, GPT, al.usd(3))
    guard.reserve(al.Subject(tenant="globex"), MINI, al.usd(1)).commit(al.usd("0.3"))


def test_audit_over_the_server_prints_what_the_store_gives(both: Both) -> None:
    traffic(both.guard)
    for args in (["audit", "acme"], ["audit", "acme", "--json"],
                 ["audit", "acme", "--denials"], ["audit", "acme", "--denials", "--json"],
                 ["audit", "acme", "--type", "budget.set", "--since", "1h"],
                 ["audit", "acme", "--run", "r1", "--limit", "3"]):
        over_http = both.remote.run(*args).stdout
        assert over_http == both.local.run(*args).stdout, args
    why = both.remote.run("audit", "acme", "--denials").stdout
    assert "why: run r1 stopped by tenant:acme (BUDGET_EXCEEDED)" in why
    kept = both.guard.audit("acme")  # up to a moment: the records until then, both ways
    until = ["audit", "acme", "--json", "--until", str(kept[1].at_ms)]
    shown = json.loads(both.remote.run(*until).stdout)["records"]
    assert shown == json.loads(both.local.run(*until).stdout)["records"]
    assert [r["seq"] for r in shown] == [r.seq for r in kept if r.at_ms <= kept[1].at_ms]
    refused = both.remote.run("audit", "acme", "--until", "1h", "--follow", code=2)
    assert "--until: a log followed has no end" in refused.output
    records = json.loads(both.remote.run("audit", "acme", "--json").stdout)["records"]
    denial = next(r for r in records if r["type"] == "reservation.denied")
    assert denial["estimate"] == [{"unit": "USD_MICROCENTS", "amount": al.usd(3).amount}]


def test_audit_follow_over_the_server_prints_new_records(both: Both) -> None:
    traffic(both.guard)

    def later() -> None:
        time.sleep(0.6)
        both.guard.set_budget("tenant:acme/workspace:prod", usd=1)

    writer = threading.Thread(target=later)
    writer.start()
    followed = both.remote.run("audit", "acme", "--type", "budget.set", "--follow",
                               "--interval", "0.1", "--follow-for", "2").stdout
    writer.join()
    lines = [line for line in followed.splitlines() if "budget.set" in line]
    assert [line.split()[-1] for line in lines] == ["tenant:acme",
                                                    "tenant:acme/workspace:prod"]


def test_report_over_the_server_prints_what_the_store_gives(both: Both) -> None:
    traffic(both.guard)
    for args in (["report", "acme"], ["report", "acme", "--json"],
                 ["report", "acme", "--period", "day", "--by", "run", "--top", "1"],
                 ["report", "globex", "--period", "year", "--json"]):
        assert both.remote.run(*args).stdout == both.local.run(*args).stdout, args
    rows = json.loads(both.remote.run("report", "acme", "--json").stdout)["rows"]
    assert any(r["denials"] == {"BUDGET_EXCEEDED": 1} for r in rows)


def test_usage_export_over_the_server_is_the_same_bytes(both: Both, tmp_path: Path) -> None:
    traffic(both.guard)
    for args in (["usage", "export"], ["usage", "export", "--json"],
                 ["usage", "export", "--tenant", "acme", "--format", "json"],
                 ["usage", "export", "--tenant", "globex"]):
        over_http = both.remote.run(*args).stdout
        assert over_http == both.local.run(*args).stdout, args
    assert both.remote.run("usage", "export").stdout.count("\n") == 4  # header, 3 rows
    out = tmp_path / "usage.csv"
    written = both.remote.run("usage", "export", "--output", str(out))
    assert "exporting acme ..." in written.output and "3 row(s) written to" in written.output
    assert out.read_text() == both.local.run("usage", "export").stdout
    bad = both.remote.run("usage", "export", "--period", "2026-13", code=2)
    assert "server answered 400" in bad.output and "period" in bad.output


def test_a_tenant_key_reads_its_own_tenant_only(both: Both) -> None:
    traffic(both.guard)
    key = both.guard.create_key("acme", permissions=["budgets:read"]).secret
    tenant = both.with_key(key)
    assert tenant.run("audit", "acme").stdout == both.local.run("audit", "acme").stdout
    assert tenant.run("report", "acme").stdout == both.local.run("report", "acme").stdout
    own = tenant.run("usage", "export").stdout
    assert own == both.local.run("usage", "export", "--tenant", "acme").stdout
    for args in (["audit", "globex"], ["report", "globex"],
                 ["usage", "export", "--tenant", "globex"]):
        refused = tenant.run(*args, code=1)
        assert "server answered 403" in refused.output and "0.3" not in refused.output
    runtime = both.with_key(both.guard.create_key("acme").secret)  # no read permission
    assert "budgets:read" in runtime.run("audit", "acme", code=1).output
