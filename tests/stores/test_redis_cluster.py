"""The Redis store on a real 3-master Redis Cluster on loopback (DESIGN §3.11, §5)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import redis
import test_scenarios as seed
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

import allotment as al
from allotment.stores import operations as ops
from allotment.stores.redis import TENANTS_KEY, RedisStore, reservation_key, tenant_keys
from allotment.webhook_security import DEFAULT_BLOCKED
from allotment.webhooks import Dispatcher

from support import LLM
from support.operations import every_operation
from support.redis_server import free_port
from support.webhooks import Receiver

STARTUP_S = 30.0
"""The whole cluster start (three servers, the join, cluster_state:ok) is bounded by this."""
ATTEMPTS = 3
"""Free ports can be taken by another process before a server binds them: try anew."""


@dataclass
class Cluster:
    """Three masters on loopback: their client ports and the store URL."""

    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one master."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def flushall(self) -> None:
        for port in self.ports:
            with self.node(port) as node:
                node.flushall()


def _distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _wait(what: str, ok: Callable[[], bool], deadline: float) -> None:
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis cluster: {what} not within {STARTUP_S} s")
        time.sleep(0.05)


def _answers(port: int, process: subprocess.Popen[bytes]) -> bool:
    """True once the server answers PING; raises if it exited (its port was taken)."""
    if process.poll() is not None:
        raise ChildProcessError(f"redis-server on {port} exited with {process.returncode}")
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5,
                         socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)) as node:
            return bool(node.ping())
    except redis.RedisError:  # not up yet (or someone else's listener: it will exit)
        return False


def _state_ok(port: int) -> bool:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as node:
        info = node.cluster("INFO")
    return bool(info.get("cluster_state") == "ok"
                and int(info.get("cluster_slots_assigned", 0)) == 16_384
                and int(info.get("cluster_known_nodes", 0)) == 3)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _start_masters(server: str, scratch: Path, deadline: float,
                   processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """Three cluster-enabled servers answering on free ports (each with its own free bus
    port: port + 10000 may not exist); the processes are appended to `processes`."""
    for _ in range(ATTEMPTS):
        ports = _distinct_ports(6)
        started = [subprocess.Popen(
            [server, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes",
             "--cluster-config-file", str(scratch / f"nodes-{port}.conf"),
             "--cluster-node-timeout", "2000", "--appendonly", "no", "--save", "",
             "--dir", str(scratch)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port, bus in zip(ports[:3], ports[3:], strict=True)]
        processes.extend(started)
        try:
            for port, process in zip(ports[:3], started, strict=True):
                _wait(f"127.0.0.1:{port} answering", partial(_answers, port, process), deadline)
            return ports[:3]
        except ChildProcessError:
            _stop(started)
    raise RuntimeError(f"redis cluster: no three free ports in {ATTEMPTS} attempts")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Start three cluster-enabled redis-servers, join them as three masters with
    `redis-cli --cluster create`, and wait until every node reports cluster_state:ok; all
    within STARTUP_S. Every server is stopped at the end, whatever happened."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server and cli, "redis-server and redis-cli must be installed"
    deadline = time.monotonic() + STARTUP_S
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            ports = _start_masters(server, Path(scratch), deadline, processes)
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=max(1.0, deadline - time.monotonic()))
            for port in ports:
                _wait(f"cluster_state:ok on {port}", partial(_state_ok, port), deadline)
            yield Cluster(ports)
        finally:
            _stop(processes)


# -- fixtures and helpers ----------------------------------------------------------------------

TENANTS = [f"team-{i:02d}" for i in range(30)]
TOOL = al.Action("tool.call", "web_search")
USD = al.Unit.USD_MICROCENTS


@pytest.fixture
def fresh(cluster: Cluster) -> Cluster:
    """The module's cluster, emptied on every master."""
    cluster.flushall()
    return cluster


@pytest.fixture
def cluster_guard(fresh: Cluster, clock: al.ManualClock) -> Iterator[al.Guard]:
    """A guard on `RedisStore.from_url("redis+cluster://...")` driven by the manual clock."""
    guard = al.Guard(RedisStore.from_url(fresh.url, clock=clock))
    yield guard
    guard.close()


def slot_of(tenant: str) -> int:
    return int(key_slot(tenant_keys(tenant)[0].encode()))


def slot_owners(cluster: Cluster) -> dict[int, int]:
    """Slot -> port of the master serving it, as CLUSTER SLOTS on the first node says."""
    with cluster.node(cluster.ports[0]) as node:
        reply = node.execute_command("CLUSTER SLOTS")
    owners: dict[int, int] = {}
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        for slot in range(start, end + 1):
            owners[slot] = int(primary[1])
    return owners


def owner_port(cluster: Cluster, tenant: str) -> int:
    return slot_owners(cluster)[slot_of(tenant)]


