"""Fresh stores of each kind, all driven by a manual clock the test can move."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

import redis

import allotment as al

from .redis_server import redis_server

START_MS = int(datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc).timestamp()) * 1000
STORE_KINDS = ["memory", "redis"]
_redis: dict[str, object] = {}
BATCHING = os.environ.get("ALLOTMENT_TEST_BATCHING", "on") != "off"
"""Redis stores batch calls (the default) unless the run sets ALLOTMENT_TEST_BATCHING=off, so
the whole suite can run both ways."""


def redis_url() -> str:
    """One redis-server for the whole run, started on first use."""
    if "url" not in _redis:
        server = redis_server()
        _redis["url"], _ = server.__enter__()
        _redis["server"] = server
        _redis["next_db"] = 0
    return str(_redis["url"])


def make_store(kind: str, clock: al.ManualClock, **settings: Any) -> Any:
    """A fresh, empty store of `kind` driven by `clock` (each Redis one in its own db), with
    any store `settings` both kinds take (e.g. report_retention_days)."""
    if kind == "memory":
        return al.MemoryStore(clock, **settings)
    if kind == "redis":
        from allotment.stores.redis import RedisStore

        db = int(_redis.get("next_db", 0)) % 64 if "url" in _redis else 0
        url = f"{redis_url()}/{db}"
        _redis["next_db"] = db + 1
        redis.Redis.from_url(url).flushdb()
        return RedisStore(url=url, clock=clock, **{"batching": BATCHING, **settings})
    raise AssertionError(f"unknown store kind {kind!r}")


def stop_redis() -> None:
    """Stop the shared redis-server, if one was started."""
    server = _redis.pop("server", None)
    if server is not None:
        server.__exit__(None, None, None)  # type: ignore[attr-defined]
        _redis.clear()
