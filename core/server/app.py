"""The ASGI app: the Cycles runtime plane over one guard, every answer carrying
`X-Request-Id` and `X-Cycles-Trace-Id`, every failure the Cycles error envelope."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from ..errors import AllotmentError
from ..guard import Guard
from ..plans import Plan
from ..webhooks import Dispatcher
from . import metrics as _metrics
from . import ui as _ui
from .admin import Admin
from .bulk import Bulk
from .context import error_response, json_response
from .errors import ApiError, from_allotment
from .governance import Governance
from .hooks_routes import Hooks
from .operators import Operators
from .plane import App
from .policies import Policies
from .runtime import Runtime, Settings
from .subscriptions import Subscriptions

log = logging.getLogger("allotment.server")
MAX_BODY = 64 * 1024
"""Request bodies past this many bytes are refused unread (a reservation is under 2 KiB)."""
_HTTP_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND"}


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(request, error)


async def _allotment_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, AllotmentError)
    mapped = from_allotment(error)
    if mapped.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, error)
    return error_response(request, mapped)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, "INVALID_REQUEST")
    message = f"no route {request.method} {request.url.path}" if error.status_code in (
        404, 405) else str(error.detail)
    headers = dict(error.headers or {})
    if error.status_code == 405:  # RFC 9110: say which methods the path takes
        headers["Allow"] = _allowed(request)
    return error_response(request, ApiError(error.status_code, code, message,
                                            headers=headers))


def _allowed(request: Request) -> str:
    """Every method some route takes on this path (Starlette's own header names only the
    first route that matched the path)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _crash(request: Request, error: Exception) -> Response:
    log.exception("%s %s crashed", request.method, request.url.path)
    return error_response(request, ApiError(500, "INTERNAL_ERROR", "internal error"))


async def _ready(request: Request) -> Response:
    return json_response(request, {"status": "UP"})


def create_app(guard: Guard, *, admin_key: str | None = None, max_body: int = MAX_BODY,
               metrics: bool | None = None, plans: Mapping[str, Plan] | None = None,
               define_plans: bool = True, extensions: bool = True,
               dispatcher: Dispatcher | None = None, ui: bool = True) -> App:
    """The ASGI app serving `guard` on the Cycles wire. `admin_key` enables the admin key
    (`X-Admin-API-Key`); without it no request has admin rights. `metrics` serves
    `GET /metrics` (by default when prometheus-client is installed). `plans` are the
    tiers `PUT /v1/admin/tenants/{id}/plan` assigns by name; `define_plans=False` refuses
    defining more over HTTP (several workers: each holds its own catalog).
    `extensions=False` serves the plain Cycles wire: no `allotment` fields, no
    `GET /v1/allotment`. `dispatcher`: whose rules a subscription's test send follows
    (`allow`, the timeout; by default a `Dispatcher(guard)`: public addresses only).
    `ui=False` leaves out the operator's dashboard at `/ui`."""
    if not isinstance(guard, Guard):
        raise TypeError(f"create_app: expected an allotment Guard, got {guard!r}")
    settings = Settings(guard, admin_key or None, max_body, dispatcher or Dispatcher(guard),
                        extensions)
    routes = [*Admin(settings).routes(), *Bulk(settings).routes(),
              *Policies(settings, plans, define_plans).routes(),
              *Operators(settings).routes(), *Governance(settings).routes(),
              *Hooks(settings).routes(), *Subscriptions(settings).routes(),
              Route("/actuator/health/readiness", _ready, methods=["GET"]),
              Route("/actuator/health/liveness", _ready, methods=["GET"])]
    if ui:
        routes += _ui.routes()
    serve_metrics = _metrics.available() if metrics is None else metrics
    if serve_metrics:
        routes.append(Route("/metrics", _metrics.endpoint(guard), methods=["GET"]))
    app = App(routes=routes, hot=Runtime(settings).routes(), exception_handlers={
        ApiError: _api_error, AllotmentError: _allotment_error, HTTPException: _http_error,
        Exception: _crash})
    app.state.guard = guard
    return app
