"""Fixtures of the CLI tests (see `support/cli.py` for how each store kind is run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import allotment as al
from allotment.clock import system_ms

from support.cli import Cli
from support.stores import STORE_KINDS, make_store


@pytest.fixture(params=STORE_KINDS)
def cli(request: pytest.FixtureRequest) -> Iterator[Cli]:
    store = make_store(request.param, system_ms)
    guard = al.Guard(store)
    url = getattr(store, "url", None) if request.param == "redis" else None
    if request.param == "redis":
        assert url, "the redis store keeps its URL"
    yield Cli(guard, url)
    guard.close()
