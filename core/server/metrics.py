"""`GET /metrics`: the guard's Prometheus metrics (`allotment.integrations.prometheus`) on a
registry of the app's own, when prometheus-client is installed. Public like the reference
server's `/actuator/prometheus`: no metric carries a tenant label unless an operator asks
for one in-process."""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ..guard import Guard

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def available() -> bool:
    """Whether prometheus-client is installed (the `prometheus` extra)."""
    return importlib.util.find_spec("prometheus_client") is not None


def endpoint(guard: Guard) -> Callable[[Request], Awaitable[Response]]:
    """The `/metrics` handler, counting `guard`'s calls from now on."""
    from prometheus_client import CollectorRegistry

    from ..integrations.prometheus import GuardMetrics

    metrics = GuardMetrics(guard, registry=CollectorRegistry())

    async def serve(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return serve
