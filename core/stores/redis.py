"""The shared store: the same semantics as the memory store, one script call per operation.

Every key of a tenant carries the tenant as its hash tag (`al:{acme}:...`), so a tenant is one
cluster slot and one atomic domain, and each script declares all of its keys. The scripts live
in `redis_lua/` beside this module: a shared prelude plus one file per kind of operation,
loaded once per server as one Redis function library (FUNCTION LOAD, then one FCALL per
operation), so the prelude is not rebuilt on every call; a server that lost the library
(restart without persistence, FUNCTION FLUSH, failover) gets it again on the next call.
Redis `TIME` is the clock, unless a test hands in its own.

The hot operations travel light: reserve and settle take flat arguments instead of a JSON
document, and reserve, commit and release answer with a compact array (integers as integers)
from which the results are built with what the operation already holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
)

from ..amounts import Amount, Unit, Units
from ..errors import (
    AllotmentError,
    BudgetExceeded,
    Denied,
    InvalidRequest,
    StoreUnavailable,
    by_code,
)
from ..events import AuditRecord, Notification, ReportRow, report_rows
from ..ids import new_id
from ..models import (
    Action,
    Balance,
    BudgetStatus,
    Caps,
    CommitResult,
    Decision,
    ExtendResult,
    FundResult,
    Outcome,
    OveragePolicy,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    ReservationStatus,
    TransferResult,
)
from ..periods import Period
from ..scopes import Subject, parse_scope
from . import operations as ops

R = TypeVar("R")
DAY_MS = 86_400_000
FAILURES = (RedisError, RedisClusterException)
"""What redis-py raises when the store cannot answer (cluster errors are not RedisErrors)."""
TENANTS_KEY = "al:tenants"
"""Every tenant with definitions: where the sweeper finds them (not on any hot path)."""

OPERATIONS = ("reserve", "admin", "settle", "record", "read", "sweep")
"""One function per operation file; reserve and settle take flat arguments (FLAT)."""
FLAT = {"reserve": "flat_reserve", "settle": "flat_settle"}


@contextmanager
def unavailable_on_failure() -> Iterator[None]:
    """Whatever redis-py raises when the store cannot answer becomes `StoreUnavailable`."""
    try:
        yield
    except (RedisConnectionError, TimeoutError) as error:
        raise StoreUnavailable(f"redis unreachable: {error}") from error
    except FAILURES as error:
        raise StoreUnavailable(f"redis error: {error}") from error


def _source(parts: tuple[str, ...]) -> str:
    folder = resources.files("allotment.stores") / "redis_lua"
    return "\n".join((folder / f"{name}.lua").read_text() for name in parts)


def library() -> tuple[str, str]:
    """The function library's source and its name prefix.

    common.lua and definitions.lua are the shared prelude; each operation's file becomes the
    body of one function, registered as `<prefix>_<operation>`. The prefix carries a hash of
    the source, so processes of two versions never replace each other's functions.
    """
    body = [_source(("common", "definitions"))]
    for name in OPERATIONS:
        body.append(f"local function op_{name}()\n{_source((name,))}\nend")
    text = "\n".join(body)
    prefix = "allotment_" + hashlib.sha1(text.encode()).hexdigest()[:12]
    register = [f"redis.register_function('{prefix}_{name}', function(keys, args)\n"
                f"  begin(keys, args, {FLAT.get(name, 'nil')})\n  return op_{name}()\nend)"
                for name in OPERATIONS]
    return f"#!lua name={prefix}\n{text}\n" + "\n".join(register) + "\n", prefix


def _missing(error: Exception) -> bool:
    """The server lacks the library: a fresh or restarted server, FUNCTION FLUSH, failover."""
    return isinstance(error, ResponseError) and "function not found" in str(error).lower()


def _routed(client: Any) -> bool:
    """A cluster client: it would ask a node for FCALL's keys (COMMAND GETKEYS) on every
    call, so the call is sent to the node of its first key instead."""
    return hasattr(client, "get_node_from_key") and hasattr(client, "nodes_manager")


class Function:
    """One function of the library, called like a redis-py `Script`: (keys, args, client).

    A server without the library gets it loaded (on every master of a cluster) and the call
    is sent again. Given a pipeline as `client`, the call is only queued. On a cluster the
    call goes straight to the master of the tenant's slot, found in the client's slot table;
    a MOVED reply (a slot that moved) refreshes that table and follows the redirect.
    """

    def __init__(self, client: Any, name: str, source: str) -> None:
        self.client, self.name, self.source = client, name, source
        self.routed = _routed(client)

    def node(self, key: str) -> Any:
        """The master of `key`'s slot in the client's table; None when the table has none
        for it (the client's own routing then finds the node, refreshing its table)."""
        try:
            return self.client.get_node_from_key(key)
        except SlotNotCoveredError:
            return None

    def send(self, keys: list[str], args: list[Any]) -> Any:
        node = self.node(keys[0]) if self.routed else None
        if node is not None:
            return self.client.execute_command(
                "FCALL", self.name, len(keys), *keys, *args, target_nodes=node)
        return self.client.fcall(self.name, len(keys), *keys, *args)

    def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
        if client is not None and client is not self.client:
            return client.fcall(self.name, len(keys), *keys, *args)
        try:
            return self.send(keys, args)
        except ResponseError as error:
            if not _missing(error):
                raise
        self.client.function_load(self.source, replace=True)
        return self.send(keys, args)


class AsyncFunction(Function):
    """The same on a redis.asyncio client."""

    async def send(self, keys: list[str], args: list[Any]) -> Any:
        node = None
        if self.routed:  # a fresh client, or one whose slot table a failure dropped
            await self.client.initialize()
            node = self.node(keys[0])
        if node is not None:
            return await self.client.execute_command(
                "FCALL", self.name, len(keys), *keys, *args, target_nodes=node)
        return await self.client.fcall(self.name, len(keys), *keys, *args)

    async def __call__(self, keys: list[str], args: list[Any],
                       client: Any = None) -> Any:
        try:
            return await self.send(keys, args)
        except ResponseError as error:
            if not _missing(error):
                raise
        await self.client.function_load(self.source, replace=True)
        return await self.send(keys, args)


@lru_cache(maxsize=4096)
def tenant_keys(tenant: str) -> tuple[str, ...]:
    """The ten keys every script of a tenant declares (KEYS[1..10]); built once per tenant."""
    tag = f"al:{{{tenant}}}:"
    return tuple(tag + name for name in ("defs", "ledgers", "quotas", "access", "qcount",
                                         "qruns", "meta", "exp", "audit", "report"))


def reservation_key(tenant: str, rid: str) -> str:
    return f"al:{{{tenant}}}:r:{rid}"


def idempotency_key(tenant: str, kind: str, key: str | None) -> str:
    if key is None:
        return f"al:{{{tenant}}}:none"
    return f"al:{{{tenant}}}:i:{kind}:{key}"


class RedisStore:
    """redis-py sync and asyncio clients over the same scripts.

    `clock` replaces Redis `TIME` (tests move it); leave it None in production.
    """

    def __init__(self, client: Any = None, *, aclient: Any = None, url: str | None = None,
                 clock: Callable[[], int] | None = None, reap_batch: int = 16,
                 idempotency_ttl_ms: int = DAY_MS, finished_retention_ms: int = DAY_MS,
                 audit_retention: int = 10_000, dimension_idle_ttl_ms: int = 30 * DAY_MS,
                 prune_batch: int = 500, durability: str = "fast", replicas: int = 0,
                 wait_timeout_ms: int = 1_000, socket_timeout: float = 2.0) -> None:
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
        self.durability, self.replicas, self.wait_timeout_ms = (durability, replicas,
                                                                wait_timeout_ms)
        self._waitaof: bool | None = None
        self._aclient = aclient
        self.clock = clock
        self.settings = json.dumps({
            "reap_batch": reap_batch, "idempotency_ttl_ms": idempotency_ttl_ms,
            "finished_retention_ms": finished_retention_ms, "audit_retention": audit_retention,
            "dimension_idle_ttl_ms": dimension_idle_ttl_ms, "prune_batch": prune_batch})
        self._library, prefix = library()
        self.library_name = prefix
        self._names = {name: f"{prefix}_{name}" for name in OPERATIONS}
        self._scripts = {name: Function(self.client, fn, self._library)
                         for name, fn in self._names.items()}
        self._lease = self.client.register_script(_source(("lease",)))
        self._ascripts: weakref.WeakKeyDictionary[Any, dict[str, Any]] = (
            weakref.WeakKeyDictionary())
        self._listeners: list[Callable[[list[Notification]], None]] = []
        self._known: set[str] = set()

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
        self._listeners.append(listener)

    def lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """SET NX, or renew if we already hold it: one sweeper among many processes."""
        with unavailable_on_failure():
            return bool(self._lease(keys=[f"al:lease:{name}"], args=[owner, ttl_ms]))

    def close(self) -> None:
        self.client.close()

    def load_library(self) -> None:
        """Load the function library now (on every master of a cluster). Calls load it by
        themselves when it is missing; a pipeline of calls cannot, so load it first."""
        self.client.function_load(self._library, replace=True)

    # -- entry points -------------------------------------------------------------------

    def execute(self, op: ops.Op[R]) -> R:
        if isinstance(op, ops.Sweep):
            return self._sweep(op.limit)  # type: ignore[return-value]
        with unavailable_on_failure():
            script, keys, payload = self._call(op)
            if self.durability == "strict" and isinstance(op, (ops.Commit, ops.Record)):
                raw = self._durably(script, keys, payload)
            else:
                raw = self._scripts[script](keys=keys, args=self._args(payload))
        result: R = self._reply(op, raw)
        return result

    async def aexecute(self, op: ops.Op[R]) -> R:
        if isinstance(op, ops.Sweep):
            return self._sweep(op.limit)  # type: ignore[return-value]
        with unavailable_on_failure():
            script, keys, payload = self._call(op)
            raw = await self._ascript(script)(keys=keys, args=self._args(payload))
        result: R = self._reply(op, raw)
        return result

    def _durably(self, script: str, keys: list[str], payload: dict[str, Any]) -> Any:
        """Strict mode: the script and a WAITAOF (Redis ≥ 7.2) or WAIT on one connection,
        in one round trip; the commit returns only once it is on disk / on the replicas."""
        if self._waitaof is None:
            version = str(self.client.info("server").get("redis_version", "0"))
            self._waitaof = tuple(int(p) for p in version.split(".")[:2]) >= (7, 2)
        client: Any = self.client
        if hasattr(client, "get_node_from_key"):  # a cluster: the tenant's own master
            client = client.get_redis_connection(client.get_node_from_key(keys[0]))
        args = self._args(payload)
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            self._scripts[script](keys=keys, args=args, client=pipe)
            if self._waitaof:
                pipe.execute_command("WAITAOF", 1, self.replicas, self.wait_timeout_ms)
            else:
                pipe.execute_command("WAIT", self.replicas, self.wait_timeout_ms)
            try:
                raw, acks = pipe.execute()
                break
            except ResponseError as error:  # the call did not run: load the library, again
                if attempt == 2 or not _missing(error):
                    raise
                self.load_library()
        local, replicated = (acks[0], acks[1]) if self._waitaof else (1, acks)
        if local < 1 or replicated < self.replicas:
            raise StoreUnavailable(
                f"the write was applied but not confirmed durable in {self.wait_timeout_ms} ms "
                f"(fsynced locally: {local}, replicas: {replicated} of {self.replicas}); a "
                "retry with the same idempotency key is safe")
        return raw

    def _ascript(self, name: str) -> Any:
        """The script on this event loop's asyncio client (a client belongs to one loop)."""
        loop = asyncio.get_running_loop()
        scripts = self._ascripts.get(loop)
        if scripts is None:
            client = self._aclient if not self._ascripts else None
            if client is None and self.cluster_url is not None:
                from redis.asyncio.cluster import RedisCluster as AsyncCluster

                client = AsyncCluster.from_url(self.cluster_url,
                                               socket_timeout=self.socket_timeout,
                                               decode_responses=True)
            elif client is None:
                if self.url is None:
                    raise InvalidRequest("the async twins need an asyncio client: pass "
                                         "aclient= (redis.asyncio) with a client-built store")
                # Many tasks share a bounded pool and wait for a connection, never fail.
                pool = aredis.BlockingConnectionPool.from_url(
                    self.url, max_connections=64, timeout=30,
                    socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.socket_timeout, decode_responses=True)
                client = aredis.Redis(connection_pool=pool)
            scripts = self._ascripts[loop] = {
                name: AsyncFunction(client, fn, self._library)
                for name, fn in self._names.items()}
        return scripts[name]

    def _args(self, payload: dict[str, Any] | list[Any]) -> list[Any]:
        """A JSON document, or flat arguments (a list that starts with the operation)."""
        now = "" if self.clock is None else str(self.clock())
        if isinstance(payload, list):
            return [payload[0], now, self.settings, *payload[1:]]
        return [json.dumps(payload, separators=(",", ":")), now, self.settings]

    # -- operations to script calls -------------------------------------------------------

    def _call(self, op: ops.Op[Any]) -> tuple[str, list[str], Any]:
        """The function, its keys, and its payload: a dict sent as JSON, or flat arguments."""
        tenant = op.tenant
        keys = tenant_keys(tenant)
        if isinstance(op, ops.Reserve):
            rid = new_id(tenant)
            self._remember_tenant(tenant)
            return "reserve", [*keys, reservation_key(tenant, rid),
                               idempotency_key(tenant, "reserve", op.idempotency_key)], [
                "reserve", rid, tenant, op.idempotency_key or "", op.fingerprint,
                *_flat_reserve(op)]
        if isinstance(op, (ops.Commit, ops.Release, ops.Extend)):
            if isinstance(op, ops.Commit):
                name, detail = "commit", _packed(op.actual)
            elif isinstance(op, ops.Release):
                name, detail = "release", op.reason
            else:
                name, detail = "extend", str(op.by_ms)
            return "settle", [*keys, reservation_key(tenant, op.reservation_id),
                              f"al:{{{tenant}}}:none"], [
                name, op.reservation_id, tenant, op.idempotency_key or "", op.fingerprint,
                detail]
        res, idem, kind = f"al:{{{tenant}}}:none", f"al:{{{tenant}}}:none", ""
        script = "admin"
        payload: dict[str, Any]
        if isinstance(op, ops.Record):
            script, kind = "record", "record"
            payload = {"op": "record", "scopes": list(op.scopes),
                       "dims": [list(p) for p in op.dimensions], "subject": _subject(op.subject),
                       "action": _action(op.action), "actual": _pairs(op.actual),
                       "policy": _value(op.overage_policy), "shadow": op.shadow,
                       "event_id": new_id(tenant)}
        elif isinstance(op, ops.Get):
            script, res = "read", reservation_key(tenant, op.reservation_id)
            payload = {"op": "get", "rid": op.reservation_id}
        elif isinstance(op, ops.Balances):
            path = parse_scope(op.scope)
            script = "read"
            payload = {"op": "balances", "scope": path.path, "base": path.base,
                       "dimension": list(path.dimension) if path.dimension else None,
                       "children": op.include_children}
        elif isinstance(op, ops.Audit):
            script = "read"
            payload = {"op": "audit", "since": op.since_ms, "limit": op.limit,
                       "types": sorted(op.types) if op.types is not None else None}
        elif isinstance(op, ops.Report):
            script, payload = "read", {"op": "report"}
        elif isinstance(op, ops.Fund):
            path = parse_scope(op.scope)
            kind = "fund"
            payload = {"op": "fund", "scope": path.path, "base": path.base,
                       "per": path.dimension[0] if path.dimension else "", "unit": op.unit.value,
                       "period": _period_choice(op.period), "operation": op.operation.value,
                       "amount": op.amount, "spent": op.spent}
        elif isinstance(op, ops.Transfer):
            src, dst = parse_scope(op.source), parse_scope(op.destination)
            kind = "transfer"
            payload = {"op": "transfer", "source": src.path, "source_base": src.base,
                       "source_per": src.dimension[0] if src.dimension else "",
                       "destination": dst.path, "destination_base": dst.base,
                       "destination_per": dst.dimension[0] if dst.dimension else "",
                       "unit": op.unit.value, "period": _period_choice(op.period),
                       "amount": op.amount}
        else:
            payload = _definition_payload(op)
        if isinstance(op, ops.Keyed) and kind:
            idem = idempotency_key(tenant, kind, op.idempotency_key)
            payload.update(key=op.idempotency_key, fp=op.fingerprint)
        elif isinstance(op, ops.Keyed):
            payload.update(key=op.idempotency_key, fp=op.fingerprint)
        payload["tenant"] = tenant
        if script == "admin":
            self._remember_tenant(tenant)
        return script, [*keys, res, idem], payload

    def _remember_tenant(self, tenant: str) -> None:
        """Once per process and tenant: the sweeper finds tenants in this set."""
        if tenant not in self._known:
            self.client.sadd(TENANTS_KEY, tenant)
            self._known.add(tenant)

    def _sweep(self, limit: int) -> int:
        with unavailable_on_failure():
            return self._sweep_tenants(limit)

    def _sweep_tenants(self, limit: int) -> int:
        expired = 0
        for raw in self.client.sscan_iter(TENANTS_KEY, count=500):
            if expired >= limit:
                break
            tenant = raw.decode() if isinstance(raw, bytes) else raw
            keys = [*tenant_keys(tenant), f"al:{{{tenant}}}:none", f"al:{{{tenant}}}:none"]
            reply = self._scripts["sweep"](keys=keys, args=self._args(
                {"op": "sweep", "limit": limit - expired, "tenant": tenant}))
            expired += int(json.loads(reply)["expired"])
        return expired

    # -- replies to results ---------------------------------------------------------------

    def _reply(self, op: ops.Op[Any], raw: Any) -> Any:
        """A compact reply (an array: reserve, commit, release) or a JSON document."""
        if isinstance(raw, list):
            return self._compact(op, raw)
        return self._finish(op, json.loads(raw))

    def _notify(self, tenant: str, notes: list[Any]) -> None:
        notifications = [_note(tenant, n, self.clock) for n in notes]
        for listener in self._listeners:
            listener(notifications)

    def _compact(self, op: ops.Op[Any], reply: list[Any]) -> Any:
        """Results from a compact reply and what the operation already says (the subject,
        action, ttl of a reservation are those the fingerprint of a replay matched)."""
        if reply[-1]:
            self._notify(op.tenant, json.loads(reply[-1]))
        if isinstance(op, ops.Reserve):
            said, rid, created, estimate, rows, _ = reply
            decision = (Decision(Outcome.ALLOW) if said in (b"ALLOW", "ALLOW")
                        else _decision(json.loads(said)))
            info = None
            if rid is not None:
                info = ReservationInfo(
                    _text(rid), op.tenant, ReservationStatus.ACTIVE, op.subject, op.action,
                    _amounts(_text(estimate)),
                    tuple(dict.fromkeys(_text(field).rsplit("|", 3)[0]
                                        for field in _flat(rows)[0::8])),
                    created, created + op.ttl_ms, op.grace_ms, 0, op.overage_policy, (), None)
            return ops.ReserveOutcome(decision, info, _later(rows))
        if isinstance(op, ops.Commit):
            charged, released, rows, _ = reply
            return CommitResult(op.reservation_id, ReservationStatus.COMMITTED,
                                _amounts(_text(charged)), _amounts(_text(released)), _later(rows))
        assert isinstance(op, ops.Release), type(op).__name__  # the only other compact reply
        released, rows, _ = reply
        return ReleaseResult(op.reservation_id, ReservationStatus.RELEASED,
                             _amounts(_text(released)), _later(rows))

    def _finish(self, op: ops.Op[Any], body: dict[str, Any]) -> Any:
        if "error" in body:
            raise _error(body)
        notes = body.get("notes")
        if notes:
            self._notify(op.tenant, notes)
        if isinstance(op, ops.Reserve):
            decision = _decision(body["decision"])
            reservation = body.get("reservation")
            info = None if reservation is None else _info(reservation)
            return ops.ReserveOutcome(decision, info, _balances(body.get("balances")))
        if isinstance(op, ops.Commit):
            return CommitResult(body["reservation_id"], ReservationStatus.COMMITTED,
                                _amounts(body["charged"]), _amounts(body["released"]),
                                _balances(body["balances"]))
        if isinstance(op, ops.Release):
            return ReleaseResult(body["reservation_id"], ReservationStatus.RELEASED,
                                 _amounts(body["released"]), _balances(body["balances"]))
        if isinstance(op, ops.Extend):
            return ExtendResult(body["reservation_id"], int(body["expires_at_ms"]),
                                int(body["extensions"]))
        if isinstance(op, ops.Record):
            return RecordResult(body["event_id"], _amounts(body["charged"]),
                                _balances(body["balances"]))
        if isinstance(op, ops.Get):
            return _info(body["reservation"])
        if isinstance(op, (ops.Balances, ops.SetBudget)):
            return _balances(body["balances"])
        if isinstance(op, ops.Audit):
            return tuple(_record(op.tenant, fields) for fields in reversed(body["records"]))
        if isinstance(op, ops.Report):
            flat = body["counts"]
            counts = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
            now = op.at_ms if op.at_ms is not None else _now(self.clock)
            return report_rows(counts, op.period, now)
        if isinstance(op, ops.Fund):
            return FundResult(_balance(body["before"]), _balance(body["after"]))
        if isinstance(op, ops.Transfer):
            return TransferResult(_balance(body["source"]), _balance(body["destination"]))
        if isinstance(op, ops.SetStatus):
            return int(body["changed"])
        if isinstance(op, ops.RemoveBudget):
            return int(body["removed"])
        return None


# -- payloads ---------------------------------------------------------------------------------


def _value(enum: Any) -> Any:
    return None if enum is None else enum.value


def _pairs(units: Units) -> list[list[Any]]:
    return [[unit.value, amount] for unit, amount in units]


def _period(period: Period | None) -> str:
    return "" if period is None else period.value


def _period_choice(period: Any) -> str:
    return "*" if period is ops.AUTO else _period(period)


def _subject(subject: Subject) -> str:
    return json.dumps({**subject.model_dump(exclude_defaults=True),
                       "scope_path": subject.scope_path}, separators=(",", ":"))


def _action(action: Action) -> dict[str, Any]:
    return {"kind": action.kind, "name": action.name, "tags": list(action.tags)}


def _packed(units: Units) -> str:
    """Amounts as "UNIT=amount,...": how flat arguments and reservations carry them."""
    return ",".join(f"{unit.value}={amount}" for unit, amount in units)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


_ENCODED: dict[int, tuple[Any, str]] = {}
"""Subjects and actions already encoded, by identity (callers reuse them call after call)."""


def _encoded(value: Subject | Action, encode: Callable[[Any], str]) -> str:
    """`encode(value)`, remembered while the same object comes back (bounded)."""
    kept = _ENCODED.get(id(value))
    if kept is not None and kept[0] is value:
        return kept[1]
    text = encode(value)
    if len(_ENCODED) >= 512:
        _ENCODED.clear()
    _ENCODED[id(value)] = (value, text)
    return text


def _action_json(action: Action) -> str:
    return _json(_action(action))


def _flat_reserve(op: ops.Reserve) -> list[Any]:
    """Arguments 8 onwards of reserve (see flat_reserve in common.lua)."""
    elastic = "" if op.elastic is None else _json({
        "rates": _pairs(op.elastic.rates), "max_tokens": op.elastic.max_tokens,
        "floor": op.elastic.floor})
    plan = "" if op.default_plan is None else _json(_definition_payload(op.default_plan))
    action = op.action
    return [_encoded(op.subject, _subject), op.subject.scope_path, action.kind, action.name,
            _encoded(action, _action_json), _packed(op.estimate), op.ttl_ms, op.grace_ms,
            op.max_extensions, _value(op.overage_policy) or "",
            ("d" if op.dry_run else "") + ("s" if op.shadow else ""),
            _json([list(p) for p in op.dimensions]) if op.dimensions else "", elastic, plan,
            *op.scopes]


def _definition_payload(op: ops.Op[Any]) -> dict[str, Any]:
    if isinstance(op, ops.SetBudget):
        return {"op": "set_budget", "scope": op.scope, "unit": op.unit.value,
                "period": _period(op.period), "per": op.per or "", "limit": op.limit,
                "od": op.overdraft_limit, "policy": op.overage_policy.value,
                "alerts": list(op.alerts),
                "degrade": [rule.model_dump() for rule in op.degrade]}
    if isinstance(op, ops.RemoveBudget):
        return {"op": "remove_budget", "scope": op.scope, "unit": op.unit.value,
                "period": _period(op.period), "per": op.per or ""}
    if isinstance(op, ops.SetQuota):
        rule = op.rule
        return {"op": "set_quota", "scope": rule.scope, "kind": rule.kind.value,
                "limit": rule.limit, "window": _period(rule.window),
                "action_kind": rule.action_kind, "remove": op.remove}
    if isinstance(op, ops.SetAccess):
        access = None if op.rule is None else {
            "models_allow": list(op.rule.models_allow), "models_deny": list(op.rule.models_deny),
            "tools_allow": list(op.rule.tools_allow), "tools_deny": list(op.rule.tools_deny),
            "max_tokens_per_call": op.rule.max_tokens_per_call}
        return {"op": "set_access", "scope": op.scope, "rule": access}
    if isinstance(op, ops.SetMode):
        return {"op": "set_mode", "mode": op.mode}
    if isinstance(op, ops.SetStatus):
        return {"op": "set_status", "scope": op.scope, "status": op.status.value,
                "unit": _value(op.unit)}
    if isinstance(op, ops.ApplyPlan):
        return {"op": "apply_plan", "name": op.name, "mode": op.mode,
                "definitions": [_definition_payload(d) for d in op.definitions]}
    raise AssertionError(f"no script for {type(op).__name__}")


# -- reply parsing ----------------------------------------------------------------------------


def _now(clock: Callable[[], int] | None) -> int:
    from ..clock import system_ms

    return clock() if clock is not None else system_ms()


UNITS: dict[Any, Unit] = {key: u for u in Unit for key in (u.value, u.value.encode())}
STATUSES: dict[Any, BudgetStatus] = {key: s for s in BudgetStatus
                                     for key in (s.value, s.value.encode())}


def _text(value: Any) -> str:
    """A reply string, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value


def _flat(rows: list[Any]) -> list[Any]:
    """The balance rows of a compact reply, eight items each, one after another in one
    list (a replay snapshot of an earlier version holds them as a list per row)."""
    if rows and isinstance(rows[0], list):
        return [item for row in rows for item in row]
    return rows


def _rows(rows: list[Any]) -> tuple[Balance, ...]:
    """Balance rows of a compact reply: the ledger field ("path|unit|period|bucket"), then
    integers as integers (the store's own clients decode strings; one handed in may not)."""
    out = []
    flat = _flat(rows)
    for i in range(0, len(flat), 8):
        field, a, r, sp, debt, od, over, status = flat[i:i + 8]
        scope, unit, period, bucket = _text(field).rsplit("|", 3)
        out.append(Balance(scope, UNITS[unit], period or None, bucket, a, r, sp, debt, od,
                           over == 1, STATUSES[status]))
    return tuple(out)


def _later(rows: list[Any]) -> Callable[[], tuple[Balance, ...]]:
    """Balance rows built when first read: most callers never read them."""
    return partial(_rows, rows)


def _amounts(packed: str) -> tuple[Amount, ...]:
    out = []
    for part in filter(None, packed.split(",")):
        unit, _, amount = part.partition("=")
        out.append(Amount.trusted(UNITS[unit], int(amount)))
    return tuple(out)


def _balance(row: list[Any]) -> Balance:
    scope, unit, period, bucket, a, r, sp, debt, od, over, status = row
    return Balance(scope, Unit(unit), period or None, bucket, int(a), int(r), int(sp), int(debt),
                   int(od), bool(int(over)), BudgetStatus(status))


def _balances(rows: list[Any] | None) -> tuple[Balance, ...]:
    return tuple(_balance(row) for row in rows or [])


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _decision(body: dict[str, Any]) -> Decision:
    caps = body.get("caps")
    observed = body.get("observed")
    return Decision(
        Outcome(body["outcome"]),
        None if not caps else Caps(
            max_tokens=caps.get("max_tokens"),
            tool_allowlist=tuple(caps["tool_allowlist"]) if "tool_allowlist" in caps else None,
            tool_denylist=tuple(caps["tool_denylist"]) if "tool_denylist" in caps else None,
            cooldown_ms=caps.get("cooldown_ms"), model=caps.get("model")),
        body.get("reason"), body.get("scope"),
        Unit(body["unit"]) if body.get("unit") else None, _int(body.get("remaining")),
        _int(body.get("limit")), _int(body.get("requested")), _int(body.get("retry_after_ms")),
        None if not observed else _decision(observed))


def _info(row: list[Any]) -> ReservationInfo:
    (rid, tenant, status, subject, action, estimate, scopes, created, expires, grace, ext,
     policy, charged, finalized) = row
    fields = json.loads(subject)
    fields.pop("scope_path", None)
    act = json.loads(action)
    return ReservationInfo(
        rid, tenant, ReservationStatus(status), Subject(**fields),
        Action(act["kind"], act["name"], tags=tuple(act.get("tags") or ())),
        _amounts(estimate), tuple(scopes) if isinstance(scopes, list) else (),
        int(created), int(expires), int(grace), int(ext),
        OveragePolicy(policy) if policy else None, _amounts(charged), _int(finalized))


def _error(body: dict[str, Any]) -> AllotmentError:
    code, message = body["error"], body.get("message", "")
    decision = body.get("decision")
    if decision:
        found = _decision(decision)
        if code == "BUDGET_NOT_FOUND":
            return Denied(found)
        return BudgetExceeded(found)
    return by_code(code, message)


def _note(tenant: str, row: list[Any], clock: Callable[[], int] | None) -> Notification:
    kind, scope, unit, bucket, threshold, remaining, allocated, rid = row[:8]
    return Notification(kind, tenant, _now(clock), scope=scope, unit=Unit(unit) if unit else None,
                        bucket=bucket or None, threshold=threshold, reason=row[8] if len(row) > 8
                        else None, remaining=_int(remaining), allocated=_int(allocated),
                        reservation_id=rid or None)


def _record(tenant: str, flat: list[str]) -> AuditRecord:
    f = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    subject = None
    if f.get("subject"):
        fields = json.loads(f["subject"])
        fields.pop("scope_path", None)
        subject = Subject(**fields)
    return AuditRecord(
        int(f["seq"]), int(f["at"]), f["type"], tenant,
        scopes=tuple(json.loads(f["scopes"])) if "scopes" in f else (), subject=subject,
        action=f.get("action"), reservation_id=f.get("reservation_id"),
        idempotency_key=f.get("idempotency_key") or None,
        estimate=_amounts(f.get("estimate", "")), actual=_amounts(f.get("actual", "")),
        charged=_amounts(f.get("charged", "")), reason=f.get("reason"),
        detail=_detail(f.get("detail")))


INTEGER_DETAILS = frozenset({"limit", "remaining", "by_ms", "expires_at_ms"})
"""Detail values the scripts send as strings: integers past cjson's 14 digits stay exact."""


def _detail(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    detail = json.loads(text)
    if not isinstance(detail, dict):
        return {}
    return {k: int(v) if k in INTEGER_DETAILS and isinstance(v, str) else v
            for k, v in detail.items()}


__all__ = ["RedisStore", "ReportRow", "reservation_key", "tenant_keys"]