def stored_tenants(cluster: Cluster) -> dict[int, set[str]]:
    """Port -> tenants whose keys that node actually holds (a SCAN on each node itself).
    Every allotment key but the tenant registry and the sweeper's lease carries a tenant tag
    and lives in that tenant's slot."""
    found: dict[int, set[str]] = {}
    for port in cluster.ports:
        names: set[str] = set()
        with cluster.node(port) as node:
            for raw in node.scan_iter(match="al:*", count=1_000):
                key = raw.decode()
                if key == TENANTS_KEY or key.startswith("al:lease:"):
                    continue
                assert key.startswith("al:{") and "}:" in key, key
                tenant = key[4:key.index("}")]
                assert key_slot(raw) == slot_of(tenant), key
                names.add(tenant)
        found[port] = names
    return found


def assert_stored_where_owned(cluster: Cluster, tenants: list[str]) -> None:
    """Every tenant's keys are on the master owning its slot, and nowhere else."""
    found = stored_tenants(cluster)
    owners = slot_owners(cluster)
    for port in cluster.ports:
        assert found[port] == {t for t in tenants if owners[slot_of(t)] == port}, port


def balance(guard: al.Guard, scope: str) -> al.Balance:
    (found,) = [b for b in guard.balances(scope) if b.scope == scope and b.unit is USD]
    return found


def run(tenant: str, name: str, **levels: str) -> al.Subject:
    return al.Subject(tenant=tenant, dimensions={"run": name}, **levels)


# -- the cluster and where tenants land -----------------------------------------------------


def test_the_cluster_has_three_masters_covering_every_slot(cluster: Cluster) -> None:
    """The fixture's cluster: three masters on loopback, all 16384 slots, state ok."""
    owners = slot_owners(cluster)
    assert sorted(owners) == list(range(16_384))
    assert set(owners.values()) == set(cluster.ports)
    for port in cluster.ports:
        assert _state_ok(port)


def test_thirty_tenants_land_on_all_three_masters(fresh: Cluster,
                                                  cluster_guard: al.Guard) -> None:
    """Each tenant's slot is served by one master; the thirty use all three, and the client
    routes each tenant to the master CLUSTER SLOTS names."""
    store = cluster_guard.store
    assert isinstance(store, RedisStore) and isinstance(store.client, RedisCluster)
    owners = slot_owners(fresh)
    by_port: dict[int, list[str]] = {}
    for tenant in TENANTS:
        port = owners[slot_of(tenant)]
        assert store.client.get_node_from_key(tenant_keys(tenant)[0]).port == port
        by_port.setdefault(port, []).append(tenant)
    assert set(by_port) == set(fresh.ports), by_port
    for tenant in TENANTS:
        cluster_guard.set_budget(f"tenant:{tenant}", usd=10)
        cluster_guard.reserve(al.Subject(tenant=tenant), LLM, al.usd(1)).commit(al.usd(1))
    assert_stored_where_owned(fresh, TENANTS)


def test_every_key_of_a_tenant_shares_one_slot(fresh: Cluster,
                                               cluster_guard: al.Guard) -> None:
    """The keys each operation declares (KEYS[1..12]) all hash to the tenant's slot, and so
    does the key a reservation is reaped from (`al:{t}:r:<id>`), for every kind of call."""
    store = cluster_guard.store
    assert isinstance(store, RedisStore)
    kinds: set[str] = set()
    for tenant in TENANTS:
        slot = slot_of(tenant)
        assert slot == key_slot(f"{{{tenant}}}".encode())
        for kind, op in every_operation(cluster_guard, tenant).items():
            call = store._flows.call(op)
            keys, args = call.keys, call.args
            script = call.function.removeprefix(f"{store.library_name}_")
            assert script in ("reserve", "admin", "settle", "record", "read"), kind
            assert len(keys) == 13 and len(set(keys[:11])) == 11, (kind, keys)
            assert {key_slot(k.encode()) for k in keys} == {slot}, (kind, keys)
            assert all(f"{{{tenant}}}" in k for k in keys), (kind, keys)
            # JSON documents name the tenant; flat arguments (reserve, settle) carry it fifth
            assert (args[4] if len(args) > 3 else json.loads(args[0])["tenant"]) == tenant
            kinds.add(kind)
        assert key_slot(reservation_key(tenant, f"{tenant}:x").encode()) == slot
    assert len(kinds) == 21
    owners = slot_owners(fresh)
    assert {owners[slot_of(t)] for t in TENANTS} == set(fresh.ports)


# -- the seed scenarios and the core semantics, on the cluster --------------------------------


@pytest.mark.parametrize("scenario", [
    seed.test_a_runaway_agent_loop_is_stopped_at_its_own_budget,
    seed.test_b_fifty_concurrent_agents_hit_the_concurrency_quota,
    seed.test_c_tiers_cap_sessions_degrade_then_exhaust,
    seed.test_d_departments_share_an_enterprise_budget_and_reallocate,
], ids=["a-runaway-loop", "b-concurrency", "c-tiers", "d-departments"])
def test_seed_scenarios_pass_on_the_cluster(fresh: Cluster, cluster_guard: al.Guard,
                                            scenario: Callable[[al.Guard], None]) -> None:
    """The seed scenarios (a)-(d), unchanged, against the cluster-built store."""
    scenario(cluster_guard)
    found = stored_tenants(fresh)
    tenants = sorted(set().union(*found.values()))
    assert_stored_where_owned(fresh, tenants)
    if scenario is seed.test_a_runaway_agent_loop_is_stopped_at_its_own_budget:
        assert all(found[port] for port in fresh.ports), "50 tenants use all three masters"


