"""A child budget larger than its parent's: allowed (the parent refuses first, so it does no
harm), but almost always a mistake worth a word. `set_budget` and `assign_plan` warn with
`BudgetHierarchyWarning` after the change; nothing stored changes and the call never fails.

The parent of a budget is the nearest scope above it with a budget in the same unit and
period; a per-dimension template's parent is its own scope's budget (or, failing that, the
nearest above). Allocations of the current bucket are compared, as `balances()` shows them.
"""

from __future__ import annotations

from collections.abc import Iterable

from .amounts import Unit, format_amount
from .models import Balance
from .scopes import parse_scope
from .stores.operations import SetBudget

__all__ = ["BudgetHierarchyWarning", "larger_than_parent"]

_Key = tuple[str, Unit, str | None]  # scope, unit, period


class BudgetHierarchyWarning(UserWarning):
    """A child budget is larger than its parent's in the same unit and period: its extra
    room can never be spent, since the parent refuses first."""


def larger_than_parent(balances: Iterable[Balance], changed: Iterable[SetBudget]) -> list[str]:
    """What to warn about after `changed` budgets were set, given the tenant's balances
    then: each changed budget larger than its parent, and each child now larger than a
    changed parent (dimension ledgers are left to their templates)."""
    standard: dict[_Key, int] = {}
    for row in balances:
        if parse_scope(row.scope).dimension is None:
            standard[(row.scope, row.unit, row.period)] = row.allocated
    found: list[str] = []
    for op in changed:
        period = None if op.period is None else op.period.value
        own = (op.scope, op.unit, period)
        if op.per is not None:
            parent = own if own in standard else _parent(standard, own)
            if parent is not None and op.limit > standard[parent]:
                found.append(_message(f"every {op.per} of {op.scope}", op.limit, parent,
                                      standard[parent]))
            continue
        if own not in standard:
            continue  # not readable here (removed since): nothing to compare
        parent = _parent(standard, own)
        if parent is not None and standard[own] > standard[parent]:
            found.append(_message(op.scope, standard[own], parent, standard[parent]))
        for child, allocated in standard.items():
            if (child[1:] == own[1:] and child[0].startswith(op.scope + "/")
                    and _parent(standard, child) == own and allocated > standard[own]):
                found.append(_message(child[0], allocated, own, standard[own]))
    return list(dict.fromkeys(found))


def _parent(standard: dict[_Key, int], key: _Key) -> _Key | None:
    """The nearest scope above `key`'s with a budget in the same unit and period."""
    scope, unit, period = key
    while "/" in scope:
        scope = scope.rsplit("/", 1)[0]
        if (scope, unit, period) in standard:
            return (scope, unit, period)
    return None


def _message(child: str, allocated: int, parent: _Key, parent_allocated: int) -> str:
    scope, unit, period = parent
    per = f" per {period}" if period else ""
    return (f"{child} is allowed {format_amount(unit, allocated)}{per}, more than its parent "
            f"{scope} ({format_amount(unit, parent_allocated)}{per}): the parent refuses "
            "first, so the difference can never be spent. The budget is stored as set; "
            "lower it or raise the parent's if that is not what you meant.")
