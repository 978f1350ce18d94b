"""The shared store: the same semantics as the memory store, one function call per operation.

Each operation runs as a flow of Redis steps (`flow.py`); this module drives flows, with the
sync client in `execute` and with this event loop's asyncio client in `aexecute`. Redis
`TIME` is the clock, unless a test hands in its own.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import PipelineCommand
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError, TimeoutError

from ...errors import InvalidRequest, StoreUnavailable
from ...events import Notification
from ...reports import REPORT_RETENTION_DAYS, check_retention
from .. import operations as ops
from . import replies, resp
from .batching import AsyncBatcher, Batcher, lane_of
from .codec import Wire
from .flow import Batch, Call, Command, Durable, Flow, Flows, Step
from .functions import BATCH, library, node_of, routed, source

R = TypeVar("R")
DAY_MS = 86_400_000
FAILURES = (RedisError, RedisClusterException)
"""What redis-py raises when the store cannot answer (cluster errors are not RedisErrors)."""


def _keyless(client: Any, step: Command) -> bool:
    """A CONFIG command on a cluster client: it has no key to route by, and not every
    supported redis-py places it by itself, so it is sent to the client's default node."""
    return step.args[0] == "CONFIG" and hasattr(client, "get_default_node")


def _unavailable(error: Exception) -> StoreUnavailable:
    """What redis-py raised when the store could not answer (one of `FAILURES`), as the
    `StoreUnavailable` callers handle. Raised from a plain `except` in each driver: a
    context manager would cost a generator per operation."""
    if isinstance(error, (RedisConnectionError, TimeoutError)):
        return StoreUnavailable(f"redis unreachable: {error}")
    return StoreUnavailable(f"redis error: {error}")


class _OnLoop:
    """The store on one event loop: the loop's asyncio client (a client belongs to one loop),
    the sender of packed calls that fits it (none for a cluster client) and the loop's
    batcher, looked up once per operation."""

    __slots__ = ("batcher", "client", "packed", "routed")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.routed = routed(client)
        self.packed = None if self.routed else resp.asender(client)
        self.batcher: AsyncBatcher | None = None