def test_lifecycle_on_thirty_tenants(fresh: Cluster, cluster_guard: al.Guard,
                                     clock: al.ManualClock) -> None:
    """Reserve, idempotent replay, per-run templates, denial reasons, commit, release, and
    expiry after the clock moves, on tenants spread over every master."""
    guard = cluster_guard
    for tenant in TENANTS:
        guard.set_budget(f"tenant:{tenant}", usd=100, period="month")
        guard.set_budget(f"tenant:{tenant}/workflow:agent", usd=2, per="run")
        guard.set_access(f"tenant:{tenant}", models_allow=["gpt-4o*"])
    committed: dict[str, str] = {}
    expiring: dict[str, str] = {}
    for tenant in TENANTS:
        r1, r2, r3 = (run(tenant, name, workflow="agent") for name in ("r1", "r2", "r3"))
        r = guard.reserve(r1, LLM, al.usd("1.50"), idempotency_key="req-1")
        assert r.id.startswith(f"{tenant}:") and r.decision.outcome is al.Outcome.ALLOW
        assert guard.reserve(r1, LLM, al.usd("1.50"), idempotency_key="req-1").id == r.id
        with pytest.raises(al.IdempotencyMismatch):
            guard.reserve(r1, LLM, al.usd(1), idempotency_key="req-1")
        with pytest.raises(al.BudgetExceeded) as over:
            guard.reserve(r1, LLM, al.usd(1))
        decision = over.value.decision
        assert (decision.reason, decision.scope, decision.remaining, decision.limit) == (
            al.Reason.BUDGET_EXCEEDED, f"tenant:{tenant}/workflow:agent/run:r1",
            al.usd("0.50").amount, al.usd(2).amount)
        with pytest.raises(al.NotAllowed) as blocked:
            guard.reserve(r2, al.Action("llm.completion", "openai:o3"), al.usd(1))
        assert (blocked.value.decision.reason, blocked.value.decision.scope) == (
            al.Reason.MODEL_NOT_ALLOWED, f"tenant:{tenant}")
        first = r.commit(al.usd("1.20"), idempotency_key="c-1")
        assert first.charged == (al.usd("1.20"),) and first.released == (al.usd("0.30"),)
        assert guard.commit(r.id, al.usd("1.20"), idempotency_key="c-1") == first
        with pytest.raises(al.ReservationFinalized):
            guard.commit(r.id, al.usd("1.20"), idempotency_key="c-2")
        fresh_run = guard.reserve(r2, LLM, al.usd(2))  # a new run: its own $2 from the template
        assert fresh_run.release("cancelled").released == (al.usd(2),)
        expiring[tenant] = guard.reserve(r3, LLM, al.usd(1), ttl_ms=1_000, grace_ms=0).id
        committed[tenant] = r.id
    clock.advance(2_000)
    for tenant in TENANTS:
        assert guard.get(expiring[tenant]).status is al.ReservationStatus.EXPIRED
        with pytest.raises(al.ReservationExpired):
            guard.commit(expiring[tenant], al.usd(1))
        assert guard.get(committed[tenant]).status is al.ReservationStatus.COMMITTED
        by_scope = {b.scope: b for b in guard.balances(f"tenant:{tenant}") if b.unit is USD}
        top = by_scope[f"tenant:{tenant}"]
        assert (top.spent, top.reserved, top.remaining) == (
            al.usd("1.20").amount, 0, al.usd("98.80").amount)
        assert by_scope[f"tenant:{tenant}/workflow:agent/run:r1"].remaining == al.usd(
            "0.80").amount
        for b in by_scope.values():
            assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b
    assert_stored_where_owned(fresh, TENANTS)


def test_quotas_on_thirty_tenants(cluster_guard: al.Guard, clock: al.ManualClock) -> None:
    """Calls per minute and concurrency, counted per tenant in its own slot."""
    guard = cluster_guard
    for tenant in TENANTS:
        guard.set_budget(f"tenant:{tenant}", usd=100)
        guard.set_quota(f"tenant:{tenant}", calls=3, window="minute")
        guard.set_quota(f"tenant:{tenant}", concurrent=2)
    for tenant in TENANTS:
        who = al.Subject(tenant=tenant)
        a, b = (guard.reserve(who, LLM, al.usd(1)) for _ in range(2))
        with pytest.raises(al.QuotaExceeded) as busy:
            guard.reserve(who, LLM, al.usd(1))
        assert (busy.value.decision.reason, busy.value.decision.scope) == (
            "CONCURRENCY_EXCEEDED", f"tenant:{tenant}")
        a.commit(al.usd("0.50"))
        b.release()
        guard.reserve(who, LLM, al.usd(1)).commit(al.usd("0.50"))  # the third call
        with pytest.raises(al.QuotaExceeded) as calls:
            guard.reserve(who, LLM, al.usd(1))
        decision = calls.value.decision
        assert (decision.reason, decision.scope, decision.limit, decision.retry_after_ms) == (
            "QUOTA_EXCEEDED", f"tenant:{tenant}", 3, 60_000)
    clock.advance(60_000)  # a new minute
    for tenant in TENANTS:
        guard.reserve(al.Subject(tenant=tenant), LLM, al.usd(1)).commit(al.usd(1))
        assert balance(guard, f"tenant:{tenant}").spent == al.usd(2).amount
        (row,) = guard.report(tenant)
        assert row.denials == {"CONCURRENCY_EXCEEDED": 1, "QUOTA_EXCEEDED": 1}


