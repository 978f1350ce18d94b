"""Background expiry: one thread per guard that asked for it, sweeping while it holds the
store's lease."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from .errors import AllotmentError

log = logging.getLogger("allotment")


class Sweeper(threading.Thread):
    """Sweeps every `interval_s` while it holds the store's sweeper lease, so that among
    the processes sharing a store one sweeps at a time and another takes over when it stops."""

    def __init__(self, lease: Callable[[str, str, int], bool], sweep: Callable[[int], int],
                 interval_s: float, batch: int) -> None:
        super().__init__(name="allotment-sweeper", daemon=True)
        self.lease, self.sweep = lease, sweep
        self.interval_s, self.batch = interval_s, batch
        self.owner = uuid.uuid4().hex
        self._stop_event = threading.Event()
        self.expired = 0

    def run(self) -> None:
        lease_ms = max(1_000, int(self.interval_s * 3_000))
        while not self._stop_event.is_set():
            try:
                if self.lease("sweeper", self.owner, lease_ms):
                    self.expired += self.sweep(self.batch)
            except AllotmentError as error:  # the store is down: try again next round
                log.warning("sweep failed: %s", error)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
