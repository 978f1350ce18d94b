"""`close_tenant`: one store step closes a tenant for good (open reservations released, budgets
closed, keys revoked, its webhooks disabled); afterwards it is read, never changed, and a
replay of what it did before still answers as it did (both stores, sync and async)."""

from __future__ import annotations

from typing import Any

import pytest

import allotment as al
from allotment.errors import TenantClosed

ACME = "tenant:acme"
LLM = al.Action("llm.completion", "openai:gpt-4o")
WHO = al.Subject(tenant="acme", workspace="w")


def opened(guard: al.Guard) -> dict[str, Any]:
    """acme with two budgets, a key, a subscription, a committed reservation (keyed), an
    open one and one past its ttl and grace; beta beside it, untouched by anything here."""
    guard.set_budget(ACME, tokens=1_000)
    guard.set_budget(f"{ACME}/workspace:w", tokens=500)
    guard.set_budget("tenant:beta", tokens=1_000)
    guard.register_tenant("acme", "Acme Corp")
    key = guard.create_key("acme")
    beta_key = guard.create_key("beta")
    hook = guard.subscribe_webhook("https://hooks.example/acme", tenant="acme",
                                   events=["budget.exhausted"])
    done = guard.reserve(WHO, LLM, al.tokens(100), idempotency_key="r-done")
    committed = done.commit(al.tokens(80), idempotency_key="c-done")
    short = guard.reserve(WHO, LLM, al.tokens(30), ttl_ms=1_000, grace_ms=0)
    still = guard.reserve(WHO, LLM, al.tokens(50), idempotency_key="r-open")
    beta = guard.reserve(al.Subject(tenant="beta"), LLM, al.tokens(10))
    return {"key": key, "beta_key": beta_key, "hook": hook, "done": done,
            "committed": committed, "short": short, "still": still, "beta": beta}


def test_closing_releases_closes_revokes_and_disables_in_one_step(
        guard: al.Guard, clock: al.ManualClock) -> None:
    made = opened(guard)
    clock.advance(2_000)  # `short` is past its ttl: it expires, the other open one is released
    beta_before = guard.balances("tenant:beta")
    closure = guard.close_tenant("acme", actor="ops@platform", reason="contract ended")
    assert (closure.released, closure.budgets_closed, closure.keys_revoked,
            closure.webhooks_disabled, closure.changed) == (1, 2, 1, 1, True)
    assert closure.info.name == "Acme Corp"
    assert closure.info.closed_at_ms == clock()
    rows = guard.balances(ACME)
    assert [(r.scope, r.reserved, r.spent, r.status) for r in rows] == [
        (ACME, 0, 80, al.BudgetStatus.CLOSED),
        (f"{ACME}/workspace:w", 0, 80, al.BudgetStatus.CLOSED)]
    assert guard.get(made["still"].id).status is al.ReservationStatus.RELEASED
    assert guard.get(made["short"].id).status is al.ReservationStatus.EXPIRED
    assert [key.revoked for key in guard.keys("acme")] == [True]
    assert [hook.enabled for hook in guard.webhooks("acme")] == [False]
    info = guard.tenant_info("acme")
    assert info is not None and info.closed_at_ms == closure.info.closed_at_ms
    closed = [r for r in guard.audit("acme") if r.type == al.AuditType.TENANT_CLOSED]
    assert [(r.actor, r.reason, r.detail) for r in closed] == [
        ("ops@platform", "contract ended",
         {"released": 1, "budgets_closed": 2, "keys_revoked": 1})]
    released = [r for r in guard.audit("acme") if r.type == al.AuditType.RELEASED]
    assert [(r.reservation_id, r.detail) for r in released] == [
        (made["still"].id, {"reason": "tenant closed"})]
    # the wall: beta keeps its budget, its open reservation, its key
    assert guard.balances("tenant:beta") == beta_before
    assert guard.get(made["beta"].id).status is al.ReservationStatus.ACTIVE
    assert guard.validate_key(made["beta_key"].secret).refusal is None
    made["beta"].commit(al.tokens(10))


