"""The Redis store under load and failure (DESIGN §3.12, §5, §8).

Processes racing one budget and a hundred tenants, kill -9 of the server and of a client, a
server that stops or freezes mid-run, hostile input, and one cluster slot per script. Every
server here is a real redis-server on loopback (tests/redis_server.py); nothing is mocked, and
time is Redis' own `TIME` (no clock override), so expiry is waited for, briefly.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import key_slot

import allotment as al
from allotment.policy import elastic_amount
from allotment.stores.redis import RedisStore

from support import LLM
from support.layouts import Layout
from support.operations import every_operation
from support.redis_server import free_port, redis_server

TOKENS = al.Unit.TOKENS
TOP = 2**53 - 1  # the largest amount the ledger takes (DESIGN §3.2)
AOF = ("--appendonly", "yes", "--appendfsync", "always")
EXPIRED = al.ReservationStatus.EXPIRED
COMMITTED = al.ReservationStatus.COMMITTED
RELEASED = al.ReservationStatus.RELEASED


# -- servers, clocks, subprocesses ---------------------------------------------------------


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    client: redis.Redis


def running_server() -> Iterator[Server]:
    """A redis-server on a free loopback port (DEBUG allowed from loopback, for digests)."""
    port = free_port()
    with redis_server("--enable-debug-command", "local", port=port) as (url, process):
        client = redis.Redis.from_url(url)
        yield Server(url, port, process, client)
        client.close()


@pytest.fixture
def server() -> Iterator[Server]:
    """A fresh server for a test that kills, freezes or inspects the whole of it."""
    yield from running_server()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[Server]:
    """One server for the tests that only compare before with after, or build keys."""
    yield from running_server()


def server_ms(client: redis.Redis) -> int:
    """Redis `TIME` in ms: the clock every script uses."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_past(client: redis.Redis, deadline_ms: int, timeout: float = 5.0) -> None:
    """Sleep until the store's clock is strictly past `deadline_ms` (expiry is `now > at`)."""
    limit = time.monotonic() + timeout
    while server_ms(client) <= deadline_ms + 1:
        assert time.monotonic() < limit, f"Redis TIME never passed {deadline_ms}"
        time.sleep(0.02)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, f"timed out waiting for {what}"
        time.sleep(0.01)


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of a child's stdout, or fail after `timeout` instead of blocking forever."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output from pid {process.pid} in {timeout} s")
    return process.stdout.readline()


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


# -- budget layouts and their books --------------------------------------------------------


def nested(tenant: str, scale: int) -> Layout:
    """tenant > workspace > agent budgets and a per-run template, each level tighter than the
    one above for some subjects, so that denials come from every level."""
    t = f"tenant:{tenant}"
    w0, w1 = f"{t}/workspace:w0", f"{t}/workspace:w1"
    a0 = f"{w0}/agent:a0"
    subjects = [al.Subject(tenant=tenant, workspace="w0", agent="a0",
                           dimensions={"run": f"r{i}"}) for i in range(6)]
    subjects += [al.Subject(tenant=tenant, workspace="w0", agent="a0"),
                 al.Subject(tenant=tenant, workspace="w0", agent="a1"),
                 al.Subject(tenant=tenant, workspace="w1"),
                 al.Subject(tenant=tenant, workspace="w2"),
                 al.Subject(tenant=tenant)]
    limits = {t: 60 * scale, w0: 40 * scale, a0: 25 * scale, w1: 25 * scale}
    return Layout(limits, {a0: ("run", 4 * scale)}, tuple(subjects))


def assert_books(guard: al.Guard, layout: Layout, charges: Counter[str]) -> None:
    """Every ledger of every tenant balances, holds nothing, is within its allocation and
    has spent exactly what its callers were told they were charged."""
    for tenant in layout.tenants:
        seen: dict[str, al.Balance] = {}
        for b in guard.balances(f"tenant:{tenant}"):
            assert b.scope not in seen, f"two ledgers for {b.scope}"
            seen[b.scope] = b
            assert b.allocated == layout.limit_of(b.scope), b
            assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b
            assert (b.reserved, b.debt, b.is_over_limit) == (0, 0, False), b
            assert b.spent == charges[b.scope], b
            assert charges[b.scope] <= b.allocated, b  # Σ charged ≤ allocated under REJECT
        charged_here = {s for s, n in charges.items()
                        if n and s.split("/")[0] == f"tenant:{tenant}"}
        assert charged_here <= seen.keys(), charged_here - seen.keys()


# -- 1. processes racing -------------------------------------------------------------------

RACE_WORKER = r'''
"""One racing process: its own guard on the shared Redis, several threads."""
import json, random, sys, threading, time, traceback
from pathlib import Path

import allotment as al
from allotment.stores.redis import RedisStore

cfg = json.loads(Path(sys.argv[1]).read_text())
guard = al.Guard(RedisStore(url=cfg["url"]))
action = al.Action("llm.completion", "openai:gpt-4o")
subjects = [al.Subject(**s) for s in cfg["subjects"]]
# Each thread's abandoned holds (reserved, then left to expire) are taken before the race, while
# every budget has room: taken by the thread itself, a thread that starts late (a loaded
# machine) would find the budgets spent by the others and be denied.
starts = []
for n in range(cfg["threads"]):
    rng = random.Random(cfg["seed"] * 100 + n)
    out = {"settled": [], "denied": 0, "refused": 0, "overage": 0, "abandoned": [],
           "errors": []}
    for _ in range(cfg["abandon"]):
        i = rng.randrange(len(subjects))
        r = guard.reserve(subjects[i], action, al.tokens(2), ttl_ms=1000, grace_ms=0)
        out["abandoned"].append([r.id, i, r.expires_at_ms])
    starts.append((rng, out))
Path(cfg["ready"]).touch()
go, deadline = Path(cfg["go"]), time.monotonic() + 30
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.002)
results = []


def work(rng, out):
    try:
        for _ in range(cfg["steps"]):
            i, estimate, roll = rng.randrange(len(subjects)), rng.randint(1, 30), rng.random()
            try:
                r = guard.reserve(subjects[i], action, al.tokens(estimate))
            except al.BudgetExceeded:
                out["denied"] += 1
                continue
            scopes = sorted(r.info.scopes)
            if roll < 0.2:
                r.release("race")
                out["settled"].append([r.id, i, scopes, 0])
                continue
            if roll < 0.5:
                actual = estimate + rng.randint(1, 2 * estimate)
            else:
                actual = rng.randint(0, estimate)
            try:
                charged = r.commit(al.tokens(actual)).charged[0].amount
                out["overage"] += actual > estimate
            except al.BudgetExceeded:  # REJECT: nothing changed; the estimate still fits
                out["refused"] += 1
                actual = estimate
                charged = r.commit(al.tokens(estimate)).charged[0].amount
            if charged != actual:
                out["errors"].append(f"{r.id}: charged {charged}, actual {actual}")
            out["settled"].append([r.id, i, scopes, charged])
    except Exception:  # with the worker's line that raised: which step failed
        out["errors"].append(traceback.format_exc(limit=1))
    results.append(out)


threads = [threading.Thread(target=work, args=start) for start in starts]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
'''


