"""Webhooks sent by `allotment serve`: a background thread per worker that drains the store's
outbox while it holds the store's `webhooks` lease. A dispatcher round walks every tenant the
store knows (one store call each), so among the workers and servers sharing a store one sends
at a time, and another takes over within seconds when it stops (or is killed)."""

from __future__ import annotations

import logging
import threading
import uuid

from ..guard import Guard
from ..webhooks import Dispatcher

log = logging.getLogger("allotment.webhooks")
LEASE = "webhooks"


class Sender(threading.Thread):
    """Runs `dispatcher` every `interval_s` while holding the lease (renewed each round)."""

    def __init__(self, guard: Guard, dispatcher: Dispatcher) -> None:
        super().__init__(name="allotment-webhooks", daemon=True)
        self.store, self.dispatcher = guard.store, dispatcher
        self.owner = uuid.uuid4().hex
        self.lease_ms = max(5_000, int(dispatcher.interval_s * 5_000))
        self._stop_event = threading.Event()

    def _holding(self) -> bool:
        return self.store.lease(LEASE, self.owner, self.lease_ms)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                while (self._holding() and not self._stop_event.is_set()
                       and self.dispatcher.run_once() >= self.dispatcher.batch):
                    pass  # a full batch: more may be due now
            except Exception:  # the store or a receiver failed: the next round tries again
                log.exception("sending webhooks failed; trying again")
            self._stop_event.wait(self.dispatcher.interval_s)

    def stop(self) -> None:
        """Stop after the current round (a claimed delivery left unfinished is sent again
        once its claim's lease runs out)."""
        self._stop_event.set()
        self.join(timeout=30)
