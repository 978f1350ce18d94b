"""Per-request plumbing: the trace id (W3C `traceparent`, then `X-Cycles-Trace-Id`, else a
fresh one), the request id, the bounded body, and the JSON responses that carry both ids."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .errors import ApiError, bad_request
from .wire import error_body

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


_IDS = "allotment.ids"
"""Where a request's ids are kept: in the ASGI scope, which every `Request` made for the
request (route, exception handlers) shares."""


def trace_id(request: Request, fresh: str) -> str:
    """The request's trace id by the spec's rules, else `fresh`; a malformed header counts as
    absent."""
    headers = request.headers
    parent = headers.get("traceparent")
    if parent is not None:
        match = _TRACEPARENT.fullmatch(parent.strip())
        if match and match.group(1) != _ZERO_TRACE and match.group(2) != _ZERO_SPAN:
            return match.group(1)
    given = headers.get("x-cycles-trace-id")
    if given is not None and _TRACE_ID.fullmatch(given) and given != _ZERO_TRACE:
        return given
    return fresh


def ids(request: Request) -> tuple[str, str]:
    """(request id, trace id), made once per request from one draw of 32 random bytes."""
    scope = request.scope
    made: tuple[str, str] | None = scope.get(_IDS)
    if made is None:
        drawn = os.urandom(32).hex()
        fresh = drawn[32:]
        if fresh == _ZERO_TRACE:  # the spec's invalid all-zero id (one draw in 2**128)
            fresh = uuid.uuid4().hex
        made = scope[_IDS] = (f"req_{drawn[:32]}", trace_id(request, fresh))
    return made


def set_tenant(request: Request, tenant: str) -> None:
    """Name the tenant of the request's key in the answer's `X-Cycles-Tenant` header (the
    same as setting `request.state.tenant`, written straight into the dict Starlette keeps
    that state in)."""
    state = request.scope.get("state")
    if state is None:
        state = request.scope["state"] = {}
    state["tenant"] = tenant


def forget_tenant(request: Request) -> None:
    """No `X-Cycles-Tenant` header after all (the request's key was refused)."""
    state = request.scope.get("state")
    if state:
        state.pop("tenant", None)


def _tenant(request: Request) -> str | None:
    """`request.state.tenant` if set, read from the dict Starlette keeps it in (the scope's
    "state"), so a request without one raises and catches nothing."""
    state = request.scope.get("state")
    return state.get("tenant") if state else None


def _headers(request: Request) -> dict[str, str]:
    request_id, trace = ids(request)
    tenant = _tenant(request)
    if tenant is None:
        return {"X-Request-Id": request_id, "X-Cycles-Trace-Id": trace}
    return {"X-Request-Id": request_id, "X-Cycles-Trace-Id": trace, "X-Cycles-Tenant": tenant}


_JSON = (b"content-type", b"application/json")


class _JsonResponse(Response):
    """A JSON answer with its header lines built directly: the same lines, in the same
    order, as `Response(body, status, headers, media_type="application/json")` makes."""

    media_type = "application/json"

    def __init__(self, body: bytes, status: int, request_id: str, trace: str,
                 tenant: str | None) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        raw = [(b"x-request-id", request_id.encode("latin-1")),
               (b"x-cycles-trace-id", trace.encode("latin-1"))]
        if tenant is not None:
            raw.append((b"x-cycles-tenant", tenant.encode("latin-1")))
        raw.append((b"content-length", str(len(body)).encode("latin-1")))
        raw.append(_JSON)
        self.raw_headers = raw


def json_response(request: Request, body: Any, status: int = 200) -> Response:
    request_id, trace = ids(request)
    return _JsonResponse(orjson.dumps(body), status, request_id, trace, _tenant(request))


def empty_response(request: Request) -> Response:
    """204, with the request's id and trace headers like every answer."""
    return Response(status_code=204, headers=_headers(request))


def error_response(request: Request, error: ApiError) -> Response:
    request_id, trace = ids(request)
    body = error_body(error.code, error.message, request_id, trace, error.details)
    return Response(orjson.dumps(body), error.status, {**_headers(request), **error.headers},
                    media_type="application/json")


async def body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "INVALID_REQUEST", f"request body of {size} bytes or more is over the "
                    f"limit of {limit} bytes")