def test_transfer_between_workspaces_of_each_tenant(cluster_guard: al.Guard) -> None:
    """A tenant handle moves budget between two of its workspaces (idempotently) and is
    refused another tenant's, which lives on another master, before any store access."""
    guard = cluster_guard
    for tenant in TENANTS:
        guard.set_budget(f"tenant:{tenant}", usd=1_000, period="month")
        guard.set_budget(f"tenant:{tenant}/workspace:marketing", usd=50, period="month")
        guard.set_budget(f"tenant:{tenant}/workspace:engineering", usd=500, period="month")
    for i, tenant in enumerate(TENANTS):
        handle = guard.tenant(tenant)
        eng, mkt = (f"tenant:{tenant}/workspace:{w}" for w in ("engineering", "marketing"))
        marketing = al.Subject(tenant=tenant, workspace="marketing")
        handle.reserve(marketing, LLM, al.usd(50)).commit(al.usd(50))
        with pytest.raises(al.BudgetExceeded) as denied:
            handle.reserve(marketing, LLM, al.usd(1))
        assert denied.value.decision.scope == mkt
        moved = handle.transfer(eng, mkt, al.usd(100), idempotency_key="move-1")
        assert handle.transfer(eng, mkt, al.usd(100), idempotency_key="move-1") == moved
        assert (moved.source.allocated, moved.destination.allocated) == (
            al.usd(400).amount, al.usd(150).amount)
        handle.reserve(marketing, LLM, al.usd(80)).commit(al.usd(80))
        assert balance(guard, mkt).remaining == al.usd(20).amount
        assert balance(guard, f"tenant:{tenant}").spent == al.usd(130).amount
        other = TENANTS[(i + 1) % len(TENANTS)]
        with pytest.raises(al.Forbidden):
            handle.transfer(f"tenant:{other}/workspace:engineering", mkt, al.usd(1))
        (record,) = guard.audit(tenant, types=["budget.transferred"])
        assert record.scopes == (eng, mkt) and record.tenant == tenant
    for tenant in TENANTS:  # nobody else's transfer touched this tenant
        assert balance(guard, f"tenant:{tenant}/workspace:engineering").allocated == al.usd(
            400).amount


def test_webhooks_and_their_security_on_every_master(cluster_guard: al.Guard) -> None:
    """Subscriptions of tenants on every master, a global one, their changes on each
    tenant's record, the store-wide security configuration (a key of its own), and a
    dispatcher round that delivers every tenant's event to a receiver on loopback."""
    guard, receiver = cluster_guard, Receiver()
    try:
        opened = guard.set_webhook_security(
            blocked_cidr_ranges=[r for r in DEFAULT_BLOCKED if r != "127.0.0.0/8"])
        assert guard.webhook_security() == opened
        everyone = guard.subscribe_webhook(receiver.url, events=["reservation.denied"])
        guard.update_webhook(everyone.id, events=["reservation.denied", "budget.exhausted"])
        receiver.secrets.append(everyone.secret or "")
        for tenant in TENANTS:
            guard.set_budget(f"tenant:{tenant}", usd=1)
            own = guard.subscribe_webhook(receiver.url, tenant=tenant, events=["*"])
            assert guard.update_webhook(own.id, enabled=False).enabled is False
            assert [r.type for r in guard.audit(tenant, types=[
                "webhook.created", "webhook.updated"])] == ["webhook.created",
                                                            "webhook.updated"]
            with pytest.raises(al.BudgetExceeded):
                guard.reserve(al.Subject(tenant=tenant), LLM, al.usd(5))
        while Dispatcher(guard).run_once():
            pass
        assert receiver.bad_signatures == 0
        assert sorted(doc["data"]["tenant"] for _, doc in receiver.accepted) == sorted(TENANTS)
    finally:
        receiver.close()


