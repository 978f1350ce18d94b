"""Plans (tiers): named bundles of budgets, quotas and access rules written relative to a
tenant root, loaded from YAML, TOML or a dict, and installed with `guard.assign_plan`.

    plans:
      starter:
        budgets:
          - {usd: 50, period: month, degrade: [{below: 0.2, max_tokens: 512}]}
          - {usd: 2, per: session, required: true}   # every call names its session
        quotas:
          - {runs: 50, window: day}
        access:
          - {max_tokens_per_call: 1024, required_dimensions: [user]}

A `scope` inside a plan is relative: "" (the default) is the tenant itself,
"workspace:production" is `tenant:<name>/workspace:production`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from .budgets import set_access_op, set_budget_op, set_quota_op
from .errors import InvalidRequest
from .policy import Degrade
from .stores.operations import SetAccess, SetBudget, SetQuota
from .validation import MAX_LIST, MAX_NAME, Model, check_mapping, check_text, shown


class BudgetSpec(Model):
    scope: str = ""
    usd: Decimal | None = None
    tokens: int | None = None
    credits: int | None = None
    amount: int | None = None
    unit: str | None = None
    period: str | None = None
    per: str | None = None
    overdraft_limit: Decimal | int = 0
    overage_policy: str = "ALLOW_IF_AVAILABLE"
    degrade: tuple[Degrade, ...] = ()
    alerts: tuple[float, ...] | None = None
    required: bool = False


class QuotaSpec(Model):
    scope: str = ""
    calls: int | None = None
    runs: int | None = None
    concurrent: int | None = None
    window: str | None = None
    action_kind: str = "*"


class AccessSpec(Model):
    scope: str = ""
    models_allow: tuple[str, ...] | None = None
    models_deny: tuple[str, ...] | None = None
    tools_allow: tuple[str, ...] | None = None
    tools_deny: tuple[str, ...] | None = None
    max_tokens_per_call: int | None = None
    required_dimensions: tuple[str, ...] | None = None


class Plan(Model):
    """A tier: at most 64 budgets, quotas and access rules in all, checked when the plan is
    built exactly as `assign_plan` installs them, so a plan that loads can be assigned."""

    name: str
    mode: Literal["enforce", "shadow"] | None = None
    budgets: tuple[BudgetSpec, ...] = ()
    quotas: tuple[QuotaSpec, ...] = ()
    access: tuple[AccessSpec, ...] = ()

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> str:
        return check_text(value, "name", MAX_NAME, printable=True)

    @model_validator(mode="after")
    def _installable(self) -> Plan:
        count = len(self.budgets) + len(self.quotas) + len(self.access)
        if count > MAX_LIST:
            raise ValueError(f"at most {MAX_LIST} budgets, quotas and access rules in all, "
                             f"got {count}")
        definitions(self, "tenant")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> Plan:
        """One plan from its mapping (`name` may come from the mapping itself)."""
        body = check_mapping(data, "plan" if name is None else f"plan {shown(name)}")
        return cls(**{"name": name, **body} if name is not None else body)

    @classmethod
    def load_all(cls, path: str | Path) -> dict[str, Plan]:
        """Every plan under the `plans:` key of a YAML (.yaml, .yml) or TOML (.toml) file."""
        document = _read(Path(path))
        plans = document.get("plans") if isinstance(document, dict) else None
        if not isinstance(plans, dict):
            raise InvalidRequest(f"{path}: expected a top-level 'plans:' mapping of name to plan")
        check_mapping(plans, f"{path}: plans")
        return {name: cls.from_dict(body or {}, name) for name, body in plans.items()}

    @classmethod
    def load(cls, path: str | Path, name: str) -> Plan:
        """The plan `name` from a YAML or TOML file of plans."""
        name = check_text(name, "name", MAX_NAME)
        plans = cls.load_all(path)
        if name not in plans:
            raise InvalidRequest(f"{path}: no plan {name!r}; it has {sorted(plans)}")
        return plans[name]


Definition = SetBudget | SetQuota | SetAccess


def definitions(plan: Plan, tenant: str) -> tuple[Definition, ...]:
    """The plan's definitions for `tenant`, each built by the call that sets it alone (an
    error names the entry: `budgets[1]: ...`)."""
    made: list[Definition] = []
    for i, b in enumerate(plan.budgets):
        with _entry(f"budgets[{i}]"):
            made.append(set_budget_op(
                relative_scope(tenant, b.scope), usd=b.usd, tokens=b.tokens,
                credits=b.credits, amount=b.amount, unit=b.unit, period=b.period, per=b.per,
                overdraft_limit=b.overdraft_limit, overage_policy=b.overage_policy,
                degrade=b.degrade, alerts=b.alerts, required=b.required))
    for i, q in enumerate(plan.quotas):
        with _entry(f"quotas[{i}]"):
            made.append(set_quota_op(
                relative_scope(tenant, q.scope), calls=q.calls, runs=q.runs,
                concurrent=q.concurrent, window=q.window, action_kind=q.action_kind))
    for i, a in enumerate(plan.access):
        with _entry(f"access[{i}]"):
            made.append(set_access_op(
                relative_scope(tenant, a.scope), models_allow=a.models_allow,
                models_deny=a.models_deny, tools_allow=a.tools_allow,
                tools_deny=a.tools_deny, max_tokens_per_call=a.max_tokens_per_call,
                required_dimensions=a.required_dimensions))
    return tuple(made)


@contextmanager
def _entry(where: str) -> Iterator[None]:
    try:
        yield
    except InvalidRequest as error:
        raise InvalidRequest(f"{where}: {error}") from None


def relative_scope(tenant: str, scope: str) -> str:
    return f"tenant:{tenant}" + (f"/{scope}" if scope else "")


def _read(path: Path) -> Any:
    """The document of a plans file; a file that is not valid YAML or TOML is a bad request
    (the message says where the parser stopped), never a parser's own exception."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"{path}: cannot read the plans file ({error})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InvalidRequest(f"{path}: not a valid YAML plans file: "
                                 f"{shown(str(error))}") from None
    if path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on Python 3.10 only
            import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise InvalidRequest(f"{path}: not a valid TOML plans file: {error}") from None
    raise InvalidRequest(f"{path}: plans load from .yaml, .yml or .toml files")
