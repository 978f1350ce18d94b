"""Background expiry, and the pacing of retries after a store failure."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import AllotmentError

if TYPE_CHECKING:
    from .guard import Guard

log = logging.getLogger("allotment")


def retry_delays(retries: int) -> Iterator[float]:
    """0 for the first try, then 0.05 s, 0.1 s, 0.2 s, ... before each retry."""
    yield 0
    for n in range(retries):
        yield 0.05 * 2**n


class Sweeper(threading.Thread):
    """Sweeps every `interval_s` while it holds the store's sweeper lease, so that among
    the processes sharing a store one sweeps at a time and another takes over when it stops."""

    def __init__(self, guard: Guard, interval_s: float, batch: int) -> None:
        super().__init__(name="allotment-sweeper", daemon=True)
        self.guard, self.interval_s, self.batch = guard, interval_s, batch
        self.owner = uuid.uuid4().hex
        self._stop_event = threading.Event()
        self.expired = 0

    def run(self) -> None:
        lease_ms = max(1_000, int(self.interval_s * 3_000))
        while not self._stop_event.is_set():
            try:
                if self.guard.store.lease("sweeper", self.owner, lease_ms):
                    self.expired += self.guard.sweep(self.batch)
            except AllotmentError as error:  # the store is down: try again next round
                log.warning("sweep failed: %s", error)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
