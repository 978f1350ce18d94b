"""The adapters take a real guard and call its sync or async side themselves (their own
tests cover both), so this suite runs each test once per store, not once per way of calling."""

from __future__ import annotations

import pytest


@pytest.fixture
def calls() -> str:
    return "sync"