def race_processes(tmp_path: Path, url: str, layout: Layout, *, processes: int, threads: int,
                   steps: int, abandon: int) -> list[dict[str, Any]]:
    """Start `processes` workers, release them at once, and collect what each thread saw."""
    script = tmp_path / "race_worker.py"
    script.write_text(RACE_WORKER)
    subjects = [s.model_dump(exclude_defaults=True) for s in layout.subjects]
    ready = [tmp_path / f"ready-{n}" for n in range(processes)]
    workers: list[subprocess.Popen[str]] = []
    try:
        for n in range(processes):
            cfg = tmp_path / f"worker-{n}.json"  # a file: 1,100 subjects overflow argv
            cfg.write_text(json.dumps({
                "url": url, "subjects": subjects, "ready": str(ready[n]),
                "go": str(tmp_path / "go"), "seed": n, "threads": threads, "steps": steps,
                "abandon": abandon}))
            workers.append(subprocess.Popen([sys.executable, str(script), str(cfg)],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True))
        wait_for(lambda: all(p.exists() for p in ready)
                 or any(w.poll() is not None for w in workers), "workers to start", 30)
        assert all(w.poll() is None for w in workers), [
            w.communicate(timeout=5) for w in workers if w.poll() is not None]
        (tmp_path / "go").touch()
        seen: list[dict[str, Any]] = []
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=40)
            assert worker.returncode == 0, stderr
            seen += json.loads(stdout.strip().splitlines()[-1])
        return seen
    finally:
        for worker in workers:
            stop(worker)


@pytest.mark.parametrize("tenants", [1, 100], ids=["one-tenant", "hundred-tenants"])
def test_processes_racing_never_oversubscribe_and_abandoned_holds_expire(
        server: Server, tmp_path: Path, tenants: int) -> None:
    """4 processes × 4 threads, each process with its own guard and connections, race
    reserve/commit/release (overage refused under REJECT) on nested budgets; some holds,
    taken before the race, are abandoned with a 1 s ttl. Afterwards the books balance
    exactly on every ledger, and no reservation is still ACTIVE once its ttl has passed and a
    sweep ran."""
    processes, threads, steps = 4, 4, 60
    if tenants == 1:
        layout = nested("race", 100)
    else:
        layout = Layout.merged([nested(f"t{n:03d}", 5) for n in range(tenants)])
    guard = al.Guard(RedisStore(url=server.url))
    layout.install(guard, TOKENS, "REJECT")

    seen = race_processes(tmp_path, server.url, layout, processes=processes, threads=threads,
                          steps=steps, abandon=1)

    assert [e for part in seen for e in part["errors"]] == []
    settled = [row for part in seen for row in part["settled"]]
    denied = sum(part["denied"] for part in seen)
    assert len(seen) == processes * threads
    assert len(settled) + denied == processes * threads * steps  # every step accounted for
    assert denied > 0 and len(settled) > 200  # both exhaustion and success were raced
    assert sum(part["overage"] for part in seen) > 0
    if tenants == 1:
        assert sum(part["refused"] for part in seen) > 0  # REJECT refused some overage

    # abandoned holds: once Redis' clock is past their deadline, a sweep leaves none ACTIVE
    abandoned = [row for part in seen for row in part["abandoned"]]
    assert len(abandoned) == processes * threads
    wait_past(server.client, max(expires for _, _, expires in abandoned))
    swept = guard.sweep()
    assert 0 <= swept <= len(abandoned)  # the rest went lazily, on their tenant's next call
    assert [guard.get(rid).status for rid, _, _ in abandoned] == [EXPIRED] * len(abandoned)
    assert guard.sweep() == 0
    expired = [rec.reservation_id for tenant in {rid.partition(":")[0] for rid, _, _ in abandoned}
               for rec in guard.audit(tenant, types=["reservation.expired"], limit=1_000)]
    assert sorted(expired) == sorted(rid for rid, _, _ in abandoned)  # each exactly once

    charges: Counter[str] = Counter()
    for rid, index, scopes, charged in settled:
        ledgers = tuple(sorted(layout.ledgers(layout.subjects[index])))
        assert tuple(scopes) == ledgers, (rid, scopes)
        for scope in ledgers:
            charges[scope] += charged
    assert_books(guard, layout, charges)
    for rid, _, _, charged in settled:  # the store agrees with what each caller was told
        info = guard.get(rid)
        assert info.status in (COMMITTED, RELEASED), info
        assert sum(a.amount for a in info.charged) == charged, info


# -- load threads shared by the crash and outage tests --------------------------------------


@dataclass
class Load:
    """reserve + commit in a loop (ttl 1 s, grace 0), noting every commit acknowledged to
    the caller, every store failure, and the slowest call."""

    guard: al.Guard
    subject: al.Subject
    halt: threading.Event = field(default_factory=threading.Event)
    reserved: list[str] = field(default_factory=list)
    acked: list[tuple[str, int, int]] = field(default_factory=list)  # id, actual, charged
    failures: int = 0
    messages: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    slowest: float = 0.0
    thread: threading.Thread | None = None

    def start(self) -> Load:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def finish(self) -> None:
        self.halt.set()
        assert self.thread is not None
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "a load thread hung"

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            estimate = 1 + n % 40
            actual = (7 * n) % (estimate + 1)
            started = time.monotonic()
            try:
                r = self.guard.reserve(self.subject, LLM, al.tokens(estimate), ttl_ms=1_000,
                                       grace_ms=0)
                self.reserved.append(r.id)
                self._timed(started)
                started = time.monotonic()
                result = r.commit(al.tokens(actual))
                self._timed(started)
            except al.StoreUnavailable as error:
                self._timed(started)
                self.failures += 1
                self.messages.add(str(error))
                time.sleep(0.005)
                continue
            except al.ReservationExpired:
                continue  # outlived its ttl in an outage: its estimate went back
            except Exception as error:
                self.errors.append(repr(error))
                return
            self.acked.append((r.id, actual, result.charged[0].amount))

    def _timed(self, started: float) -> None:
        self.slowest = max(self.slowest, time.monotonic() - started)


def assert_loads_balanced(guard: al.Guard, client: redis.Redis, loads: list[Load],
                          limits: dict[str, int]) -> None:
    """After the loads stop: wait out their ttl and sweep. Every acknowledged commit is
    COMMITTED with its charge; every other reservation is COMMITTED (its answer was lost) or
    EXPIRED; each ledger spent exactly what is COMMITTED and holds nothing."""
    wait_past(client, server_ms(client) + 1_000)
    guard.sweep()
    for load in loads:
        assert load.errors == []
        for rid, actual, charged in load.acked:
            info = guard.get(rid)
            assert info.status is COMMITTED, info
            assert charged == actual == sum(a.amount for a in info.charged), info
    committed = 0
    for rid in {rid for load in loads for rid in load.reserved}:
        info = guard.get(rid)
        assert info.status in (COMMITTED, EXPIRED), info
        committed += sum(a.amount for a in info.charged) if info.status is COMMITTED else 0
    acknowledged = sum(charged for load in loads for _, _, charged in load.acked)
    tenant = loads[0].subject.tenant
    balances = {b.scope: b for b in guard.balances(f"tenant:{tenant}")}
    assert balances.keys() == limits.keys()
    for scope, b in balances.items():
        assert b.allocated == limits[scope], b
        assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b
        assert (b.reserved, b.debt) == (0, 0), b
        assert acknowledged <= b.spent == committed, (acknowledged, committed, b)


# -- 2. kill -9 of the server --------------------------------------------------------------


def test_acknowledged_commits_survive_kill_9_of_the_server(tmp_path: Path) -> None:
    """A commit the caller saw succeed must not live only in the server's memory. The
    server (AOF, fsync always) is killed with SIGKILL mid-load and restarted on the same
    port and directory: every acknowledged commit is there, the books balance, and the same
    guard carries on by itself. (A process kill keeps what reached the page cache; the
    fsync policy is what covers a power loss, which a test cannot stage.)"""
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    limits = {"tenant:crash": 10**12, "tenant:crash/workspace:w": 10**11}
    subject = al.Subject(tenant="crash", workspace="w")
    with redis_server(*AOF, port=port, directory=data) as (url, first):
        guard = al.Guard(RedisStore(url=url, socket_timeout=1.0))
        for scope, limit in limits.items():
            guard.set_budget(scope, tokens=limit, overage_policy="REJECT")
        load = Load(guard, subject).start()
        try:
            wait_for(lambda: len(load.acked) >= 200, "acknowledged commits before the crash")
            first.kill()  # SIGKILL: no shutdown, no final fsync
            first.wait(timeout=10)
            at_crash = len(load.acked)
            wait_for(lambda: load.failures > 0, "the load to notice the crash", 5)
            with redis_server(*AOF, port=port, directory=data) as (_, second):
                wait_for(lambda: len(load.acked) >= at_crash + 200 or bool(load.errors),
                         "the same guard to commit again after the restart")
                load.finish()
                assert load.errors == []
                assert second.poll() is None
                assert any("redis unreachable" in m for m in load.messages), load.messages
                assert_loads_balanced(guard, redis.Redis.from_url(url), [load], limits)
                r = guard.reserve(subject, LLM, al.tokens(3))  # and it keeps working
                assert r.commit(al.tokens(3)).charged == (al.tokens(3),)
        finally:
            load.halt.set()


