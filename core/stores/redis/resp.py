"""Script calls packed once into RESP bytes and sent on a connection of the client's own pool.

redis-py encodes a command's arguments one at a time in Python before packing them, and for
a reserve's forty arguments that took more client CPU than everything else the store does
per call (BENCHMARKS.md, "Client CPU per pair"). A call is packed here in one step (hiredis,
or the plain loop below without it) and sent on a connection of the client's own pool with
the connection's health check, retry policy and disconnect-on-failure, as `execute_command`
would, the reply read by the connection's own parser. Commands that go together (a page of
the sweep's reads, a call under strict durability and its wait) are packed the same way and
sent in one write (`Sender.many`); redis-py's pipeline wrote each and encoded every
argument in Python, about two thirds of a sweep's CPU per idle tenant. A sync store keeps
a few connections between calls instead of checking one out of the pool per call
(`Sender`), and so does an asyncio store on each event loop (`ASender`). Clients this path
does not fit (a cluster client, a single-connection client) go through `execute_command` as
before.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - the redis extra installs hiredis
    _hiredis_pack = None


def _plain_pack(command: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        else:
            raise DataError(f"cannot send {type(arg).__name__} {arg!r} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pack(command: Sequence[Any]) -> bytes:
    """The RESP bytes of a command of str, bytes and int arguments (str as UTF-8)."""
    if _hiredis_pack is None:
        return _plain_pack(command)
    try:
        packed: bytes = _hiredis_pack(tuple(command))
    except TypeError as error:  # as redis-py: an argument it cannot send
        raise DataError(str(error)) from error
    return packed


_POOL_ARGS: dict[Any, tuple[str, ...]] = {}


def _pool_args(pool: Any) -> tuple[str, ...]:
    """What the pool's `get_connection` needs: redis-py before 5.3 requires a command name;
    later releases take none (and warn when given one). Worked out once per pool class."""
    kind = type(pool)
    found = _POOL_ARGS.get(kind)
    if found is None:
        parameter = inspect.signature(kind.get_connection).parameters.get("command_name")
        required = parameter is not None and parameter.default is inspect.Parameter.empty
        found = _POOL_ARGS[kind] = ("FCALL",) if required else ()
    return found


KEEP = 4
"""Connections a sender keeps between calls. With batching one call per node is in flight at
a time, so one is enough; without, up to this many threads skip the pool's checkout."""


def _round_trip(conn: Any, data: bytes) -> Any:
    conn.send_packed_command((data,))
    return conn.read_response()


def _round_trips(conn: Any, data: Sequence[bytes]) -> list[Any]:
    conn.send_packed_command((b"".join(data),))  # one write: redis-py writes each part
    replies: list[Any] = []
    for _ in data:
        try:
            replies.append(conn.read_response())
        except ResponseError as error:  # the other replies are still read
            replies.append(error)
    return replies


def _first_error_raised(replies: list[Any]) -> list[Any]:
    """The replies of a pipeline, or its first error reply raised (as redis-py's pipeline)."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


class Sender:
    """Sends packed commands on connections of a sync client's pool, keeping a few between
    calls: checking one out of redis-py's pool and back costs about as much CPU as the round
    trip itself. A connection that failed was disconnected by redis-py and reconnects on its
    next use, as in the pool; a forked child never uses its parent's."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._args = _pool_args(self._pool)
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def many(self, data: Sequence[bytes]) -> list[Any]:
        """The replies to packed commands sent together (a pipeline, not a transaction), as
        redis-py's pipeline answers them: the first error reply is raised, once every reply
        has been read so the connection stays in step."""
        return _first_error_raised(self(data, _round_trips))

    def __call__(self, data: Any, exchange: Callable[[Any, Any], Any] = _round_trip) -> Any:
        """The reply to one packed command (or what `exchange` makes of `data` on a kept
        connection: `many`)."""
        idle = self._idle
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._idle = idle = []
            self._pid = os.getpid()
        try:
            conn = _ready(idle.pop())
        except IndexError:
            conn = self._pool.get_connection(*self._args)
        try:
            return conn.retry.call_with_retry(lambda: exchange(conn, data),
                                              lambda error: conn.disconnect())
        finally:
            if len(idle) < KEEP:
                idle.append(conn)
            else:
                self._pool.release(conn)

    def close(self) -> None:
        """Hand the kept connections back to the pool."""
        idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for conn in idle:
                self._pool.release(conn)


def sender(client: Any) -> Sender | None:
    """A sender of packed commands on `client`'s pool, or None for a client this path does
    not fit."""
    if getattr(client, "connection_pool", None) is None or getattr(
            client, "connection", None) is not None:
        return None
    return Sender(client)


