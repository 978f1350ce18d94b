"""The embedded store, one module per operation group beside the Redis script it mirrors:
`reserve`, `settle` (commit, release, extend), `record`, `read`, `definitions` (writers of
budgets, quotas, access rules, plans), `admin` (mode, statuses, funding, transfers), `sweep`;
`state` is what they share (common.lua's part) and `store` runs them under one lock."""

from __future__ import annotations

from .store import MemoryStore

__all__ = ["MemoryStore"]
