"""A real store behind a switch, to test what the guard does while its store is down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import allotment as al
from allotment.stores.operations import Op


class Outage:
    """A real store behind a switch: the next `down` operations fail as an outage would;
    with `lose_answers`, they are applied first and only their answer is lost."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.down = 0
        self.lose_answers = False
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _fail(self) -> bool:
        self.calls += 1
        if self.down:
            self.down -= 1
            return True
        return False

    def execute(self, op: Op[Any]) -> Any:
        if self._fail():
            if self.lose_answers:
                self.store.execute(op)
            raise al.StoreUnavailable("store down for the test")
        return self.store.execute(op)

    async def aexecute(self, op: Op[Any]) -> Any:
        if self._fail():
            if self.lose_answers:
                await self.store.aexecute(op)
            raise al.StoreUnavailable("store down for the test")
        return await self.store.aexecute(op)


def failing_guards(store: Any, calls: str) -> Iterator[tuple[Outage, list[Any]]]:
    """A guard failing open and one failing closed on one switched store, driven sync or
    async (`calls`); the tenant acme has $10."""
    from support.drivers import AsyncDriven

    outage = Outage(store)
    guards = [al.Guard(outage, on_store_error=policy, commit_retries=1)
              for policy in ("allow", "deny")]
    guards[0].set_budget("tenant:acme", usd=10)
    if calls == "sync":
        yield outage, guards
        return
    loop = asyncio.new_event_loop()
    yield outage, [AsyncDriven(g, loop) for g in guards]
    loop.close()


def store_failures(outage: Outage, fail_open: Any, fail_closed: Any, subject: al.Subject,
                   action: al.Action) -> Any:
    """The outage script the metrics and observation tests both read: a reserve let through
    (fail open) and one refused (fail closed) while the store is down, a commit that fails
    once and lands on its retry, and a commit whose tries all fail (its spend goes to the
    sinks). Returns the reservation let through."""
    outage.down = 1
    let_through = fail_open.reserve(subject, action, al.usd(1))
    outage.down = 1
    with pytest.raises(al.StoreUnavailable):
        fail_closed.reserve(subject, action, al.usd(1))
    held = fail_open.reserve(subject, action, al.usd(1))
    outage.down = 1  # the first try fails, the retry lands
    held.commit(al.usd(1))
    outage.down = 2  # both tries fail: the spend goes to the sinks
    with pytest.raises(al.StoreUnavailable):
        let_through.commit(al.usd(1))
    return let_through