# -- 3. kill -9 of a client ----------------------------------------------------------------

HOLDER = r'''
"""Reserve, say which ids, then wait to be killed."""
import json, sys, time

import allotment as al
from allotment.stores.redis import RedisStore

cfg = json.loads(sys.argv[1])
guard = al.Guard(RedisStore(url=cfg["url"]))
action = al.Action("llm.completion", "openai:gpt-4o")
subject = al.Subject(**cfg["subject"])
held = [guard.reserve(subject, action, al.tokens(n), ttl_ms=1000, grace_ms=0)
        for n in cfg["estimates"]]
print(json.dumps([[r.id, r.expires_at_ms] for r in held]), flush=True)
time.sleep(60)
'''


@pytest.mark.parametrize("reclaim", ["sweep", "next-operation"])
def test_budget_held_by_a_killed_client_comes_back(server: Server, tmp_path: Path,
                                                   reclaim: str) -> None:
    """A process holding the whole run budget is killed -9. Once ttl + grace have passed,
    a sweep (or the tenant's next operation, in the same atomic step) returns every hold:
    nothing stays reserved, the run can spend its whole budget again, and each of the dead
    process's reservations is EXPIRED and audited as such."""
    guard = al.Guard(RedisStore(url=server.url))
    limits = {"tenant:crashy": 1_000, "tenant:crashy/workspace:w": 500,
              "tenant:crashy/workspace:w/run:r1": 100}
    guard.set_budget("tenant:crashy", tokens=1_000, overage_policy="REJECT")
    guard.set_budget("tenant:crashy/workspace:w", tokens=500, overage_policy="REJECT")
    guard.set_budget("tenant:crashy/workspace:w", tokens=100, per="run")
    subject = al.Subject(tenant="crashy", workspace="w", dimensions={"run": "r1"})
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    cfg = {"url": server.url, "subject": subject.model_dump(exclude_defaults=True),
           "estimates": [10, 20, 30, 40]}
    holder = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        held = json.loads(read_line(holder, 20) or "null")
        assert held is not None, holder.communicate(timeout=5)
        assert all(b.reserved == 100 for b in guard.balances("tenant:crashy")), "holds missing"
        with pytest.raises(al.BudgetExceeded):
            guard.reserve(subject, LLM, al.tokens(1))  # the run budget is fully held
        holder.kill()  # SIGKILL: no release, no cleanup
        assert holder.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop(holder)

    wait_past(server.client, max(expires for _, expires in held))
    if reclaim == "sweep":
        assert guard.sweep() == len(held)
    else:
        r = guard.reserve(subject, LLM, al.tokens(100))  # reaps first, then fits exactly
        assert {b.scope: b.reserved for b in r.balances} == dict.fromkeys(limits, 100)
        r.release("done")
    for b in guard.balances("tenant:crashy"):
        assert (b.reserved, b.spent, b.remaining) == (0, 0, limits[b.scope]), b
    assert [guard.get(rid).status for rid, _ in held] == [EXPIRED] * len(held)
    audited = guard.audit("crashy", types=["reservation.expired"])
    assert sorted(rec.reservation_id or "" for rec in audited) == sorted(r for r, _ in held)


# -- 4. outage -----------------------------------------------------------------------------


def test_outage_mid_run_fails_closed_fast_and_the_same_guard_recovers(tmp_path: Path) -> None:
    """Four threads are mid-run when the server stops. Every call fails closed with
    StoreUnavailable naming Redis, none takes long, and after a restart on the same port the
    same guard (never rebuilt) serves them all again, including a release of a hold taken
    before the outage. The books balance afterwards."""
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    limits = {"tenant:blip": 10**9}
    subjects = [al.Subject(tenant="blip", workspace=f"w{i}") for i in range(4)]
    with redis_server(*AOF, port=port, directory=data) as (url, first):
        guard = al.Guard(RedisStore(url=url, socket_timeout=0.5))
        guard.set_budget("tenant:blip", tokens=10**9, overage_policy="REJECT")
        kept = guard.reserve(subjects[0], LLM, al.tokens(50))  # held across the outage
        loads = [Load(guard, s).start() for s in subjects]
        try:
            wait_for(lambda: all(len(load.acked) >= 20 for load in loads), "a running load")
            first.terminate()
            first.wait(timeout=10)
            wait_for(lambda: all(load.failures > 0 for load in loads), "every thread to fail")
            calls: dict[str, Callable[[], object]] = {
                "reserve": lambda: guard.reserve(subjects[1], LLM, al.tokens(1)),
                "decide": lambda: guard.decide(subjects[1], LLM, al.tokens(1)),
                "release": lambda: guard.release(kept.id),
                "get": lambda: guard.get(kept.id),
                "balances": lambda: guard.balances("tenant:blip"),
                "sweep": lambda: guard.sweep(),
                "set_budget": lambda: guard.set_budget("tenant:blip", tokens=10**9),
            }
            failures_before = guard.store_failures
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(al.StoreUnavailable, match=r"^redis (unreachable|error)"):
                    call()
                assert time.monotonic() - started < 2.0, f"{name} took too long to fail"
            assert guard.store_failures > failures_before  # the refused reserve, counted
            with redis_server(*AOF, port=port, directory=data):
                marks = [len(load.acked) for load in loads]
                wait_for(lambda: all(len(load.acked) >= mark + 20 or load.errors
                                     for load, mark in zip(loads, marks, strict=True)),
                         "every thread to be served again")
                for load in loads:
                    load.finish()
                assert [e for load in loads for e in load.errors] == []
                assert max(load.slowest for load in loads) < 3.0
                assert kept.release("after the outage").released == (al.tokens(50),)
                assert_loads_balanced(guard, redis.Redis.from_url(url), loads, limits)
        finally:
            for load in loads:
                load.halt.set()


def test_the_function_library_comes_back_by_itself(tmp_path: Path) -> None:
    """The operations run as functions of one library. FUNCTION FLUSH, and a restart of a
    server without persistence, both leave the server without it: the next call of every
    kind (sync, async, strict durability) loads it again and succeeds, on the same guard."""
    port = free_port()
    store = RedisStore(url=f"redis://127.0.0.1:{port}", durability="strict")
    guard = al.Guard(store)
    subject = al.Subject(tenant="lib", workspace="w")

    def every_kind() -> None:
        guard.set_budget("tenant:lib", tokens=1_000)                     # admin
        r = guard.reserve(subject, LLM, al.tokens(10))                     # reserve
        r.extend(1_000)                                                    # settle
        assert r.commit(al.tokens(4)).charged == (al.tokens(4),)         # settle, strict
        guard.record(subject, LLM, al.tokens(1))                           # record, strict
        assert guard.get(r.id).status is COMMITTED                         # read
        assert guard.sweep() == 0                                          # sweep

    async def async_kinds() -> None:
        r = await guard.areserve(subject, LLM, al.tokens(2))
        assert (await r.acommit(al.tokens(2))).charged == (al.tokens(2),)

    for restart in (False, True):
        with redis_server(port=port, directory=tmp_path) as (url, _):
            admin = redis.Redis.from_url(url)
            assert not admin.function_list(library=store.library_name)  # a fresh server
            every_kind()
            assert admin.function_list(library=store.library_name)
            assert admin.function_flush()
            every_kind()
            assert admin.function_flush()
            asyncio.run(async_kinds())
            assert admin.function_list(library=store.library_name)
            assert guard.balances("tenant:lib")[0].spent == 2 * (4 + 1) + 2, restart
            admin.close()
    guard.close()


