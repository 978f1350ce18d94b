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


class Sneaky(str):
    """A str that answers differently the second time it is asked."""

    asked = 0

    def lower(self) -> str:
        Sneaky.asked += 1
        return "acme" if Sneaky.asked == 1 else "rival"

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


def test_the_handle_forwards_the_checked_value_not_the_object_it_was_given(
        guard: al.Guard) -> None:
    """What the store sees is read once from the arguments, checked, and compared; an
    object that would answer differently the second time never gets a second time."""
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:rival", usd=10)
    acme = guard.tenant("acme")
    Sneaky.asked = 0
    acme.set_budget(Sneaky("tenant:acme"), usd=20)
    constructed = al.Subject.model_construct(tenant="rival", dimensions={})
    with pytest.raises(al.Forbidden):
        acme.reserve(constructed, LLM, al.usd(1))
    with pytest.raises(al.Forbidden):
        acme.subject(constructed)
    unchecked = al.Subject.model_construct(tenant="a b", dimensions={})
    with pytest.raises(al.InvalidRequest, match="tenant"):
        guard.reserve(unchecked, LLM, al.usd(1))
    assert guard.balances("tenant:acme")[0].allocated == al.usd(20).amount
    (rival,) = guard.balances("tenant:rival")
    assert (rival.allocated, rival.reserved, rival.spent) == (al.usd(10).amount, 0, 0)


def test_a_subject_subclass_is_read_as_the_subject_its_fields_make(guard: al.Guard) -> None:
    class Lying(al.Subject):
        def scopes(self) -> tuple[str, ...]:
            return ("tenant:rival",)

    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:rival", usd=10)
    held = guard.tenant("acme").reserve(Lying(tenant="acme"), LLM, al.usd(1))
    assert held.info.scopes == ("tenant:acme",)
    assert guard.balances("tenant:acme")[0].reserved == al.usd(1).amount
    assert guard.balances("tenant:rival")[0].reserved == 0


def test_a_reservation_from_a_handle_leads_back_to_the_handle_only(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=10)
    acme = guard.tenant("acme")
    held = acme.reserve(acme.subject(), LLM, al.usd(1))
    assert not isinstance(held.guard, al.Guard)
    assert held.guard.name == "acme"
