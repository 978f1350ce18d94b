"""Isolation: a tenant handle cannot reach another tenant's data, and one tenant's
exhaustion never touches another's."""

from __future__ import annotations

import pytest

import allotment as al

from support import LLM


def test_reservation_ids_carry_their_tenant(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=1)
    r = guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.1))
    assert r.id.split(":")[0] == "acme" and guard.get(r.id).tenant == "acme"


def test_tenant_handle_refuses_other_tenants_before_the_store(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:rival", usd=10)
    rival = guard.reserve(al.Subject(tenant="rival"), LLM, al.usd(1))
    acme = guard.tenant("acme")
    with pytest.raises(al.Forbidden):
        acme.commit(rival.id, al.usd(1))
    with pytest.raises(al.Forbidden):
        acme.release(rival.id)
    with pytest.raises(al.Forbidden):
        acme.extend(rival.id, 1_000)
    with pytest.raises(al.Forbidden):
        acme.get(rival.id)
    with pytest.raises(al.Forbidden):
        acme.balances("tenant:rival")
    with pytest.raises(al.Forbidden):
        acme.reserve(al.Subject(tenant="rival"), LLM, al.usd(1))
    with pytest.raises(al.Forbidden):
        acme.set_budget("tenant:rival", usd=1_000_000)
    with pytest.raises(al.Forbidden):
        acme.transfer("tenant:acme", "tenant:rival", al.usd(1))
    with pytest.raises(al.Forbidden):
        acme.fund("tenant:rival", "CREDIT", al.usd(1))
    with pytest.raises(al.Forbidden):
        acme.freeze("tenant:rival")
    # a made-up id of another tenant is Forbidden, not NotFound: no store access happened
    with pytest.raises(al.Forbidden):
        acme.get("ghost:" + "0" * 32)
    assert guard.get(rival.id).status is al.ReservationStatus.ACTIVE
    assert guard.balances("tenant:rival")[0].allocated == al.usd(10).amount


def test_tenant_handle_works_on_its_own_tenant(guard: al.Guard) -> None:
    acme = guard.tenant("ACME")
    acme.set_budget("tenant:acme", usd=10)
    r = acme.reserve(acme.subject(workspace="w"), LLM, al.usd(2))
    assert acme.get(r.id).status is al.ReservationStatus.ACTIVE
    acme.commit(r.id, al.usd(1))
    assert acme.balances()[0].spent == al.usd(1).amount
    assert acme.decide(acme.subject(), LLM, al.usd(100)).reason == (
        al.Reason.BUDGET_EXCEEDED)
    with al.scope(tenant="acme", run="r-1"):
        assert acme.reserve(None, LLM, al.usd(1)).info.subject.dimensions == {"run": "r-1"}
    with al.scope(tenant="rival"), pytest.raises(al.Forbidden):
        acme.reserve(None, LLM, al.usd(1))


def test_one_tenant_exhausting_its_budget_leaves_the_others_untouched(
        guard: al.Guard) -> None:
    tenants = [f"t{i:02d}" for i in range(50)]
    for name in tenants:
        guard.set_budget(f"tenant:{name}", usd=100, period="month")
    runaway = al.Subject(tenant="t00", workflow="loop")
    spent = 0
    with pytest.raises(al.BudgetExceeded) as stopped:
        while True:
            guard.reserve(runaway, LLM, al.usd(3)).commit(al.usd(3))
            spent += 3
    assert stopped.value.decision.scope == "tenant:t00"
    assert spent == 99
    for name in tenants[1:]:
        r = guard.reserve(al.Subject(tenant=name), LLM, al.usd(3))
        r.commit(al.usd(2))
        (b,) = guard.balances(f"tenant:{name}")
        assert (b.spent, b.remaining) == (al.usd(2).amount, al.usd(98).amount)


def test_tenant_handle_reads_its_own_audit_and_report_only(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:rival", usd=10)
    guard.reserve(al.Subject(tenant="rival"), LLM, al.usd(1)).commit(al.usd(1))
    acme = guard.tenant("acme")
    acme.reserve(acme.subject(), LLM, al.usd(2)).commit(al.usd(2))
    assert {r.tenant for r in acme.audit(limit=100)} == {"acme"}
    assert [row.committed for row in acme.report()] == [{al.Unit.USD_MICROCENTS: al.usd(2).amount}]
    acme.set_quota("tenant:acme", calls=1, window="minute")
    with pytest.raises(al.Forbidden):
        acme.set_quota("tenant:rival", calls=0, window="minute")
    with pytest.raises(al.Forbidden):
        acme.set_access("tenant:rival", models_deny=["*"])
    assert not hasattr(acme, "guard")  # the handle does not lead back to every tenant