def test_data_in_the_earlier_formats_is_read(shared_server: Server) -> None:
    """Ledgers, reservations and replay snapshots written before the compact formats (text
    ledgers, one hash field per reservation attribute, JSON replies, JSON definitions) are
    still understood: a hold taken then commits, a keyed reserve replays its JSON reply, and
    a budget defined in JSON limits, alerts, and is rewritten in the packed form."""
    store = RedisStore(url=shared_server.url)
    guard = al.Guard(store)
    guard.set_budget("tenant:old", tokens=100)
    client = shared_server.client
    now = server_ms(client)
    field = "tenant:old|TOKENS||"
    client.hset("al:{old}:ledgers", field, f"100,100,5,10,0,0,{now},0,0,0")
    rid = "old:" + "cd" * 16
    subject = al.Subject(tenant="old")
    client.hset(f"al:{{old}}:r:{rid}", mapping={
        "id": rid, "tenant": "old", "status": "ACTIVE",
        "subject": json.dumps({"tenant": "old", "scope_path": "tenant:old"}),
        "action": json.dumps({"kind": "llm.completion", "name": "m", "tags": []}),
        "estimate": "TOKENS=5", "ledgers": f"{field}\ttenant:old\t", "created": str(now),
        "expires": str(now + 60_000), "grace": "5000", "ext": "0", "maxext": "10",
        "policy": "", "concurrency": "", "shadow": "0"})
    client.zadd("al:{old}:exp", {rid: now + 65_000})
    assert guard.get(rid).estimate == (al.tokens(5),)
    result = guard.commit(rid, al.tokens(3))
    assert result.charged == (al.tokens(3),)
    (balance,) = guard.balances("tenant:old")
    assert (balance.allocated, balance.reserved, balance.spent) == (100, 0, 13)
    op = guard._reserve_op(subject, LLM, al.tokens(1), idempotency_key="k-old")
    reply = {"decision": {"outcome": "ALLOW"}, "balances": [], "notes": [],
             "reservation": [rid, "old", "ACTIVE", json.dumps({"tenant": "old"}),
                             json.dumps({"kind": LLM.kind, "name": LLM.name}), "TOKENS=1",
                             ["tenant:old"], str(now), str(now + 60_000), "5000", "0", "",
                             "", None]}
    client.set("al:{old}:i:reserve:k-old", op.fingerprint + "\n" + json.dumps(reply))
    again = guard.reserve(subject, LLM, al.tokens(1), idempotency_key="k-old")
    assert again.id == rid and guard.balances("tenant:old")[0].reserved == 0
    client.hset("al:{old}:defs", "tenant:old/workspace:w", json.dumps([{
        "unit": "TOKENS", "period": "", "per": "", "limit": "10", "od": "0",
        "policy": "REJECT", "status": "ACTIVE", "alerts": [0.5], "degrade": []}]))
    inner = al.Subject(tenant="old", workspace="w")
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(inner, LLM, al.tokens(11))
    notes: list[al.Notification] = []
    store.subscribe(notes.extend)
    guard.reserve(inner, LLM, al.tokens(6)).commit(al.tokens(6))
    assert [n.threshold for n in notes if n.type == "budget.threshold_crossed"] == [0.5]
    assert guard.freeze("tenant:old/workspace:w") == 1  # written back packed
    (workspace,) = guard.balances("tenant:old/workspace:w")
    assert (workspace.allocated, workspace.spent, workspace.status) == (
        10, 6, al.BudgetStatus.FROZEN)


HELD_FIELDS = """
local c = cmsgpack.unpack(redis.call('HGET', KEYS[1], 'core'))
local fields = {}
for i = 1, #c[6], 2 do fields[#fields + 1] = c[6][i] end
return fields
"""
OLD_CORE = """
local c = cmsgpack.unpack(redis.call('HGET', KEYS[1], 'core'))
c[6], c[14] = ARGV, nil
redis.call('HSET', KEYS[1], 'core', cmsgpack.pack(c))
return #ARGV
"""


def previous_form(field: str) -> list[str]:
    """What the previous version kept per ledger: the field, its path, unit and period, and
    the scope and dimension of the budget it belongs to."""
    path, unit, period, _ = field.rsplit("|", 3)
    scope, dimension = (path.rsplit("/run:", 1)[0], "run") if "/run:" in path else (path, "")
    return [field, path, unit, period, scope, dimension]


NESTED_ROWS = """
local stored = redis.call('GET', KEYS[1])
local nl = string.find(stored, '\\n', 1, true)
local body = cmsgpack.unpack(string.sub(stored, nl + 1))
local flat, nested = body[5], {}
for i = 1, #flat, 8 do nested[#nested + 1] = {unpack(flat, i, i + 7)} end
body[5] = nested
redis.call('SET', KEYS[1], string.sub(stored, 1, nl) .. cmsgpack.pack(body), 'KEEPTTL')
return #nested
"""


def test_replays_kept_by_the_previous_version(shared_server: Server) -> None:
    """A compact reply lists balance rows flat, eight items a ledger; the previous version
    kept a list per row in the snapshot a keyed reserve replays. Both read the same."""
    guard = al.Guard(RedisStore(url=shared_server.url))
    guard.set_budget("tenant:snap", tokens=100)
    guard.set_budget("tenant:snap/workspace:w", tokens=50)
    subject = al.Subject(tenant="snap", workspace="w")
    first = guard.reserve(subject, LLM, al.tokens(10), idempotency_key="k1")
    key = "al:{snap}:i:reserve:k1"
    assert shared_server.client.eval(NESTED_ROWS, 1, key) == 2
    again = guard.reserve(subject, LLM, al.tokens(10), idempotency_key="k1")
    assert again.id == first.id
    assert again.info.scopes == first.info.scopes == ("tenant:snap", "tenant:snap/workspace:w")
    assert again.balances == first.balances
    assert [(b.scope, b.allocated, b.reserved) for b in again.balances] == [
        ("tenant:snap", 100, 10), ("tenant:snap/workspace:w", 50, 10)]


