"""The remote store: a server speaking the Cycles wire holds the state, this store sends it
each operation. Each operation runs as a flow of HTTP requests (`flow.py`); this module drives
flows, with httpx's sync client in `execute` and this event loop's async client in
`aexecute`. A server that cannot be reached is `StoreUnavailable`, so a guard's fail-open or
fail-closed setting applies as on any store."""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx

from ...errors import InvalidRequest, StoreUnavailable
from ...events import Notification
from ...extensions import HEADER
from .. import operations as ops
from .flow import Call, Flow, Flows, Reply

R = TypeVar("R")
KEY_HEADER = "X-Cycles-API-Key"


@contextmanager
def _unavailable_on_failure(url: str) -> Iterator[None]:
    """Whatever httpx raises when the server cannot answer becomes `StoreUnavailable`."""
    try:
        yield
    except httpx.HTTPError as error:
        raise StoreUnavailable(f"{url} unreachable: {type(error).__name__}: {error}") from error


def _reply(response: httpx.Response, url: str) -> Reply:
    try:
        body = response.json() if response.content else None
    except ValueError:
        raise StoreUnavailable(f"{url} answered HTTP {response.status_code} with a body "
                               "that is not JSON") from None
    return Reply(response.status_code, body, response.headers)


class HttpStore:
    """A store whose state lives on a server speaking the Cycles wire (allotment's own, or
    another Cycles server with the features its wire lacks refused). `api_key` is a tenant
    key of that server; every call touches only that tenant."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0,
                 headers: dict[str, str] | None = None,
                 verify: bool | ssl.SSLContext = True) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"url: {url!r} is not an http:// or https:// URL")
        if not isinstance(api_key, str) or not api_key:
            raise InvalidRequest(f"api_key: expected a tenant API key of the server at {url} "
                                 f"(the key_secret it answered when the key was made), got "
                                 f"{'nothing' if api_key is None else type(api_key).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidRequest(f"timeout: expected seconds > 0, got {timeout!r}")
        self.url = url.rstrip("/")
        sent = {**(headers or {}), KEY_HEADER: api_key}
        self._headers = sent
        self._timeout = timeout
        self._verify = verify
        """TLS: True checks the server's certificate against the system's CAs, an
        `ssl.SSLContext` against its own (a private CA), False checks nothing."""
        self._flows = Flows(self.url)
        self._client = httpx.Client(base_url=self.url, headers=sent, timeout=timeout,
                                    verify=verify)
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                  httpx.AsyncClient] = (
            weakref.WeakKeyDictionary())
        self._listeners: list[Callable[[list[Notification]], None]] = []

    @property
    def allotment(self) -> bool | None:
        """Whether the server announced allotment's extensions (None: not asked yet)."""
        return self._flows.allotment

    def __repr__(self) -> str:
        return f"<HttpStore {self.url}>"

    # -- driving flows ---------------------------------------------------------------------

    def execute(self, op: ops.Op[R]) -> R:
        flow = self._flows.run(op)
        with _unavailable_on_failure(self.url):
            try:
                call = next(flow)
                while True:
                    call = flow.send(self._send(call))
            except StopIteration as done:
                result: R = done.value
                return result

    async def aexecute(self, op: ops.Op[R]) -> R:
        flow: Flow = self._flows.run(op)
        client = self._aclient()
        with _unavailable_on_failure(self.url):
            try:
                call = next(flow)
                while True:
                    response = await client.request(call.method, call.path, json=call.body,
                                                    params=call.query, headers=_extra(call))
                    call = flow.send(_reply(response, self.url))
            except StopIteration as done:
                result: R = done.value
                return result

    def _send(self, call: Call) -> Reply:
        response = self._client.request(call.method, call.path, json=call.body,
                                        params=call.query, headers=_extra(call))
        return _reply(response, self.url)

    def _aclient(self) -> httpx.AsyncClient:
        """This event loop's client (an async client belongs to the loop it runs on)."""
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeout,
                verify=self._verify)
        return client

    # -- the rest of the store contract ------------------------------------------------------

    def subscribe(self, listener: Callable[[list[Notification]], None]) -> None:
        """Kept for the contract: notifications happen on the server (its webhooks), none
        reach this process."""
        self._listeners.append(listener)

    def lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Never: the server sweeps its own reservations, a remote guard has nothing to."""
        return False

    def close(self) -> None:
        self._client.close()
        for loop, client in list(self._aclients.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.aclose())
        self._aclients.clear()

    async def aclose(self) -> None:
        """Close the clients, this event loop's async one included."""
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()


def _extra(call: Call) -> dict[str, str] | None:
    return {HEADER: "1"} if call.whole else None


__all__ = ["HttpStore"]
