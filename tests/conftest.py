"""Fixtures shared by the behavioural suite: every test that takes `guard` runs once per
store kind, with a manual clock the test can move."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import redis

import allotment as al

from redis_server import redis_server

START_MS = int(datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc).timestamp()) * 1000
STORE_KINDS = ["memory", "redis"]
_redis: dict[str, object] = {}


@pytest.fixture
def clock() -> al.ManualClock:
    return al.ManualClock(START_MS)


def redis_url() -> str:
    """One redis-server for the whole run, started on first use."""
    if "url" not in _redis:
        server = redis_server()
        _redis["url"], _ = server.__enter__()
        _redis["server"] = server
        _redis["next_db"] = 0
    return str(_redis["url"])


def make_store(kind: str, clock: al.ManualClock) -> Any:
    """A fresh, empty store of `kind` driven by `clock` (each Redis one in its own db)."""
    if kind == "memory":
        return al.MemoryStore(clock)
    if kind == "redis":
        from allotment.stores.redis import RedisStore

        db = int(_redis.get("next_db", 0)) % 64 if "url" in _redis else 0
        url = f"{redis_url()}/{db}"
        _redis["next_db"] = db + 1
        redis.Redis.from_url(url).flushdb()
        return RedisStore(url=url, clock=clock)
    raise AssertionError(f"unknown store kind {kind!r}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    server = _redis.pop("server", None)
    if server is not None:
        server.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, clock: al.ManualClock) -> Iterator[Any]:
    store = make_store(request.param, clock)
    yield store
    store.close()


@pytest.fixture
def guard(store: Any) -> al.Guard:
    return al.Guard(store)


LLM = al.Action("llm.completion", "openai:gpt-4o")


@pytest.fixture
def funded(guard: al.Guard) -> al.Guard:
    """A guard whose tenant acme has $10 and a million tokens a day: room for any replay."""
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme", tokens=1_000_000, period="day")
    return guard
