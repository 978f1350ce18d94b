"""The operators' reads over HTTP: a tenant's audit log, its report, and the usage export for
invoicing (streamed row by row, the same bytes as `allotment usage export`).

Who may read: the admin key any tenant (named with `?tenant=`; the usage export of every
tenant when none is named), a tenant key with `budgets:read` (or `admin:read`) its own
tenant only. Each route is one guard (or tenant handle) call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..guard import Guard
from ..scopes import tenant_name
from ..tenant import TenantGuard
from ..usage import UsageRow, check_format, usage_header, usage_line
from .auth import admin_key, own_tenant, tenant_key
from .context import ids, json_response
from .errors import bad_request
from .queries import only, query_int, since_ms
from .records import audit_json, report_json
from .runtime import Settings

READ = "budgets:read"
"""What a tenant key needs for its own audit log, report and usage."""
MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/x-ndjson; charset=utf-8"}


async def reader(settings: Settings, request: Request, permission: str, *,
                 required: bool = True) -> tuple[Guard | TenantGuard, str | None]:
    """Whose state a read may see: the admin key's guard and the tenant it names
    (`required`: it must name one), or a tenant key's own handle and tenant; a tenant key
    naming another tenant is 403 before anything is read."""
    named = request.query_params.get("tenant")
    if admin_key(settings.admin_key, request):
        if named is None:
            if required:
                raise bad_request("tenant: required with the admin key (e.g. ?tenant=acme)")
            return settings.guard, None
        tenant = request.state.tenant = tenant_name(named, "tenant")  # in X-Cycles-Tenant
        return settings.guard, tenant
    caller = await tenant_key(settings.guard, request, permission)
    own_tenant(caller.tenant.name, named, "tenant")
    return caller.tenant, caller.tenant.name


def _headers(request: Request, tenant: str | None) -> dict[str, str]:
    request_id, trace = ids(request)
    headers = {"X-Request-Id": request_id, "X-Cycles-Trace-Id": trace}
    if tenant is not None:
        headers["X-Cycles-Tenant"] = tenant
    return headers


class Operators:
    """Audit, report and usage routes over one guard."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def routes(self) -> list[Route]:
        return [
            Route("/v1/audit", self.audit, methods=["GET"]),
            Route("/v1/reports", self.report, methods=["GET"]),
            Route("/v1/usage", self.usage, methods=["GET"]),
        ]

    async def audit(self, request: Request) -> Response:
        """`?tenant=&since=&until=&type=&limit=`: the newest `limit` records (default 100)
        from `since` until `until`, of the `type`s given (repeat it), oldest first."""
        handle, tenant = await reader(self.s, request, READ)
        only(request, "tenant", "since", "until", "type", "limit")
        query = request.query_params
        types = query.getlist("type") or None
        since, until = since_ms(query.get("since")), since_ms(query.get("until"), "until")
        limit = query_int(request, "limit")
        options: dict[str, Any] = {"since": since, "until": until, "types": types,
                                   "limit": 100 if limit is None else limit}
        if isinstance(handle, TenantGuard):
            records = await handle.aaudit(**options)
        else:
            assert tenant is not None  # the admin key must name it
            records = await handle.aaudit(tenant, **options)
        return json_response(request, {"tenant": tenant,
                                       "records": [audit_json(r) for r in records]})

    async def report(self, request: Request) -> Response:
        """`?tenant=&period=day|week|month|year&at=&by=&top=`: one row per scope (or per
        value of the dimension `by`), busiest first with `by`."""
        handle, tenant = await reader(self.s, request, READ)
        only(request, "tenant", "period", "at", "by", "top")
        query = request.query_params
        period = query.get("period", "month")
        options: dict[str, Any] = {"period": period, "at": query_int(request, "at"),
                                   "by": query.get("by"), "top": query_int(request, "top")}
        if isinstance(handle, TenantGuard):
            rows = await handle.areport(**options)
        else:
            assert tenant is not None  # the admin key must name it
            rows = await handle.areport(tenant, **options)
        return json_response(request, {"tenant": tenant, "period": period,
                                       "by": options["by"],
                                       "rows": [report_json(r) for r in rows]})

    async def usage(self, request: Request) -> Response:
        """`?period=YYYY-MM[-DD]&tenant=&format=csv|json`: CSV with its header line, or JSON
        Lines, written as the guard's usage stream yields rows (one tenant's rows held at a
        time). The first read happens before the answer starts, so a refusal there is still
        an error envelope; a failure later ends the body early (no final chunk)."""
        handle, tenant = await reader(self.s, request, READ, required=False)
        only(request, "tenant", "period", "format")
        query = request.query_params
        fmt = check_format(query.get("format", "csv"))
        period = query.get("period")
        if isinstance(handle, TenantGuard):
            rows = handle.ausage(period=period)
        else:
            rows = handle.ausage(period=period, tenant=tenant)
        first = await anext(rows, None)
        return StreamingResponse(_lines(first, rows, fmt), media_type=MEDIA[fmt],
                                 headers=_headers(request, tenant))


CHUNK = 16 * 1024
"""Lines are sent in chunks of about this many bytes (not one write per row)."""


async def _lines(first: UsageRow | None, rest: AsyncIterator[UsageRow],
                 fmt: str) -> AsyncIterator[bytes]:
    buffer = [usage_header(fmt)]
    size = len(buffer[0])
    if first is not None:
        buffer.append(usage_line(first, fmt))
        async for row in rest:
            text = usage_line(row, fmt)
            buffer.append(text)
            size += len(text)
            if size >= CHUNK:
                yield "".join(buffer).encode()
                buffer, size = [], 0
    rest_text = "".join(buffer)
    if rest_text:
        yield rest_text.encode()
