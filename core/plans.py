"""Plans (tiers): named bundles of budgets, quotas and access rules written relative to a
tenant root, loaded from YAML, TOML or a dict, and installed with `guard.assign_plan`.

    plans:
      starter:
        budgets:
          - {usd: 50, period: month, degrade: [{below: 0.2, max_tokens: 512}]}
          - {usd: 2, per: session}
        quotas:
          - {runs: 50, window: day}
        access:
          - {max_tokens_per_call: 1024}

A `scope` inside a plan is relative: "" (the default) is the tenant itself,
"workspace:production" is `tenant:<name>/workspace:production`.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidRequest
from .policy import Degrade
from .validation import Model


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


class Plan(Model):
    name: str
    mode: Literal["enforce", "shadow"] | None = None
    budgets: tuple[BudgetSpec, ...] = ()
    quotas: tuple[QuotaSpec, ...] = ()
    access: tuple[AccessSpec, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> Plan:
        """One plan from its mapping (`name` may come from the mapping itself)."""
        if not isinstance(data, dict):
            raise InvalidRequest(f"plan: expected a mapping, got {type(data).__name__}")
        return cls(**{"name": name, **data} if name is not None else data)

    @classmethod
    def load_all(cls, path: str | Path) -> dict[str, Plan]:
        """Every plan under the `plans:` key of a YAML (.yaml, .yml) or TOML (.toml) file."""
        document = _read(Path(path))
        plans = document.get("plans") if isinstance(document, dict) else None
        if not isinstance(plans, dict):
            raise InvalidRequest(f"{path}: expected a top-level 'plans:' mapping of name to plan")
        return {name: cls.from_dict(body or {}, name) for name, body in plans.items()}

    @classmethod
    def load(cls, path: str | Path, name: str) -> Plan:
        """The plan `name` from a YAML or TOML file of plans."""
        plans = cls.load_all(path)
        if name not in plans:
            raise InvalidRequest(f"{path}: no plan {name!r}; it has {sorted(plans)}")
        return plans[name]


def relative_scope(tenant: str, scope: str) -> str:
    return f"tenant:{tenant}" + (f"/{scope}" if scope else "")


def _read(path: Path) -> Any:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    if path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on Python 3.10 only
            import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
        return tomllib.loads(text)
    raise InvalidRequest(f"{path}: plans load from .yaml, .yml or .toml files")
