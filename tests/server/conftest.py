"""A real uvicorn on a free loopback port per test, over a guard on each store kind (with
the system clock: the server answers remaining lifetimes in real time)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import allotment as al
from allotment.clock import system_ms

from support.served import Api, serving
from support.stores import STORE_KINDS, make_store


@dataclass
class Served:
    guard: al.Guard
    url: str

    def tenant(self, name: str, *, usd: Any = 10, permissions: Any = None,
               **key: Any) -> Api:
        """A funded tenant and an Api holding a fresh key of it."""
        if usd is not None:
            self.guard.set_budget(f"tenant:{name}", usd=usd)
        options = dict(key)
        if permissions is not None:
            options["permissions"] = permissions
        made = self.guard.create_key(name, **options)
        return Api(self.url, made.secret)


@pytest.fixture(params=STORE_KINDS)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    store = make_store(request.param, system_ms)
    guard = al.Guard(store)
    with serving(guard) as url:
        yield Served(guard, url)
    store.close()
