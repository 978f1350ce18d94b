"""Claims on the idempotency keys of calls of several steps (bulk actions): once.lua, one
script call per claim or finish, on a key of its own (`al:once:<key>`, outside any tenant's
slot: a bulk action spans tenants). Sent as EVAL: a bulk action is rare, and the script is
short. As the memory store's once.py."""

from __future__ import annotations

from functools import cache
from typing import Any

from ...models import OnceClaim
from .. import operations as ops
from . import replies
from .functions import source


@cache
def _script() -> str:
    return source("once")


def once_command(op: ops.ClaimOnce | ops.FinishOnce, now: int) -> tuple[Any, ...]:
    """The script call of a claim or a finish, at the store's time `now`."""
    head = ("EVAL", _script(), 1, f"al:once:{op.key}")
    if isinstance(op, ops.FinishOnce):
        return (*head, "finish", now, op.ttl_ms, op.owner, op.answer or "")
    return (*head, "claim", now, op.ttl_ms, op.fingerprint, op.owner)


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


__all__ = ["once_command", "once_result"]
