"""The runtime routes are answered from the app's own table ahead of Starlette's router
(`allotment.server.plane`): every request gets what Starlette's routing gives for the same
routes and exception handlers. Both apps serve one guard over real HTTP; each request goes
to both and the answers are compared (status, header names, the headers that are not ids,
the body without its ids)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from test_runtime import reserve_body

import allotment as al
from allotment.server import create_app

from support.served import ADMIN_KEY, serving_app

IDS = {"x-request-id", "x-cycles-trace-id", "date"}


class Pair:
    """The app as served, and Starlette routing the same routes with the same handlers."""

    def __init__(self, fast: str, plain: str, key: str, other: str) -> None:
        self.fast, self.plain, self.key, self.other = fast, plain, key, other
        self.client = httpx.Client(timeout=10)

    def both(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None, key: str | None = None,
             vary: bool = False) -> tuple[httpx.Response, httpx.Response]:
        """The same request to both apps (`vary`: each body's idempotency key made unique
        per app, for calls that write)."""
        answers = []
        for url, suffix in ((self.fast, "-fast"), (self.plain, "-plain")):
            sent = {"X-Cycles-API-Key": key if key is not None else self.key,
                    **(headers or {})}
            data = body
            if vary and isinstance(body, dict):
                data = {**body, "idempotency_key": body["idempotency_key"] + suffix}
            answers.append(self.client.request(
                method, url + path, headers=sent, follow_redirects=False,
                content=raw if raw is not None else None,
                json=data if raw is None else None))
        return answers[0], answers[1]

    def same(self, method: str, path: str, **options: Any) -> httpx.Response:
        fast, plain = self.both(method, path, **options)
        assert fast.status_code == plain.status_code, (fast.text, plain.text)
        assert _headers(fast) == _headers(plain)
        assert _body(fast) == _body(plain)
        return fast


def _headers(answer: httpx.Response) -> dict[str, str]:
    """Header names, with the values of those that are not ids or lengths (a reservation id
    differs between the apps, so a body's length may too)."""
    shown = {name: ("*" if name in IDS or name == "content-length" else value)
             for name, value in answer.headers.items()}
    if "location" in shown:  # a redirect names its own server
        shown["location"] = httpx.URL(shown["location"]).path
    return shown


def _body(answer: httpx.Response) -> Any:
    if not answer.content:
        return None
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return answer.text
    data = answer.json()
    if isinstance(data, dict):
        for name in ("request_id", "trace_id", "reservation_id", "expires_at_ms",
                     "remaining_ttl_ms", "created_at_ms", "balances"):
            if name in data:
                data[name] = "*"
    return data


async def _crash(request: Request) -> Response:
    raise RuntimeError("a bug in a route")


@pytest.fixture
def pair() -> Iterator[Pair]:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:other", usd=10)
    key, other = guard.create_key("acme").secret, guard.create_key("other").secret
    app = create_app(guard, admin_key=ADMIN_KEY)
    app.add_hot_route(Route("/crash", _crash, methods=["POST"]))
    plain = Starlette(routes=list(app.routes), exception_handlers=dict(app.exception_handlers))
    with serving_app(app) as fast_url, serving_app(plain) as plain_url:
        yield Pair(fast_url, plain_url, key, other)
    guard.close()


def test_the_runtime_routes_answer_as_starlettes_router(pair: Pair) -> None:
    made = pair.same("POST", "/v1/reservations", body=reserve_body("r"), vary=True)
    assert made.status_code == 200
    assert made.headers["x-cycles-tenant"] == "acme"
    rid = made.json()["reservation_id"]
    fast_get = pair.client.get(f"{pair.fast}/v1/reservations/{rid}",
                               headers={"X-Cycles-API-Key": pair.key})
    plain_get = pair.client.get(f"{pair.plain}/v1/reservations/{rid}",
                                headers={"X-Cycles-API-Key": pair.key})
    assert fast_get.status_code == plain_get.status_code == 200
    assert fast_get.json() == plain_get.json()  # the same reservation, read by either app
    pair.same("POST", "/v1/decide", body={k: v for k, v in reserve_body("d").items()})
    pair.same("GET", "/v1/balances?tenant=acme")
    pair.same("GET", "/v1/reservations")
    pair.same("GET", "/v1/allotment")


def test_refusals_answer_as_starlettes_router(pair: Pair) -> None:
    mine = reserve_body("o")
    made = pair.client.post(f"{pair.fast}/v1/reservations",
                            json={**mine, "subject": {"tenant": "other"}},
                            headers={"X-Cycles-API-Key": pair.other})
    theirs = made.json()["reservation_id"]
    commit = {"idempotency_key": "c", "actual": {"unit": "USD_MICROCENTS", "amount": 1}}
    for method, path, options in [
        ("POST", "/v1/reservations", {"key": ""}),  # no key: 401
        ("POST", "/v1/reservations", {"key": "nope"}),  # unknown key: 401
        ("POST", "/v1/reservations", {"raw": b"{not json"}),  # 400
        ("POST", "/v1/reservations", {"body": [1, 2]}),  # 400: not an object
        ("POST", "/v1/reservations", {"body": {**reserve_body("x"), "extra": 1}}),
        ("POST", "/v1/reservations", {"raw": b"{" + b" " * 70_000 + b"}"}),  # 413
        ("POST", "/v1/reservations", {"body": reserve_body("h"),
                                      "headers": {"X-Idempotency-Key": "other"}}),
        ("POST", f"/v1/reservations/{theirs}/commit", {"body": commit}),  # 403
        ("POST", "/v1/reservations/unknown/commit", {"body": commit}),  # 404
        ("POST", "/v1/reservations/a/b/commit", {"body": commit}),  # no route: 404
        ("POST", "/v1/reservations/", {"body": reserve_body("s")}),  # trailing slash
        ("PUT", "/v1/reservations", {"body": reserve_body("p")}),  # 405 with Allow
        ("DELETE", f"/v1/reservations/{theirs}", {}),  # 405
        ("HEAD", f"/v1/reservations/{theirs}", {}),  # HEAD goes to Starlette
        ("GET", f"/v1/reservations/{theirs}/commit", {}),  # 405
        ("POST", "/v1/reservations", {"body": reserve_body("big", 10**15)}),  # 409 denial
        ("POST", f"/v1/reservations/{theirs}/release",
         {"body": {"idempotency_key": "r"}, "key": "", "headers": {
             "X-Admin-API-Key": "wrong"}}),  # wrong admin key: 401
    ]:
        pair.same(method, path, **options)


def test_trace_ids_are_taken_from_the_request_as_before(pair: Pair) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    for headers, taken in (({"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}, True),
                           ({"X-Cycles-Trace-Id": trace}, True),
                           ({"TraceParent": f"00-{trace}-0-01"}, False)):  # malformed
        fast, plain = pair.both("POST", "/v1/reservations", key="", headers=headers)
        assert fast.status_code == plain.status_code == 401
        for answer in (fast, plain):
            assert (answer.headers["x-cycles-trace-id"] == trace) is taken
            assert answer.json()["trace_id"] == answer.headers["x-cycles-trace-id"]


def test_a_crash_is_the_500_envelope_and_reaches_the_server(
        pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        answer = pair.same("POST", "/crash", body={})
        assert answer.status_code == 500
        assert answer.json()["error"] == "INTERNAL_ERROR"
        # each app logs it (allotment.server) and raises it on to uvicorn, which logs it
        # too, after the answer has gone out
        deadline = time.monotonic() + 10
        while len(_crashes(caplog)) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    crashed = _crashes(caplog)
    assert len([r for r in crashed if r.name == "allotment.server"]) == 2
    assert len([r for r in crashed if r.name.startswith("uvicorn")]) == 2


def _crashes(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.exc_info and "a bug in a route" in str(r.exc_info[1])]


class _Seen:
    """A middleware that marks every answer it passes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def marked(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-seen", b"1")]
            await send(message)

        await self.app(scope, receive, marked)


def test_an_app_with_middleware_serves_every_request_through_it() -> None:
    guard = al.Guard()
    app = create_app(guard)
    app.add_middleware(_Seen)
    with serving_app(app) as url:
        for method, path in (("POST", "/v1/reservations"), ("GET", "/v1/balances"),
                             ("GET", "/actuator/health/readiness")):
            answer = httpx.request(method, url + path, timeout=10)
            assert answer.headers.get("x-seen") == "1", (method, path, answer.status_code)
    guard.close()
