"""`allotment usage export` on each store: the rows add up to the ledgers, the same bytes
twice, CSV and JSON Lines, a file with progress, bad input refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import allotment as al
from allotment.usage import read_usage

from support.cli import Cli

GPT = al.Action("llm.completion", "openai:gpt-4o")
MINI = al.Action("llm.completion", "openai:gpt-4o-mini")


def test_usage_export_adds_up_to_the_ledgers(cli: Cli, tmp_path: Path) -> None:
    cli.run("budgets", "set", "acme", "--usd", "100")
    cli.run("budgets", "set", "globex", "--usd", "100")
    prod = al.Subject(tenant="acme", workspace="prod", dimensions={"run": "r1"})
    for action, cost, tokens in ((GPT, "0.031", 1200), (MINI, "0.002", 300),
                                 (GPT, "0.5", 9000)):
        cli.guard.reserve(prod, action, al.usd(1)).commit(
            al.usd(cost), usage=al.TokenUsage(input_tokens=tokens, output_tokens=10))
    cli.guard.reserve(al.Subject(tenant="globex"), MINI, al.usd(1)).commit(al.usd("0.25"))

    csv_text = cli.run("usage", "export", "--tenant", "acme").stdout
    rows = list(read_usage(io.StringIO(csv_text)))
    assert {(r.scope, r.model) for r in rows} == {("tenant:acme/workspace:prod", "openai:gpt-4o"),
                                                  ("tenant:acme/workspace:prod",
                                                   "openai:gpt-4o-mini")}
    (ledger,) = cli.guard.balances("tenant:acme", include_children=False)
    assert sum(r.spend for r in rows if r.unit is al.Unit.USD_MICROCENTS) == ledger.spent
    gpt = next(r for r in rows if r.model == "openai:gpt-4o")
    assert (gpt.calls, gpt.input_tokens) == (2, 10_200)
    assert cli.run("usage", "export", "--tenant", "acme").stdout == csv_text  # same bytes

    lines = cli.run("usage", "export", "--json").stdout.splitlines()
    assert [json.loads(line)["tenant"] for line in lines] == ["acme", "acme", "globex"]

    out = tmp_path / "usage.csv"
    written = cli.run("usage", "export", "--format", "csv", "--output", str(out))
    assert "exporting acme ..." in written.output and "exporting globex ..." in written.output
    assert "3 row(s) written to" in written.output
    assert len(out.read_text().splitlines()) == 4  # the header and three rows

    bad = cli.run("usage", "export", "--period", "November", code=2)
    assert "period" in bad.output and "Traceback" not in bad.output