def test_reservations_kept_by_the_previous_version_settle(shared_server: Server) -> None:
    """A reservation keeps a reference per ledger it holds; the previous version kept six
    strings (field, path, unit, period, the definition's scope and dimension). Holds taken
    then, on ledgers of two units, of a daily budget and of a dimension budget, still commit
    and release under their own definitions (the alerts of the daily and the dimension
    budget fire, no other; each ledger is charged in its unit), and read the same scopes."""
    store = RedisStore(url=shared_server.url)
    guard = al.Guard(store)
    guard.set_budget("tenant:prev", tokens=100, alerts=[0.9])
    guard.set_budget("tenant:prev", tokens=60, period="day", alerts=[0.5])
    guard.set_budget("tenant:prev", usd=10)
    guard.set_budget("tenant:prev/workspace:w", tokens=50, per="run", alerts=[0.5])
    notes: list[al.Notification] = []
    store.subscribe(notes.extend)
    subject = al.Subject(tenant="prev", workspace="w", dimensions={"run": "r1"})
    held = [guard.reserve(subject, LLM, [al.tokens(10), al.usd(1)]) for _ in range(2)]
    scopes = guard.get(held[0].id).scopes
    assert scopes == ("tenant:prev", "tenant:prev/workspace:w/run:r1")
    client = shared_server.client
    for r in held:
        key = f"al:{{prev}}:r:{r.id}"
        fields = [f.decode() for f in client.eval(HELD_FIELDS, 1, key)]
        assert sorted(f.split("|")[2] for f in fields) == ["", "", "", "day"]
        old = [item for field in fields for item in previous_form(field)]
        assert client.eval(OLD_CORE, 1, key, *old) == 24
        assert guard.get(r.id).scopes == scopes
    assert held[0].commit([al.tokens(30), al.usd(2)]).charged == (al.usd(2), al.tokens(30))
    assert sorted((n.type, n.scope, n.unit, n.threshold) for n in notes) == [
        ("budget.threshold_crossed", "tenant:prev", al.Unit.TOKENS, 0.5),
        ("budget.threshold_crossed", "tenant:prev/workspace:w/run:r1", al.Unit.TOKENS, 0.5),
        ("reservation.commit_overage", None, None, None)]  # 30 tokens and $2 over 10 and $1
    held[1].release("done")
    spent = {(b.scope, b.unit, b.period): (b.allocated, b.reserved, b.spent)
             for b in guard.balances("tenant:prev")}
    assert spent == {
        ("tenant:prev", al.Unit.TOKENS, None): (100, 0, 30),
        ("tenant:prev", al.Unit.TOKENS, "day"): (60, 0, 30),
        ("tenant:prev", al.Unit.USD_MICROCENTS, None): (al.usd(10).amount, 0, al.usd(2).amount),
        ("tenant:prev/workspace:w/run:r1", al.Unit.TOKENS, None): (50, 0, 30)}
    committed = [r for r in guard.audit("prev") if r.type == "reservation.committed"]
    assert [r.scopes for r in committed] == [scopes]


def test_audit_entries_leave_empty_values_out(shared_server: Server) -> None:
    """A raw audit entry has no empty field: readers take a missing field as empty. A shadow
    reservation with no budget holds no ledger, so its entries have no scopes field at all
    (not an empty JSON table); one with a budget lists its scopes as a JSON list."""
    guard = al.Guard(RedisStore(url=shared_server.url), mode="shadow")
    guard.reserve(al.Subject(tenant="bare"), LLM, al.usd(1)).commit(al.usd(1))
    guard.set_budget("tenant:kept", usd=10)
    guard.reserve(al.Subject(tenant="kept"), LLM, al.usd(1)).commit(al.usd(1))
    client = shared_server.client

    def entries(tenant: str) -> dict[str, dict[str, str]]:
        raw = client.xrange(f"al:{{{tenant}}}:audit")
        return {f[b"type"].decode(): {k.decode(): v.decode() for k, v in f.items()}
                for _, f in raw if f[b"type"].startswith(b"reservation.")}

    bare, kept = entries("bare"), entries("kept")
    assert {"reservation.reserved", "reservation.committed"} <= bare.keys()
    for fields in (*bare.values(), *kept.values()):
        assert all(value != "" for value in fields.values()), fields
    for kind in ("reservation.reserved", "reservation.committed"):
        assert "scopes" not in bare[kind]
        assert json.loads(kept[kind]["scopes"]) == ["tenant:kept"]
        assert "idempotency_key" not in kept[kind]
    read = {r.type: r.scopes for r in guard.audit("bare")}
    assert read["reservation.reserved"] == read["reservation.committed"] == ()
    assert read["reservation.observed_denied"] == ("tenant:bare",)  # BUDGET_NOT_FOUND


def test_a_client_handed_in_that_does_not_decode_replies(shared_server: Server) -> None:
    """The store's own clients decode replies to str; a client handed in may answer bytes.
    Both give the same results, compact replies (reserve, commit, release, a replay) and
    JSON ones (get, balances) alike."""
    results = []
    for tenant, client in (("dec", None), ("raw", redis.Redis.from_url(shared_server.url))):
        store = RedisStore(client, url=None) if client is not None else RedisStore(
            url=shared_server.url)
        guard = al.Guard(store)
        seen: list[str] = []
        guard.on("budget.threshold_crossed", lambda n, seen=seen: seen.append(n.scope))
        guard.set_budget(f"tenant:{tenant}", tokens=100)
        guard.set_budget(f"tenant:{tenant}/workspace:w", tokens=50)
        subject = al.Subject(tenant=tenant, workspace="w")
        r = guard.reserve(subject, LLM, al.tokens(30), idempotency_key="k")
        again = guard.reserve(subject, LLM, al.tokens(30), idempotency_key="k")
        committed = r.commit(al.tokens(30))  # 60% of the workspace spent: 50% alerts
        released = guard.reserve(subject, LLM, al.tokens(5)).release("done")
        info = guard.get(r.id)
        results.append((
            [(b.unit, b.allocated, b.reserved, b.spent) for b in r.balances],
            again.id == r.id, again.info.estimate,
            tuple(s.replace(tenant, "t") for s in r.info.scopes),
            committed.charged, committed.released,
            [(b.reserved, b.spent) for b in committed.balances],
            released.released, [(b.reserved, b.spent) for b in released.balances],
            info.status, info.charged, sorted(s.replace(tenant, "t") for s in seen)))
        guard.close()
    assert results[0] == results[1]
    assert results[0][-1] == ["tenant:t/workspace:w"]  # a notification came in the reply


def test_a_frozen_server_times_out_instead_of_hanging(server: Server) -> None:
    """SIGSTOP keeps connections open but answers nothing: socket_timeout bounds each call,
    which fails closed. After SIGCONT the same guard works, and a reserve that timed out but
    reached the server late holds nothing once its ttl has passed."""
    guard = al.Guard(RedisStore(url=server.url, socket_timeout=0.3), commit_retries=1)
    guard.set_budget("tenant:frozen", tokens=100, overage_policy="REJECT")
    subject = al.Subject(tenant="frozen")
    guard.reserve(subject, LLM, al.tokens(5)).commit(al.tokens(5))
    server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(al.StoreUnavailable, match=r"redis unreachable.*[Tt]imeout"):
            guard.reserve(subject, LLM, al.tokens(10), ttl_ms=1_000, grace_ms=0)
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        with pytest.raises(al.StoreUnavailable):
            guard.balances("tenant:frozen")
        assert time.monotonic() - started < 1.5
    finally:
        server.process.send_signal(signal.SIGCONT)
    r = guard.reserve(subject, LLM, al.tokens(7))
    assert r.commit(al.tokens(7)).charged == (al.tokens(7),)
    wait_past(server.client, server_ms(server.client) + 1_000)
    guard.sweep()
    (b,) = guard.balances("tenant:frozen")
    assert (b.reserved, b.spent, b.remaining) == (0, 12, 88), b


# -- 5. hostile input ----------------------------------------------------------------------

HOSTILE = ["{other}", "a}b", "x\nhset", "*", "%", "", " ", "a/b", "\u00e4", "x\x00y", "r[1]",
           "-\r\n", "k?"]
HOSTILE_NAMES = [*HOSTILE, "a" * 129, "acme:evil", "x@y:z"]  # ':' splits scope segments
HOSTILE_KEYS = [*HOSTILE, "k" * 257, "a,b", "a b"]  # keys may hold ':' and 129+ characters
# a dimension value may hold any printable ASCII but space (tests/stores/test_redis_ids.py
# shows braces, globs, '|', '/' and '%' staying in their own field); in scope text '/'
# splits segments and '%' starts an escape
HOSTILE_VALUES = ["x\nhset", "", " ", "\u00e4", "x\x00y", "-\r\n", "a" * 129, "a b", "\x7f"]
HOSTILE_VALUE_TEXT = [*HOSTILE_VALUES, "%", "a/b", "%zz", "%0a"]
PLAN = al.Plan(name="free", budgets=(al.BudgetSpec(tokens=10),))
ACME = al.Subject(tenant="acme", workspace="w")
Call = Callable[[al.Guard, str, str], object]

