"""What every handle of one guard shares: the store, the guard's settings, its notification
dispatch, its count of store failures and its observers. The guard and each tenant handle
hold the same engine, so a handle sees the guard's settings without holding the guard
itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .events import Notification
from .observation import Observer
from .plans import Plan
from .stores import operations as ops
from .stores.operations import Store


@dataclass(eq=False)
class Engine:
    store: Store
    ttl_ms: int
    grace_ms: int
    max_extensions: int
    mode: str
    default_plan: Plan | None
    on_store_error: str
    commit_retries: int
    notify: Callable[[list[Notification]], None]
    store_failures: int = 0
    """Calls let through (fail open) or refused (fail closed) because the store failed."""
    default_plans: dict[str, ops.ApplyPlan] = field(default_factory=dict)
    """The default plan's operation per tenant, built once."""
    observers: tuple[Observer, ...] = ()
    """Told how each enforcement call ended (see `observation`); replaced, never changed in
    place, so a call in flight keeps the tuple it started with."""
