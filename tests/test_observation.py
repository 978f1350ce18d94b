"""Observers see every enforcement call once, as it ended: through the guard, a tenant handle
and their reservations, on both stores, through the sync calls and their async twins; and
an observer never changes what the call does."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import allotment as al

from support import LLM
from support.outage import failing_guards, store_failures

ACME = al.Subject(tenant="acme", workflow="chat")


def real(guard: Any) -> al.Guard:
    """The guard behind the async driver (observers are registered on it directly)."""
    return getattr(guard, "driven", guard)


@pytest.fixture
def seen(guard: Any) -> list[al.Observation]:
    observations: list[al.Observation] = []
    real(guard).add_observer(observations.append)
    return observations


def test_each_enforcement_call_is_observed_once_with_what_it_did(
        guard: Any, seen: list[al.Observation]) -> None:
    guard.set_budget("tenant:acme", usd=10)
    held = guard.reserve(ACME, LLM, al.usd(1))
    decision = guard.decide(ACME, LLM, al.usd(1))
    held.extend(1_000)
    held.commit(al.usd("0.5"))
    other = guard.reserve(ACME, LLM, al.usd(1))
    guard.extend(other.id, 1_000)
    guard.release(other.id)
    third = guard.reserve(ACME, LLM, al.usd(1))
    guard.commit(third.id, al.usd("0.25"))
    guard.record(ACME, LLM, al.usd("0.1"))
    guard.balances("tenant:acme")  # reads and administration are not observed
    guard.get(held.id)
    guard.set_quota("tenant:acme", calls=100, window="minute")

    assert [o.call for o in seen] == ["reserve", "decide", "extend", "commit", "reserve",
                                      "extend", "release", "reserve", "commit", "record"]
    assert {o.tenant for o in seen} == {"acme"}
    assert all(o.error is None and o.store_errors == 0 and o.duration_ns > 0 for o in seen)
    reserve, decide = seen[0], seen[1]
    assert reserve.decision == held.decision and reserve.reservation_id == held.id
    assert reserve.scopes == ("tenant:acme", "tenant:acme/workflow:chat")
    assert reserve.action == LLM and reserve.result.id == held.id
    assert decide.decision == decision and decide.reservation_id is None
    assert [o.reservation_id for o in seen[2:9]] == [held.id, held.id, other.id, other.id,
                                                     other.id, third.id, third.id]
    assert seen[3].result.charged == (al.usd("0.5"),)
    assert seen[9].scopes == reserve.scopes and seen[9].decision is None


def test_a_denial_is_observed_with_its_decision_and_error(
        guard: Any, seen: list[al.Observation]) -> None:
    guard.set_budget("tenant:acme", usd=1)
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(ACME, LLM, al.usd(2))
    answer = guard.decide(ACME, LLM, al.usd(2))
    (reserve, decide) = seen
    assert reserve.error is denied.value and reserve.decision == denied.value.decision
    assert reserve.decision.outcome is al.Outcome.DENY
    assert reserve.decision.reason == al.Reason.BUDGET_EXCEEDED
    assert reserve.result is None and reserve.reservation_id is None
    assert decide.error is None and decide.decision == answer
    assert decide.decision.outcome is al.Outcome.DENY


def test_tenant_handles_their_reservations_and_with_blocks_are_observed(
        guard: Any, seen: list[al.Observation]) -> None:
    guard.set_budget("tenant:acme", usd=10)
    acme = guard.tenant("acme")
    with acme.reserve(acme.subject(), LLM, al.usd(1)) as held:
        pass  # ends unsettled: charged the estimate
    with pytest.raises(RuntimeError), acme.reserve(acme.subject(), LLM, al.usd(1)):
        raise RuntimeError("the model call failed")  # released
    with pytest.raises(al.Forbidden):
        acme.release(f"rival:{'0' * 32}")  # refused before the store: observed as refused
    assert [o.call for o in seen] == ["reserve", "commit", "reserve", "release", "release"]
    assert seen[1].reservation_id == held.id and seen[1].result.charged == (al.usd(1),)
    assert isinstance(seen[4].error, al.Forbidden) and seen[4].tenant == "rival"


def test_a_reservation_made_before_the_observer_is_observed_when_settled(
        guard: Any) -> None:
    guard.set_budget("tenant:acme", usd=10)
    held = guard.reserve(ACME, LLM, al.usd(1))
    seen: list[al.Observation] = []
    real(guard).add_observer(seen.append)
    held.commit(al.usd(1))
    assert [(o.call, o.reservation_id) for o in seen] == [("commit", held.id)]


def test_a_failing_observer_is_logged_and_changes_nothing(
        guard: Any, caplog: pytest.LogCaptureFixture) -> None:
    def broken(observation: al.Observation) -> None:
        raise ValueError("observer bug")

    seen: list[al.Observation] = []
    real(guard).add_observer(broken)
    real(guard).add_observer(seen.append)  # registered after the broken one: still told
    guard.set_budget("tenant:acme", usd=10)
    with caplog.at_level(logging.ERROR, logger="allotment"):
        held = guard.reserve(ACME, LLM, al.usd(1))
        held.commit(al.usd(1))
    assert guard.balances("tenant:acme")[0].spent == al.usd(1).amount
    assert [o.call for o in seen] == ["reserve", "commit"]
    assert sum("observer" in r.getMessage() for r in caplog.records) == 2


def test_observers_are_added_and_removed_with_clear_errors(guard: Any) -> None:
    seen: list[al.Observation] = []
    g = real(guard)
    assert g.add_observer(seen.append) == seen.append
    g.set_budget("tenant:acme", usd=10)
    guard.reserve(ACME, LLM, al.usd(1))
    g.remove_observer(seen.append)
    guard.reserve(ACME, LLM, al.usd(1))
    assert len(seen) == 1
    with pytest.raises(al.NotFound, match="not registered"):
        g.remove_observer(seen.append)
    with pytest.raises(al.InvalidRequest, match="callable"):
        g.add_observer("print")  # type: ignore[arg-type]


@pytest.fixture(params=["sync", "async"])
def outage_guard(request: pytest.FixtureRequest, store: Any) -> Any:
    """Guards failing open and closed on one switched store, sync or async."""
    yield from failing_guards(store, request.param)


def test_store_failures_are_observed_with_how_they_were_handled(outage_guard: Any) -> None:
    outage, (fail_open, fail_closed) = outage_guard
    seen: list[al.Observation] = []
    for guard in (fail_open, fail_closed):
        real(guard).add_observer(seen.append)
    let_through = store_failures(outage, fail_open, fail_closed, ACME, LLM)

    assert [(o.call, o.store_errors, type(o.error).__name__) for o in seen] == [
        ("reserve", 1, "NoneType"), ("reserve", 1, "StoreUnavailable"),
        ("reserve", 0, "NoneType"), ("commit", 1, "NoneType"),
        ("record", 2, "StoreUnavailable")]
    assert seen[0].decision.reason == "STORE_UNAVAILABLE"
    assert seen[0].reservation_id == let_through.id
