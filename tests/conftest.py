"""Fixtures shared by the behavioural suite: every test that takes `guard` runs once per
store kind, with a manual clock the test can move."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

import allotment as al

START_MS = int(datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc).timestamp()) * 1000
STORE_KINDS = ["memory"]


@pytest.fixture
def clock() -> al.ManualClock:
    return al.ManualClock(START_MS)


def make_store(kind: str, clock: al.ManualClock) -> al.MemoryStore:
    """A fresh, empty store of `kind` driven by `clock`."""
    if kind == "memory":
        return al.MemoryStore(clock)
    raise AssertionError(f"unknown store kind {kind!r}")


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, clock: al.ManualClock) -> Iterator[al.MemoryStore]:
    store = make_store(request.param, clock)
    yield store
    store.close()


@pytest.fixture
def guard(store: al.MemoryStore) -> al.Guard:
    return al.Guard(store)


LLM = al.Action("llm.completion", "openai:gpt-4o")
