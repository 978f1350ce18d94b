"""The operators' commands of the `allotment` console script, one module each; `register`
adds them to the command group. The core never imports this package."""

from __future__ import annotations

from typing import Any


def register(cli: Any) -> None:
    """Add every operator command to the `allotment` group."""
    from .audit import audit
    from .balances import balances
    from .budgets import budgets
    from .keys import keys
    from .plans import plans
    from .report import report
    from .sweep import sweep
    from .tenants import tenants
    from .usage import usage

    for command in (plans, budgets, balances, audit, report, usage, keys, tenants, sweep):
        cli.add_command(command)
