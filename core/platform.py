"""The platform operator's calls: a tenant's mode and plan, suspending, resuming and closing a
tenant, the list of tenants, the sweep across tenants, and the claims that make a bulk action
idempotent.
They are for the unrestricted guard only; a tenant handle never offers them (a tenant must
not switch itself to shadow mode or onto another tier)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from . import arguments as arg
from .budgets import checked_hierarchy
from .calls import Flow, Pause, Runner, flow_twins, followed_twins, twins
from .errors import InvalidRequest
from .models import OnceClaim
from .plans import Plan, definitions
from .scopes import tenant_name
from .stores import operations as ops
from .validation import check_idempotency_key, check_int, check_name, check_text

ONCE_TTL_S = 900
"""How long a bulk action's answer is replayed (the Cycles reference's 15 minutes)."""


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


def suspend_tenant_op(tenant: str, *, actor: str | None = None, reason: str | None = None
                      ) -> ops.SuspendTenant:
    """Suspend `tenant`: every budget of it that is not closed frozen in one atomic step
    (each reserve is then denied, BUDGET_FROZEN; settling what is held still works), with
    one `tenant.suspended` record and notification. Returns how many budgets changed (0:
    suspended already). A tenant without an open budget raises NotFound."""
    return ops.SuspendTenant(tenant=tenant_name(tenant), suspended=True,
                             **arg.signed(actor, reason))


def resume_tenant_op(tenant: str, *, actor: str | None = None, reason: str | None = None
                     ) -> ops.SuspendTenant:
    """Make every frozen budget of `tenant` active again (those frozen one by one before the
    suspension too; closed ones stay closed), in one step, with one `tenant.reactivated`
    record and notification. Returns how many budgets changed."""
    return ops.SuspendTenant(tenant=tenant_name(tenant), suspended=False,
                             **arg.signed(actor, reason))


def tenants_op() -> ops.Tenants:
    """Every tenant the store holds anything for (a definition, a plan, a reservation, a
    denial, ...), sorted by name; read from the store's own registry, not from audit
    records, so it does not depend on their retention."""
    return ops.Tenants(tenant="")


def sweep_op(limit: int = 1_000) -> ops.Sweep:
    """Expire up to `limit` overdue reservations now, across tenants; returns how many
    expired."""
    return ops.Sweep(tenant="", limit=check_int(limit, "limit", 1))


def finish_once_op(claim: OnceClaim, answer: str | None, *, ttl_s: int = ONCE_TTL_S
                   ) -> ops.FinishOnce:
    """Keep `answer` (text: the call's response, e.g. JSON) for the call `claim` runs, to be
    replayed for `ttl_s` seconds; or, with None, let its key go (the call was refused before
    it changed anything: a retry runs it anew). False when the claim had lapsed."""
    if not isinstance(claim, OnceClaim) or claim.owner is None:
        raise InvalidRequest(f"claim: expected the OnceClaim of a run this caller holds "
                             f"(its owner set), got {claim!r}")
    if answer is not None:
        answer = check_text(answer, "answer", 16 * 1024 * 1024)
    return ops.FinishOnce(tenant="", key=claim.key, owner=claim.owner, answer=answer,
                          ttl_ms=check_int(ttl_s, "ttl_s", 1, 86_400) * 1000)


class PlatformCalls(Runner):
    """What only the platform operator may do: modes, plans, closing a tenant, sweeping
    every tenant, running a bulk action once."""

    def _claim_once(self, call: str, idempotency_key: str, request: Mapping[str, Any], *,
                    ttl_s: int = ONCE_TTL_S, wait_s: float = 5.0) -> Flow[OnceClaim]:
        """Claim `idempotency_key` for one run of the call of several steps named `call`
        (e.g. "tenants-bulk"), whose whole request is `request` (JSON values): the answer
        says whether this caller runs it (`owner` set; end with `finish_once`), or how a
        run of the same request ended (`answer`: replay it). The same key with another
        request raises `IdempotencyMismatch`. While another run holds the key this waits
        up to `wait_s` seconds for its answer, then answers with neither set. A claim
        never finished lapses after `ttl_s` seconds."""
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not (
                0 <= wait_s <= 60):
            raise InvalidRequest(f"wait_s: expected seconds between 0 and 60, got {wait_s!r}")
        try:
            text = json.dumps(request, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InvalidRequest(f"request: expected JSON values ({error})") from None
        op = ops.ClaimOnce(
            tenant="", key=f"{check_name(call, 'call')}:{check_idempotency_key(idempotency_key)}",
            fingerprint=hashlib.sha256(text.encode()).hexdigest(), owner=uuid.uuid4().hex,
            ttl_ms=check_int(ttl_s, "ttl_s", 1, 86_400) * 1000)
        return _claiming(op, wait_s)

    set_mode, aset_mode = twins(set_mode_op)
    assign_plan, aassign_plan = followed_twins(assign_plan_op, checked_hierarchy)
    close_tenant, aclose_tenant = twins(close_tenant_op)
    suspend_tenant, asuspend_tenant = twins(suspend_tenant_op)
    resume_tenant, aresume_tenant = twins(resume_tenant_op)
    tenants, atenants = twins(tenants_op)
    sweep, asweep = twins(sweep_op)
    claim_once, aclaim_once = flow_twins(_claim_once)
    finish_once, afinish_once = twins(finish_once_op)


def _claiming(op: ops.ClaimOnce, wait_s: float) -> Flow[OnceClaim]:
    """The claim, tried again every 50 ms while another run holds the key, up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        claim: OnceClaim = yield op
        if claim.owner is not None or claim.answer is not None or time.monotonic() >= deadline:
            return claim
        yield Pause(0.05)
