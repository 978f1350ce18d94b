"""A real server for the tests: uvicorn serving `create_app(guard)` in a thread on a free
loopback port, and an HTTP client that checks every answer against the OpenAPI file."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

import allotment as al
from allotment.server import create_app

from .openapi import validate

ADMIN_KEY = "admin-secret-for-tests"


@contextmanager
def serving(guard: al.Guard, admin_key: str | None = ADMIN_KEY,
            **options: Any) -> Iterator[str]:
    """Serve `guard` until the block ends (`options` go to `create_app`, e.g.
    `extensions=False`); yields the base URL."""
    with serving_app(create_app(guard, admin_key=admin_key, **options)) as url:
        yield url


@contextmanager
def serving_app(app: Any) -> Iterator[str]:
    """Serve any ASGI `app` until the block ends; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Answer:
    status: int
    body: Any
    headers: httpx.Headers


@dataclass
class Api:
    """Plain HTTP calls; every JSON answer is validated against the spec."""

    url: str
    key: str | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def call(self, method: str, path: str, body: Any = None, *, key: str | None = None,
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             check: bool = True) -> Answer:
        sent = dict(headers or {})
        secret = key if key is not None else self.key
        if secret is not None and "X-Cycles-API-Key" not in sent:
            sent["X-Cycles-API-Key"] = secret
        if raw is not None:
            sent.setdefault("Content-Type", "application/json")
            response = self.client.request(method, self.url + path, content=raw,
                                           headers=sent)
        else:
            response = self.client.request(method, self.url + path, json=body, headers=sent)
        data = response.json() if response.content else None
        assert "X-Request-Id" in response.headers
        assert len(response.headers["X-Cycles-Trace-Id"]) == 32
        if check and path.startswith("/v1/"):
            validate(method, path, response.status_code, data)
        if response.status_code >= 400 and isinstance(data, dict):
            assert data["trace_id"] == response.headers["X-Cycles-Trace-Id"]
            assert data["request_id"] == response.headers["X-Request-Id"]
        return Answer(response.status_code, data, response.headers)

    def post(self, path: str, body: Any = None, **options: Any) -> Answer:
        return self.call("POST", path, body, **options)

    def get(self, path: str, **options: Any) -> Answer:
        return self.call("GET", path, **options)
