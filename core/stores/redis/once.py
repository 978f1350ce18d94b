"""Claims on the idempotency keys of calls of several steps (bulk actions): the library's
`once` function (lua/once.lua), one call per claim or finish, on a key of its own
(`al:once:<key>`, outside any tenant's slot: a bulk action spans tenants). As the memory
store's once.py."""

from __future__ import annotations

from typing import Any

from ...models import OnceClaim
from .. import operations as ops
from . import replies


def once_arguments(op: ops.ClaimOnce | ops.FinishOnce, now: int) -> tuple[list[str], list[Any]]:
    """The keys and arguments of a claim's or a finish's call, at the store's time `now`."""
    keys = [f"al:once:{op.key}"]
    if isinstance(op, ops.FinishOnce):
        return keys, ["finish", now, op.ttl_ms, op.owner, op.answer or ""]
    return keys, ["claim", now, op.ttl_ms, op.fingerprint, op.owner]


def once_result(op: ops.ClaimOnce | ops.FinishOnce, reply: Any) -> OnceClaim | bool:
    """What the script answered, as the operation's result."""
    if isinstance(op, ops.FinishOnce):
        return bool(reply)
    state = replies.text(reply[0])
    if state == "mismatch":
        raise ops.once_mismatch(op)
    if state == "claimed":
        return OnceClaim(op.key, op.owner, None)
    return OnceClaim(op.key, None, replies.text(reply[1]) if state == "done" else None)


__all__ = ["once_arguments", "once_result"]