class RedisStore:
    """redis-py sync and asyncio clients over the same flows: one store shared by processes.

    `clock` replaces Redis `TIME` (tests move it); leave it None in production.
    `batching` sends the calls that queue up while a call to the same node is in flight
    together in one call (`batching.py`); off, every operation is its own call.
    """

    def __init__(self, client: Any = None, *, aclient: Any = None, url: str | None = None,
                 clock: Callable[[], int] | None = None, reap_batch: int = 16,
                 idempotency_ttl_ms: int = DAY_MS, finished_retention_ms: int = DAY_MS,
                 audit_retention: int = 10_000, dimension_idle_ttl_ms: int = 30 * DAY_MS,
                 prune_batch: int = 500, report_retention_days: int = REPORT_RETENTION_DAYS,
                 durability: str = "fast", replicas: int = 0,
                 wait_timeout_ms: int = 1_000, socket_timeout: float = 2.0,
                 batching: bool = True) -> None:
        if client is None and url is None:
            url = "redis://localhost:6379/0"
        if durability not in ("fast", "strict"):
            raise InvalidRequest(f"durability: {durability!r} is not 'fast' or 'strict'")
        self.url = url
        self.cluster_url: str | None = None
        self.socket_timeout = socket_timeout
        self.client = client if client is not None else redis.Redis.from_url(
            url, socket_timeout=socket_timeout,  # type: ignore[arg-type]
            socket_connect_timeout=socket_timeout, health_check_interval=30,
            decode_responses=True)
        self.durability = durability
        self.clock = clock
        settings = json.dumps({
            "reap_batch": reap_batch, "idempotency_ttl_ms": idempotency_ttl_ms,
            "finished_retention_ms": finished_retention_ms, "audit_retention": audit_retention,
            "dimension_idle_ttl_ms": dimension_idle_ttl_ms, "prune_batch": prune_batch,
            "report_retention_days": check_retention(report_retention_days)})
        text, self.library_name = library()
        self._flows = Flows(self.library_name, text, Wire(settings, clock), self._notify,
                            strict=durability == "strict", replicas=replicas,
                            wait_timeout_ms=wait_timeout_ms)
        self._routed = routed(self.client)
        self._packed = None if self._routed else resp.sender(self.client)
        self._lease = self.client.register_script(source("lease"))
        self._aclient = aclient
        self._listeners: list[Callable[[list[Notification]], None]] = []
        self.batching = batching
        batch = f"{self.library_name}_{BATCH}"
        self._batcher = Batcher(self._send, batch) if batching else None
        self._loops: weakref.WeakKeyDictionary[Any, _OnLoop] = weakref.WeakKeyDictionary()
        self._batch_function = batch

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """redis://, rediss:// and unix:// through redis-py; `redis+cluster://host:port`
        for a Redis Cluster; `redis+sentinel://host:port/service` for Sentinel."""
        if url.startswith("redis+cluster://"):
            from redis.cluster import RedisCluster

            plain = "redis://" + url.removeprefix("redis+cluster://")
            timeout = options.get("socket_timeout", 2.0)
            client = RedisCluster.from_url(plain, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           decode_responses=True)
            store = cls(client, url=None, **options)
            store.cluster_url = plain
            return store
        if url.startswith("redis+sentinel://"):
            from redis.sentinel import Sentinel

            rest = url.removeprefix("redis+sentinel://")
            hostport, _, service = rest.partition("/")
            host, _, port = hostport.partition(":")
            sentinel = Sentinel([(host, int(port or 26379))])  # type: ignore[no-untyped-call,unused-ignore]
            master = sentinel.master_for(service or "mymaster")  # type: ignore[no-untyped-call,unused-ignore]
            return cls(master, url=None, **options)
        return cls(url=url, **options)

    def subscribe(self, listener: Callable[[list[Notification]], None]) -> None:
        """Hear each operation's notifications, sync or async, after its atomic step."""
        self._listeners.append(listener)

    def lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """SET NX, or renew if we already hold it: one sweeper among many processes."""
        try:
            return bool(self._lease(keys=[f"al:lease:{name}"], args=[owner, ttl_ms]))
        except FAILURES as error:
            raise _unavailable(error) from error

    def close(self) -> None:
        """Release the sync client's connections."""
        if self._packed is not None:
            self._packed.close()
        self.client.close()

    def load_library(self) -> None:
        """Load the function library now (on every master of a cluster). Calls load it by
        themselves when it is missing; a pipeline of calls cannot, so load it first."""
        self._step(self._flows.load)

    # -- the two drivers ------------------------------------------------------------------

    def execute(self, op: ops.Op[R]) -> R:
        """Run `op`'s flow with the sync client."""
        flow: Flow = self._flows.run(op)
        send: Callable[[Any], Step] = flow.send
        reply: Any = None
        try:
            while True:
                try:
                    step = send(reply)
                except StopIteration as done:
                    result: R = done.value
                    return result
                try:
                    reply, send = self._step(step), flow.send
                except ResponseError as error:  # the flow decides: reload, or raise
                    reply, send = error, flow.throw
        except FAILURES as error:
            raise _unavailable(error) from error

    async def aexecute(self, op: ops.Op[R]) -> R:
        """Run `op`'s flow with this event loop's asyncio client; nothing blocks the loop."""
        flow: Flow = self._flows.run(op)
        send: Callable[[Any], Step] = flow.send
        reply: Any = None
        try:
            on = self._loops.get(asyncio.get_running_loop()) or self._on_loop()
            while True:
                try:
                    step = send(reply)
                except StopIteration as done:
                    result: R = done.value
                    return result
                try:
                    reply, send = await self._astep(on, step), flow.send
                except ResponseError as error:
                    reply, send = error, flow.throw
        except FAILURES as error:
            raise _unavailable(error) from error

    def _step(self, step: Step) -> Any:
        """One step on the sync client; a call joins the calls queued up behind the one in
        flight to its node, when batching."""
        if self._batcher is not None and isinstance(step, (Call, Durable)):
            return self._batcher.submit(lane_of(self.client, self._routed, step), step)
        return self._send(step)

    def _send(self, step: Step) -> Any:
        """One step on the sync client, as it is."""
        client: Any = self.client
        if isinstance(step, Call):
            if self._packed is not None:  # packed once, in one step (resp.py)
                return self._packed(resp.pack(step.command))
            node = node_of(client, step.keys[0]) if self._routed else None
            if node is not None:
                return client.execute_command(*step.command, target_nodes=node)
            return client.execute_command(*step.command)
        if isinstance(step, Command):
            if _keyless(client, step):
                return client.execute_command(*step.args, target_nodes=client.get_default_node())
            return client.execute_command(*step.args)
        if isinstance(step, Batch):
            if self._packed is not None:
                return self._packed.many([resp.pack(args) for args in step.commands])
            pipe = client.pipeline(transaction=False)
            for args in step.commands:
                pipe.execute_command(*args)
            return pipe.execute()
        if isinstance(step, Durable):
            if self._packed is not None:
                return self._packed.many([resp.pack(step.call.command), resp.pack(step.wait)])
            if self._routed:  # the tenant's own master, on one of its connections
                client = client.get_redis_connection(client.get_node_from_key(step.call.keys[0]))
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(*step.call.command)
            pipe.execute_command(*step.wait)
            return pipe.execute()
        return client.function_load(step.source, replace=True)

    async def _astep(self, on: _OnLoop, step: Step) -> Any:
        """One step on this loop's client, batched as `_step`."""
        if on.batcher is not None and isinstance(step, (Call, Durable)):
            return await on.batcher.submit(lane_of(on.client, on.routed, step), step)
        return await self._asend(on, step)

    async def _asend(self, on: _OnLoop, step: Step) -> Any:
        """One step on this loop's client, as it is."""
        client: Any = on.client
        if isinstance(step, Call):
            node = None
            if on.packed is not None:
                return await on.packed(resp.pack(step.command))
            if on.routed:  # a fresh client, or one whose slot table a failure dropped
                await client.initialize()
                node = node_of(client, step.keys[0])
            if node is not None:
                return await client.execute_command(*step.command, target_nodes=node)
            return await client.execute_command(*step.command)
        if isinstance(step, Command):
            if _keyless(client, step):
                await client.initialize()  # a fresh client knows no nodes yet
                return await client.execute_command(*step.args,
                                                    target_nodes=client.get_default_node())
            return await client.execute_command(*step.args)
        if isinstance(step, Batch):
            if on.packed is not None:
                return await on.packed.many([resp.pack(args) for args in step.commands])
            pipe = client.pipeline(transaction=False)
            for args in step.commands:
                pipe.execute_command(*args)
            return await pipe.execute()
        if isinstance(step, Durable):
            if on.packed is not None:
                return await on.packed.many([resp.pack(step.call.command),
                                             resp.pack(step.wait)])
            if routed(client):  # the tenant's own master, on one of its connections
                await client.initialize()
                node = client.get_node_from_key(step.call.keys[0])
                queued = [PipelineCommand(0, *step.call.command), PipelineCommand(1, *step.wait)]
                await node.execute_pipeline(queued)
                for command in queued:
                    if isinstance(command.result, Exception):
                        raise command.result
                return [command.result for command in queued]
            pipe = client.pipeline(transaction=False)
            pipe.execute_command(*step.call.command)
            pipe.execute_command(*step.wait)
            return await pipe.execute()
        return await client.function_load(step.source, replace=True)

    def _on_loop(self) -> _OnLoop:
        """This event loop's side of the store: its asyncio client (a client belongs to one
        loop), the client's packed sender and the loop's batcher."""
        loop = asyncio.get_running_loop()
        client = self._aclient if not self._loops else None
        if client is None and self.cluster_url is not None:
            from redis.asyncio.cluster import RedisCluster as AsyncCluster

            client = AsyncCluster.from_url(self.cluster_url, socket_timeout=self.socket_timeout,
                                           decode_responses=True)
        elif client is None:
            if self.url is None:
                raise InvalidRequest("the async twins need an asyncio client: pass "
                                     "aclient= (redis.asyncio) with a client-built store")
            # Many tasks share a bounded pool and wait for a connection, never fail.
            pool = aredis.BlockingConnectionPool.from_url(
                self.url, max_connections=64, timeout=30, socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout, decode_responses=True)
            client = aredis.Redis(connection_pool=pool)
        on = self._loops[loop] = _OnLoop(client)
        if self.batching:
            on.batcher = AsyncBatcher(lambda sent: self._asend(on, sent), self._batch_function)
        return on

    def _notify(self, tenant: str, rows: list[Any]) -> None:
        notifications = [replies.note(tenant, row, self.clock) for row in rows]
        for listener in self._listeners:
            listener(notifications)


__all__ = ["RedisStore"]
