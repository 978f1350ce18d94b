"""The app with a fast lane: the runtime plane's routes are dispatched from a small table at
the ASGI level, ahead of Starlette's middleware and router, with the app's own exception
handlers. Everything else (admin routes, 404/405, HEAD, a root path, redirects) goes through
Starlette as before.

A request the table takes sees what Starlette would have given it: the same `Request`
(`scope["app"]`, `scope["router"]`, `path_params`), the same handler per exception class,
and an unexpected exception answered with the 500 envelope and then raised to the server,
as Starlette's `ServerErrorMiddleware` does. The table's routes are also kept first in the
router, so `app.routes` lists them and a wrong method on their paths is a 405 there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]
_Entry = tuple[str, str, str, Endpoint]
"""(prefix, suffix, parameter name or "" for a static path, endpoint)."""


class _Headers(Headers):
    """Starlette's request headers, looked up in a dict made on first use (a name's first
    value, as `Headers` gives it) instead of a scan of the list per lookup and a raised
    `KeyError` per absent header."""

    _first: dict[str, str] | None = None

    def _index(self) -> dict[str, str]:
        first: dict[str, str] = {}
        for key, value in self._list:
            name = key.decode("latin-1")
            if name not in first:
                first[name] = value.decode("latin-1")
        self._first = first
        return first

    def get(self, key: str, default: Any = None) -> Any:
        return (self._first or self._index()).get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return (self._first or self._index())[key.lower()]

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in (self._first or self._index())


class _Request(Request):
    """A `Request` whose headers are `_Headers`."""

    @property
    def headers(self) -> Headers:
        headers: Headers | None = self.__dict__.get("_headers")
        if headers is None:
            headers = self._headers = _Headers(scope=self.scope)
        return headers


def _entry(route: Route) -> _Entry:
    """A route's table entry: a static path, or one `{name}` segment between a fixed prefix
    and suffix (Starlette's `[^/]+`)."""
    path = route.path
    opened = path.find("{")
    if opened < 0:
        return path, "", "", route.endpoint
    closed = path.index("}", opened)
    name = path[opened + 1:closed]
    prefix, suffix = path[:opened], path[closed + 1:]
    if (not name.isidentifier() or "{" in suffix or not prefix.endswith("/")
            or (suffix and not suffix.startswith("/"))):
        raise ValueError(f"fast route {path!r}: one plain {{name}} segment at most")
    return prefix, suffix, name, route.endpoint


class App(Starlette):
    """Starlette, plus a table of hot routes answered ahead of the middleware stack while
    the app has no middleware of its own and is not in debug mode (otherwise every request
    goes through Starlette)."""

    def __init__(self, *, routes: Sequence[BaseRoute], hot: Sequence[Route],
                 exception_handlers: Mapping[Any, Handler]) -> None:
        super().__init__(routes=[*hot, *routes], exception_handlers=dict(exception_handlers))
        self._hot: dict[str, list[_Entry]] = {}
        for route in hot:
            self._index(route, first=False)

    def add_hot_route(self, route: Route) -> None:
        """Put `route` first: in the table and in the router."""
        self.router.routes.insert(0, route)
        self._index(route, first=True)

    def _index(self, route: Route, first: bool) -> None:
        if not isinstance(route, Route) or not route.methods:
            raise ValueError(f"fast route: expected a Route with methods, got {route!r}")
        entry = _entry(route)
        for method in route.methods - {"HEAD"}:  # HEAD goes through Starlette
            entries = self._hot.setdefault(method, [])
            entries.insert(0, entry) if first else entries.append(entry)

    def _match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        for prefix, suffix, name, endpoint in self._hot.get(method, ()):
            if not name:
                if path == prefix:
                    return endpoint, {}
            elif path.startswith(prefix) and path.endswith(suffix):
                value = path[len(prefix):len(path) - len(suffix)]
                if value and "/" not in value:
                    return endpoint, {name: value}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and not scope.get("root_path") and not self.user_middleware
                and not self.debug):  # debug: Starlette's traceback pages
            found = self._match(scope["method"], scope["path"])
            if found is not None:
                await self._serve(found[0], found[1], scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, params: dict[str, str], scope: Scope,
                     receive: Receive, send: Send) -> None:
        scope["app"] = self
        scope["router"] = self.router
        scope["path_params"] = params
        request = _Request(scope, receive, send)
        crashed: Exception | None = None
        try:
            response = await endpoint(request)
        except Exception as error:
            handler = self._handler(error)
            if handler is None:  # what ServerErrorMiddleware does: answer 500, then raise
                handler, crashed = self.exception_handlers[Exception], error
            response = await handler(request, error)
        await response(scope, receive, send)
        if crashed is not None:
            raise crashed

    def _handler(self, error: Exception) -> Handler | None:
        """The handler of the error's nearest class, as Starlette's exception middleware
        picks it (`Exception` itself is the server-error handler's)."""
        handlers = self.exception_handlers
        for cls in type(error).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]  # type: ignore[no-any-return]
        return None
