"""API keys bound to tenants, on both stores and through both call styles: the secret is
shown once and authenticates only while the key is live; a revoked, expired, altered or
malformed secret authenticates nothing."""

from __future__ import annotations

from typing import Any

import pytest

import allotment as al
from allotment.keys import RUNTIME, permits


def test_a_new_key_authenticates_to_its_tenant_with_its_permissions(guard: Any) -> None:
    made = guard.create_key("Acme", permissions=["reservations:create", "balances:read"],
                            name="billing worker")
    assert made.secret.startswith("alk_acme:")
    key = guard.authenticate_key(made.secret)
    assert key == made.key
    assert (key.tenant, key.name, key.revoked) == ("acme", "billing worker", False)
    assert key.permissions == ("balances:read", "reservations:create")
    assert permits(key, "balances:read") and not permits(key, "reservations:commit")


def test_the_default_permissions_are_the_runtime_plane(guard: Any) -> None:
    made = guard.create_key("acme")
    assert set(made.key.permissions) == set(RUNTIME)
    assert not permits(made.key, "budgets:write")


def test_the_store_keeps_a_hash_never_the_secret(store: Any) -> None:
    guard = al.Guard(store)
    made = guard.create_key("acme")
    token = made.secret.rpartition(".")[2]
    if isinstance(store, al.MemoryStore):
        kept = repr(store._tenants["acme"].api_keys)
    else:
        kept = repr({k: store.client.dump(k) for k in store.client.keys("*")})
    assert token not in kept and made.secret not in kept


def test_keys_lists_every_key_of_the_tenant_only(guard: Any, clock: al.ManualClock) -> None:
    first = guard.create_key("acme", name="one")
    clock.advance(1)
    second = guard.create_key("acme", name="two")
    guard.create_key("rival")
    assert [k.key_id for k in guard.keys("acme")] == [first.key.key_id, second.key.key_id]
    assert guard.keys("nobody") == ()


def test_a_revoked_key_authenticates_nothing(guard: Any) -> None:
    made = guard.create_key("acme")
    revoked = guard.revoke_key(made.key.key_id)
    assert revoked.revoked
    assert guard.authenticate_key(made.secret) is None
    assert guard.revoke_key(made.key.key_id).revoked  # again: nothing changes
    assert [k.revoked for k in guard.keys("acme")] == [True]


def test_an_expired_key_authenticates_nothing(guard: Any, clock: al.ManualClock) -> None:
    made = guard.create_key("acme", expires=clock() + 60_000)
    assert guard.authenticate_key(made.secret) is not None
    clock.advance(60_000)
    assert guard.authenticate_key(made.secret) is None


@pytest.mark.parametrize("change", [
    lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # one character of the token
    lambda s: s.replace("alk_acme:", "alk_rival:"),  # another tenant's name
    lambda s: s[:-1],  # too short
    lambda s: "",
    lambda s: "cyc_live_abc",
    lambda s: s.replace(".", "-"),
])
def test_an_altered_or_malformed_secret_authenticates_nothing(guard: Any, change: Any) -> None:
    made = guard.create_key("acme")
    guard.create_key("rival")
    assert guard.authenticate_key(change(made.secret)) is None


def test_another_tenants_key_id_under_a_secret_authenticates_nothing(guard: Any) -> None:
    acme, rival = guard.create_key("acme"), guard.create_key("rival")
    forged = f"alk_{acme.key.key_id}.{rival.secret.rpartition('.')[2]}"
    assert guard.authenticate_key(forged) is None


@pytest.mark.parametrize("bad", [
    {"permissions": ["root"]}, {"permissions": []}, {"permissions": "balances:read"},
    {"name": ""}, {"expires": 1.5},
])
def test_bad_key_arguments_are_refused_and_store_nothing(guard: Any, bad: dict[str, Any]
                                                         ) -> None:
    with pytest.raises(al.InvalidRequest):
        guard.create_key("acme", **bad)
    assert guard.keys("acme") == ()


def test_revoking_an_unknown_key_is_not_found(guard: Any) -> None:
    with pytest.raises(al.NotFound):
        guard.revoke_key(f"acme:{'0' * 32}")
    with pytest.raises(al.InvalidRequest):
        guard.revoke_key("not a key id")


def test_looking_up_a_secret_of_an_unknown_tenant_creates_nothing(guard: Any) -> None:
    made = guard.create_key("acme")
    assert guard.authenticate_key(made.secret.replace("alk_acme:", "alk_ghost:")) is None
    assert guard.keys("ghost") == ()


def test_a_tenant_record_is_made_once(guard: Any, clock: al.ManualClock) -> None:
    assert guard.tenant_info("acme") is None
    record, made = guard.register_tenant("acme", "Acme Corp")
    assert made and (record.tenant, record.name, record.created_at_ms) == (
        "acme", "Acme Corp", clock())
    clock.advance(5)
    again, made = guard.register_tenant("ACME", "Another name")
    assert not made and again == record
    assert guard.tenant_info("acme") == record
    with pytest.raises(al.InvalidRequest):
        guard.register_tenant("acme", "")
