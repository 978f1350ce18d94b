"""Values as the scripts read them: amounts packed as text, subjects and actions as JSON, the
flat arguments of reserve, and one payload builder per kind of definition."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ...amounts import Units
from ...models import Action
from ...periods import Period
from ...scopes import Subject
from .. import operations as ops


def value(enum: Any) -> Any:
    """An optional enum as the scripts take it: its value, or None."""
    return None if enum is None else enum.value


def pairs(units: Units) -> list[list[Any]]:
    """Amounts as [unit, amount] pairs: how JSON documents carry them."""
    return [[unit.value, amount] for unit, amount in units]


def period(chosen: Period | None) -> str:
    """A period by name; "" for none (a budget that never resets)."""
    return "" if chosen is None else chosen.value


def period_choice(chosen: Any) -> str:
    """A period, or "*" to let the script pick the budget's only one."""
    return "*" if chosen is ops.AUTO else period(chosen)


def subject(who: Subject) -> str:
    """A subject as JSON, with its scope path (reservations and audit keep it)."""
    return json.dumps({**who.model_dump(exclude_defaults=True),
                       "scope_path": who.scope_path}, separators=(",", ":"))


def action(what: Action) -> dict[str, Any]:
    """An action as a JSON object."""
    return {"kind": what.kind, "name": what.name, "tags": list(what.tags)}


def packed(units: Units) -> str:
    """Amounts as "UNIT=amount,...": how flat arguments and reservations carry them."""
    return ",".join(f"{unit.value}={amount}" for unit, amount in units)


def compact_json(data: Any) -> str:
    """JSON without spaces: fewer bytes on every call."""
    return json.dumps(data, separators=(",", ":"))


_ENCODED: dict[int, tuple[Any, str]] = {}
"""Subjects and actions already encoded, by identity (callers reuse them call after call)."""


def _encoded(data: Subject | Action, encode: Callable[[Any], str]) -> str:
    """`encode(data)`, remembered while the same object comes back (bounded)."""
    kept = _ENCODED.get(id(data))
    if kept is not None and kept[0] is data:
        return kept[1]
    text = encode(data)
    if len(_ENCODED) >= 512:
        _ENCODED.clear()
    _ENCODED[id(data)] = (data, text)
    return text


def _action_json(what: Action) -> str:
    return compact_json(action(what))


def flat_reserve(op: ops.Reserve) -> list[Any]:
    """Arguments 8 onwards of reserve (see flat_reserve in common.lua)."""
    elastic = "" if op.elastic is None else compact_json({
        "rates": pairs(op.elastic.rates), "max_tokens": op.elastic.max_tokens,
        "floor": op.elastic.floor})
    plan = "" if op.default_plan is None else compact_json(definition(op.default_plan))
    what = op.action
    return [_encoded(op.subject, subject), op.subject.scope_path, what.kind, what.name,
            _encoded(what, _action_json), packed(op.estimate), op.ttl_ms, op.grace_ms,
            op.max_extensions, value(op.overage_policy) or "",
            ("d" if op.dry_run else "") + ("s" if op.shadow else ""),
            compact_json([list(p) for p in op.dimensions]) if op.dimensions else "", elastic,
            plan, *op.scopes]


def _set_budget(op: ops.SetBudget) -> dict[str, Any]:
    return {"op": "set_budget", "scope": op.scope, "unit": op.unit.value,
            "period": period(op.period), "per": op.per or "", "limit": op.limit,
            "od": op.overdraft_limit, "policy": op.overage_policy.value,
            "alerts": list(op.alerts), "degrade": [rule.model_dump() for rule in op.degrade],
            "required": op.required}


def _remove_budget(op: ops.RemoveBudget) -> dict[str, Any]:
    return {"op": "remove_budget", "scope": op.scope, "unit": op.unit.value,
            "period": period(op.period), "per": op.per or ""}


def _set_quota(op: ops.SetQuota) -> dict[str, Any]:
    rule = op.rule
    return {"op": "set_quota", "scope": rule.scope, "kind": rule.kind.value,
            "limit": rule.limit, "window": period(rule.window),
            "action_kind": rule.action_kind, "remove": op.remove}


def _set_access(op: ops.SetAccess) -> dict[str, Any]:
    access = None if op.rule is None else {
        "models_allow": list(op.rule.models_allow), "models_deny": list(op.rule.models_deny),
        "tools_allow": list(op.rule.tools_allow), "tools_deny": list(op.rule.tools_deny),
        "max_tokens_per_call": op.rule.max_tokens_per_call,
        "required_dimensions": list(op.rule.required_dimensions)}
    return {"op": "set_access", "scope": op.scope, "rule": access}


def _set_mode(op: ops.SetMode) -> dict[str, Any]:
    return {"op": "set_mode", "mode": op.mode}


def _set_status(op: ops.SetStatus) -> dict[str, Any]:
    return {"op": "set_status", "scope": op.scope, "status": op.status.value,
            "unit": value(op.unit)}


def _set_budget_terms(op: ops.SetBudgetTerms) -> dict[str, Any]:
    """Only the terms that change: an absent one is kept."""
    changed: dict[str, Any] = {"op": "set_budget_terms", "scope": op.scope,
                               "unit": op.unit.value}
    if op.overdraft_limit is not None:
        changed["od"] = op.overdraft_limit
    if op.overage_policy is not None:
        changed["policy"] = op.overage_policy.value
    return changed


def _apply_plan(op: ops.ApplyPlan) -> dict[str, Any]:
    return {"op": "apply_plan", "name": op.name, "mode": op.mode,
            "definitions": [definition(d) for d in op.definitions]}


DEFINITIONS: dict[type[ops.Op[Any]], Callable[[Any], dict[str, Any]]] = {
    ops.SetBudget: _set_budget, ops.RemoveBudget: _remove_budget, ops.SetQuota: _set_quota,
    ops.SetAccess: _set_access, ops.SetMode: _set_mode, ops.SetStatus: _set_status,
    ops.SetBudgetTerms: _set_budget_terms, ops.ApplyPlan: _apply_plan}
"""The admin script's document for each kind of definition."""


def definition(op: ops.Op[Any]) -> dict[str, Any]:
    """The admin document of a definition (a plan's definitions are nested in its own)."""
    return signed(op, DEFINITIONS[type(op)](op))


def signed(op: Any, document: dict[str, Any]) -> dict[str, Any]:
    """An admin document with who made the change and why, when given."""
    for name in ops.ADMIN_FIELDS:
        value = getattr(op, name)
        if value is not None:
            document[name] = value
    return document


__all__ = ["action", "compact_json", "definition", "flat_reserve", "packed", "pairs", "period",
           "period_choice", "signed", "subject", "value"]