def test_audit_and_report_per_tenant(cluster_guard: al.Guard, clock: al.ManualClock) -> None:
    """Each tenant's audit log holds its own records in order, and its report counts them."""
    guard = cluster_guard
    ids: dict[str, set[str]] = {}
    for tenant in TENANTS:
        guard.set_budget(f"tenant:{tenant}", usd=10)
        who = al.Subject(tenant=tenant, workflow="chat")
        r = guard.reserve(who, LLM, al.usd(1), idempotency_key="k-1")
        r.extend(1_000)
        r.commit(al.usd("0.50"))
        released = guard.reserve(who, LLM, al.usd(1))
        released.release("cancelled")
        held = guard.reserve(who, LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
        with pytest.raises(al.BudgetExceeded):
            guard.reserve(who, LLM, al.usd(100))
        guard.record(who, TOOL, al.usd("0.10"))
        ids[tenant] = {r.id, released.id, held.id}
    clock.advance(2_000)
    assert guard.sweep() == len(TENANTS)
    for tenant in TENANTS:
        records = guard.audit(tenant, limit=1_000)
        assert [rec.type for rec in records] == [
            "budget.set", "reservation.reserved", "reservation.extended",
            "reservation.committed", "reservation.reserved", "reservation.released",
            "reservation.reserved", "reservation.denied", "event.recorded",
            "reservation.expired"]
        assert [rec.seq for rec in records] == list(range(1, 11))
        assert {rec.tenant for rec in records} == {tenant}
        assert {rec.reservation_id for rec in records if rec.reservation_id} == ids[tenant]
        assert records[1].idempotency_key == "k-1"
        assert records[5].detail == {"reason": "cancelled"}
        rows = {row.scope: row for row in guard.report(tenant)}
        assert set(rows) == {f"tenant:{tenant}", f"tenant:{tenant}/workflow:chat"}
        row = rows[f"tenant:{tenant}/workflow:chat"]
        assert (row.reservations, row.commits, row.releases, row.expiries, row.records) == (
            3, 1, 1, 1, 1)
        assert row.committed == {USD: al.usd("0.60").amount}  # the commit and the record
        top = rows[f"tenant:{tenant}"]
        assert (top.reservations, top.expiries) == (3, 1)
        # the denial belongs to the tenant, whose budget refused: not to the workflow
        assert (top.denials, row.denials) == ({"BUDGET_EXCEEDED": 1}, {})


# -- scripts, sweeps, async, durability --------------------------------------------------------


def test_a_flushed_library_is_reloaded_by_the_next_call(fresh: Cluster,
                                                       clock: al.ManualClock) -> None:
    """FUNCTION FLUSH on one master, then on all: the next call of every kind still works
    (a missing function makes the client load the library again, on every master) on
    tenants of every master."""
    guard = al.Guard.from_url(fresh.url, clock=clock)
    try:
        store = guard.store
        assert isinstance(store, RedisStore)
        name = store.library_name
        for tenant in TENANTS:
            guard.set_budget(f"tenant:{tenant}", usd=100)
            guard.reserve(al.Subject(tenant=tenant), LLM, al.usd(1)).commit(al.usd(1))
        victim = owner_port(fresh, TENANTS[0])
        with fresh.node(victim) as node:
            assert node.function_flush()
            assert not node.function_list(library=name)
        guard.reserve(al.Subject(tenant=TENANTS[0]), LLM, al.usd(1)).commit(al.usd(1))
        with fresh.node(victim) as node:
            assert node.function_list(library=name)
        for port in fresh.ports:
            with fresh.node(port) as node:
                assert node.function_flush()
                assert not node.function_list(library=name)
        for tenant in TENANTS:
            who = al.Subject(tenant=tenant)
            guard.set_budget(f"tenant:{tenant}/workspace:w", usd=5)      # admin
            r = guard.reserve(who, LLM, al.usd(2), ttl_ms=1_000, grace_ms=0)  # reserve
            r.extend(1_000)                                                # settle
            guard.record(who, TOOL, al.usd(1))                             # record
            assert guard.get(r.id).status is al.ReservationStatus.ACTIVE    # read
        clock.advance(5_000)
        assert guard.sweep() == len(TENANTS)                               # sweep
        for tenant in TENANTS:
            top = balance(guard, f"tenant:{tenant}")
            spent = al.usd(3 if tenant == TENANTS[0] else 2).amount
            assert (top.spent, top.reserved) == (spent, 0)
        for port in fresh.ports:
            with fresh.node(port) as node:
                assert node.function_list(library=name)
    finally:
        guard.close()


def test_sweep_expires_reservations_of_tenants_on_every_master(
        fresh: Cluster, cluster_guard: al.Guard, clock: al.ManualClock) -> None:
    """guard.sweep() finds every tenant with definitions, whichever master holds it, and
    expires its overdue reservations in bounded batches; the live ones stay."""
    guard = cluster_guard
    kept: dict[str, str] = {}
    overdue: dict[str, list[str]] = {}
    for tenant in TENANTS:
        guard.set_budget(f"tenant:{tenant}", usd=10)
        kept[tenant] = guard.reserve(al.Subject(tenant=tenant), LLM, al.usd(1),
                                     ttl_ms=600_000).id
        overdue[tenant] = [guard.reserve(al.Subject(tenant=tenant), LLM, al.usd(1),
                                         ttl_ms=1_000, grace_ms=0).id for _ in range(2)]
    clock.advance(2_000)
    assert guard.sweep(limit=25) == 25
    assert guard.sweep() == 2 * len(TENANTS) - 25
    assert guard.sweep() == 0
    owners = slot_owners(fresh)
    for port in fresh.ports:
        with fresh.node(port) as node:  # straight from each master: one live entry a tenant
            mine = [t for t in TENANTS if owners[slot_of(t)] == port]
            assert mine
            assert [node.zcard(tenant_keys(t)[7]) for t in mine] == [1] * len(mine)
    for tenant in TENANTS:
        assert [guard.get(rid).status for rid in overdue[tenant]] == [
            al.ReservationStatus.EXPIRED] * 2
        assert guard.get(kept[tenant]).status is al.ReservationStatus.ACTIVE
        assert balance(guard, f"tenant:{tenant}").reserved == al.usd(1).amount
        assert len(guard.audit(tenant, types=["reservation.expired"])) == 2
    store = guard.store
    assert isinstance(store, RedisStore)
    assert store.lease("sweeper", "one", 5_000) and store.lease("sweeper", "one", 5_000)
    assert not store.lease("sweeper", "two", 5_000)


def test_async_twins_on_a_cluster_url_build_their_own_client(cluster_guard: al.Guard) -> None:
    """A store built from redis+cluster:// builds an asyncio cluster client per event loop,
    so the async twins work there too, loop after loop."""
    tenant = TENANTS[0]
    cluster_guard.set_budget(f"tenant:{tenant}", usd=10)
    for _ in range(2):  # two event loops, one after the other
        reservation = asyncio.run(cluster_guard.areserve(al.Subject(tenant=tenant), LLM,
                                                         al.usd(1)))
        assert reservation.id.startswith(f"{tenant}:")
    assert balance(cluster_guard, f"tenant:{tenant}").reserved == al.usd(2).amount


def test_async_twins_with_an_asyncio_cluster_client(fresh: Cluster,
                                                    clock: al.ManualClock) -> None:
    """Handed a redis.asyncio RedisCluster (aclient=), the async twins work on every master,
    including after FUNCTION FLUSH."""
    aclient = AsyncRedisCluster(host="127.0.0.1", port=fresh.ports[0])
    guard = al.Guard.from_url(fresh.url, clock=clock, aclient=aclient)
    owners = slot_owners(fresh)
    tenants = [next(t for t in TENANTS if owners[slot_of(t)] == p) for p in fresh.ports]

    async def main() -> None:
        try:
            for tenant in tenants:
                await guard.aset_budget(f"tenant:{tenant}", usd=10)
                r = await guard.areserve(al.Subject(tenant=tenant), LLM, al.usd(2))
                assert (await r.acommit(al.usd(1))).charged == (al.usd(1),)
            for port in fresh.ports:
                with fresh.node(port) as node:
                    assert node.function_flush()
            for tenant in tenants:
                r = await guard.areserve(al.Subject(tenant=tenant), LLM, al.usd(2))
                await r.arelease()
                assert (await guard.aget(r.id)).status is al.ReservationStatus.RELEASED
        finally:
            await aclient.aclose()

    try:
        asyncio.run(main())
        for tenant in tenants:
            top = balance(guard, f"tenant:{tenant}")
            assert (top.spent, top.reserved) == (al.usd(1).amount, 0)
    finally:
        guard.close()


def test_tenants_and_plans_are_listed_across_masters(cluster_guard: al.Guard) -> None:
    """The registry of tenants lives in one slot and each tenant's state in its own: the
    list checks every tenant on its own master, sync and through the async twins."""
    guard = cluster_guard
    plan = al.Plan.from_dict({"name": "pro", "budgets": [{"scope": "", "usd": 5}]})
    for tenant in TENANTS:
        guard.assign_plan(tenant, plan, actor="ops")
    with pytest.raises(al.NotFound):
        guard.freeze("tenant:ghost")  # registered by the call, which then wrote nothing
    assert guard.tenants() == tuple(sorted(TENANTS))
    assert asyncio.run(guard.atenants()) == tuple(sorted(TENANTS))
    assert {guard.plan_of(t) for t in TENANTS} == {"pro"}
    assert asyncio.run(guard.aplan_of(TENANTS[-1])) == "pro"
    assert guard.plan_of("ghost") is None


def test_strict_durability_commits_on_a_cluster(fresh: Cluster,
                                                clock: al.ManualClock) -> None:
    """durability="strict" (script + WAIT on the tenant's master) commits and records on
    tenants of every master."""
    guard = al.Guard.from_url(fresh.url, clock=clock, durability="strict", commit_retries=0)
    owners = slot_owners(fresh)
    try:
        for port in fresh.ports:
            tenant = next(t for t in TENANTS if owners[slot_of(t)] == port)
            guard.set_budget(f"tenant:{tenant}", usd=10)
            r = guard.reserve(al.Subject(tenant=tenant), LLM, al.usd(2))
            assert r.commit(al.usd(1)).charged == (al.usd(1),)
            guard.record(al.Subject(tenant=tenant), TOOL, al.usd(1))
            assert balance(guard, f"tenant:{tenant}").spent == al.usd(2).amount
    finally:
        guard.close()


def test_a_bulk_actions_claims_live_in_slots_of_their_own(fresh: Cluster,
                                                          clock: al.ManualClock) -> None:
    """Each claim's key hashes to a slot of its own, wherever it falls; claims are made,
    replayed and refused there, sync and async, and confirmed by a wait under strict
    durability."""
    guard = al.Guard.from_url(fresh.url, clock=clock, durability="strict")
    try:
        keys = [f"k-{i}" for i in range(12)]
        owners = slot_owners(fresh)
        assert {owners[int(key_slot(f"al:once:tenants-bulk:{key}".encode()))]
                for key in keys} == set(fresh.ports)  # every master holds some
        for key in keys:
            claim = guard.claim_once("tenants-bulk", key, {"action": "SUSPEND"})
            assert guard.finish_once(claim, f'"{key}"') is True
        assert [guard.claim_once("tenants-bulk", key, {"action": "SUSPEND"}).answer
                for key in keys] == [f'"{key}"' for key in keys]
        again = asyncio.run(guard.aclaim_once("tenants-bulk", keys[0], {"action": "SUSPEND"}))
        assert again.answer == f'"{keys[0]}"'
        with pytest.raises(al.IdempotencyMismatch):
            guard.claim_once("tenants-bulk", keys[-1], {"action": "CLOSE"})
    finally:
        guard.close()


# -- routing: no key lookups on the hot path, and a slot that moves ----------------------------


def getkeys_calls(cluster: Cluster) -> int:
    """COMMAND GETKEYS calls the masters have answered since their last CONFIG RESETSTAT."""
    total = 0
    for port in cluster.ports:
        with cluster.node(port) as node:
            stats = node.info("commandstats").get("cmdstat_command|getkeys")
            total += int(stats["calls"]) if stats else 0
    return total


def reset_stats(cluster: Cluster) -> None:
    for port in cluster.ports:
        with cluster.node(port) as node:
            node.config_resetstat()


def test_calls_are_routed_without_asking_a_node_for_their_keys(fresh: Cluster,
                                                               clock: al.ManualClock) -> None:
    """Every operation, sync and async, goes straight to the tenant's master: the client
    finds the node in its own slot table and never sends COMMAND GETKEYS (an extra round
    trip per call)."""
    guard = al.Guard.from_url(fresh.url, clock=clock)
    owners = slot_owners(fresh)
    tenants = [next(t for t in TENANTS if owners[slot_of(t)] == p) for p in fresh.ports]
    try:
        for tenant in tenants:
            guard.set_budget(f"tenant:{tenant}", usd=10)
        reset_stats(fresh)
        for tenant in tenants:
            who = al.Subject(tenant=tenant)
            guard.reserve(who, LLM, al.usd(1)).commit(al.usd(1))
            guard.reserve(who, LLM, al.usd(1)).release()
            guard.record(who, TOOL, al.usd(1))
            assert balance(guard, f"tenant:{tenant}").spent == al.usd(2).amount

        async def twins() -> None:
            for tenant in tenants:
                r = await guard.areserve(al.Subject(tenant=tenant), LLM, al.usd(1))
                await r.acommit(al.usd(1))

        asyncio.run(twins())
        assert getkeys_calls(fresh) == 0
        for tenant in tenants:
            assert balance(guard, f"tenant:{tenant}").spent == al.usd(3).amount
    finally:
        guard.close()


def node_id(cluster: Cluster, port: int) -> str:
    with cluster.node(port) as node:
        return str(node.execute_command("CLUSTER MYID").decode())


def move_slot(cluster: Cluster, slot: int, source: int, target: int) -> None:
    """Move one slot and its keys from one master to another, as resharding does."""
    source_id, target_id = node_id(cluster, source), node_id(cluster, target)
    with cluster.node(source) as src, cluster.node(target) as dst:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5_000, "KEYS", *keys)
    for port in cluster.ports:
        with cluster.node(port) as node:
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)


