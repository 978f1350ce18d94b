"""Claims on the idempotency keys of calls of several steps (bulk actions), as once.lua: a
claim holds the request's fingerprint and its owner until the run keeps its answer, which
is then replayed; either lapses `ttl_ms` after it was written."""

from __future__ import annotations

from dataclasses import dataclass

from ...models import OnceClaim
from ..operations import ClaimOnce, FinishOnce, once_mismatch


@dataclass(slots=True)
class _Held:
    fingerprint: str
    owner: str
    answer: str | None
    until_ms: int


class Claims:
    """Every live claim of one store, by key (across tenants: a bulk action spans them)."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def execute(self, op: ClaimOnce | FinishOnce, now: int) -> OnceClaim | bool:
        self._lapse(now)
        if isinstance(op, ClaimOnce):
            return self._claim(op, now)
        return self._finish(op, now)

    def _claim(self, op: ClaimOnce, now: int) -> OnceClaim:
        held = self._held.get(op.key)
        if held is None:
            self._held[op.key] = _Held(op.fingerprint, op.owner, None, now + op.ttl_ms)
            return OnceClaim(op.key, op.owner, None)
        if held.fingerprint != op.fingerprint:
            raise once_mismatch(op)
        return OnceClaim(op.key, None, held.answer)

    def _finish(self, op: FinishOnce, now: int) -> bool:
        held = self._held.get(op.key)
        if held is None or held.owner != op.owner or held.answer is not None:
            return False
        if op.answer is None:
            del self._held[op.key]
        else:
            held.answer, held.until_ms = op.answer, now + op.ttl_ms
        return True

    def _lapse(self, now: int) -> None:
        """Drop the claims past their time (few: one per bulk action in the window)."""
        for key in [key for key, held in self._held.items() if held.until_ms <= now]:
            del self._held[key]


__all__ = ["Claims"]
