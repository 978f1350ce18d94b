"""The reference's bulk actions (admin key only): one lifecycle action over the tenants a
filter matches (`POST /v1/admin/tenants/bulk-action`), one fund operation over the budgets
of one tenant a filter matches (`POST /v1/admin/budgets/bulk-action`).

As the reference: the request is checked whole before anything is read (400); the filter
is matched after the idempotency key is claimed, so a retry replays the first answer even
when that answer changed what the filter matches; more than 500 matches is 400
`LIMIT_EXCEEDED` and an `expected_count` that differs is 409 `COUNT_MISMATCH`, both with
nothing changed. Then every row is tried (one guard call each, signed `admin-key`), and the
answer splits them into succeeded, failed (with the code a single call would have got) and
skipped (already in the target state): 200 even when rows failed. The answer is kept for 15
minutes (`Guard.claim_once`): the same request under the same key gets it again, another
request under it 409 `IDEMPOTENCY_MISMATCH`, a retry while the first still runs 503 with
`Retry-After`. A run that fails before it answers lets the key go; each budget row's fund
carries a key derived from the bulk key and the ledger, so a run repeated after that never
funds a ledger twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..amounts import Amount, Unit
from ..errors import AllotmentError
from ..models import Balance, TenantInfo
from ..scopes import parse_scope, tenant_name
from . import wire
from .admin import FundName, ledger_filter, require_admin
from .context import body, json_response
from .errors import ApiError, bad_request, from_allotment
from .runtime import Settings
from .shapes import ledger_id
from .tenancy import set_frozen, tenant_rows

LIMIT = 500
"""The most rows one bulk action changes (the reference's cap)."""
BulkKey = Field(min_length=1, max_length=128)
Row = dict[str, str]


class TenantFilter(wire._Strict):
    """Which tenants: AND of the fields given, at least one (as the tenant list reads them)."""

    status: Literal["ACTIVE", "SUSPENDED", "CLOSED"] | None = None
    parent_tenant_id: str | None = Field(None, min_length=1, max_length=128)
    observe_mode: str | None = Field(None, max_length=64)
    search: str | None = Field(None, max_length=128)


class TenantBulkBody(wire._Strict):
    filter: TenantFilter
    action: Literal["SUSPEND", "REACTIVATE", "CLOSE"]
    expected_count: int | None = Field(None, ge=0)
    idempotency_key: str = BulkKey


class BudgetFilter(wire._Strict):
    """Which budgets of one tenant: AND of the fields given (as the budget list reads them)."""

    tenant_id: str = Field(min_length=1, max_length=128)
    scope_prefix: str | None = Field(None, min_length=1, max_length=2048)
    unit: wire.UnitName | None = None
    status: Literal["ACTIVE", "FROZEN", "CLOSED"] | None = None
    over_limit: bool | None = None
    has_debt: bool | None = None
    utilization_min: float | None = Field(None, ge=0, le=1)
    utilization_max: float | None = Field(None, ge=0, le=1)
    search: str | None = Field(None, max_length=128)


class BudgetBulkBody(wire._Strict):
    filter: BudgetFilter
    action: FundName
    amount: wire.WireAmount | None = None
    spent: wire.WireAmount | None = None
    reason: str | None = Field(None, min_length=1, max_length=512)
    expected_count: int | None = Field(None, ge=0)
    idempotency_key: str = BulkKey


class _Answer:
    """A bulk action's rows as they end."""

    def __init__(self) -> None:
        self.succeeded: list[Row] = []
        self.failed: list[Row] = []
        self.skipped: list[Row] = []

    def fail(self, row: str, code: str, message: str) -> None:
        self.failed.append({"id": row, "error_code": code, "message": message})

    def skip(self, row: str) -> None:
        self.skipped.append({"id": row, "reason": "ALREADY_IN_TARGET_STATE"})

    async def attempt(self, row: str, call: Awaitable[Any]) -> None:
        """`call` for `row`: succeeded, or failed with the error a single call answers."""
        try:
            await call
        except ApiError as error:
            self.fail(row, error.code, error.message)
        except AllotmentError as error:
            mapped = from_allotment(error)
            self.fail(row, mapped.code, mapped.message)
        else:
            self.succeeded.append({"id": row})

    def body(self, action: str, matched: int, key: str) -> dict[str, Any]:
        return {"action": action, "total_matched": matched, "succeeded": self.succeeded,
                "failed": self.failed, "skipped": self.skipped, "idempotency_key": key}


class Bulk:
    """The two bulk-action routes over one guard."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def routes(self) -> list[Route]:
        return [Route("/v1/admin/tenants/bulk-action", self.tenants, methods=["POST"]),
                Route("/v1/admin/budgets/bulk-action", self.budgets, methods=["POST"])]

    async def tenants(self, request: Request) -> Response:
        require_admin(self.s, request)
        req = wire.parse(TenantBulkBody, await body(request, self.s.max_body))
        # blank is not given; `observe_mode` (a v0.1.26 extension this server does not
        # implement) is ignored, as the spec asks: it never stands for a filter alone
        search = (req.filter.search or "").strip().lower() or None
        parent = (req.filter.parent_tenant_id or "").strip() or None
        if req.filter.status is None and search is None and parent is None:
            raise bad_request("filter: give at least one of status, parent_tenant_id or "
                              "search (an empty filter would act on every tenant)")

        async def match() -> list[tuple[str, TenantInfo | None, str]]:
            if parent is not None:  # no tenant here has a parent
                return []
            return [row for row in await tenant_rows(self.s.guard, search)
                    if req.filter.status is None or row[2] == req.filter.status]

        async def run(rows: list[tuple[str, TenantInfo | None, str]], answer: _Answer) -> None:
            why = f"bulk action {req.idempotency_key}"
            target = {"SUSPEND": "SUSPENDED", "REACTIVATE": "ACTIVE",
                      "CLOSE": "CLOSED"}[req.action]
            for name, _, state in rows:
                if state == target:
                    answer.skip(name)
                elif state == "CLOSED":
                    answer.fail(name, "INVALID_TRANSITION", f"tenant {name} is closed for "
                                "good: it cannot be suspended or reactivated")
                elif req.action == "CLOSE":
                    await answer.attempt(name, self.s.guard.aclose_tenant(
                        name, actor="admin-key", reason=why))
                else:
                    await answer.attempt(name, set_frozen(
                        self.s.guard, name, req.action == "SUSPEND", why))

        return await self._once(request, "tenants-bulk", req, match, run)

    async def budgets(self, request: Request) -> Response:
        require_admin(self.s, request)
        req = wire.parse(BudgetBulkBody, await body(request, self.s.max_body))
        given = req.filter
        tenant = tenant_name(given.tenant_id, "filter.tenant_id")
        if req.amount is None:
            raise bad_request(f"amount: required for {req.action}")
        if req.spent is not None and req.action != "RESET_SPENT":
            raise bad_request("spent: only RESET_SPENT takes it")
        if req.spent is not None and req.spent.unit != req.amount.unit:
            raise ApiError(400, "UNIT_MISMATCH", f"spent is {req.spent.unit}, amount "
                           f"{req.amount.unit}: give both in one unit")
        where = f"tenant:{tenant}"
        if given.scope_prefix is not None:
            where = parse_scope(given.scope_prefix).path
            if parse_scope(where).tenant != tenant:
                raise bad_request(f"filter.scope_prefix: {where} is not in tenant {tenant}")
        keep = ledger_filter(given.unit, given.status, given.over_limit, given.has_debt,
                             given.utilization_min, given.utilization_max,
                             None if given.search is None else given.search.lower())
        amount, unit = req.amount.amount, Unit(req.amount.unit)

        async def match() -> list[Balance]:
            rows = [row for row in await self.s.guard.abalances(where) if keep(row, tenant)]
            return sorted(rows, key=ledger_id)

        async def run(rows: list[Balance], answer: _Answer) -> None:
            why = req.reason or f"bulk action {req.idempotency_key}"
            for row in rows:
                name = ledger_id(row)
                if row.unit is not unit:
                    answer.fail(name, "INVALID_TRANSITION", f"unit mismatch: the budget is "
                                f"{row.unit.value}, the amount {unit.value}")
                elif req.action == "REPAY_DEBT" and row.debt == 0:
                    answer.skip(name)
                else:
                    once = hashlib.sha256(f"{req.idempotency_key}\n{name}".encode())
                    await answer.attempt(name, self.s.guard.afund(
                        row.scope, req.action, Amount(unit, amount), period=row.period,
                        spent=None if req.spent is None else req.spent.amount,
                        idempotency_key=f"bulk-{once.hexdigest()[:40]}", actor="admin-key",
                        reason=why))

        return await self._once(request, "budgets-bulk", req, match, run)

    async def _once(self, request: Request, call: str, req: TenantBulkBody | BudgetBulkBody,
                    match: Callable[[], Awaitable[list[Any]]],
                    run: Callable[[list[Any], _Answer], Awaitable[None]]) -> Response:
        """Claim the key, then match, gate and run the rows, keeping the answer; or replay
        the answer a run of the same request gave."""
        guard, key = self.s.guard, req.idempotency_key
        claim = await guard.aclaim_once(call, key, req.model_dump(mode="json"))
        if claim.answer is not None:
            return json_response(request, orjson.loads(claim.answer))
        if claim.owner is None:
            raise ApiError(503, "INTERNAL_ERROR", f"a bulk action under idempotency_key "
                           f"{key!r} is still running; retry shortly for its answer",
                           headers={"Retry-After": "1"})
        try:
            rows = await match()
            if len(rows) > LIMIT:
                raise ApiError(400, "LIMIT_EXCEEDED", f"the filter matches {len(rows)} rows, "
                               f"more than {LIMIT}: narrow it and retry",
                               {"total_matched": len(rows)})
            if req.expected_count is not None and req.expected_count != len(rows):
                raise ApiError(409, "COUNT_MISMATCH", f"expected_count {req.expected_count} "
                               f"differs from the {len(rows)} rows the filter matches",
                               {"total_matched": len(rows)})
            answer = _Answer()
            await run(rows, answer)
        except Exception:  # nothing answered: a retry runs anew (a crash: the claim lapses)
            await guard.afinish_once(claim, None)
            raise
        done = answer.body(req.action, len(rows), key)
        await guard.afinish_once(claim, orjson.dumps(done).decode())
        return json_response(request, done)
