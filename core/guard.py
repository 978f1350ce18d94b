"""The guard: the one object users talk to. It composes the call families (enforcement;
budgets, quotas and access; reads; platform), each call written once with an `a`-prefixed
async twin, and runs every operation on its store as one atomic step.
"""

from __future__ import annotations

import threading
from typing import Any

from . import arguments as arg
from .budgets import BudgetCalls
from .enforcement import EnforcementCalls
from .engine import Engine
from .errors import InvalidRequest, NotFound
from .events import NOTIFICATION_TYPES, Notification, Sink, Subscriber, check_type, dispatch
from .keys import KeyCalls
from .observation import Observer
from .plans import Plan
from .platform import PlatformCalls
from .reads import ReadCalls
from .stores import store_from_url
from .stores.operations import Store
from .sweeper import Sweeper
from .tenant import TenantGuard
from .validation import check_int
from .webhook_calls import WebhookCalls

GUARD_OPTIONS = frozenset({"ttl_ms", "grace_ms", "max_extensions", "mode", "default_plan",
                           "sink", "on_store_error", "commit_retries"})


class Guard(EnforcementCalls, BudgetCalls, ReadCalls, PlatformCalls, KeyCalls, WebhookCalls):
    """Enforces budgets for every tenant on one store (the embedded memory store by default).

    `mode="shadow"` never denies: would-be denials are recorded and spend is tracked, to size
    budgets from real traffic (a tenant's own mode, `set_mode`, takes precedence).
    `default_plan` is installed for a tenant the first time it reserves.
    """

    def __init__(self, store: Store | None = None, *, ttl_ms: int = 60_000,
                 grace_ms: int = 5_000, max_extensions: int = 10, mode: str = "enforce",
                 default_plan: Plan | None = None, sink: Sink | None = None,
                 on_store_error: str = "deny", commit_retries: int = 3) -> None:
        if store is None:
            from .stores.memory import MemoryStore

            store = MemoryStore()
        if default_plan is not None and not isinstance(default_plan, Plan):
            raise InvalidRequest(f"default_plan: expected a Plan, got {default_plan!r}")
        if on_store_error not in ("deny", "allow"):
            raise InvalidRequest(f"on_store_error: {on_store_error!r} is not 'deny' (fail "
                                 "closed) or 'allow' (fail open)")
        self._engine = Engine(
            store=store, ttl_ms=check_int(ttl_ms, "ttl_ms", *arg.TTL_RANGE),
            grace_ms=check_int(grace_ms, "grace_ms", *arg.GRACE_RANGE),
            max_extensions=check_int(max_extensions, "max_extensions", 0, 1_000),
            mode=str(arg.mode(mode, allow_none=False)), default_plan=default_plan,
            on_store_error=on_store_error,
            commit_retries=check_int(commit_retries, "commit_retries", 0, 10),
            notify=self._notify)
        # The unrestricted guard runs operations on its store as they come: the runner's
        # `_run`/`_arun` are the store's own methods (no call in between on the hot path).
        self._run = store.execute  # type: ignore[method-assign]
        self._arun = store.aexecute  # type: ignore[method-assign]
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._sinks: list[Sink] = [] if sink is None else [sink]
        self._sweeper: Sweeper | None = None
        self._observers_lock = threading.Lock()  # the engine's tuple is replaced, not changed
        store.subscribe(self._notify)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Guard:
        """`memory://` (embedded), `redis://...`, or `http(s)://host:7878` with
        `api_key=` (a remote guard: a server speaking the Cycles wire enforces, see the
        README's "Remote guard"); guard options (ttl_ms, ...) go to the guard, the rest to
        the store."""
        if url.startswith(("http://", "https://")):
            for name in ("mode", "default_plan"):  # the server's own settings
                if options.get(name) not in (None, "enforce"):
                    raise InvalidRequest(
                        f"{name}: a remote guard takes the server's (set it there with the "
                        "admin API or the `allotment` command line)")
        guard_options = {k: v for k, v in options.items() if k in GUARD_OPTIONS}
        store_options = {k: v for k, v in options.items() if k not in GUARD_OPTIONS}
        return cls(store_from_url(url, **store_options), **guard_options)

    @property
    def store(self) -> Store:
        """The store every operation runs on."""
        return self._engine.store

    @property
    def mode(self) -> str:
        """"enforce" or "shadow": the guard's own mode (a tenant's `set_mode` overrides it)."""
        return self._engine.mode

    @property
    def store_failures(self) -> int:
        """Calls let through (fail open) or refused (fail closed) because the store failed."""
        return self._engine.store_failures

    def tenant(self, name: str) -> TenantGuard:
        """A handle that can only touch `name`'s budgets, reservations and balances."""
        return TenantGuard(self._engine, name)

    def close(self) -> None:
        """Stop the sweeper and close the store's connections."""
        self.stop_sweeper()
        self._engine.store.close()

    def start_sweeper(self, interval_s: float = 1.0, batch: int = 1_000) -> None:
        """Expire abandoned reservations in the background, every `interval_s`. Across
        processes sharing a store only one sweeps at a time (it holds a lease in the store)."""
        if self._sweeper is None:
            self._sweeper = Sweeper(self._engine.store.lease, self.sweep, interval_s, batch)
            self._sweeper.start()

    def stop_sweeper(self) -> None:
        """Stop the background sweeper, if one runs."""
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    # -- notifications --------------------------------------------------------------------

    def on(self, event_type: str, callback: Subscriber | None = None) -> Any:
        """Call `callback(notification)` for each `event_type` ("*" for all); usable as a
        decorator. A failing callback is logged and never breaks enforcement. An unknown
        type (not in `NotificationType`) is refused: it would never be called."""
        check_type(event_type, "event_type", NOTIFICATION_TYPES | {"*"})

        def register(fn: Subscriber) -> Subscriber:
            self._subscribers.setdefault(event_type, []).append(fn)
            return fn

        return register if callback is None else register(callback)

    def add_sink(self, sink: Sink) -> None:
        """Send every notification to `sink` as well (a queue, a webhook sender, ...)."""
        self._sinks.append(sink)

    # -- observers ------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> Observer:
        """Call `observer(observation)` when each reserve, decide, commit, release, extend or
        record call of this guard, its tenant handles and their reservations ends (an
        `Observation`: call, tenant, duration, decision, error, ...). For metrics and
        tracing; a failing observer is logged and never breaks enforcement."""
        if not callable(observer):
            raise InvalidRequest(f"observer: expected a callable taking an Observation, got "
                                 f"{observer!r}")
        with self._observers_lock:
            self._engine.observers = (*self._engine.observers, observer)
        return observer

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling `observer`; one that is not registered is refused (NotFound)."""
        with self._observers_lock:
            observers = list(self._engine.observers)
            if observer not in observers:
                raise NotFound(f"observer {observer!r} is not registered on this guard")
            observers.remove(observer)
            self._engine.observers = tuple(observers)

    def _notify(self, notifications: list[Notification]) -> None:
        dispatch(notifications, self._subscribers, self._sinks)


__all__ = ["Guard"]
