"""Where an operator command acts: a store URL (`--store`, `$ALLOTMENT_STORE`) through a
`Guard`, or a running `allotment serve` (`--server URL --key KEY`) over HTTP; and how each
failure becomes one line on stderr and a meaningful exit code (never a traceback)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import AllotmentError, InvalidRequest, StoreUnavailable
from ..guard import Guard

if TYPE_CHECKING:
    import httpx

STORE_ENV, SERVER_ENV, KEY_ENV = "ALLOTMENT_STORE", "ALLOTMENT_SERVER", "ALLOTMENT_KEY"
OK, REFUSED, USAGE, UNAVAILABLE = 0, 1, 2, 3
"""Exit codes: done; refused or not found; bad input (nothing changed); the store or the
server could not be reached."""
F = TypeVar("F", bound=Callable[..., Any])


class Failure(Exception):
    """An operator-facing failure: its message is printed, its code is the exit code."""

    def __init__(self, message: str, code: int = REFUSED) -> None:
        super().__init__(message)
        self.code = code


def _code_of(error: AllotmentError) -> int:
    if isinstance(error, StoreUnavailable):
        return UNAVAILABLE
    if isinstance(error, InvalidRequest):
        return USAGE
    return REFUSED  # NotFound, Forbidden, Denied, state and idempotency errors


def handled(fn: F) -> F:
    """Run a command, turning every expected failure into `allotment: <message>` on stderr
    and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Failure as failure:
            _fail(str(failure), failure.code)
        except AllotmentError as error:
            _fail(str(error), _code_of(error))
        except OSError as error:  # a plan file that cannot be read, a refused connection
            _fail(str(error), UNAVAILABLE if isinstance(error, ConnectionError) else USAGE)

    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: int) -> None:
    click.echo(f"allotment: {message}", err=True)
    raise click.exceptions.Exit(code)


def target_options(fn: F) -> F:
    """--store / --server / --key / --json, shared by every operator command."""
    for option in reversed([
        click.option("--store", envvar=STORE_ENV, default=None, metavar="URL",
                     help=f"Store URL (redis://..., memory://); also ${STORE_ENV}."),
        click.option("--server", envvar=SERVER_ENV, default=None, metavar="URL",
                     help="A running `allotment serve` (http://host:port) instead of a "
                          f"store; also ${SERVER_ENV}."),
        click.option("--key", envvar=KEY_ENV, default=None, metavar="KEY",
                     help="With --server: the admin key, or a tenant key (alk_...); "
                          f"also ${KEY_ENV}."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print JSON for scripts instead of text."),
    ]):
        fn = option(fn)
    return fn


class Server:
    """A running server's HTTP API, with the key in the header the server expects (a
    tenant key `alk_...` goes in X-Cycles-API-Key, anything else is the admin key)."""

    def __init__(self, url: str, key: str | None) -> None:
        import httpx

        headers = {}
        if key:
            header = "X-Cycles-API-Key" if key.startswith("alk_") else "X-Admin-API-Key"
            headers[header] = key
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30.0)

    def call(self, method: str, path: str, *, body: Any = None,
             params: dict[str, Any] | None = None) -> Any:
        """The answer's JSON; an error answer becomes a `Failure` with its message."""
        import httpx

        try:
            answer = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as error:
            raise Failure(f"server {self._http.base_url} unreachable: {error}",
                          UNAVAILABLE) from None
        if answer.status_code < 400:
            return answer.json()
        raise _refusal(answer)

    @contextmanager
    def lines(self, path: str, params: dict[str, Any]) -> Iterator[Iterator[str]]:
        """A streamed GET's lines as they arrive (the usage export), never the whole body
        at once; an error answer becomes a `Failure` before any line is read."""
        import httpx

        try:
            with self._http.stream("GET", path, params=params) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise _refusal(answer)
                yield answer.iter_lines()
        except httpx.HTTPError as error:
            raise Failure(f"server {self._http.base_url}: the answer broke off ({error})",
                          UNAVAILABLE) from None

    def close(self) -> None:
        self._http.close()


def _refusal(answer: httpx.Response) -> Failure:
    """The server's error envelope as one line, with the exit code its status means."""
    try:
        payload = answer.json()
        message = f"{payload.get('error', answer.status_code)}: {payload.get('message')}"
    except ValueError:
        message = answer.text.strip() or answer.reason_phrase
    code = (USAGE if answer.status_code in (400, 413, 422) else UNAVAILABLE
            if answer.status_code >= 500 else REFUSED)
    return Failure(f"server answered {answer.status_code} {message}", code)


@dataclass
class Target:
    """Either a guard on a store or a server; `as_json` asks for JSON output."""

    guard: Guard | None
    server: Server | None
    as_json: bool


@contextmanager
def opened(store: str | None, server: str | None, key: str | None,
           as_json: bool) -> Iterator[Target]:
    """The target the options name. A guard placed in the click context's `obj` (an
    embedding application, or a test running several commands on one memory store) is
    used as it is and left open."""
    ctx = click.get_current_context()
    injected = (ctx.obj or {}).get("guard") if isinstance(ctx.obj, dict) else None
    if server and store:
        raise Failure("give --store or --server, not both", USAGE)
    if injected is not None and not server:
        yield Target(injected, None, as_json)
        return
    if server:
        if not server.startswith(("http://", "https://")):
            raise Failure(f"--server {server!r}: give the server's URL, e.g. "
                          "http://127.0.0.1:7878", USAGE)
        client = Server(server, key)
        try:
            yield Target(None, client, as_json)
        finally:
            client.close()
        return
    url = store or os.environ.get(STORE_ENV)
    if not url:
        raise Failure(f"no store: give --store URL (or ${STORE_ENV}), or --server URL",
                      USAGE)
    if url.startswith("memory://"):
        click.echo("allotment: memory:// is empty in every new process and forgets all on "
                   "exit; give the shared store (redis://...) or --server", err=True)
    guard = Guard.from_url(url)
    try:
        yield Target(guard, None, as_json)
    finally:
        guard.close()


__all__ = ["OK", "REFUSED", "UNAVAILABLE", "USAGE", "Failure", "Server", "Target", "handled",
           "opened", "target_options"]