NAME_SLOTS: dict[str, Call] = {
    "tenant": lambda g, v, rid: g.reserve(al.Subject(tenant=v), LLM, al.tokens(1)),
    "workspace": lambda g, v, rid: g.reserve(al.Subject(tenant="acme", workspace=v), LLM,
                                             al.tokens(1)),
    "agent": lambda g, v, rid: g.decide(al.Subject(tenant="acme", agent=v), LLM,
                                        al.tokens(1)),
    "toolset": lambda g, v, rid: g.record(al.Subject(tenant="acme", toolset=v), LLM,
                                          al.tokens(1)),
    "dimension key": lambda g, v, rid: g.reserve(
        al.Subject(tenant="acme", dimensions={v: "r1"}), LLM, al.tokens(1)),
    "tenant scope": lambda g, v, rid: g.set_budget(f"tenant:{v}", tokens=5),
    "workspace scope": lambda g, v, rid: g.set_budget(f"tenant:acme/workspace:{v}", tokens=5),
    "per": lambda g, v, rid: g.set_budget("tenant:acme", tokens=5, per=v),
    "freeze": lambda g, v, rid: g.freeze(f"tenant:acme/workspace:{v}"),
    "fund": lambda g, v, rid: g.fund(f"tenant:acme/workspace:{v}", "CREDIT", al.tokens(1)),
    "transfer": lambda g, v, rid: g.transfer("tenant:acme", f"tenant:acme/workspace:{v}",
                                             al.tokens(1)),
    "quota": lambda g, v, rid: g.set_quota(f"tenant:{v}", calls=5, window="minute"),
    "access": lambda g, v, rid: g.set_access(f"tenant:{v}", models_allow=["gpt-*"]),
    "audit": lambda g, v, rid: g.audit(v),
    "report": lambda g, v, rid: g.report(v),
    "mode": lambda g, v, rid: g.set_mode(v, "shadow"),
    "plan": lambda g, v, rid: g.assign_plan(v, PLAN),
    "tenant handle": lambda g, v, rid: g.tenant(v),
    "reservation id tenant": lambda g, v, rid: g.get(f"{v}:{rid.partition(':')[2]}"),
    "reservation id token": lambda g, v, rid: g.commit(f"acme:{v}", al.tokens(1)),
}
VALUE_SLOTS: dict[str, Call] = {
    "dimension value": lambda g, v, rid: g.reserve(
        al.Subject(tenant="acme", dimensions={"run": v}), LLM, al.tokens(1)),
    "dimension value record": lambda g, v, rid: g.record(
        al.Subject(tenant="acme", dimensions={"run": v}), LLM, al.tokens(1)),
}
KIND_TEXT_SLOTS: dict[str, Call] = {  # a ':' in it ends the kind and starts the value
    "dimension key scope": lambda g, v, rid: g.balances(f"tenant:acme/{v}:r1"),
}
VALUE_TEXT_SLOTS: dict[str, Call] = {
    "dimension value scope": lambda g, v, rid: g.balances(f"tenant:acme/run:{v}"),
    "fund dimension": lambda g, v, rid: g.fund(f"tenant:acme/run:{v}", "CREDIT", al.tokens(1)),
}
KEY_SLOTS: dict[str, Call] = {
    "reserve key": lambda g, v, rid: g.reserve(ACME, LLM, al.tokens(1), idempotency_key=v),
    "commit key": lambda g, v, rid: g.commit(rid, al.tokens(1), idempotency_key=v),
    "release key": lambda g, v, rid: g.release(rid, idempotency_key=v),
    "extend key": lambda g, v, rid: g.extend(rid, 1_000, idempotency_key=v),
    "record key": lambda g, v, rid: g.record(ACME, LLM, al.tokens(1), idempotency_key=v),
    "fund key": lambda g, v, rid: g.fund("tenant:acme", "CREDIT", al.tokens(1),
                                         idempotency_key=v),
    "transfer key": lambda g, v, rid: g.transfer("tenant:acme", "tenant:acme/workspace:w",
                                                 al.tokens(1), idempotency_key=v),
}

BAD_AMOUNTS: dict[str, Call] = {
    "Amount 2**53": lambda g, v, rid: g.commit(rid, al.Amount(TOKENS, 2**53)),
    "tokens 2**53": lambda g, v, rid: g.reserve(ACME, LLM, al.tokens(2**53)),
    "negative": lambda g, v, rid: g.record(ACME, LLM, al.tokens(-1)),
    "float": lambda g, v, rid: g.reserve(ACME, LLM, al.tokens(1.0)),  # type: ignore[arg-type]
    "bool": lambda g, v, rid: g.reserve(ACME, LLM, al.tokens(True)),
    "text": lambda g, v, rid: g.reserve(ACME, LLM, al.tokens("5")),  # type: ignore[arg-type]
    "unit twice": lambda g, v, rid: g.reserve(ACME, LLM, [al.tokens(1), al.tokens(2)]),
    "dollars past 2**53 microcents": lambda g, v, rid: g.reserve(ACME, LLM, al.usd(2**53)),
    "dollars nan": lambda g, v, rid: g.reserve(ACME, LLM, al.usd("nan")),
    "dollars inf": lambda g, v, rid: g.reserve(ACME, LLM, al.usd(float("inf"))),
    "dollars negative": lambda g, v, rid: g.reserve(ACME, LLM, al.usd("-0.01")),
    "budget 2**53": lambda g, v, rid: g.set_budget("tenant:acme", tokens=2**53),
    "budget amount 2**53": lambda g, v, rid: g.set_budget("tenant:acme", amount=2**53,
                                                          unit="TOKENS"),
    "budget dollars": lambda g, v, rid: g.set_budget("tenant:acme", usd=10**8),
    "overdraft 2**53": lambda g, v, rid: g.set_budget("tenant:acme", tokens=5,
                                                      overdraft_limit=2**53),
    "ttl 2**53": lambda g, v, rid: g.reserve(ACME, LLM, al.tokens(1), ttl_ms=2**53),
    "grace -1": lambda g, v, rid: g.reserve(ACME, LLM, al.tokens(1), grace_ms=-1),
    "extend 2**53": lambda g, v, rid: g.extend(rid, 2**53),
    "spent 2**53": lambda g, v, rid: g.fund("tenant:acme", "RESET_SPENT", al.tokens(5),
                                            spent=2**53),
    "quota 2**53": lambda g, v, rid: g.set_quota("tenant:acme", calls=2**53, window="minute"),
    "max_tokens_per_call 2**53": lambda g, v, rid: g.set_access(
        "tenant:acme", max_tokens_per_call=2**53),
    "elastic max_tokens 2**53": lambda g, v, rid: g.reserve(ACME, LLM, al.Elastic(
        fixed=(al.tokens(1),), per_mtok=(al.tokens(1),), max_tokens=2**53)),
}


def footprint(client: redis.Redis) -> tuple[Any, dict[str, int]]:
    """A digest of the whole dataset and the call count of every command (but this probe's)."""
    digest = client.execute_command("DEBUG", "DIGEST")
    stats = client.info("commandstats")
    return digest, {name: int(v["calls"]) for name, v in stats.items()
                    if name not in ("cmdstat_info", "cmdstat_debug")}


@pytest.fixture
def hostile(shared_server: Server) -> tuple[al.Guard, str]:
    """A tenant with budgets and a live reservation, so that valid neighbours of each hostile
    call exist; returns the guard and the reservation id."""
    guard = al.Guard(RedisStore(url=shared_server.url))
    guard.set_budget("tenant:acme", tokens=1_000)
    guard.set_budget("tenant:acme/workspace:w", tokens=500)
    guard.set_budget("tenant:acme", tokens=50, per="run")
    r = guard.reserve(ACME, LLM, al.tokens(5))
    return guard, r.id


