"""Every call has an async twin with the same semantics."""

from __future__ import annotations

import asyncio

import pytest

import allotment as al

from support import LLM


@pytest.fixture
def calls() -> str:
    """These tests call the async twins themselves."""
    return "sync"


def test_async_twins_mirror_the_sync_calls(guard: al.Guard, clock: al.ManualClock) -> None:
    async def main() -> None:
        await guard.aset_budget("tenant:acme", usd=10)
        await guard.aset_budget("tenant:acme/workspace:a", usd=4)
        await guard.aset_budget("tenant:acme/workspace:b", usd=4)
        subject = al.Subject(tenant="acme", workspace="a")
        assert (await guard.adecide(subject, LLM, al.usd(5))).reason == "BUDGET_EXCEEDED"
        r = await guard.areserve(subject, LLM, al.usd(2))
        await r.aextend(1_000)
        assert (await guard.aget(r.id)).extensions == 1
        assert (await r.acommit(al.usd(1))).charged == (al.usd(1),)
        r2 = await guard.areserve(subject, LLM, al.usd(1))
        assert (await r2.arelease()).released == (al.usd(1),)
        r3 = await guard.areserve(subject, LLM, al.usd(1))
        await guard.aextend(r3.id, 500)
        await guard.acommit(r3.id, al.usd(1))
        r4 = await guard.areserve(subject, LLM, al.usd(1))
        await guard.arelease(r4.id)
        await guard.arecord(subject, LLM, al.usd(0.5))
        await guard.afund("tenant:acme/workspace:a", "CREDIT", al.usd(1))
        await guard.atransfer("tenant:acme/workspace:a", "tenant:acme/workspace:b", al.usd(1))
        await guard.afreeze("tenant:acme/workspace:b")
        await guard.aunfreeze("tenant:acme/workspace:b")
        with pytest.raises(al.BudgetExceeded):
            await guard.areserve(subject, LLM, al.usd(5))
        by_scope = {b.scope: b for b in await guard.abalances("tenant:acme")}
        assert by_scope["tenant:acme/workspace:a"].spent == al.usd(2.5).amount
        assert by_scope["tenant:acme/workspace:a"].allocated == al.usd(4).amount
        assert by_scope["tenant:acme/workspace:b"].allocated == al.usd(5).amount
        held = await guard.areserve(subject, LLM, al.usd(1))
        clock.advance(70_000)
        assert await guard.asweep() == 1
        assert (await guard.aget(held.id)).status is al.ReservationStatus.EXPIRED
        assert await guard.aclose_budget("tenant:acme/workspace:b") == 1

    asyncio.run(main())


def test_async_context_manager(guard: al.Guard) -> None:
    async def main() -> None:
        guard.set_budget("tenant:acme", usd=10)
        subject = al.Subject(tenant="acme")
        with pytest.raises(ValueError):
            async with await guard.areserve(subject, LLM, al.usd(4)) as failed:
                raise ValueError("boom")
        assert (await guard.aget(failed.id)).status is al.ReservationStatus.RELEASED
        async with await guard.areserve(subject, LLM, al.usd(4)) as done:
            await done.acommit(al.usd(3))
        async with await guard.areserve(subject, LLM, al.usd(2)) as left_open:
            pass
        assert (await guard.aget(left_open.id)).charged == (al.usd(2),)
        assert guard.balances("tenant:acme")[0].spent == al.usd(5).amount

    asyncio.run(main())
