"""Changing a key without a new secret, and asking why a secret does not authenticate, on
both stores and through both call styles: only a live key changes, in one store step, and
the secret keeps working with what the key now grants."""

from __future__ import annotations

from typing import Any

import pytest

import allotment as al
from allotment.keys import KeyCheck, permits


def test_a_live_key_is_renamed_and_its_permissions_replaced(guard: Any) -> None:
    made = guard.create_key("acme", permissions=["balances:read"], name="worker")
    key, changed = guard.update_key(made.key.key_id, name="billing",
                                    permissions=["budgets:write", "budgets:read",
                                                 "budgets:read"])
    assert changed and (key.name, key.permissions) == ("billing",
                                                       ("budgets:read", "budgets:write"))
    assert (key.key_id, key.created_at_ms, key.expires_at_ms) == (
        made.key.key_id, made.key.created_at_ms, made.key.expires_at_ms)
    assert guard.keys("acme") == (key,)
    live = guard.authenticate_key(made.secret)  # the same secret, the new grants
    assert live == key and permits(live, "budgets:write") and not permits(live,
                                                                          "balances:read")
    renamed, _ = guard.update_key(made.key.key_id, name="again")
    assert (renamed.name, renamed.permissions) == ("again", key.permissions)
    widened, _ = guard.update_key(made.key.key_id, permissions=["admin:write"])
    assert (widened.name, widened.permissions) == ("again", ("admin:write",))


def test_a_keyed_handle_follows_the_new_permissions_at_once(guard: Any) -> None:
    guard.set_budget("tenant:acme", usd=1)
    made = guard.create_key("acme", permissions=["balances:read"])
    handle = guard.tenant_for_key(made.secret, "reservations:create")
    subject, action = al.Subject(tenant="acme"), al.Action("llm.completion", "m")
    with pytest.raises(al.KeyRefused):
        handle.reserve(subject, action, al.tokens(1))
    guard.update_key(made.key.key_id, permissions=["reservations:create"])
    assert handle.reserve(subject, action, al.usd("0.01")).decision.allowed
    guard.update_key(made.key.key_id, permissions=["balances:read"])
    with pytest.raises(al.KeyRefused):
        handle.reserve(subject, action, al.usd("0.01"))


def test_a_revoked_or_expired_key_is_left_as_it_is(guard: Any, clock: al.ManualClock
                                                   ) -> None:
    revoked = guard.create_key("acme", name="revoked")
    guard.revoke_key(revoked.key.key_id)
    dated = guard.create_key("acme", expires=clock() + 1_000, name="dated")
    clock.advance(1_000)
    before = guard.keys("acme")
    for made in (revoked, dated):
        key, changed = guard.update_key(made.key.key_id, name="x", permissions=["admin:write"])
        assert not changed and key.name == made.key.name
    assert guard.keys("acme") == before


@pytest.mark.parametrize("bad", [
    {}, {"permissions": ["root"]}, {"permissions": []}, {"permissions": "balances:read"},
    {"name": ""}, {"name": "x" * 129},
])
def test_bad_update_arguments_are_refused_and_change_nothing(guard: Any, bad: dict[str, Any]
                                                             ) -> None:
    made = guard.create_key("acme", name="worker")
    with pytest.raises(al.InvalidRequest):
        guard.update_key(made.key.key_id, **bad)
    assert guard.keys("acme") == (made.key,)


def test_updating_an_unknown_key_is_not_found(guard: Any) -> None:
    guard.create_key("acme")
    with pytest.raises(al.NotFound):
        guard.update_key(f"acme:{'0' * 32}", name="x")
    with pytest.raises(al.InvalidRequest):
        guard.update_key("not a key id", name="x")


def test_validate_says_why_a_secret_does_not_authenticate(guard: Any, clock: al.ManualClock
                                                          ) -> None:
    live = guard.create_key("acme")
    assert guard.validate_key(live.secret) == KeyCheck(live.key, None)
    dated = guard.create_key("acme", expires=clock() + 1_000)
    revoked = guard.create_key("acme")
    guard.revoke_key(revoked.key.key_id)
    clock.advance(1_000)
    assert guard.validate_key(dated.secret).refusal == "KEY_EXPIRED"
    assert guard.validate_key(revoked.secret).refusal == "KEY_REVOKED"
    forged = live.secret[:-1] + ("A" if live.secret[-1] != "A" else "B")
    assert guard.validate_key(forged) == KeyCheck(None, "INVALID_KEY")
    for secret in ("", "cyc_live_abc", f"alk_acme:{'0' * 32}.{'x' * 43}"):
        assert guard.validate_key(secret) == KeyCheck(None, "KEY_NOT_FOUND")
