"""Fixtures shared by every suite: each test that takes `guard` runs once per store kind,
with a manual clock the test can move. Helpers live in the `support` package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import allotment as al

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


@pytest.fixture
def guard(store: Any) -> al.Guard:
    return al.Guard(store)


@pytest.fixture
def funded(guard: al.Guard) -> al.Guard:
    """A guard whose tenant acme has $10 and a million tokens a day: room for any replay."""
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme", tokens=1_000_000, period="day")
    return guard
