"""Where a tenant's data lives: every key carries the tenant as its hash tag (`al:{acme}:...`),
so a tenant is one cluster slot and one atomic domain."""

from __future__ import annotations

from functools import lru_cache

TENANTS_KEY = "al:tenants"
"""Every tenant with definitions: where the sweeper finds them (not on any hot path)."""


@lru_cache(maxsize=4096)
def tenant_keys(tenant: str) -> tuple[str, ...]:
    """The eleven keys every script of a tenant declares (KEYS[1..11]); built once per
    tenant."""
    tag = f"al:{{{tenant}}}:"
    return tuple(tag + name for name in ("defs", "ledgers", "quotas", "access", "qcount",
                                         "qruns", "meta", "exp", "audit", "report",
                                         "report:days"))


def reservation_key(tenant: str, rid: str) -> str:
    """A reservation's hash (KEYS[12] of the calls that touch one)."""
    return f"al:{{{tenant}}}:r:{rid}"


def idempotency_key(tenant: str, kind: str, key: str | None) -> str:
    """Where a keyed call's replay is kept (KEYS[13]); the tenant's placeholder without a key."""
    if key is None:
        return none_key(tenant)
    return f"al:{{{tenant}}}:i:{kind}:{key}"


def none_key(tenant: str) -> str:
    """The placeholder declared where a call has no reservation or replay key."""
    return f"al:{{{tenant}}}:none"


__all__ = ["TENANTS_KEY", "idempotency_key", "none_key", "reservation_key", "tenant_keys"]
