"""The installed `allotment` console script, run as an operator's shell would run it, on a
Redis store; and `--help` on every command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from allotment.cli import command
from allotment.clock import system_ms

from support.cli import PLANS
from support.stores import make_store

SCRIPT = Path(sys.executable).with_name("allotment")


def allotment(*args: str, store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "ALLOTMENT_STORE": store})


def test_the_installed_script_applies_tiers_and_fails_with_meaningful_codes() -> None:
    store = make_store("redis", system_ms)
    url = store.url
    try:
        applied = allotment("plans", "apply", PLANS, "--tenant", "acme", "--plan", "starter",
                            store=url)
        assert applied.returncode == 0, applied.stderr
        assert "acme: plan (none) -> starter" in applied.stdout
        again = allotment("plans", "apply", PLANS, "--tenant", "acme", "--plan", "starter",
                          store=url)
        assert "acme: unchanged (plan starter" in again.stdout
        shown = allotment("balances", "acme", "--json", store=url)
        assert shown.returncode == 0, shown.stderr
        (row,) = json.loads(shown.stdout)["balances"]
        assert (row["scope"], row["period"], row["allocated"]) == ("tenant:acme", "month",
                                                                     5_000_000_000)
        bad = allotment("budgets", "set", "acme", "--usd", "ten", store=url)
        assert (bad.returncode, bad.stdout) == (2, "")
        assert bad.stderr.strip() == ("allotment: --usd 'ten': give dollars as a decimal "
                                      "number, e.g. 25 or 0.50")
        usage = allotment("balances", store=url)
        assert usage.returncode == 2 and "Missing argument 'TENANT'" in usage.stderr
        down = allotment("balances", "acme", store="redis://127.0.0.1:9/0")
        assert down.returncode == 3 and "redis unreachable" in down.stderr
        assert "Traceback" not in bad.stderr + usage.stderr + down.stderr
    finally:
        store.close()


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, sub in group.commands.items():
        found.append((*path, name))
        if isinstance(sub, click.Group):
            found += _commands(sub, (*path, name))
    return found


def test_every_command_has_help() -> None:
    root: Any = command()
    every = _commands(root)
    assert {("plans", "apply"), ("budgets", "set"), ("budgets", "list"), ("balances",),
            ("audit",), ("report",), ("keys", "create"), ("keys", "list"), ("keys", "revoke"),
            ("tenants", "create"), ("tenants", "list"), ("tenants", "suspend"),
            ("tenants", "close"), ("sweep",), ("serve",)} <= set(every)
    for path in every:
        result = CliRunner().invoke(root, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith("Usage: ") and "Options:" in result.output, path
        leaf = not isinstance(root.get_command(None, path[0]), click.Group) or len(path) > 1
        if leaf and path != ("serve",):
            assert "--json" in result.output and "--store" in result.output, path


def test_the_readme_cli_examples_run(tmp_path: Path) -> None:
    """Every `allotment` line of the README's first CLI block, in order, on a fresh Redis
    (a file it writes goes to a temporary folder)."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Operators' CLI", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    store = make_store("redis", system_ms)
    try:
        lines = [line for line in block.group(1).splitlines() if line.startswith("allotment ")]
        assert len(lines) >= 17
        for line in lines:
            args = [str(tmp_path / a) if a.endswith(".csv") else a
                    for a in shlex.split(line, comments=True)[1:]]
            done = allotment(*args, store=store.url)
            assert done.returncode == 0, (line, done.stderr)
        assert (tmp_path / "usage.csv").read_text().startswith("tenant,period,scope,model")
    finally:
        store.close()


def test_a_memory_url_warns_that_it_holds_nothing_across_commands() -> None:
    result = CliRunner().invoke(command(), ["balances", "acme", "--store", "memory://"])
    assert result.exit_code == 0, result.output
    assert "memory:// is empty in every new process" in result.output
    assert "no budgets for tenant acme" in result.stdout
    missing = CliRunner().invoke(command(), ["balances", "acme"], env={"ALLOTMENT_STORE": ""})
    assert missing.exit_code == 2 and "no store: give --store URL" in missing.output
