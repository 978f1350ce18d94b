"""Fixtures shared by every suite: each test that takes `guard` runs once per store kind and
once per way of calling it (sync methods, async twins), with a manual clock the test can
move. Helpers live in the `support` package."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import allotment as al

from support.drivers import AsyncDriven
from support.stores import START_MS, STORE_KINDS, make_store, stop_redis


@pytest.fixture
def clock() -> al.ManualClock:
    return al.ManualClock(START_MS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_redis()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, clock: al.ManualClock) -> Iterator[Any]:
    store = make_store(request.param, clock)
    yield store
    store.close()


@pytest.fixture(params=["sync", "async"])
def calls(request: pytest.FixtureRequest) -> str:
    """How the suite calls the guard: its sync methods, or their async twins."""
    return str(request.param)


@pytest.fixture
def guard(store: Any, calls: str) -> Iterator[Any]:
    """A guard on each store kind, called through its sync methods and, in a second run,
    through their async twins (see `support.drivers`)."""
    if calls == "sync":
        yield al.Guard(store)
        return
    loop = asyncio.new_event_loop()
    yield AsyncDriven(al.Guard(store), loop)
    loop.close()


@pytest.fixture
def funded(guard: al.Guard) -> al.Guard:
    """A guard whose tenant acme has $10 and a million tokens a day: room for any replay."""
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme", tokens=1_000_000, period="day")
    return guard
