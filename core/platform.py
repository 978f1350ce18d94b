"""The platform operator's calls: a tenant's mode and plan, closing a tenant, the list of
tenants, and the sweep across tenants.
They are for the unrestricted guard only; a tenant handle never offers them (a tenant must
not switch itself to shadow mode or onto another tier)."""

from __future__ import annotations

from . import arguments as arg
from .budgets import checked_hierarchy
from .calls import Runner, followed_twins, twins
from .errors import InvalidRequest
from .plans import Plan, definitions
from .scopes import tenant_name
from .stores import operations as ops
from .validation import check_int


def set_mode_op(tenant: str, mode: str | None, *,
                actor: str | None = None, reason: str | None = None
                ) -> ops.SetMode:
    """"shadow" (never deny, record what would have been denied), "enforce", or None to
    follow the guard's own mode."""
    return ops.SetMode(tenant=tenant_name(tenant),
                       mode=arg.mode(mode, allow_none=True), **arg.signed(actor, reason))


def assign_plan_op(tenant: str, plan: Plan, *, actor: str | None = None, reason: str | None = None
                   ) -> ops.ApplyPlan:
    """Install `plan` for `tenant` in one step. Re-assigning (an upgrade) changes limits
    in place and keeps the period's spend; what the old plan had and the new one lacks
    is removed. `actor=` and `reason=` go on every audit record the plan writes."""
    if not isinstance(plan, Plan):
        raise InvalidRequest(f"plan: expected an al.Plan, got {plan!r}")
    tenant = tenant_name(tenant)
    signed = arg.signed(actor, reason)
    return ops.ApplyPlan(tenant=tenant, name=plan.name,
                         definitions=definitions(plan, tenant), mode=plan.mode, **signed)


def close_tenant_op(tenant: str, *, actor: str | None = None, reason: str | None = None
                    ) -> ops.CloseTenant:
    """Close `tenant` for good, in one atomic step: open reservations released, budgets
    closed, API keys revoked, its webhooks disabled. Afterwards reads still work; every
    reserve is denied (`TENANT_CLOSED`) and every other change refused (`TenantClosed`).
    There is no reopening. Returns what it did (`TenantClosure`)."""
    return ops.CloseTenant(tenant=tenant_name(tenant), **arg.signed(actor, reason))


def tenants_op() -> ops.Tenants:
    """Every tenant the store holds anything for (a definition, a plan, a reservation, a
    denial, ...), sorted by name; read from the store's own registry, not from audit
    records, so it does not depend on their retention."""
    return ops.Tenants(tenant="")


def sweep_op(limit: int = 1_000) -> ops.Sweep:
    """Expire up to `limit` overdue reservations now, across tenants; returns how many
    expired."""
    return ops.Sweep(tenant="", limit=check_int(limit, "limit", 1))


class PlatformCalls(Runner):
    """What only the platform operator may do: modes, plans, closing a tenant, sweeping
    every tenant."""

    set_mode, aset_mode = twins(set_mode_op)
    assign_plan, aassign_plan = followed_twins(assign_plan_op, checked_hierarchy)
    close_tenant, aclose_tenant = twins(close_tenant_op)
    tenants, atenants = twins(tenants_op)
    sweep, asweep = twins(sweep_op)
