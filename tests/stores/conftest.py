"""The store suites race threads and processes on one guard and inspect each store's own
state; the async twins are covered by the behavioural suite and the Redis flow tests, so
these run each test once per store, through the sync calls."""

from __future__ import annotations

import pytest


@pytest.fixture
def calls() -> str:
    return "sync"
