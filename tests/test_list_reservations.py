"""Listing a tenant's reservations, on both stores and both call styles: every reservation
once across the pages, whatever their order, filtered by status, never another tenant's."""

from __future__ import annotations

from typing import Any

import pytest

import allotment as al

from support import LLM


def everything(guard: Any, tenant: str, **options: Any) -> list[al.ReservationInfo]:
    rows: list[al.ReservationInfo] = []
    cursor = None
    for _ in range(100):
        page, cursor = guard.list_reservations(tenant, cursor=cursor, **options)
        rows += page
        if cursor is None:
            return rows
    raise AssertionError("the listing never ended")


def test_pages_give_every_reservation_once(funded: Any, clock: al.ManualClock) -> None:
    subject = al.Subject(tenant="acme", agent="bot")
    made = []
    for _ in range(7):
        made.append(funded.reserve(subject, LLM, al.usd("0.01")))
        clock.advance(1)
    made[0].commit(al.usd("0.005"))
    made[1].release()
    funded.set_budget("tenant:rival", usd=1)
    funded.reserve(al.Subject(tenant="rival"), LLM, al.usd("0.01"))
    rows = everything(funded, "acme", limit=2)
    assert sorted(r.id for r in rows) == sorted(r.id for r in made)
    statuses = {r.id: r.status for r in rows}
    assert statuses[made[0].id] is al.ReservationStatus.COMMITTED
    assert statuses[made[1].id] is al.ReservationStatus.RELEASED
    active = everything(funded, "acme", status="active", limit=3)
    assert sorted(r.id for r in active) == sorted(r.id for r in made[2:])
    assert everything(funded, "nobody") == []


def test_an_expired_reservation_is_listed_as_expired(funded: Any,
                                                     clock: al.ManualClock) -> None:
    held = funded.reserve(al.Subject(tenant="acme"), LLM, al.usd("0.01"), ttl_ms=1_000,
                          grace_ms=0)
    clock.advance(2_000)
    funded.sweep()
    rows = everything(funded, "acme")
    assert [(r.id, r.status) for r in rows] == [(held.id, al.ReservationStatus.EXPIRED)]


def test_the_handle_lists_its_own_tenant(funded: Any) -> None:
    funded.reserve(al.Subject(tenant="acme"), LLM, al.usd("0.01"))
    page, cursor = funded.tenant("acme").list_reservations()
    assert len(page) == 1 and cursor is None


@pytest.mark.parametrize("bad", [{"status": "done"}, {"limit": 0}, {"cursor": ""},
                                 {"cursor": "not-a-cursor"}, {"limit": 1.5}])
def test_bad_listing_arguments_are_refused(funded: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(al.InvalidRequest):
        funded.list_reservations("acme", **bad)