def refused_before_redis(server: Server, guard: al.Guard, rid: str, value: str,
                         slots: dict[str, Call]) -> None:
    before = footprint(server.client)
    let_through = []
    for name, call in slots.items():
        try:
            call(guard, value, rid)
        except al.InvalidRequest:
            continue
        except Exception as error:  # refused, but not as invalid input
            let_through.append(f"{name}: {type(error).__name__}: {error}")
        else:
            let_through.append(f"{name}: accepted")
    assert let_through == []
    assert footprint(server.client) == before  # no command ran, no key changed


CASES = ([("name", v) for v in HOSTILE_NAMES] + [("idempotency key", v) for v in HOSTILE_KEYS]
         + [("kind text", v) for v in [*HOSTILE, "a" * 129]]
         + [("value", v) for v in HOSTILE_VALUES]
         + [("value text", v) for v in HOSTILE_VALUE_TEXT])
SLOTS = {"name": NAME_SLOTS, "idempotency key": KEY_SLOTS, "kind text": KIND_TEXT_SLOTS,
         "value": VALUE_SLOTS,
         "value text": VALUE_TEXT_SLOTS}


@pytest.mark.parametrize(("kind", "value"), CASES,
                         ids=[f"{kind}-{value!r:.14}" for kind, value in CASES])
def test_hostile_names_and_keys_are_refused_before_redis(
        shared_server: Server, hostile: tuple[al.Guard, str], kind: str, value: str) -> None:
    """Text chosen to break a hash tag ({other}, a}b), a key or glob (*, ?, %, [ ]), a
    protocol line (\\n, \\r, NUL) or a path (/, :) is InvalidRequest in every place a name,
    scope, reservation id or idempotency key goes, and Redis sees not one command; so is a
    dimension value with whitespace, control or non-ASCII characters, or a stray `%` or
    raw `/` in scope text."""
    guard, rid = hostile
    refused_before_redis(shared_server, guard, rid, value, SLOTS[kind])


def test_out_of_range_amounts_are_refused_before_redis(
        shared_server: Server, hostile: tuple[al.Guard, str]) -> None:
    """Amounts past 2^53−1, negative, fractional, boolean or textual, and limits, ttls and
    counts out of range, are InvalidRequest without a command reaching Redis (a Lua number
    past 2^53 would silently round)."""
    guard, rid = hostile
    refused_before_redis(shared_server, guard, rid, "", BAD_AMOUNTS)


@pytest.mark.parametrize("estimate", [5, 5.0, "5", None, {"TOKENS": 5}],
                         ids=["int", "float", "str", "none", "dict"])
def test_an_estimate_that_is_not_an_amount_is_invalid_request(
        shared_server: Server, hostile: tuple[al.Guard, str], estimate: Any) -> None:
    """A bare number (or anything else that is not an Amount) where an estimate goes is the
    caller's mistake: InvalidRequest (a ValueError), like every other bad input, and it
    never reaches Redis."""
    guard, rid = hostile
    before = footprint(shared_server.client)
    with pytest.raises(al.InvalidRequest, match="estimate"):
        guard.reserve(ACME, LLM, estimate)
    with pytest.raises(al.InvalidRequest, match="actual"):
        guard.commit(rid, estimate)
    assert footprint(shared_server.client) == before


def test_names_at_the_edge_of_the_rules_stay_in_their_own_keys(server: Server) -> None:
    """'..', '@' and '-' are valid names and '..' a valid idempotency key; free text (action
    names, release reasons) may hold braces and newlines. None of it builds a key outside
    the tenant's own hash tag, and all of it reads back exactly."""
    guard = al.Guard(RedisStore(url=server.url))
    guard.set_budget("tenant:..", tokens=100)
    guard.set_budget("tenant:../workspace:..", tokens=50)
    guard.set_budget("tenant:../workspace:..", tokens=20, per="run")
    guard.set_budget("tenant:a-b@c.d", tokens=10)
    subject = al.Subject(tenant="..", workspace="..", dimensions={"run": ".."})
    action = al.Action("llm.completion", 'x:{other} "%*" a}b')
    r = guard.reserve(subject, action, al.tokens(7), idempotency_key="..")
    again = guard.reserve(subject, action, al.tokens(7), idempotency_key="..")
    assert again.id == r.id  # replayed, not reserved twice
    guard.release(r.id, "x\nhset {other} *")
    guard.reserve(al.Subject(tenant="a-b@c.d"), LLM, al.tokens(3)).commit(al.tokens(3))

    assert {b.scope: (b.allocated, b.reserved) for b in guard.balances("tenant:..")} == {
        "tenant:..": (100, 0), "tenant:../workspace:..": (50, 0),
        "tenant:../workspace:../run:..": (20, 0)}
    assert [b.spent for b in guard.balances("tenant:a-b@c.d")] == [3]
    (reserved,) = guard.audit("..", types=["reservation.reserved"])
    assert reserved.action == 'llm.completion x:{other} "%*" a}b'
    (released,) = guard.audit("..", types=["reservation.released"])
    assert released.detail == {"reason": "x\nhset {other} *"}
    keys = {k.decode() for k in server.client.scan_iter(count=1000)}
    assert keys - {"al:tenants"}, keys
    for key in keys - {"al:tenants"}:
        assert key.startswith(("al:{..}:", "al:{a-b@c.d}:")), key
    assert {m.decode() for m in server.client.smembers("al:tenants")} == {"..", "a-b@c.d"}


def test_largest_exact_amounts_round_trip_through_lua(server: Server) -> None:
    """2^53−1 (the largest amount) and odd values near 10^15 pass JSON, Lua doubles and the
    ledger's strings exactly: reserve, commit, balances, get, audit and report agree to the
    unit, and a budget spent to the last unit has exactly 0 remaining."""
    guard = al.Guard(RedisStore(url=server.url))
    guard.set_budget("tenant:big", tokens=TOP, overage_policy="REJECT")
    guard.set_budget("tenant:big/workspace:w", tokens=TOP, overage_policy="REJECT")
    subject = al.Subject(tenant="big", workspace="w")
    r = guard.reserve(subject, LLM, al.tokens(TOP))
    assert [(b.reserved, b.remaining) for b in r.balances] == [(TOP, 0)] * 2
    result = r.commit(al.tokens(TOP))
    assert result.charged == (al.tokens(TOP),)
    assert [(b.spent, b.remaining) for b in guard.balances("tenant:big")] == [(TOP, 0)] * 2
    assert guard.get(r.id).charged == (al.tokens(TOP),)
    (audited,) = guard.audit("big", types=["reservation.committed"])
    assert audited.charged == (al.tokens(TOP),)
    rows = {row.scope: row for row in guard.report("big", period="day")}
    assert rows["tenant:big/workspace:w"].committed == {TOKENS: TOP}

    guard.set_budget("tenant:fine", usd="90071992.54740991")  # = 2^53−1 microcents
    fine = al.Subject(tenant="fine")
    usd = al.Unit.USD_MICROCENTS
    first = guard.reserve(fine, LLM, al.Amount(usd, 10**15 + 3))
    charged = first.commit(al.Amount(usd, 10**15 + 1))
    assert (charged.charged, charged.released) == ((al.Amount(usd, 10**15 + 1),),
                                                   (al.Amount(usd, 2),))
    (b,) = guard.balances("tenant:fine")
    assert (b.allocated, b.spent, b.reserved) == (TOP, 10**15 + 1, 0)
    rest = TOP - (10**15 + 1)  # odd, and past 2^52: every bit counts
    guard.reserve(fine, LLM, al.Amount(usd, rest)).commit(al.Amount(usd, rest))
    (b,) = guard.balances("tenant:fine")
    assert (b.spent, b.remaining) == (TOP, 0)
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(fine, LLM, al.Amount(usd, 1))
    assert (denied.value.decision.remaining, denied.value.decision.requested) == (0, 1)


