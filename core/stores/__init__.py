"""Stores: the operations they execute (`operations`), one package per backend, and the
factory that picks a backend from a URL."""

from __future__ import annotations

from typing import Any

from .operations import Store


def store_from_url(url: str, **options: Any) -> Store:
    """`memory://` for the embedded store; other schemes belong to optional backends:
    redis, and http(s):// for a server speaking the Cycles wire (a remote guard)."""
    from ..errors import InvalidRequest

    if url.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore(**options)
    if url.split("://", 1)[0] in ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel"):
        try:
            from .redis import RedisStore
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise InvalidRequest("redis:// needs the redis extra: pip install "
                                 "'allotment[redis]'") from None
        return RedisStore.from_url(url, **options)
    if url.split("://", 1)[0] in ("http", "https"):
        try:
            from .http import HttpStore
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise InvalidRequest("http:// and https:// (a remote guard) need the remote "
                                 "extra: pip install 'allotment[remote]'") from None
        return HttpStore(url, **options)
    raise InvalidRequest(f"store url {url!r}: unknown scheme; use memory://, redis://, "
                         "rediss://, unix://, redis+cluster://, redis+sentinel://, or "
                         "http(s):// for a server")


__all__ = ["Store", "store_from_url"]