def test_a_closed_tenant_denies_reservations_and_refuses_every_change(
        guard: al.Guard) -> None:
    made = opened(guard)
    guard.close_tenant("acme")
    denied = guard.decide(WHO, LLM, al.tokens(1))
    assert (denied.outcome, denied.reason, denied.scope) == (
        al.Outcome.DENY, "TENANT_CLOSED", ACME)
    with pytest.raises(al.Denied) as refused:
        guard.reserve(WHO, LLM, al.tokens(1))
    assert refused.value.decision.reason == "TENANT_CLOSED"
    denials = [r for r in guard.audit("acme") if r.type == al.AuditType.DENIED]
    assert [(r.reason, r.scopes, r.estimate) for r in denials] == [
        ("TENANT_CLOSED", (ACME,), (al.tokens(1),))]
    changes = {
        "commit": lambda: made["still"].commit(al.tokens(1)),
        "release": lambda: made["still"].release(),
        "extend": lambda: made["still"].extend(1_000),
        "commit of one never made": lambda: guard.commit("acme:" + "ab" * 16,
                                                 al.tokens(1)),
        "record": lambda: guard.record(WHO, LLM, al.tokens(1)),
        "set_budget": lambda: guard.set_budget(ACME, tokens=5),
        "fund": lambda: guard.fund(ACME, "CREDIT", al.tokens(5)),
        "transfer": lambda: guard.transfer(ACME, f"{ACME}/workspace:w", al.tokens(5)),
        "freeze": lambda: guard.freeze(ACME),
        "set_budget_terms": lambda: guard.set_budget_terms(ACME, "TOKENS", overdraft_limit=1),
        "set_quota": lambda: guard.set_quota(ACME, calls=5, window="minute"),
        "set_access": lambda: guard.set_access(ACME, models_allow=["gpt-*"]),
        "set_mode": lambda: guard.set_mode("acme", "shadow"),
        "assign_plan": lambda: guard.assign_plan(
            "acme", al.Plan(name="free", budgets=(al.BudgetSpec(tokens=10),))),
        "create_key": lambda: guard.create_key("acme"),
        "update_key": lambda: guard.update_key(made["key"].key.key_id, name="again"),
        "subscribe_webhook": lambda: guard.subscribe_webhook(
            "https://hooks.example/again", tenant="acme", events=["budget.exhausted"]),
        "enable_webhook": lambda: guard.enable_webhook(made["hook"].id),
        "update_webhook": lambda: guard.update_webhook(
            made["hook"].id, url="https://hooks.example/moved", events=["budget.exhausted"]),
    }
    before = (guard.balances(ACME), len(guard.audit("acme")))
    for name, change in changes.items():
        with pytest.raises(TenantClosed, match="tenant acme is closed"):
            change()
            pytest.fail(f"{name} went through on a closed tenant")
    assert (guard.balances(ACME), len(guard.audit("acme"))) == before
    # reads stay, and a key of the closed tenant no longer authenticates
    assert guard.get(made["done"].id).status is al.ReservationStatus.COMMITTED
    assert guard.validate_key(made["key"].secret).refusal == "KEY_REVOKED"


def test_a_replay_of_a_change_made_before_the_close_answers_as_it_did(guard: al.Guard) -> None:
    made = opened(guard)
    guard.close_tenant("acme")
    again = made["done"].commit(al.tokens(80), idempotency_key="c-done")
    assert (again.charged, again.balances) == (made["committed"].charged,
                                               made["committed"].balances)
    replayed = guard.reserve(WHO, LLM, al.tokens(50), idempotency_key="r-open")
    assert replayed.id == made["still"].id
    with pytest.raises(TenantClosed):  # the same key for another commit: a new change
        made["still"].commit(al.tokens(50), idempotency_key="c-done")


def test_closing_again_changes_nothing_and_a_tenant_without_a_record_gets_one(
        guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget("tenant:gamma", tokens=10)
    first = guard.close_tenant("gamma")
    assert first.info.name == "gamma" and first.budgets_closed == 1
    clock.advance(5_000)
    second = guard.close_tenant("gamma", reason="again")
    assert (second.released, second.budgets_closed, second.keys_revoked,
            second.webhooks_disabled, second.changed) == (0, 0, 0, 0, False)
    assert second.info == first.info
    assert [r.type for r in guard.audit("gamma")].count(al.AuditType.TENANT_CLOSED) == 1
    assert "gamma" in guard.tenants()


def test_closing_notifies_subscribers(guard: al.Guard) -> None:
    seen: list[al.Notification] = []
    guard.on(al.NotificationType.TENANT_CLOSED, seen.append)
    guard.set_budget(ACME, tokens=10)
    guard.close_tenant("acme", reason="fraud")
    assert [(n.type, n.tenant, n.reason) for n in seen] == [
        (al.NotificationType.TENANT_CLOSED, "acme", "fraud")]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 200, None, 3])
def test_a_bad_tenant_name_is_refused_before_anything_closes(guard: al.Guard, bad: Any) -> None:
    guard.set_budget(ACME, tokens=10)
    with pytest.raises(al.InvalidRequest, match="tenant"):
        guard.close_tenant(bad)
    assert guard.balances(ACME)[0].status is al.BudgetStatus.ACTIVE


def test_the_tenant_handle_does_not_offer_closing() -> None:
    assert not hasattr(al.TenantGuard, "close_tenant")
    assert not hasattr(al.TenantGuard, "aclose_tenant")