# A child larger than its parent on purpose:
@pytest.mark.filterwarnings("ignore::allotment.BudgetHierarchyWarning")
@pytest.mark.parametrize("move", ["fund-credit", "transfer"])
def test_ledger_totals_past_2_53_are_refused_or_exact(server: Server, move: str) -> None:
    """Each amount is ≤ 2^53−1, but a credit or transfer can push a ledger's allocation past
    it, where a Lua double cannot hold every integer. The store must refuse that or keep
    it exact; it must never round the books silently."""
    guard = al.Guard(RedisStore(url=server.url))
    guard.set_budget("tenant:acme", tokens=10)
    guard.set_budget("tenant:acme/workspace:full", tokens=TOP)
    try:
        if move == "fund-credit":
            guard.fund("tenant:acme/workspace:full", "CREDIT", al.tokens(2))
        else:
            guard.transfer("tenant:acme", "tenant:acme/workspace:full", al.tokens(2))
    except al.AllotmentError:
        expected = TOP  # refused: nothing moved
    else:
        expected = TOP + 2
    (b,) = guard.balances("tenant:acme/workspace:full", include_children=False)
    assert b.allocated == expected, f"allocated {b.allocated}, expected {expected}"


def test_elastic_estimate_rounds_up_exactly(server: Server) -> None:
    """An elastic estimate is fixed + ⌈rate·max_tokens/10^6⌉, never below the true cost
    (DESIGN §3.2, core.policy.elastic_amount). Where rate·max_tokens would pass 2^52, past
    which a Lua double may drop low bits, the estimate is refused at the boundary; just
    below it, both stores hold the exact amount."""
    with pytest.raises(al.InvalidRequest, match="max_tokens"):
        al.Elastic(fixed=(al.tokens(0),), per_mtok=(al.tokens(4_308_247_523_547),),
                   max_tokens=9_713_764)
    rate, max_tokens = 463_630_743, 9_713_764  # rate × max_tokens just under 2^52
    assert rate * max_tokens <= 2**52
    exact = elastic_amount(0, rate, max_tokens)
    assert exact * 10**6 > rate * max_tokens  # the division left a fraction: rounded up
    guard = al.Guard(RedisStore(url=server.url))
    guard.set_budget("tenant:acme", tokens=TOP)
    estimate = al.Elastic(fixed=(al.tokens(0),), per_mtok=(al.tokens(rate),),
                          max_tokens=max_tokens)
    r = guard.reserve(al.Subject(tenant="acme"), LLM, estimate)
    assert r.estimate == (al.tokens(exact),)
    (b,) = guard.balances("tenant:acme")
    assert b.reserved == exact


# -- 6. one cluster slot per script ---------------------------------------------------------


@pytest.mark.parametrize("tenant", ["acme", "..", "a-b_c.d@e", "x" * 128])
def test_every_script_declares_keys_of_one_slot(shared_server: Server, tenant: str) -> None:
    """DESIGN §5: each script call declares all its keys, and all carry the tenant's hash
    tag, so a tenant is one Redis Cluster slot."""
    store = RedisStore(url=shared_server.url)
    guard = al.Guard(store)
    slot = key_slot(f"{{{tenant}}}".encode())
    for name, op in every_operation(guard, tenant).items():
        call = store._flows.call(op)
        keys, args = call.keys, call.args
        script = call.function.removeprefix(f"{store.library_name}_")
        assert script in ("reserve", "admin", "settle", "record", "read"), name
        assert len(keys) == 13, (name, keys)
        assert all(k.startswith(f"al:{{{tenant}}}:") for k in keys), (name, keys)
        assert {key_slot(k.encode()) for k in keys} == {slot}, (name, keys)
        # JSON documents name the tenant; flat arguments (reserve, settle) carry it fifth
        # (after the operation, the time, the settings and the reservation)
        assert (args[4] if len(args) > 3 else json.loads(args[0])["tenant"]) == tenant, name
    reserve = store._flows.call(every_operation(guard, tenant)["reserve"]).keys
    assert reserve[12] == f"al:{{{tenant}}}:i:reserve:k-reserve"  # idempotency key, tagged
    commit = store._flows.call(every_operation(guard, tenant)["commit"]).keys
    assert commit[11] == f"al:{{{tenant}}}:r:{tenant}:{'ab' * 16}"  # the reservation


def test_every_operation_runs_on_a_real_cluster_node(tmp_path: Path) -> None:
    """A single-node Redis Cluster refuses any command or script whose keys span slots
    (CROSSSLOT). Every operation, the sweep (whose keys its flow builds per tenant) and the
    sweeper lease run there through `redis+cluster://`, for two tenants."""
    bus = free_port()  # the default, port + 10000, is past 65535 for high ephemeral ports
    with redis_server("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                      "--cluster-port", str(bus), directory=tmp_path) as (url, _):
        admin = redis.Redis.from_url(url)
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_for(lambda: admin.cluster("info")["cluster_state"] == "ok", "cluster ok", 10)
        with pytest.raises(redis.ResponseError, match="same slot"):  # the control
            admin.eval("return 1", 2, "{a}x", "{b}y")
        store = RedisStore.from_url(url.replace("redis://", "redis+cluster://"))
        guard = al.Guard(store)
        for tenant in ("acme", "beta"):
            t = f"tenant:{tenant}"
            subject = al.Subject(tenant=tenant, workspace="w", dimensions={"run": "r1"})
            guard.set_budget(t, tokens=1_000, overage_policy="REJECT")
            guard.set_budget(f"{t}/workspace:w", tokens=500)
            guard.set_budget(f"{t}/workspace:w", tokens=100, per="run")
            guard.set_budget(t, tokens=5, period="day")
            assert guard.remove_budget(t, "TOKENS", period="day") == 1
            guard.set_quota(t, calls=100, window="minute")
            guard.set_access(t, models_allow=["gpt-*"])
            guard.set_mode(tenant, "enforce")
            guard.assign_plan(tenant, al.Plan(name="p", budgets=(
                al.BudgetSpec(scope="workspace:x", tokens=10),)))
            assert guard.freeze(f"{t}/workspace:x") == 1
            assert guard.unfreeze(f"{t}/workspace:x") == 1
            guard.fund(f"{t}/workspace:w", "CREDIT", al.tokens(10), idempotency_key="f")
            guard.transfer(t, f"{t}/workspace:w", al.tokens(10), idempotency_key="t")
            assert guard.decide(subject, LLM, al.tokens(5)).outcome is al.Outcome.ALLOW
            r = guard.reserve(subject, LLM, al.tokens(20), idempotency_key="r")
            guard.extend(r.id, 1_000)
            r.commit(al.tokens(15))
            guard.reserve(subject, LLM, al.tokens(5)).release("done")
            guard.record(subject, LLM, al.tokens(5))
            guard.reserve(subject, LLM, al.tokens(1), ttl_ms=1_000, grace_ms=0)
            assert guard.get(r.id).status is COMMITTED
            assert len(guard.audit(tenant)) > 5 and guard.report(tenant)
            spent = {b.scope: (b.spent, b.reserved) for b in guard.balances(t)}
            assert spent == {t: (20, 1), f"{t}/workspace:w": (20, 1),
                             f"{t}/workspace:w/run:r1": (20, 1), f"{t}/workspace:x": (0, 0)}
        assert store.lease("sweeper", "me", 1_000)
        wait_past(admin, server_ms(admin) + 1_000)
        assert guard.sweep() == 2  # one abandoned hold per tenant, each in its own slot
        for tenant in ("acme", "beta"):
            assert all(b.reserved == 0 for b in guard.balances(f"tenant:{tenant}"))
