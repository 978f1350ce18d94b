"""The operators' commands on each store: tiers from the example YAML, an upgrade mid-month,
"why was my agent stopped?", the balances tree, reports, keys, tenants, sweep, and bad
input refused with a clear message, a nonzero exit code and nothing changed."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import allotment as al

from support.cli import PLANS, Cli

ACTION = al.Action("llm.completion", "openai:gpt-4o")
MINI = al.Action("llm.completion", "openai:gpt-4o-mini")  # the free tier's model
RUN = al.Subject(tenant="acme", workflow="docs", agent="analyzer",
                 dimensions={"run": "run-7a3f"})


def as_json(cli: Cli, *args: str) -> Any:
    return json.loads(cli.run(*args, "--json").stdout)


def test_tiers_apply_then_upgrade_mid_month_keeps_spend_and_twice_changes_nothing(
        cli: Cli) -> None:
    first = cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "starter").stdout
    assert "acme: plan (none) -> starter" in first
    assert "+ budget usd month at (tenant): 50" in first
    assert "+ quota runs day at (tenant): 500" in first
    assert cli.guard.plan_of("acme") == "starter"
    records = len(cli.guard.audit("acme", limit=100_000))

    again = cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "starter").stdout
    assert "acme: unchanged (plan starter" in again
    assert len(cli.guard.audit("acme", limit=100_000)) == records  # not one write

    cli.guard.reserve(al.Subject(tenant="acme", dimensions={"session": "s1"}), ACTION,
                      al.usd(1)).commit(al.usd("0.75"))
    upgrade = cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "pro").stdout
    assert "acme: plan starter -> pro" in upgrade
    assert "~ quota runs day at (tenant): 500 -> 1000" in upgrade
    assert "~ budget usd per session at (tenant): 2 -> 10" in upgrade
    assert "+ budget tokens day at (tenant): 5000000" in upgrade
    assert ("ledger tenant:acme USD_MICROCENTS month: allocated $50.00 -> $500.00 "
            "(spent $0.75, kept)") in upgrade
    (month,) = [b for b in cli.guard.balances("tenant:acme", include_children=False)
                if b.unit is al.Unit.USD_MICROCENTS]
    assert (month.allocated, month.spent) == (al.usd(500).amount, al.usd("0.75").amount)

    # the same file again, with --json: nothing changes, and scripts can read that
    (result,) = as_json(cli, "plans", "apply", PLANS, "--tenant", "acme",
                        "--plan", "pro")["applied"]
    assert (result["changed"], result["plan_after"]) == (False, "pro")

    # a change by hand stays until the tier changes, or until --force installs it again
    cli.run("budgets", "set", "acme", "--usd", "99", "--period", "month")
    assert "unchanged" in cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan",
                                  "pro").stdout
    forced = cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "pro",
                     "--force").stdout
    assert "allocated $99.00 -> $500.00 (spent $0.75, kept)" in forced


def test_plans_apply_without_a_tenant_reinstalls_each_tenants_tier(cli: Cli,
                                                                   tmp_path: Path) -> None:
    cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "free")
    cli.run("plans", "apply", PLANS, "--tenant", "globex", "--plan", "starter")
    edited = tmp_path / "plans.yaml"
    edited.write_text(Path(PLANS).read_text().replace("{usd: 10, period: month}",
                                                      "{usd: 15, period: month}"))
    out = cli.run("plans", "apply", str(edited)).stdout
    assert "acme: plan free re-installed" in out
    assert "allocated $10.00 -> $15.00" in out
    assert "globex: unchanged (plan starter" in out
    assert "[1/2]" in out and "[2/2]" in out  # progress over many tenants


def test_audit_says_why_the_run_was_stopped(cli: Cli) -> None:
    cli.run("budgets", "set", "tenant:acme", "--usd", "100", "--period", "month")
    cli.run("budgets", "set", "tenant:acme/workflow:docs/agent:analyzer", "--usd", "0.05",
            "--per", "run")
    cli.guard.reserve(RUN, ACTION, al.usd("0.04")).commit(al.usd("0.04"))
    with pytest.raises(al.BudgetExceeded):
        cli.guard.reserve(RUN, ACTION, al.usd("0.03"))

    out = cli.run("audit", "acme", "--denials").stdout
    assert ("agent analyzer, run run-7a3f stopped by "
            "tenant:acme/workflow:docs/agent:analyzer/run:run-7a3f (BUDGET_EXCEEDED): "
            "asked $0.03 of budget $0.05, $0.01 left; action llm.completion openai:gpt-4o"
            ) in out
    (denial,) = as_json(cli, "audit", "acme", "--type", "reservation.denied",
                        "--run", "run-7a3f")["records"]
    assert denial["scopes"][0] == "tenant:acme/workflow:docs/agent:analyzer/run:run-7a3f"
    assert denial["detail"]["requested"] == al.usd("0.03").amount
    assert denial["detail"]["remaining"] == al.usd("0.01").amount
    assert denial["estimate"] == [{"unit": "USD_MICROCENTS", "amount": al.usd("0.03").amount}]
    assert as_json(cli, "audit", "acme", "--run", "other")["records"] == []
    # the run's budget crossed 50 % and 80 % on the commit before: on record with it
    crossed = cli.run("audit", "acme", "--type", "budget.threshold_crossed").stdout
    assert [line.split()[1:] for line in crossed.splitlines() if "run-7a3f" in line] == [
        ["budget.threshold_crossed", "tenant:acme/workflow:docs/agent:analyzer/run:run-7a3f",
         "(50%", "of", "$0.05)"],
        ["budget.threshold_crossed", "tenant:acme/workflow:docs/agent:analyzer/run:run-7a3f",
         "(80%", "of", "$0.05)"]]
    # --follow prints what is there and, told to stop, stops
    followed = cli.run("audit", "acme", "--denials", "--follow", "--follow-for", "0").stdout
    assert "BUDGET_EXCEEDED" in followed


def test_audit_shows_a_tenants_webhook_changes(cli: Cli) -> None:
    made = cli.guard.subscribe_webhook("https://hooks.example.com/a", tenant="acme",
                                       events=["budget.exhausted"])
    cli.guard.update_webhook(made.id, url="https://hooks.example.com/b",
                             secret="whsec_" + "QUJD" * 8)
    cli.guard.enable_webhook(made.id, False)
    lines = cli.run("audit", "acme").stdout.splitlines()
    assert [line.split(None, 1)[1] for line in lines] == [
        f"webhook.created              -  (webhook {made.id}; to https://hooks.example.com; "
        "active)",
        f"webhook.updated              -  (webhook {made.id}; to https://hooks.example.com; "
        "secret rotated)",
        f"webhook.updated              -  (webhook {made.id}; paused)"]


def test_balances_show_the_scope_tree_with_a_bar_per_budget(cli: Cli) -> None:
    cli.run("budgets", "set", "acme", "--usd", "100", "--period", "month")
    cli.run("budgets", "set", "tenant:acme/workspace:prod", "--usd", "40")
    cli.run("budgets", "set", "tenant:acme/workspace:prod", "--tokens", "1000")
    cli.run("budgets", "set", "tenant:acme/workspace:prod/workflow:docs/agent:analyzer",
            "--usd", "10", "--per", "run")
    subject = al.Subject(tenant="acme", workspace="prod", workflow="docs", agent="analyzer",
                         dimensions={"run": "r1"})
    cli.guard.reserve(subject, ACTION, al.usd(5)).commit(al.usd(5))
    cli.guard.reserve(subject, ACTION, al.usd(2))  # held, not spent

    lines = cli.run("balances", "acme").stdout.splitlines()
    assert lines[0].split() == ["scope", "period", "allocated", "spent", "reserved",
                                "remaining", "used"]
    assert lines[2].startswith("tenant:acme ") and "[#...................]   7%" in lines[2]
    assert any(line.startswith("  workspace:prod ") and "$40.00" in line for line in lines)
    run_line = next(line for line in lines if "run:r1" in line)
    assert run_line.startswith("    workflow:docs/agent:analyzer/run:r1 ")
    assert "[##############......]  70%" in run_line  # $5 spent + $2 held of $10

    rows = as_json(cli, "balances", "acme")["balances"]
    assert rows[0]["scope"] == "tenant:acme"
    for r in rows:
        assert r["remaining"] == r["allocated"] - r["spent"] - r["reserved"] - r["debt"]
    run = next(r for r in rows if r["scope"].endswith("run:r1"))
    assert (run["spent"], run["reserved"]) == (al.usd(5).amount, al.usd(2).amount)
    listed = as_json(cli, "budgets", "list", "acme")["budgets"]
    assert listed == rows


def test_report_counts_denials_by_reason_and_shadow_modes_would_be_denials(cli: Cli) -> None:
    cli.run("budgets", "set", "acme", "--usd", "1")
    subject = al.Subject(tenant="acme", dimensions={"user": "u-42"})
    cli.guard.reserve(subject, ACTION, al.usd("0.50")).commit(al.usd("0.25"))
    with pytest.raises(al.BudgetExceeded):
        cli.guard.reserve(subject, ACTION, al.usd(5))
    cli.guard.set_mode("acme", "shadow")
    cli.guard.reserve(subject, ACTION, al.usd(5)).release()

    report = as_json(cli, "report", "acme", "--period", "month")
    (row,) = [r for r in report["rows"] if r["scope"] == "tenant:acme"]
    assert row["denials"] == {"BUDGET_EXCEEDED": 1, "observed:BUDGET_EXCEEDED": 1}
    assert row["would_deny"] == 1
    reserved = row["reserved"]["USD_MICROCENTS"]
    ratio = (Decimal(al.usd("0.25").amount) / Decimal(reserved)).quantize(Decimal("0.0001"))
    assert row["committed_ratio"]["USD_MICROCENTS"] == str(ratio)
    assert row["committed"] == {"USD_MICROCENTS": al.usd("0.25").amount}
    text = cli.run("report", "acme").stdout
    assert "BUDGET_EXCEEDED 1" in text
    by_user = as_json(cli, "report", "acme", "--by", "user", "--top", "1")["rows"]
    assert [r["scope"] for r in by_user] == ["tenant:acme/user:u-42"]


def test_keys_and_tenants(cli: Cli) -> None:
    made = cli.run("tenants", "create", "acme", "--name", "Acme Corp").stdout
    assert "tenant acme (Acme Corp)" in made
    cli.run("tenants", "create", "acme", "--name", "Acme Corp")  # again: nothing changes
    refused = cli.run("tenants", "create", "acme", "--name", "Other", code=1)
    assert "exists with another name ('Acme Corp')" in refused.output

    key = as_json(cli, "keys", "create", "acme", "--name", "worker",
                  "--permission", "balances:read")
    assert cli.guard.authenticate_key(key["key_secret"]) is not None
    text = cli.run("keys", "create", "acme").stdout
    assert "secret (shown once, keep it now): alk_acme:" in text
    listed = as_json(cli, "keys", "list", "acme")["keys"]
    assert sorted(k["name"] for k in listed) == ["default", "worker"]  # one ms apart or not
    assert cli.run("keys", "revoke", key["key_id"]).stdout.startswith("revoked ")
    assert cli.guard.authenticate_key(key["key_secret"]) is None
    statuses = {k["key_id"]: k["status"] for k in as_json(cli, "keys", "list", "acme")["keys"]}
    assert statuses[key["key_id"]] == "REVOKED"
    assert sorted(statuses.values()) == ["ACTIVE", "REVOKED"]

    cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "free")
    tenants = as_json(cli, "tenants", "list")["tenants"]
    assert {"tenant_id": "acme", "name": "Acme Corp", "plan": "free",
            "status": "ACTIVE"} in tenants

    suspended = cli.run("tenants", "suspend", "acme", "--reason", "invoice unpaid").stdout
    assert "tenant acme: 1 budget(s) frozen" in suspended
    assert [t["status"] for t in as_json(cli, "tenants", "list")["tenants"]
            if t["tenant_id"] == "acme"] == ["SUSPENDED"]
    with pytest.raises(al.BudgetExceeded) as denied:
        cli.guard.reserve(al.Subject(tenant="acme"), MINI, al.usd("0.01"))
    assert denied.value.decision.reason == "BUDGET_FROZEN"
    cli.run("tenants", "resume", "acme")
    cli.guard.reserve(al.Subject(tenant="acme"), MINI, al.usd("0.01")).release()
    empty = cli.run("tenants", "suspend", "nobody", code=1)
    assert "has no open budgets to freeze" in empty.output
    assert "tenant acme: 0 budget(s) active again" in cli.run("tenants", "resume", "acme").stdout

    unsure = cli.run("tenants", "close", "acme", code=2)
    assert "cannot be undone: add --yes" in unsure.output
    assert cli.guard.balances("tenant:acme")[0].status is al.BudgetStatus.ACTIVE
    closed = cli.run("tenants", "close", "acme", "--yes", "--reason", "contract ended").stdout
    assert "tenant acme closed at " in closed
    assert "0 reservation(s) released, 1 budget(s) closed, 1 key(s) revoked" in closed
    with pytest.raises(al.Denied) as denied:
        cli.guard.reserve(al.Subject(tenant="acme"), MINI, al.usd("0.01"))
    assert denied.value.decision.reason == "TENANT_CLOSED"
    again = as_json(cli, "tenants", "close", "acme", "--yes")
    assert (again["status"], again["budgets_closed"], again["keys_revoked"]) == ("CLOSED", 0, 0)
    (listed,) = [t for t in as_json(cli, "tenants", "list")["tenants"] if t["tenant_id"] == "acme"]
    assert (listed["closed_at"], listed["status"]) == (again["closed_at"], "CLOSED")
    row = [line for line in cli.run("tenants", "list").stdout.splitlines()
           if line.startswith("acme ")]
    assert row and row[0].split()[-2:] == ["CLOSED", again["closed_at"]]


def test_sweep_reports_what_it_expired(cli: Cli) -> None:
    out = as_json(cli, "sweep", "--batch", "10")
    assert out == {"expired": 0, "batches": 1}
    assert "0 overdue reservation(s) expired" in cli.run("sweep").stdout


def test_bad_input_is_refused_clearly_and_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.run("plans", "apply", PLANS, "--tenant", "acme", "--plan", "free")
    before = as_json(cli, "balances", "acme")
    records = len(cli.guard.audit("acme", limit=100_000))

    cases: list[tuple[list[str], int, str]] = [
        (["budgets", "set", "acme", "--usd", "lots"], 2, "--usd 'lots': give dollars"),
        (["budgets", "set", "acme", "--usd", "1", "--tokens", "5"], 2,
         "give exactly one of --usd, --tokens or --credits"),
        (["budgets", "set", "acme", "--usd", "1", "--period", "fortnight"], 2, "period"),
        (["plans", "apply", PLANS, "--tenant", "acme", "--plan", "platinum"], 2,
         "no plan 'platinum'; it has free, starter, pro, enterprise"),
        (["plans", "apply", PLANS, "--tenant", "acme"], 2, "name one with --plan"),
        (["plans", "apply", str(tmp_path / "missing.yaml"), "--tenant", "acme"], 2,
         "cannot read the plans file"),
        (["audit", "acme", "--type", "denied"], 2, "unknown type 'denied'"),
        (["audit", "acme", "--since", "yesterday"], 2, "give an age (30m, 2h, 7d)"),
        (["balances", "Bad Tenant!"], 2, "is not allowed"),
        (["report", "acme", "--by", "no such"], 2, "by"),
        (["keys", "revoke", "acme:" + "0" * 32], 1, "acme:" + "0" * 32),
        (["keys", "create", "acme", "--permission", "root"], 2, "is not a permission"),
    ]
    broken = tmp_path / "plans.yaml"
    broken.write_text("plans:\n  free:\n    budgets:\n      - {usd: -5}\n")
    cases.append((["plans", "apply", str(broken), "--tenant", "acme", "--plan", "free"], 2,
                  "budgets[0]"))
    for args, code, message in cases:
        result = cli.run(*args, code=code)
        assert message in result.output, (args, result.output)
        assert result.output.count("\n") <= 3, result.output  # one clear line, no dump

    assert as_json(cli, "balances", "acme") == before
    assert len(cli.guard.audit("acme", limit=100_000)) == records
    assert cli.guard.plan_of("acme") == "free"