def _ready(conn: Any) -> Any:
    """A kept connection checked as the pool checks one it hands out: connected, and nothing
    waiting on it (a server that closed it, or restarted, leaves it readable), else
    reconnected."""
    try:
        conn.connect()
        if conn.can_read():
            raise RedisConnectionError("connection has data")
    except (RedisConnectionError, RedisTimeoutError, OSError):
        conn.disconnect()
        conn.connect()
        if conn.can_read():
            raise RedisConnectionError("connection not ready") from None
    return conn


def asender(client: Any) -> ASender | None:
    """A sender of packed commands on an asyncio client's pool, or None for a client this
    path does not fit (a cluster client, a single-connection client)."""
    fits = (getattr(client, "connection_pool", None) is not None
            and getattr(client, "connection", None) is None
            and not getattr(client, "single_connection_client", False))
    return ASender(client) if fits else None


async def _around_trip(conn: Any, data: bytes) -> Any:
    """A packed command and its reply on an asyncio connection, the reply read by the
    connection under its timeout."""
    await _awrite(conn, data)
    return await conn.read_response()


async def _around_trips(conn: Any, data: Sequence[bytes]) -> list[Any]:
    """Packed commands in one write, then their replies, an error reply kept in its place."""
    await _awrite(conn, b"".join(data))
    replies: list[Any] = []
    for _ in data:
        try:
            replies.append(await conn.read_response())
        except ResponseError as error:  # the other replies are still read
            replies.append(error)
    return replies


async def _awrite(conn: Any, data: bytes) -> None:
    """Packed bytes written as `send_packed_command` writes them, but without its timer: on
    Python before 3.12 its `wait_for` runs the write as a task of its own, one more turn of
    the loop per call. A call's few hundred bytes leave at once; only if some stay buffered
    is the drain awaited, within the socket timeout."""
    if not conn.is_connected:
        await conn.connect()
    if conn.health_check_interval:
        await conn.check_health()
    writer = conn._writer
    try:
        if writer.transport.is_closing():
            raise RedisConnectionError("connection closed by the server before the write")
        writer.write(data)
        if writer.transport.get_write_buffer_size():
            await asyncio.wait_for(writer.drain(), conn.socket_timeout)
    except BaseException as error:  # as redis-py: a connection a write failed on is dropped
        await conn.disconnect(nowait=True)
        if isinstance(error, asyncio.TimeoutError):
            raise RedisTimeoutError("Timeout writing to socket") from None
        if isinstance(error, OSError):
            raise RedisConnectionError(f"Error while writing to socket: {error}") from error
        raise


class ASender:
    """As `Sender`, for an asyncio client on its own event loop: checking a connection out of
    redis-py's asyncio pool and back (a condition, a lock, a timeout and the pool's metrics
    each way) cost more CPU than the round trip. A caller cancelled mid-call leaves its
    connection disconnected by redis-py, and it reconnects on its next use."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._args = _pool_args(self._pool)
        self._idle: list[Any] = []

    async def many(self, data: Sequence[bytes]) -> list[Any]:
        """As `Sender.many`."""
        return _first_error_raised(await self(data, _around_trips))

    async def __call__(self, data: Any,
                       exchange: Callable[[Any, Any], Awaitable[Any]] = _around_trip) -> Any:
        """As `Sender.__call__`."""
        idle = self._idle
        kept = bool(idle)
        conn = idle.pop() if kept else await self._pool.get_connection(*self._args)
        try:
            if kept:
                await _aready(conn)
            return await conn.retry.call_with_retry(lambda: exchange(conn, data),
                                                    lambda error: conn.disconnect())
        finally:
            if len(idle) < KEEP:
                idle.append(conn)
            else:
                released = self._pool.release(conn)
                if inspect.isawaitable(released):
                    await released


async def _aready(conn: Any) -> None:
    """`_ready` for an asyncio connection, as the asyncio pool checks one it hands out."""
    try:
        if not conn.is_connected:
            await conn.connect()
        if await _can_read(conn):
            raise RedisConnectionError("connection has data")
    except (RedisConnectionError, RedisTimeoutError, OSError):
        await conn.disconnect()
        await conn.connect()
        if await _can_read(conn):
            raise RedisConnectionError("connection not ready") from None


def _can_read(conn: Any) -> Any:
    """Whether data waits on the connection: `can_read`, or before redis-py 8
    `can_read_destructive` (which 8 deprecates)."""
    check = getattr(conn, "can_read", None) or conn.can_read_destructive
    return check()


__all__ = ["KEEP", "ASender", "Sender", "asender", "pack", "sender"]