def test_a_slot_moved_to_another_master_is_followed(fresh: Cluster,
                                                    clock: al.ManualClock) -> None:
    """The tenant's slot moves while the client's slot table still names the old master:
    the call is redirected (MOVED), the table refreshed, and the ledger stays whole, sync
    and async; then the slot moves back and the same holds."""
    guard = al.Guard.from_url(fresh.url, clock=clock)
    tenant = TENANTS[0]
    who = al.Subject(tenant=tenant)
    slot, home = slot_of(tenant), owner_port(fresh, tenant)
    away = next(p for p in fresh.ports if p != home)
    try:
        guard.set_budget(f"tenant:{tenant}", usd=100)
        held = guard.reserve(who, LLM, al.usd(2))
        for source, target in ((home, away), (away, home)):
            move_slot(fresh, slot, source, target)
            assert owner_port(fresh, tenant) == target
            held.commit(al.usd(1))
            held = guard.reserve(who, LLM, al.usd(2))

            async def twin() -> None:
                await (await guard.areserve(who, LLM, al.usd(1))).acommit(al.usd(1))

            asyncio.run(twin())
            with fresh.node(target) as node:
                assert node.exists(tenant_keys(tenant)[1])
        top = balance(guard, f"tenant:{tenant}")
        assert (top.spent, top.reserved) == (al.usd(4).amount, al.usd(2).amount)
    finally:
        guard.close()


