"""Output of the operator commands: JSON for scripts (exact integers, never floats), aligned
text tables and a usage bar per budget for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from ..amounts import Unit, format_amount
from ..models import Balance

BAR_WIDTH = 20


def emit_json(data: Any) -> None:
    """One JSON document on stdout (amounts stay integers in their unit's smallest step)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers-looking cells are right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            numeric = i > 0 and cell[:1] in "$-0123456789" and cell != "-"
            out.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]),
                      *(line(r) for r in rows)])


def bar(used: int, allocated: int, width: int = BAR_WIDTH) -> str:
    """`[#######.............]  35%`: spent plus reserved (and debt) over the allocation,
    in integers; full and marked `!` past it."""
    if allocated <= 0:
        return "[" + ("!" if used > 0 else " ") * width + "]    -"
    filled = min(width, used * width // allocated)
    percent = used * 100 // allocated
    mark = "!" if used > allocated else "#"
    return f"[{mark * filled}{'.' * (width - filled)}] {percent:3d}%"


def amount(unit: Unit, value: int) -> str:
    """An amount as people read it: `$1.50`, `4,000 tokens`."""
    return format_amount(unit, value)


def balance_json(row: Balance) -> dict[str, Any]:
    """A ledger for scripts: exact integers in the unit's smallest step."""
    return {"scope": row.scope, "unit": row.unit.value, "period": row.period,
            "bucket": row.bucket, "allocated": row.allocated, "spent": row.spent,
            "reserved": row.reserved, "debt": row.debt, "remaining": row.remaining,
            "status": row.status.value, "is_over_limit": row.is_over_limit}
