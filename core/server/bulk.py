"""The reference's bulk actions (admin key only): one lifecycle action over the tenants a
filter matches (`POST /v1/admin/tenants/bulk-action`), one fund operation over the budgets
of one tenant a filter matches (`POST /v1/admin/budgets/bulk-action`), pause, resume or
remove the webhook subscriptions a filter matches (`POST /v1/admin/webhooks/bulk-action`).

As the reference: the request is checked whole before anything is read (400); the filter
is matched after the idempotency key is claimed, so a retry replays the first answer even
when that answer changed what the filter matches; more than 500 matches is 400
`LIMIT_EXCEEDED` and an `expected_count` that differs is 409 `COUNT_MISMATCH`, both with
nothing changed. Then every row is tried (one guard call each, signed `admin-key`), and the
answer splits them into succeeded, failed (with the spec's row code for what refused it)
and skipped (already in the target state): 200 even when rows failed. The answer is kept for 15
minutes (`Guard.claim_once`): the same request under the same key gets it again, another
request under it 409 `IDEMPOTENCY_MISMATCH`, a retry while the first still runs 503 with
`Retry-After`. A request refused by a gate lets the key go. Each budget row's fund carries an
idempotency key derived from the whole request and the ledger (keyed with the admin key, so
no tenant can take it first): the same request run again after its claim lapsed never funds
a ledger twice, and another request under the bulk key funds afresh.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..amounts import Amount, Unit
from ..errors import AllotmentError
from ..models import Balance, BudgetStatus
from ..platform import ONCE_TTL_S
from ..scopes import parse_scope, tenant_name
from . import wire
from .admin import FundName, ledger_filter, require_admin
from .auth import ADMIN_ACTOR
from .context import body, json_response
from .errors import ApiError, bad_request, from_allotment
from .runtime import Settings
from .shapes import ledger_id
from .subscriptions import matching
from .tenancy import TenantRow, set_frozen, tenant_rows

log = logging.getLogger("allotment.server")
LIMIT = 500
"""The most rows one bulk action changes (the reference's cap)."""
_ROW_CODES = {"BUDGET_EXCEEDED": "BUDGET_EXCEEDED", "OVERDRAFT_LIMIT_EXCEEDED": "BUDGET_EXCEEDED",
              "TENANT_CLOSED": "TENANT_CLOSED", "NOT_FOUND": "NOT_FOUND",
              "BUDGET_NOT_FOUND": "NOT_FOUND", "TENANT_NOT_FOUND": "NOT_FOUND"}
"""A row's failure code from the single call's: the spec's row vocabulary (BUDGET_EXCEEDED,
NOT_FOUND, PERMISSION_DENIED, INTERNAL_ERROR, and the reference's TENANT_CLOSED); any other
refusal of the row's state is INVALID_TRANSITION, its message saying which."""
BulkKey = Field(min_length=1, max_length=128)
Row = dict[str, str]


class _Bulk(wire._Strict):
    """What every bulk request carries besides its filter and action."""

    expected_count: int | None = Field(None, ge=0)
    idempotency_key: str = BulkKey


class TenantFilter(wire._Strict):
    """Which tenants: AND of the fields given, at least one (as the tenant list reads them)."""

    status: Literal["ACTIVE", "SUSPENDED", "CLOSED"] | None = None
    parent_tenant_id: str | None = Field(None, max_length=128)
    observe_mode: str | None = None
    """A v0.1.26 extension this server does not implement: ignored, as the spec asks."""
    search: str | None = Field(None, max_length=128)


class TenantBulkBody(_Bulk):
    filter: TenantFilter
    action: Literal["SUSPEND", "REACTIVATE", "CLOSE"]


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


class BudgetBulkBody(_Bulk):
    filter: BudgetFilter
    action: FundName
    amount: wire.WireAmount | None = None
    spent: wire.WireAmount | None = None
    reason: str | None = Field(None, min_length=1, max_length=512)


class WebhookFilter(wire._Strict):
    """Which subscriptions: AND of the fields given, at least one (as their list reads
    them)."""

    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    status: Literal["ACTIVE", "PAUSED", "DISABLED"] | None = None
    event_type: str | None = Field(None, max_length=64)
    search: str | None = Field(None, max_length=128)


class WebhookBulkBody(_Bulk):
    filter: WebhookFilter
    action: Literal["PAUSE", "RESUME", "DELETE"]


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
        """`call` for `row`: succeeded, or failed with the spec's code for what a single
        call answers; an unexpected error fails the row alone (logged), never the run."""
        try:
            await call
        except (ApiError, AllotmentError) as raised:
            error = raised if isinstance(raised, ApiError) else from_allotment(raised)
            if error.status < 500:
                code = ("PERMISSION_DENIED" if error.status in (401, 403)
                        else _ROW_CODES.get(error.code, "INVALID_TRANSITION"))
                self.fail(row, code, error.message)
                return
            log.error("bulk action row %s failed: %s", row, error.message)
            self.fail(row, "INTERNAL_ERROR", "internal error")
        except Exception:
            log.exception("bulk action row %s failed", row)
            self.fail(row, "INTERNAL_ERROR", "internal error")
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
                Route("/v1/admin/budgets/bulk-action", self.budgets, methods=["POST"]),
                Route("/v1/admin/webhooks/bulk-action", self.webhooks, methods=["POST"])]

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
        req = req.model_copy(update={"filter": req.filter.model_copy(update={
            "search": search, "parent_tenant_id": parent, "observe_mode": None})})

        async def match() -> list[TenantRow]:
            if parent is not None:  # no tenant here has a parent
                return []
            return [row for row in await tenant_rows(self.s.guard, search)
                    if req.filter.status is None or row[2] == req.filter.status]

        async def run(rows: list[TenantRow], answer: _Answer) -> None:
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
                        name, actor=ADMIN_ACTOR, reason=why))
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
        amount, unit = req.amount.amount, Unit(req.amount.unit)
        search = (given.search or "").strip().lower() or None  # blank: not given
        req = req.model_copy(update={"filter": given.model_copy(update={
            "tenant_id": tenant, "search": search})})
        keep = ledger_filter(given.unit, given.status, given.over_limit, given.has_debt,
                             given.utilization_min, given.utilization_max, search)
        closed = False

        async def match() -> list[Balance]:
            nonlocal closed
            info = await self.s.guard.atenant_info(tenant)
            closed = info is not None and info.closed_at_ms is not None
            rows = [row for row in await self.s.guard.abalances(where) if keep(row, tenant)]
            return sorted(rows, key=ledger_id)

        async def run(rows: list[Balance], answer: _Answer) -> None:
            why = req.reason or f"bulk action {req.idempotency_key}"
            for row in rows:
                name = ledger_id(row)
                if closed:
                    answer.fail(name, "TENANT_CLOSED", f"tenant {tenant} is closed")
                elif row.unit is not unit:
                    answer.fail(name, "INVALID_TRANSITION", f"unit mismatch: the budget is "
                                f"{row.unit.value}, the amount {unit.value}")
                elif row.status is not BudgetStatus.ACTIVE:
                    answer.fail(name, "INVALID_TRANSITION", f"the budget is "
                                f"{row.status.value}")
                elif req.action == "REPAY_DEBT" and row.debt == 0:
                    answer.skip(name)
                else:
                    await answer.attempt(name, self.s.guard.afund(
                        row.scope, req.action, Amount(unit, amount), period=row.period,
                        spent=None if req.spent is None else req.spent.amount,
                        idempotency_key=self._row_key(req, name), actor=ADMIN_ACTOR,
                        reason=why))

        return await self._once(request, "budgets-bulk", req, match, run)

    async def webhooks(self, request: Request) -> Response:
        require_admin(self.s, request)
        req = wire.parse(WebhookBulkBody, await body(request, self.s.max_body))
        given = req.filter
        search = (given.search or "").strip().lower() or None  # blank: not given
        if given.tenant_id is None and given.status is None and given.event_type is None \
                and search is None:
            raise bad_request("filter: give at least one of tenant_id, status, event_type or "
                              "search (an empty filter would act on every subscription)")
        req = req.model_copy(update={"filter": given.model_copy(update={"search": search})})

        async def match() -> list[dict[str, Any]]:
            return sorted(await matching(self.s.guard, given.tenant_id, given.status,
                                         given.event_type, search),
                          key=lambda view: str(view["subscription_id"]))

        async def run(rows: list[dict[str, Any]], answer: _Answer) -> None:
            target = {"PAUSE": "PAUSED", "RESUME": "ACTIVE"}.get(req.action)
            for view in rows:
                hook = str(view["subscription_id"])
                if target is None:
                    await answer.attempt(hook, self.s.guard.aremove_webhook(
                        hook, actor=ADMIN_ACTOR))
                elif view["status"] == target:
                    answer.skip(hook)
                else:
                    await answer.attempt(hook, self.s.guard.aenable_webhook(
                        hook, req.action == "RESUME", actor=ADMIN_ACTOR))

        return await self._once(request, "webhooks-bulk", req, match, run)

    async def _once(self, request: Request, call: str, req: TenantBulkBody | BudgetBulkBody
                    | WebhookBulkBody,
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
        try:  # refused before any row ran: the key goes, a corrected request may use it
            rows = await match()
            if len(rows) > LIMIT:
                raise ApiError(400, "LIMIT_EXCEEDED", f"the filter matches {len(rows)} rows, "
                               f"more than {LIMIT}: narrow it and retry",
                               {"total_matched": len(rows)})
            if req.expected_count is not None and req.expected_count != len(rows):
                raise ApiError(409, "COUNT_MISMATCH", f"expected_count {req.expected_count} "
                               f"differs from the {len(rows)} rows the filter matches",
                               {"total_matched": len(rows)})
        except Exception:
            await guard.afinish_once(claim, None)
            raise
        answer = _Answer()
        await run(rows, answer)  # a row's failure is its own (`_Answer.attempt`)
        done = answer.body(req.action, len(rows), key)
        if not await guard.afinish_once(claim, orjson.dumps(done).decode()):
            log.warning("bulk action %s %r ran past its claim (%d s): its answer is not kept "
                        "for replay", call, key, ONCE_TTL_S)
        return json_response(request, done)

    def _row_key(self, req: BudgetBulkBody, row: str) -> str:
        """A ledger's fund key in a bulk action: the same for the same request (a run
        repeated after its claim lapsed replays the fund, never funds twice), another for
        any other request, and keyed with the admin key so no tenant can use it first."""
        assert self.s.admin_key is not None  # the route needs it
        text = orjson.dumps(req.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        stamp = hmac.new(self.s.admin_key.encode(), text + b"\n" + row.encode(), "sha256")
        return f"bulk-{stamp.hexdigest()[:40]}"