def test_a_master_that_stops_answering_fails_one_call_then_recovers(
        fresh: Cluster, clock: al.ManualClock) -> None:
    """The tenant's master is paused past the socket timeout: the routed call fails with
    StoreUnavailable (the client drops its connection and refreshes its slot table), and
    once the master answers again the next call, sync or async, works on a whole ledger."""
    guard = al.Guard(RedisStore.from_url(fresh.url, clock=clock, socket_timeout=0.5))
    port = fresh.ports[1]
    tenant = next(t for t in TENANTS if owner_port(fresh, t) == port)
    who = al.Subject(tenant=tenant)
    try:
        guard.set_budget(f"tenant:{tenant}", usd=100)
        guard.reserve(who, LLM, al.usd(1)).commit(al.usd(1))
        with fresh.node(port) as node:
            node.execute_command("CLIENT PAUSE", 1_500, "ALL")
        with pytest.raises(al.StoreUnavailable):
            guard.reserve(who, LLM, al.usd(1))
        time.sleep(1.6)
        guard.reserve(who, LLM, al.usd(1)).commit(al.usd(1))

        async def twin() -> None:
            await (await guard.areserve(who, LLM, al.usd(1))).acommit(al.usd(1))

        asyncio.run(twin())
        top = balance(guard, f"tenant:{tenant}")
        assert top.spent == al.usd(3).amount
        assert top.reserved in (0, al.usd(1).amount)  # the timed-out reserve may have run
    finally:
        guard.close()


