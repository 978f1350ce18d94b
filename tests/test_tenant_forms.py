"""A tenant can be named as `acme` or as its scope `tenant:acme` wherever a call takes a
tenant or a scope: both readings are unambiguous, so neither is refused."""

from __future__ import annotations

import pytest

import allotment as al

from support import LLM


def test_a_bare_tenant_name_is_its_scope(guard: al.Guard) -> None:
    guard.set_budget("acme", usd=10)
    assert [b.scope for b in guard.balances("tenant:acme")] == ["tenant:acme"]
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1)).commit(al.usd(1))
    (balance,) = guard.balances("acme")
    assert balance.spent == al.usd(1).amount
    guard.freeze("ACME")
    assert guard.balances("acme")[0].status is al.BudgetStatus.FROZEN


def test_a_tenant_scope_is_its_name(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=10)
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1)).commit(al.usd(1))
    assert guard.audit("tenant:acme") == guard.audit("acme")
    assert guard.report("tenant:acme") == guard.report("acme")
    guard.set_mode("tenant:acme", "shadow")
    with pytest.raises(al.Forbidden):
        guard.tenant("tenant:acme").balances("tenant:rival")
    assert guard.tenant("tenant:acme").balances()[0].scope == "tenant:acme"


@pytest.mark.parametrize("text", ["acme/workspace:w", "tenant:acme/workspace", "workspace:w",
                                  "tenant:", ":acme"])
def test_a_scope_that_reads_two_ways_is_still_refused(guard: al.Guard, text: str) -> None:
    with pytest.raises(al.InvalidRequest, match="scope"):
        guard.set_budget(text, usd=1)
    with pytest.raises(al.InvalidRequest):
        guard.audit(text)
