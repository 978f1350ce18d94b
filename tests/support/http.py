"""HTTP clients for the SDKs' `http_client=`, answered by a handler written against httpx2.

Recent SDKs take httpx2 clients; the oldest supported releases (openai before 2.47, anthropic
before 1.0) take httpx clients only, so for them the handler's requests and responses are
carried across. The suite then runs unchanged on the newest and the lowest supported SDKs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import httpx2

Handler = Callable[[httpx2.Request], httpx2.Response]


def takes_httpx2(sdk: str) -> bool:
    """Whether the installed `sdk` ("openai", "anthropic") takes httpx2 clients."""
    base = importlib.import_module(f"{sdk}._base_client")
    return hasattr(base, "httpx2") or hasattr(base, "is_httpx2_sync_client")


def client(sdk: str, handler: Handler | None = None) -> Any:
    """A client `sdk` takes, whose requests `handler` answers (None: a real client)."""
    if takes_httpx2(sdk):
        return httpx2.Client(transport=None if handler is None else httpx2.MockTransport(handler))
    httpx = importlib.import_module(f"{sdk}._base_client").httpx
    if handler is None:
        return httpx.Client()
    answer = handler

    def carried(request: Any) -> Any:
        reply = answer(httpx2.Request(request.method, str(request.url),
                                      headers=request.headers.multi_items(),
                                      content=request.read()))
        return httpx.Response(reply.status_code, headers=reply.headers.multi_items(),
                              content=reply.read())

    return httpx.Client(transport=httpx.MockTransport(carried))