# -- natural batching: a batch per hash slot --------------------------------------------------


def test_threads_and_tasks_hammering_tenants_on_every_master(fresh: Cluster) -> None:
    """Calls batched on a cluster go per slot to the slot's master: many threads, then many
    tasks, on thirty tenants over three masters; every caller gets its own result and every
    ledger holds what the callers were told."""
    guard = al.Guard(RedisStore.from_url(fresh.url))
    tenants = TENANTS[:12]
    for tenant in tenants:
        guard.set_budget(f"tenant:{tenant}", usd=1)
    told = dict.fromkeys(tenants, 0)
    lock = threading.Lock()

    def pair(tenant: str, cents: int) -> None:
        r = guard.reserve(al.Subject(tenant=tenant), LLM, al.usd("0.05"))
        assert r.id.startswith(f"{tenant}:")
        result = r.commit(al.usd(f"0.0{cents}"))
        assert result.reservation_id == r.id
        with lock:
            told[tenant] += sum(a.amount for a in result.charged)

    def work(worker: int) -> None:
        for i in range(12):
            pair(tenants[(worker + i) % len(tenants)], (worker + i) % 5)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def apair(tenant: str, cents: int) -> None:
        r = await guard.areserve(al.Subject(tenant=tenant), LLM, al.usd("0.05"))
        result = await r.acommit(al.usd(f"0.0{cents}"))
        assert result.reservation_id == r.id
        told[tenant] += sum(a.amount for a in result.charged)

    async def tasks() -> None:
        await asyncio.gather(*(apair(tenants[i % len(tenants)], i % 5) for i in range(120)))

    asyncio.run(tasks())
    for tenant in tenants:
        b = balance(guard, f"tenant:{tenant}")
        assert b.spent == told[tenant] and b.reserved == 0
    assert_stored_where_owned(fresh, tenants)
    guard.close()


def test_keyed_calls_check_the_key_in_the_tenants_own_slot(fresh: Cluster,
                                                           cluster_guard: al.Guard) -> None:
    """A keyed call declares the tenant's key hash beside its own keys, all in the tenant's
    slot: one FCALL on the tenant's master, sync and async, and a revoked key is refused
    there."""
    store = cluster_guard.store
    assert isinstance(store, RedisStore)
    owners = slot_owners(fresh)
    tenants = [next(t for t in TENANTS if owners[slot_of(t)] == p) for p in fresh.ports]
    made = {}
    for tenant in tenants:
        cluster_guard.set_budget(f"tenant:{tenant}", usd=10)
        made[tenant] = cluster_guard.create_key(tenant)
    reset_stats(fresh)
    for tenant in tenants:
        handle = cluster_guard.tenant_for_key(made[tenant].secret, "reservations:create")
        read = handle._own(ops.Balances(tenant=tenant, scope=f"tenant:{tenant}"))
        step = next(store._flows._gated(read))  # type: ignore[arg-type]
        assert {key_slot(k.encode()) for k in step.keys} == {slot_of(tenant)}, step.keys
        assert len(step.keys) == 14
        handle.reserve(handle.subject(), LLM, al.usd(1))
        asyncio.run(handle.areserve(handle.subject(), LLM, al.usd(1)))
        assert balance(cluster_guard, f"tenant:{tenant}").reserved == al.usd(2).amount
    assert getkeys_calls(fresh) == 0
    cluster_guard.revoke_key(made[tenants[1]].key.key_id)
    with pytest.raises(al.KeyRefused):
        cluster_guard.tenant_for_key(made[tenants[1]].secret, "reservations:create").reserve(
            al.Subject(tenant=tenants[1]), LLM, al.usd(1))
    assert balance(cluster_guard, f"tenant:{tenants[1]}").reserved == al.usd(2).amount

