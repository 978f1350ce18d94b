"""Clocks in integer milliseconds. A store owns one clock; tests move a manual one."""

from __future__ import annotations

import threading
import time
from datetime import datetime


def system_ms() -> int:
    return time.time_ns() // 1_000_000


def moment_ms(text: str) -> int | None:
    """Epoch milliseconds, or an ISO-8601 time with its zone, as epoch ms; None when `text`
    is neither (a time without a zone would mean whatever the reader's zone is)."""
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if moment.tzinfo is None else int(moment.timestamp() * 1000)


class ManualClock:
    """A clock that moves only when told to, for tests of expiry and period rollover."""

    def __init__(self, start_ms: int = 1_795_000_000_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now

    def advance(self, ms: int) -> int:
        """Move time forward by `ms` (tests step through periods and expiries)."""
        with self._lock:
            self._now += ms
            return self._now

    def set(self, now_ms: int) -> None:
        """Jump to `now_ms` (epoch ms)."""
        self._now = now_ms
