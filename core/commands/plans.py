"""`allotment plans apply FILE [--tenant T --plan NAME]`: install tiers from a YAML or TOML
file and print what changed.

Idempotent: each application is signed on the audit log with a fingerprint of the plan
(`reason` ends in `sha256:<16 hex>`), so applying the same file again finds the tenant on
the same plan with the same fingerprint and changes nothing (no store write). What changed
is read, not guessed: the plan name before and after (`plan_of`), the definitions the file's
old and new tiers differ in (when the tenant moves between two tiers of the file), and every
ledger whose allocation moved (balances before and after; spend is kept).

On a server (`--server URL --key ADMIN_KEY`) the same reads and the one write go over
allotment's own routes: the plan is sent whole, so the server needs no copy of the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import click

from ..amounts import Unit
from ..guard import Guard
from ..plans import Plan
from ..scopes import tenant_name
from ._output import amount, balance_json, emit_json
from ._target import USAGE, Failure, Server, handled, opened, target_options

_FINGERPRINT = re.compile(r"sha256:([0-9a-f]{16})")
_SECTIONS = ("budgets", "quotas", "access")


@click.group(help="Install tiers (plans) from a YAML or TOML file.")
def plans() -> None:
    pass


def fingerprint(plan: Plan) -> str:
    """16 hex digits of the SHA-256 of the plan's canonical JSON."""
    text = json.dumps(plan.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fingerprint_in(reason: str | None) -> str | None:
    found = _FINGERPRINT.search(reason or "")
    return found.group(1) if found else None


class _OnGuard:
    """The reads and the one write of `plans apply`, on a guard."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def tenants(self) -> list[str]:
        return list(self.guard.tenants())

    def plan_of(self, tenant: str) -> str | None:
        return self.guard.plan_of(tenant)

    def last_fingerprint(self, tenant: str) -> str | None:
        records = self.guard.audit(tenant, types=["plan.assigned"], limit=100_000)
        return _fingerprint_in(records[-1].reason) if records else None

    def ledgers(self, tenant: str) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(r.scope, r.unit.value, r.period or ""): balance_json(r)
                for r in self.guard.balances(f"tenant:{tenant}")}

    def assign(self, tenant: str, plan: Plan, actor: str | None, reason: str) -> None:
        self.guard.assign_plan(tenant, plan, actor=actor, reason=reason)


class _OnServer:
    """The same over a server's routes (the admin key): the tenant's plan and its last
    assignment, the tenant's ledgers, and the plan sent whole to the tenant."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def tenants(self) -> list[str]:
        return [t["tenant_id"] for t in self.server.call("GET", "/v1/admin/tenants")["tenants"]]

    def _plan(self, tenant: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.server.call("GET", f"/v1/admin/tenants/{tenant}/plan")
        return answer

    def plan_of(self, tenant: str) -> str | None:
        return self._plan(tenant).get("plan")

    def last_fingerprint(self, tenant: str) -> str | None:
        return _fingerprint_in(self._plan(tenant).get("reason"))

    def ledgers(self, tenant: str) -> dict[tuple[str, str, str], dict[str, Any]]:
        rows = self.server.call("GET", "/v1/admin/budgets", params={"tenant_id": tenant})
        return {(r["scope"], r["unit"], r.get("period") or ""): {
            "allocated": r["allocated"]["amount"], "spent": r["spent"]["amount"]}
            for r in rows["ledgers"]}

    def assign(self, tenant: str, plan: Plan, actor: str | None, reason: str) -> None:
        body: dict[str, Any] = {"plan": plan.model_dump(mode="json", exclude_defaults=True),
                                "reason": reason}
        if actor is not None:
            body["actor"] = actor
        self.server.call("PUT", f"/v1/admin/tenants/{tenant}/plan", body=body)


_Side = _OnGuard | _OnServer


def _entries(plan: Plan) -> dict[str, str]:
    """Each budget, quota and access rule of a plan, as `what → its settings`."""
    out: dict[str, str] = {}
    for section in _SECTIONS:
        for spec in getattr(plan, section):
            data = spec.model_dump(mode="json", exclude_defaults=True)
            if section == "budgets":
                unit = next(k for k in ("usd", "tokens", "credits", "amount") if k in data)
                name = [unit if unit != "amount" else str(data.get("unit")), data.pop(unit)]
                value = f"{name[1]}"
                key = " ".join(str(p) for p in (
                    "budget", name[0], data.pop("period", None) or "", "per " + data.pop(
                        "per") if "per" in data else "") if p)
            elif section == "quotas":
                kind = next(k for k in ("calls", "runs", "concurrent") if k in data)
                value = str(data.pop(kind))
                key = " ".join(p for p in ("quota", kind, data.pop("window", "") or "",
                                           data.pop("action_kind", "")) if p)
            else:
                value, key = "", "access"
            data.pop("unit", None)
            scope = data.pop("scope", "") or "(tenant)"
            rest = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(data.items()))
            out[f"{key} at {scope}"] = ", ".join(p for p in (value, rest) if p)
    return out


def _plan_diff(old: Plan | None, new: Plan) -> dict[str, list[str]]:
    before, after = (_entries(old) if old else {}), _entries(new)
    return {
        "added": [f"{k}: {after[k]}" for k in after if k not in before],
        "removed": [f"{k}: {before[k]}" for k in before if k not in after],
        "changed": [f"{k}: {before[k]} -> {after[k]}" for k in after
                    if k in before and before[k] != after[k]]}


def _ledger_diff(before: dict[tuple[str, str, str], dict[str, Any]],
                 after: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    moved = []
    for key in sorted(set(before) | set(after), key=lambda k: (k[0].split("/"), k[1], k[2])):
        was, now = before.get(key), after.get(key)
        if was is not None and now is not None and was["allocated"] == now["allocated"]:
            continue
        moved.append({"scope": key[0], "unit": key[1], "period": key[2] or None,
                      "allocated_before": None if was is None else was["allocated"],
                      "allocated_after": None if now is None else now["allocated"],
                      "spent": (now or was or {}).get("spent", 0)})
    return moved


def apply_one(side: _Side, tenant: str, plan: Plan, every: dict[str, Plan],
              actor: str | None, reason: str | None, force: bool = False) -> dict[str, Any]:
    """Assign `plan` to `tenant` unless it is on it already with this fingerprint; what
    changed, as a dict of plain values."""
    mark = fingerprint(plan)
    current = side.plan_of(tenant)
    result: dict[str, Any] = {"tenant": tenant, "plan_before": current, "plan_after": plan.name,
                              "fingerprint": mark}
    if not force and current == plan.name and side.last_fingerprint(tenant) == mark:
        return {**result, "changed": False, "definitions": _plan_diff(plan, plan),
                "ledgers": []}
    before = side.ledgers(tenant)
    signed = f"plans apply {plan.name} sha256:{mark}"
    side.assign(tenant, plan, actor, signed if reason is None else f"{reason} ({signed})")
    if current == plan.name:  # the file's tier was edited: what it was is not on record
        diff: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
    else:
        diff = _plan_diff(every.get(current) if current else None, plan)
    return {**result, "changed": True, "definitions": diff,
            "ledgers": _ledger_diff(before, side.ledgers(tenant)),
            "reinstalled": current == plan.name}


def _money(unit: str, value: int | None) -> str:
    return "-" if value is None else amount(Unit(unit), value)


def _print(result: dict[str, Any]) -> None:
    name = result["tenant"]
    if not result["changed"]:
        click.echo(f"{name}: unchanged (plan {result['plan_after']}, "
                   f"sha256:{result['fingerprint']})")
        return
    if result.get("reinstalled"):
        click.echo(f"{name}: plan {result['plan_after']} re-installed (the file's "
                   f"{result['plan_after']} differs from what was applied)")
    else:
        click.echo(f"{name}: plan {result['plan_before'] or '(none)'} -> "
                   f"{result['plan_after']}")
    for sign, part in (("+", "added"), ("-", "removed"), ("~", "changed")):
        for line in result["definitions"][part]:
            click.echo(f"  {sign} {line}")
    for row in result["ledgers"]:
        click.echo(f"  ledger {row['scope']} {row['unit']} {row['period'] or '-'}: allocated "
                   f"{_money(row['unit'], row['allocated_before'])} -> "
                   f"{_money(row['unit'], row['allocated_after'])} (spent "
                   f"{_money(row['unit'], row['spent'])}, kept)")


@plans.command("apply", help="Install plans from FILE (YAML or TOML, a top-level `plans:` "
                             "mapping). With --tenant: put that tenant on --plan NAME (the "
                             "file's only plan by default). Without: re-install, on every "
                             "tenant on one of the file's plans, that plan as the file has it. "
                             "Prints what changed; applying the same file twice changes "
                             "nothing.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tenant", default=None, help="The tenant to put on --plan.")
@click.option("--plan", "plan_name", default=None, help="The plan (tier) for --tenant.")
@click.option("--actor", default=None, help="Who applies (kept on the audit records).")
@click.option("--reason", default=None, help="Why (kept on the audit records).")
@click.option("--force", is_flag=True, help="Install even when the tenant is on this plan "
                                            "as the file has it (undoes changes made by hand "
                                            "to the plan's budgets, quotas and rules).")
@target_options
@handled
def apply(file: Path, tenant: str | None, plan_name: str | None, actor: str | None,
          reason: str | None, force: bool, store: str | None, server: str | None,
          key: str | None, as_json: bool) -> None:
    every = Plan.load_all(file)  # the whole file is checked before anything changes
    if plan_name is not None and tenant is None:
        raise Failure("--plan needs --tenant (which tenant to put on it)", USAGE)
    if tenant is not None:
        tenant = tenant_name(tenant, "--tenant")
        if plan_name is None:
            if len(every) != 1:
                raise Failure(f"{file} has {len(every)} plans ({', '.join(every)}): name one "
                              "with --plan", USAGE)
            plan_name = next(iter(every))
        if plan_name not in every:
            raise Failure(f"{file}: no plan {plan_name!r}; it has {', '.join(every)}", USAGE)
    with opened(store, server, key, as_json) as target:
        side: _Side
        if target.guard is not None:
            side = _OnGuard(target.guard)
        else:
            assert target.server is not None
            side = _OnServer(target.server)
        if tenant is not None:
            assert plan_name is not None
            pairs = [(tenant, every[plan_name])]
        else:
            pairs = []
            for name in side.tenants():
                current = side.plan_of(name)
                if current in every:
                    pairs.append((name, every[current]))
        results = []
        for i, (name, plan) in enumerate(pairs, 1):
            result = apply_one(side, name, plan, every, actor, reason, force)
            results.append(result)
            if not as_json:
                if len(pairs) > 1:
                    click.echo(f"[{i}/{len(pairs)}] ", nl=False)
                _print(result)
        if as_json:
            emit_json({"applied": results})
        elif not pairs:
            click.echo(f"no tenant is on a plan of {file}; put one on with --tenant T --plan "
                       "NAME")
