"""The Redis steps of each operation, written once for the sync and the async driver.

A flow is a generator: it yields each step (`Call`, `Durable`, `Command`, `Load`), receives
the step's reply (or, thrown in, the `ResponseError` it raised) and returns the operation's
result. A driver only performs steps, so registration, the reload of a missing library,
strict durability and the sweep are the same whichever client runs them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from ...errors import StoreUnavailable
from .. import operations as ops
from . import replies
from .codec import (
    CODECS,
    Codec,
    Refused,
    Wire,
    decode,
    sweep_call,
    sweep_due,
    sweep_reads,
    swept,
)
from .functions import KEYED, ONCE, OPERATIONS, missing
from .hooks import HookFlows
from .keys import TENANTS_KEY, api_keys_key, tenant_keys
from .once import once_arguments, once_result

log = logging.getLogger("allotment")


@dataclass(frozen=True, slots=True)
class Call:
    """FCALL of one library function; a cluster driver sends it to the master of the slot
    of `keys[0]` (every key of a call is in one slot: the tenant's, or a claim's own)."""

    function: str
    keys: list[str]
    args: list[Any]

    @property
    def command(self) -> tuple[Any, ...]:
        """The command as sent: FCALL, the function, the key count, keys, arguments."""
        return ("FCALL", self.function, len(self.keys), *self.keys, *self.args)


@dataclass(frozen=True, slots=True)
class Durable:
    """A call and then `wait` (WAITAOF or WAIT) pipelined on one connection to the tenant's
    master, so the wait covers that call's write; replies [the call's reply, the acks]."""

    call: Call
    wait: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Command:
    """A command the client routes by itself (SADD, SSCAN, INFO); replies as redis-py parses
    it."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """Commands the client routes by itself, sent together in one non-transactional
    pipeline; replies the list of their replies."""

    commands: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class Load:
    """FUNCTION LOAD REPLACE of the library, on every master of a cluster."""

    source: str


Step = Call | Durable | Command | Batch | Load
Flow = Generator[Step, Any, Any]


class Flows:
    """Builds the flow of each operation from the codec table and the store's settings."""

    def __init__(self, prefix: str, source: str, wire: Wire,
                 notify: Callable[[str, list[Any]], None], *, strict: bool, replicas: int,
                 wait_timeout_ms: int) -> None:
        self.names = {name: f"{prefix}_{name}" for name in (*OPERATIONS, KEYED, ONCE)}
        self.load = Load(source)
        self.wire, self.notify = wire, notify
        self.strict, self.replicas, self.wait_timeout_ms = strict, replicas, wait_timeout_ms
        self.waitaof: bool | None = None
        self.known: set[str] = set()
        """Tenants this process has added to TENANTS_KEY."""
        self.hooks = HookFlows(self)
        self.checked = False
        """Whether the server's persistence settings have been looked at (once per store)."""

    def run(self, op: ops.Op[Any]) -> Flow:
        """The flow of `op`: a tenant's first registering call adds it to the sweeper's set,
        then one call (with a wait for durability where strict mode asks for one)."""
        if not self.checked:
            self.checked = True
            yield from self._check_persistence()
        if type(op) is ops.Sweep:
            return (yield from self._sweep(op.limit))
        if type(op) is ops.Tenants:
            return (yield from self._tenants())
        codec = CODECS.get(type(op))
        if codec is None:  # keyed, a webhook operation (hooks.py) or a bulk action's claim
            if type(op) is ops.Gated:
                return (yield from self._gated(op))
            if isinstance(op, ops.ClaimOnce | ops.FinishOnce):  # a function of its own
                now = yield from self.now()
                once = Call(self.names[ONCE], *once_arguments(op, now))
                reply = yield from self._sent(once, durable=True)
                return once_result(op, reply)
            return (yield from self.hooks.run(op))
        if (codec.registers and op.tenant not in self.known
                and not getattr(op, "dry_run", False)):  # decide writes nothing
            yield from self._register(op.tenant)
        reply = yield from self._sent(self.call(op, codec), durable=codec.durable)
        return self.result(op, reply)

    def _register(self, tenant: str) -> Flow:
        """A tenant's first registering call in this process: add the tenant to the
        sweeper's set and wire the global webhooks into it."""
        yield Command(("SADD", TENANTS_KEY, tenant))
        yield from self.hooks.registered(tenant)
        self.known.add(tenant)

    def _called(self, op: ops.Op[Any], call: Call, codec: Codec,
                proof: ops.KeyProof) -> Flow:
        """`op`'s result from its keyed call (with a wait for durability where strict mode
        asks for one); a refusal of the key raised."""
        reply = yield from self._sent(call, durable=codec.durable)
        refused = _key_refused(reply)
        if refused is not None:
            raise ops.refused(refused, proof)
        return self.result(op, reply)

    def _gated(self, gated: ops.Gated[Any]) -> Flow:
        """An operation its API key must let through: its call inside the keyed function,
        which checks the key first in the same call (keyed.lua). A webhook operation (several
        calls) and a tenant's first registering call in this process (its registration
        writes outside the call) first check the key in a keyed call of its own that reads
        the key, so a refused key writes nothing; the operation's call checks it again."""
        op, proof = gated.op, gated.proof
        codec = CODECS.get(type(op))
        if codec is None or (codec.registers and op.tenant not in self.known
                             and not getattr(op, "dry_run", False)):
            find = ops.FindKey(tenant=op.tenant, key_id=proof.key_id)
            found = CODECS[ops.FindKey]
            yield from self._called(find, self._keyed(find, found, proof), found, proof)
            if codec is None:
                return (yield from self.run(op))
            yield from self._register(op.tenant)
        return (yield from self._called(op, self._keyed(op, codec, proof), codec, proof))

    def _keyed(self, op: ops.Op[Any], codec: Codec, proof: ops.KeyProof) -> Call:
        """`op`'s call inside the keyed function: its keys and the tenant's key hash, the
        proof, its function's name and its arguments (keyed.lua)."""
        inner = self.call(op, codec)
        return Call(self.names[KEYED], [*inner.keys, api_keys_key(op.tenant)],
                    [proof.key_id, proof.secret_hash, proof.permission, codec.function,
                     *inner.args])

    def call(self, op: ops.Op[Any], codec: Codec | None = None) -> Call:
        """The function call of `op` (a pipeline of calls is built from these)."""
        codec = codec or CODECS[type(op)]
        keys, args = codec.encode(op, self.wire)
        return Call(self.names[codec.function], keys, args)

    def result(self, op: ops.Op[Any], reply: Any) -> Any:
        """The result of `op`'s reply, after its notifications have gone to the listeners."""
        try:
            result, notes = decode(op, reply, self.wire)
        except Refused as refused:
            if refused.notes:
                self.notify(op.tenant, refused.notes)
            raise refused.error from None
        if notes:
            self.notify(op.tenant, notes)
        return result

    def _sent(self, call: Call, *, durable: bool) -> Flow:
        """The flow of the call's reply: with a wait for durability when it writes
        (`durable`) and strict mode asks for one (the flow itself, no frame of its own)."""
        return self._durably(call) if durable and self.strict else self._loading(call)

    def _loading(self, step: Call | Durable) -> Flow:
        """The step's reply; a server without the library gets it, and the step once more."""
        try:
            return (yield step)
        except ResponseError as error:
            if not missing(error):
                raise
        yield self.load
        return (yield step)

    def _durably(self, call: Call) -> Flow:
        """Strict mode: the call and a WAITAOF (Redis ≥ 7.2) or WAIT in one round trip; the
        write counts only once it is on disk / on the replicas."""
        if self.waitaof is None:
            info = yield Command(("INFO", "server"))
            version = str(info.get("redis_version", "0"))
            self.waitaof = tuple(int(p) for p in version.split(".")[:2]) >= (7, 2)
        timeout = self.wait_timeout_ms
        wait = (("WAITAOF", 1, self.replicas, timeout) if self.waitaof
                else ("WAIT", self.replicas, timeout))
        reply, acks = yield from self._loading(Durable(call, wait))
        local, replicated = (acks[0], acks[1]) if self.waitaof else (1, acks)
        if local < 1 or replicated < self.replicas:
            raise StoreUnavailable(
                f"the write was applied but not confirmed durable in {timeout} ms "
                f"(fsynced locally: {local}, replicas: {replicated} of {self.replicas}); a "
                "retry with the same idempotency key is safe")
        return reply

    def _check_persistence(self) -> Flow:
        """Warn once if budgets could be lost: without `appendonly yes` a restart loses what
        was written since the last snapshot, and an evicting `maxmemory-policy` drops ledgers
        under memory pressure. CONFIG GET, or INFO where CONFIG is not allowed; a check that
        cannot be made is skipped, never a failed call."""
        try:
            try:
                aof = yield Command(("CONFIG", "GET", "appendonly"))
                policy = yield Command(("CONFIG", "GET", "maxmemory-policy"))
                settings = _merged(aof) | _merged(policy)
                appendonly, eviction = settings["appendonly"], settings["maxmemory-policy"]
            except ResponseError:  # CONFIG renamed or not permitted (a managed Redis)
                persistence = yield Command(("INFO", "persistence"))
                memory = yield Command(("INFO", "memory"))
                appendonly = "yes" if str(persistence["aof_enabled"]) == "1" else "no"
                eviction = memory["maxmemory_policy"]
        except (ResponseError, KeyError, TypeError, ValueError):
            return
        if appendonly != "yes":
            log.warning("redis runs without `appendonly yes`: budgets and spend written "
                        "since the last snapshot are lost if the server restarts")
        if eviction != "noeviction":
            log.warning("redis maxmemory-policy is %s, not noeviction: budgets, ledgers and "
                        "reservations can be evicted under memory pressure", eviction)

    def now(self) -> Flow:
        """The store's time in ms: the clock the calls carry, or the server's."""
        clock = self.wire.clock
        if clock is not None:
            return int(clock())
        seconds, micros = yield Command(("TIME",))
        return int(seconds) * 1000 + int(micros) // 1000

    def _sweep(self, limit: int) -> Flow:
        """Each tenant of TENANTS_KEY that has something due, until `limit` reservations
        have expired. Per page of the registry one pipeline reads each tenant's earliest
        deadline and where its pruning stands (`sweep_due`), so an idle tenant costs two
        reads and no call. A tenant whose call fails (its stored state cannot be read) is
        reported with a `sweep.tenant_failed` notification and skipped; the store failing
        is not."""
        expired, cursor, now = 0, 0, None
        while True:
            cursor, page = yield Command(("SSCAN", TENANTS_KEY, cursor, "COUNT", 500))
            tenants = list(map(replies.text, page))
            if tenants:
                if now is None:
                    now = yield from self.now()
                read = yield Batch(tuple(read for tenant in tenants
                                         for read in sweep_reads(tenant, now)))
                tenants = [tenant for i, tenant in enumerate(tenants)
                           if sweep_due(read[2 * i], read[2 * i + 1], now)]
            for tenant in tenants:
                if expired >= limit:
                    return expired
                keys, args = sweep_call(tenant, limit - expired, self.wire)
                try:
                    reply = yield from self._loading(Call(self.names["sweep"], keys, args))
                    count, notes = swept(reply)
                    expired += count
                    if notes:
                        self.notify(tenant, notes)
                except (ResponseError, ValueError, KeyError) as error:
                    self.notify(tenant, [[ops.TENANT_FAILED, None, None, None, None, None,
                                          None, None, ops.skipped(tenant, error)]])
            if not cursor:
                return expired


    def _tenants(self) -> Flow:
        """The registry's tenants that are registered or hold a change on record (a name
        or a sequence number in their meta hash), sorted: a tenant added to the registry by
        a call the script then refused holds nothing, as on the memory store. One pipeline
        of reads per page of the registry."""
        found: list[str] = []
        cursor: Any = 0
        while True:
            cursor, page = yield Command(("SSCAN", TENANTS_KEY, cursor, "COUNT", 500))
            names = sorted(set(map(replies.text, page)))
            if names:
                held = yield Batch(tuple(("HMGET", tenant_keys(name)[6], "seq", "tenant_name")
                                         for name in names))
                found += [name for name, there in zip(names, held, strict=True)
                          if any(value is not None for value in there)]
            if not int(cursor):
                return tuple(sorted(set(found)))


def _key_refused(reply: Any) -> str | None:
    """The reason in a keyed call's refusal ({"key_refused": reason}), None for any other
    reply."""
    if isinstance(reply, bytes) and reply.startswith(b'{"key_refused"'):
        reply = reply.decode()
    if isinstance(reply, str) and reply.startswith('{"key_refused"'):
        return str(json.loads(reply)["key_refused"])
    return None


def _merged(reply: Any) -> dict[str, str]:
    """A CONFIG GET reply as one mapping (a cluster client answers per node: the first).
    Older redis-py releases leave it the flat name, value list the server sends."""
    if isinstance(reply, list | tuple):
        reply = zip(map(replies.text, reply[::2]), map(replies.text, reply[1::2]), strict=True)
    values = dict(reply)
    first = next(iter(values.values()), None)
    return dict(first) if isinstance(first, dict) else values


__all__ = ["Batch", "Call", "Command", "Durable", "Flow", "Flows", "Load", "Step"]
