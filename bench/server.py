"""The server over HTTP: the latency it adds to a reserve, and its throughput under load.

    .venv/bin/python bench/server.py             # full run (5 to 15 minutes, with the load)
    .venv/bin/python bench/server.py --quick     # fewer rounds, shorter phases
    .venv/bin/python bench/server.py --layers [--profile]   # a reserve's layers, in process
                                         # (and both routes after other work cooled the caches)
    .venv/bin/python bench/server.py --instructions pairs|trivial N   # for callgrind

Two configurations, measured in one run: the memory store behind one worker, and Redis (a
private redis-server this script starts: no persistence, a free loopback port) behind four.
Each server is what `allotment serve` runs (`allotment.cli.app_from_env`, on uvicorn with the
same options, `--http` aside), plus two bench-only routes put first in that app's table of
hot routes, where the runtime routes are dispatched from (never part of the default app):

- `POST /bench/trivial`: reads the body within the server's size limit and answers a small JSON
  body with the request and trace ids, through the same framework, exception handlers and
  response helper as every route; no authentication, no parsing, no guard. This is the
  trivial endpoint the targets are judged against.
- `POST /bench/auth`: the same plus a lookup of the tenant key (one store call), as the admin
  routes make: what a separate authentication would cost. The runtime routes make none: the
  store checks their key with the operation (`Guard.tenant_for_key`).

Both configurations serve one tenant with a USD budget on each of tenant / workspace / app
(scope depth 3), large enough never to refuse; the reservations carry that subject.

1. Sequential latency (one client, keep-alive): interleaved phases per round, the order
   reversed every other round — the trivial endpoint, `/bench/auth`, reserve over HTTP (httpx),
   reserve through the `runcycles` client, and reserve in process on the same store
   (`guard.reserve` and `await guard.areserve`; and the route's own guard call: `areserve`
   with an idempotency key through a key's handle, on a guard the server's metrics watch).
   Each reserve is committed right after, untimed. p50 per phase and round; the figures are
   the medians over rounds, and so is the ratio judged by DESIGN §10 (a): HTTP reserve p50 ÷
   (in-process reserve p50 + trivial p50) ≤ 1.20, each round's ratio from that round's own
   figures. The same ratio against the route's own guard call says how much of the excess is
   the work the protocol asks of every reserve (the key, the idempotency key) and how much
   the HTTP and app layer.
2. Throughput: 32 clients (asyncio tasks over 4 client processes, each on a keep-alive
   connection; once with httpx.AsyncClient, once with a hand-written HTTP/1.1 client that
   costs a tenth of httpx's CPU) for a fixed time doing reserve+commit pairs, and doing
   trivial pairs (two POSTs to the trivial endpoint with bodies the size of a reserve and a
   commit), in ABBA order per round. Target (b): pairs/s ≥ 50 % of the trivial pairs/s of
   the same round. CPU per pair of the server's processes, the clients and redis-server
   (from /proc) is printed beside it: the machine has 2 cores for all of them, so the
   clients' share says how far the client limits the figure.

After the load every ledger is read back over HTTP: spent must equal the sum of the `charged`
amounts the clients were told, nothing may stay reserved, and allocated == remaining +
reserved + spent + debt; otherwise the exit status is 1. Timing never affects the exit status.
The machine is shared and noisy: read the ratios, each from one round.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

import allotment as al

BENCH_DIR = Path(__file__).resolve().parent
ADMIN_KEY = "bench-admin-key"
TENANT = "acme"
SUBJECT = {"tenant": TENANT, "workspace": "production", "app": "assistant"}
SCOPES = ("tenant:acme", "tenant:acme/workspace:production",
          "tenant:acme/workspace:production/app:assistant")
USD = "USD_MICROCENTS"
BUDGET = 10**15  # never exhausted: every call is allowed
ESTIMATE = 5_000_000  # $0.05
ACTUAL = 3_100_000  # $0.031
ACTION = {"kind": "llm.completion", "name": "openai:gpt-4o"}
CLIENTS, CLIENT_PROCESSES = 32, 4
CLIENT_KINDS = {"httpx": "httpx.AsyncClient", "raw": "raw keep-alive"}
"""The load's clients: httpx (what a Python service would use), then a hand-written HTTP/1.1
client whose own cost is small, so that the server's share of the two cores shows."""
TARGET_LATENCY, TARGET_THROUGHPUT = 1.20, 0.50
TRIVIAL_PATH, AUTH_PATH = "/bench/trivial", "/bench/auth"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Settings:
    seq_rounds: int
    seq_calls: int  # timed calls per phase and round
    load_rounds: int  # each round: trivial, pairs, pairs, trivial
    load_seconds: float  # one phase


FULL = Settings(seq_rounds=8, seq_calls=200, load_rounds=3, load_seconds=4.0)
QUICK = Settings(seq_rounds=3, seq_calls=100, load_rounds=1, load_seconds=2.0)


def reserve_body(key: str) -> dict[str, Any]:
    return {"idempotency_key": key, "subject": SUBJECT, "action": ACTION,
            "estimate": {"unit": USD, "amount": ESTIMATE}, "ttl_ms": 3_600_000}


def commit_body(key: str) -> dict[str, Any]:
    return {"idempotency_key": key, "actual": {"unit": USD, "amount": ACTUAL}}


# -- the server: what `allotment serve` runs, plus the bench-only routes ----------------------


def bench_app() -> Any:
    """`allotment serve`'s app (built from the same environment) with the two bench routes
    appended to its router; uvicorn calls this in each worker."""
    from allotment.cli import app_from_env

    app = app_from_env()
    add_bench_routes(app)
    return app


def add_bench_routes(app: Any) -> None:
    """The trivial endpoint and the authentication-only endpoint, dispatched as the runtime
    routes are (`app.add_hot_route`: the same table, `Request`, handlers and responses)."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from allotment.server.app import MAX_BODY
    from allotment.server.auth import tenant_key
    from allotment.server.context import body, json_response

    guard = app.state.guard
    answer = {"status": "OK"}

    async def trivial(request: Request) -> Response:
        await body(request, MAX_BODY)
        return json_response(request, answer)

    async def auth(request: Request) -> Response:
        await tenant_key(guard, request, "reservations:create")
        await body(request, MAX_BODY)
        return json_response(request, answer)

    # the runtime routes' own dispatch (the app's table of hot routes, ahead of Starlette's
    # router), first in it: the trivial route pays what a reserve pays to be reached
    app.add_hot_route(Route(AUTH_PATH, auth, methods=["POST"]))
    app.add_hot_route(Route(TRIVIAL_PATH, trivial, methods=["POST"]))


def _serve_main(store: str, port: int, workers: int, http: str) -> None:
    """The server process: uvicorn with `allotment serve`'s options (`http="auto"`: httptools
    when installed, else h11)."""
    import uvicorn

    from allotment.cli import ADMIN_ENV, GRACEFUL_S, STORE_ENV

    os.environ[STORE_ENV], os.environ[ADMIN_ENV] = store, ADMIN_KEY
    uvicorn.run("server:bench_app", factory=True, app_dir=str(BENCH_DIR), host="127.0.0.1",
                port=port, workers=workers, timeout_graceful_shutdown=GRACEFUL_S,
                log_level="warning", access_log=False, http=http)  # type: ignore[arg-type]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(store: str, workers: int,
           http: str = "auto") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", store, str(port),
                                str(workers), http])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}")
            try:
                if httpx.get(url + "/actuator/health/readiness").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 60 s")
            time.sleep(0.1)
        if workers > 1:
            _wait_workers(process.pid, workers)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _wait_workers(pid: int, workers: int) -> None:
    deadline = time.monotonic() + 60
    while len(_tree(pid)) < workers + 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers} workers did not start within 60 s")
        time.sleep(0.1)
    time.sleep(1.0)  # each worker builds its app after it appears


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's workers, the spawn helper)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    todo.extend(int(child) for child in file.read().split())
        except OSError:
            pass
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


# -- provisioning over HTTP ---------------------------------------------------------------------


def provision(url: str) -> str:
    """A runtime key for the tenant and a budget on each of its three scopes; the key's
    secret."""
    admin = {"X-Admin-API-Key": ADMIN_KEY}
    made = httpx.post(url + "/v1/admin/api-keys", headers=admin,
                      json={"tenant_id": TENANT, "name": "bench"})
    made.raise_for_status()
    for scope in SCOPES:
        budget = httpx.post(url + "/v1/admin/budgets", headers=admin, json={
            "tenant_id": TENANT, "scope": scope, "unit": USD,
            "allocated": {"unit": USD, "amount": BUDGET}})
        budget.raise_for_status()
    return str(made.json()["key_secret"])


def in_process_guard(store: str) -> al.Guard:
    """A guard in this process on the same kind of store (on Redis: the same server), with
    the same budgets for another tenant."""
    guard = al.Guard.from_url(store)
    for scope in SCOPES:
        guard.set_budget(scope.replace("acme", "inproc"), usd=BUDGET // 10**8)
    return guard


def served_guard(store: str) -> al.Guard:
    """`in_process_guard`, watched by the server's own metrics as `allotment serve`'s guard
    is (when prometheus-client is installed)."""
    from allotment.server import metrics

    guard = in_process_guard(store)
    if metrics.available():
        metrics.endpoint(guard)  # observes the guard from now on
    return guard


def check_ledgers(url: str, secret: str, committed: int, charged: int) -> list[str]:
    """What is wrong with the tenant's ledgers after `committed` commits that told their
    clients `charged` in total (nothing: an empty list)."""
    answer = httpx.get(url + "/v1/balances", params={"tenant": TENANT, "limit": "200"},
                       headers={"X-Cycles-API-Key": secret})
    answer.raise_for_status()
    rows = {row["scope_path"]: row for row in answer.json()["balances"]}
    problems = []
    for scope in SCOPES:
        row = rows.get(scope)
        if row is None:
            problems.append(f"{scope}: no ledger")
            continue
        figures = {name: row[name]["amount"] for name in
                   ("allocated", "remaining", "reserved", "spent", "debt")}
        if figures["allocated"] != (figures["remaining"] + figures["reserved"]
                                    + figures["spent"] + figures["debt"]):
            problems.append(f"{scope}: allocated != remaining + reserved + spent + debt "
                            f"{figures}")
        if figures["reserved"] or figures["debt"]:
            problems.append(f"{scope}: left reserved/debt {figures}")
        if figures["spent"] != charged:
            problems.append(f"{scope}: spent {figures['spent']} != {charged} told to the "
                            f"clients over {committed} commits")
    return problems


# -- sequential latency ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Commits made and the amounts the server said it charged."""

    commits: int = 0
    charged: int = 0

    def add(self, amount: int) -> None:
        self.commits += 1
        self.charged += amount


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * p / 100 + 0.5) - 1))]


class Sequential:
    """The timed phases of one round, each `calls` long; every call timed on its own."""

    def __init__(self, url: str, secret: str, guard: al.Guard, served: al.Guard,
                 tally: Tally) -> None:
        from runcycles import CyclesClient, CyclesConfig

        self.url, self.secret, self.tally = url, secret, tally
        self.http = httpx.Client(base_url=url, headers={"X-Cycles-API-Key": secret},
                                 timeout=30)
        self.cycles = CyclesClient(CyclesConfig(base_url=url, api_key=secret,
                                                journal_enabled=False, retry_enabled=False))
        self.guard, self.serial = guard, 0
        self.subject = al.Subject(tenant="inproc", workspace="production", app="assistant")
        # the routes' own guard calls in process: a key's handles on a guard the app's
        # metrics watch (`served_guard`), an idempotency key on each call
        secret = served.create_key("inproc").secret
        self.keyed = (served.tenant_for_key(secret, "reservations:create"),
                      served.tenant_for_key(secret, "reservations:commit"))
        self.action = al.Action(ACTION["kind"], ACTION["name"])
        self.loop = asyncio.new_event_loop()
        self.reserve_bytes = len(orjson.dumps(reserve_body("x" * 24)))
        self.commit_bytes = len(orjson.dumps(commit_body("x" * 24)))

    def close(self) -> None:
        self.http.close()
        self.cycles.close()
        self.loop.close()

    def _key(self) -> str:
        self.serial += 1
        return f"seq-{os.getpid()}-{self.serial}"

    def phases(self) -> dict[str, Callable[[int], list[float]]]:
        return {"trivial": self.trivial, "auth route": self.auth, "HTTP reserve": self.http_reserve,
                "runcycles reserve": self.cycles_reserve, "in-process reserve": self.inproc,
                "in-process areserve": self.inproc_async,
                "in-process server call": self.inproc_served}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.http.post(path, content=orjson.dumps(body),
                                headers={"Content-Type": "application/json"})
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text}")
        result: dict[str, Any] = orjson.loads(answer.content)
        return result

    def _commit(self, rid: str) -> None:
        done = self._post(f"/v1/reservations/{rid}/commit", commit_body(self._key()))
        self.tally.add(done["charged"]["amount"])

    def trivial(self, calls: int) -> list[float]:
        return self._padded(TRIVIAL_PATH, calls)

    def auth(self, calls: int) -> list[float]:
        return self._padded(AUTH_PATH, calls)

    def _padded(self, path: str, calls: int) -> list[float]:
        """µs of each POST to a bench route with a body the size of a reserve's."""
        times = []
        padding = "x" * (self.reserve_bytes - 40)
        for _ in range(calls):
            start = time.perf_counter_ns()
            self._post(path, {"idempotency_key": self._key(), "padding": padding})
            times.append((time.perf_counter_ns() - start) / 1000)
        return times

    def http_reserve(self, calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            body = reserve_body(self._key())
            start = time.perf_counter_ns()
            held = self._post("/v1/reservations", body)
            times.append((time.perf_counter_ns() - start) / 1000)
            self._commit(held["reservation_id"])
        return times

    def cycles_reserve(self, calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            body = reserve_body(self._key())
            start = time.perf_counter_ns()
            held = self.cycles.create_reservation(body)
            times.append((time.perf_counter_ns() - start) / 1000)
            if held.status != 200 or held.body is None:
                raise RuntimeError(f"runcycles reserve: {held.status} {held.error_message}")
            done = self.cycles.commit_reservation(held.body["reservation_id"],
                                                  commit_body(self._key()))
            if done.status != 200 or done.body is None:
                raise RuntimeError(f"runcycles commit: {done.status} {done.error_message}")
            self.tally.add(done.body["charged"]["amount"])
        return times

    def inproc(self, calls: int) -> list[float]:
        times = []
        estimate, actual = al.Amount(al.Unit.USD_MICROCENTS, ESTIMATE), al.Amount(
            al.Unit.USD_MICROCENTS, ACTUAL)
        for _ in range(calls):
            start = time.perf_counter_ns()
            held = self.guard.reserve(self.subject, self.action, estimate)
            times.append((time.perf_counter_ns() - start) / 1000)
            held.commit(actual)
        return times

    def inproc_async(self, calls: int) -> list[float]:
        estimate, actual = al.Amount(al.Unit.USD_MICROCENTS, ESTIMATE), al.Amount(
            al.Unit.USD_MICROCENTS, ACTUAL)
        return self._async_pairs(calls, lambda _: self.guard.areserve(
            self.subject, self.action, estimate), lambda held, _: held.acommit(actual))

    def inproc_served(self, calls: int) -> list[float]:
        """The reserve route's own guard call, timed in process: a key's handle, an
        idempotency key, the async path, the app's metrics observing."""
        reserving, committing = self.keyed
        estimate, actual = al.Amount(al.Unit.USD_MICROCENTS, ESTIMATE), al.Amount(
            al.Unit.USD_MICROCENTS, ACTUAL)
        return self._async_pairs(
            calls, lambda key: reserving.areserve(self.subject, self.action, estimate,
                                                  idempotency_key=key),
            lambda held, key: committing.acommit(held.id, actual, idempotency_key=key))

    def _async_pairs(self, calls: int, reserve: Callable[[str], Awaitable[al.Reservation]],
                     settle: Callable[[al.Reservation, str], Awaitable[object]]
                     ) -> list[float]:
        """µs of each `reserve` (given a fresh idempotency key), each followed by its
        untimed `settle`, on this runner's event loop."""
        async def run() -> list[float]:
            times = []
            for _ in range(calls):
                key = self._key()
                start = time.perf_counter_ns()
                held = await reserve(key)
                times.append((time.perf_counter_ns() - start) / 1000)
                await settle(held, key)
            return times

        return self.loop.run_until_complete(run())


def sequential(url: str, secret: str, guards: tuple[al.Guard, al.Guard], tally: Tally,
               settings: Settings, server_pids: list[int],
               redis_pids: list[int]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """p50 (µs) of each phase, one per round; and CPU µs per call of each phase: the
    server's (with redis-server's) for the HTTP phases, this process's (with redis-server's)
    for the in-process ones, a reserve's phase counting the commit that follows it."""
    runner = Sequential(url, secret, *guards, tally)
    phases = runner.phases()
    for run in phases.values():  # warm-up: connections, caches, first-call paths
        run(30)
    p50s: dict[str, list[float]] = {name: [] for name in phases}
    cpu: dict[str, float] = {name: 0.0 for name in phases}
    try:
        for number in range(settings.seq_rounds):
            order = list(phases) if number % 2 == 0 else list(reversed(phases))
            for name in order:
                inproc = name.startswith("in-process")
                before = (time.process_time() if inproc else cpu_seconds(server_pids)) + (
                    cpu_seconds(redis_pids))
                p50s[name].append(percentile(phases[name](settings.seq_calls), 50))
                after = (time.process_time() if inproc else cpu_seconds(server_pids)) + (
                    cpu_seconds(redis_pids))
                cpu[name] += after - before
    finally:
        runner.close()
    calls = settings.seq_rounds * settings.seq_calls
    return p50s, {name: seconds / calls * 1e6 for name, seconds in cpu.items()}


# -- throughput -----------------------------------------------------------------------------------


def _client_process(conn: Any, url: str, secret: str, tasks: int, index: int) -> None:
    """One client process: `tasks` asyncio tasks, each with a keep-alive connection (one
    httpx.AsyncClient pool, or a raw one each), running the phases the parent sends until it
    sends None."""
    asyncio.run(_client_loop(conn, url, secret, tasks, index))


class RawConnection:
    """HTTP/1.1 keep-alive over asyncio streams, the request written by hand: a client that
    costs a tenth of httpx's CPU, so the server rather than the client sets the pace."""

    def __init__(self, url: str, secret: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.head = (f"Host: {self.host}\r\nX-Cycles-API-Key: {secret}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), self.head, len(body), body))
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        at = head.index(b"content-length:") + 15
        length = int(head[at:head.index(b"\r\n", at)])
        return int(head[9:12]), await self.reader.readexactly(length)


async def _client_loop(conn: Any, url: str, secret: str, tasks: int, index: int) -> None:
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    headers = {"X-Cycles-API-Key": secret, "Content-Type": "application/json"}
    serial = 0
    padding_r = "x" * (len(orjson.dumps(reserve_body("p0-0-00000000"))) - 40)
    padding_c = "x" * max(1, len(orjson.dumps(commit_body("p0-0-00000000"))) - 40)
    raw = [RawConnection(url, secret) for _ in range(tasks)]
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=60) as client:
        conn.send("ready")

        async def post(path: str, body: dict[str, Any], task: int,
                       use_raw: bool) -> dict[str, Any]:
            if use_raw:
                status, content = await raw[task].post(path, orjson.dumps(body))
            else:
                answer = await client.post(path, content=orjson.dumps(body))
                status, content = answer.status_code, answer.content
            if status not in (200, 201):
                raise RuntimeError(f"POST {path}: {status} {content!r}")
            result: dict[str, Any] = orjson.loads(content)
            return result

        async def worker(task: int, kind: str, use_raw: bool, start: float, end: float,
                         out: list[Any]) -> None:
            nonlocal serial
            pairs = charged = commits = 0
            while time.monotonic() < start:
                await asyncio.sleep(start - time.monotonic())
            while True:
                serial += 1
                key = f"p{index}-{serial}"
                if kind == "pairs":
                    held = await post("/v1/reservations", reserve_body(key), task, use_raw)
                    done = await post(f"/v1/reservations/{held['reservation_id']}/commit",
                                      commit_body(key + "c"), task, use_raw)
                    charged += done["charged"]["amount"]
                    commits += 1
                else:
                    await post(TRIVIAL_PATH, {"idempotency_key": key, "padding": padding_r},
                               task, use_raw)
                    await post(TRIVIAL_PATH, {"idempotency_key": key, "padding": padding_c},
                               task, use_raw)
                if time.monotonic() > end:
                    break
                pairs += 1
            out.append((pairs, commits, charged))

        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command is None:
                break
            kind, use_raw, start, seconds = command
            cpu0 = time.process_time()
            out: list[Any] = []
            await asyncio.gather(*(worker(task, kind, use_raw, start, start + seconds, out)
                                   for task in range(tasks)))
            cpu = time.process_time() - cpu0
            conn.send((sum(o[0] for o in out), sum(o[1] for o in out),
                       sum(o[2] for o in out), cpu))
        for connection in raw:
            if connection.writer is not None:
                connection.writer.close()


@dataclass
class LoadFigures:
    pairs_per_s: float
    server_cpu_us: float  # per pair
    client_cpu_us: float
    redis_cpu_us: float
    client_share: float  # of the machine's CPU during the phase


class Load:
    """The client processes, kept for the whole configuration (connections stay open)."""

    def __init__(self, url: str, secret: str, server_pid: int, redis_pid: int | None,
                 tally: Tally) -> None:
        context = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for index in range(CLIENT_PROCESSES):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_client_process, daemon=True,
                                   args=(theirs, url, secret, CLIENTS // CLIENT_PROCESSES,
                                         index))
            proc.start()
            self.conns.append(ours)
            self.procs.append(proc)
        for conn in self.conns:
            if conn.recv() != "ready":
                raise RuntimeError("a client process did not start")
        self.server_pids = _tree(server_pid)
        self.redis_pids = [redis_pid] if redis_pid else []
        self.tally = tally

    def run(self, kind: str, client: str, seconds: float) -> LoadFigures:
        start = time.monotonic() + 0.3
        server0, redis0 = cpu_seconds(self.server_pids), cpu_seconds(self.redis_pids)
        for conn in self.conns:
            conn.send((kind, client == "raw", start, seconds))
        results = [conn.recv() for conn in self.conns]
        server = cpu_seconds(self.server_pids) - server0
        redis_cpu = cpu_seconds(self.redis_pids) - redis0
        pairs = sum(r[0] for r in results)
        client_cpu = sum(r[3] for r in results)
        for result in results:
            self.tally.commits += result[1]
            self.tally.charged += result[2]
        cores = os.cpu_count() or 1
        pairs = max(pairs, 1)
        return LoadFigures(pairs / seconds, server / pairs * 1e6, client_cpu / pairs * 1e6,
                           redis_cpu / pairs * 1e6, client_cpu / (seconds * cores))

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(30)


def throughput(load: Load, settings: Settings,
               client: str) -> dict[str, list[LoadFigures]]:
    load.run("trivial", client, 1.0)  # warm-up: connections open, code paths warm
    load.run("pairs", client, 1.0)
    figures: dict[str, list[LoadFigures]] = {"trivial": [], "pairs": []}
    for _ in range(settings.load_rounds):
        for kind in ("trivial", "pairs", "pairs", "trivial"):
            figures[kind].append(load.run(kind, client, settings.load_seconds))
    return figures


# -- one configuration ----------------------------------------------------------------------------


def measure(name: str, store: str, workers: int, settings: Settings,
            redis_pid: int | None, http: str) -> bool:
    print(f"\n== {name}: {workers} worker{'s' if workers > 1 else ''}, store {store.split('?')[0]}",
          flush=True)
    with served(store, workers, http) as (url, process):
        secret = provision(url)
        guard, watched = in_process_guard(store), served_guard(store)
        tally = Tally()
        try:
            p50s, cpu = sequential(url, secret, (guard, watched), tally, settings,
                                   _tree(process.pid), [redis_pid] if redis_pid else [])
            load = Load(url, secret, process.pid, redis_pid, tally)
            try:
                figures = {client: throughput(load, settings, client) for client in CLIENT_KINDS}
            finally:
                load.close()
            problems = check_ledgers(url, secret, tally.commits, tally.charged)
        finally:
            guard.close()
            watched.close()
    report_sequential(p50s, cpu)
    for client, measured in figures.items():
        report_throughput(measured, settings, client)
    print(f"  ledgers after {tally.commits:,} commits over HTTP: "
          + ("OK (spent == Σ charged told to clients, nothing reserved)" if not problems
             else "BROKEN"))
    for problem in problems:
        print("   ", problem)
    return not problems


def report_sequential(p50s: dict[str, list[float]], cpu: dict[str, float]) -> None:
    rounds = len(p50s["trivial"])
    print(f"  sequential, one client: p50 µs, median of {rounds} rounds (min..max), and CPU µs "
          "per call (server + redis; in process: this process + redis; a reserve with its "
          "commit)")
    for name, values in p50s.items():
        print(f"    {name:<22}{statistics.median(values):>9.0f}   "
              f"({min(values):.0f}..{max(values):.0f}){cpu[name]:>12.0f} CPU")
    rows = list(zip(p50s["HTTP reserve"], p50s["in-process reserve"], p50s["trivial"],
                    strict=True))
    ratios = [http / (inproc + trivial) for http, inproc, trivial in rows]
    ratio = statistics.median(ratios)
    added = [http - inproc - trivial for http, inproc, trivial in rows]
    auth = [a - t for a, t in zip(p50s["auth route"], p50s["trivial"], strict=True)]
    print(f"    (a) HTTP reserve ÷ (in-process reserve + trivial) = {ratio:.2f} "
          f"(rounds {min(ratios):.2f}..{max(ratios):.2f}); target ≤ {TARGET_LATENCY:.2f}: "
          f"{'PASS' if ratio <= TARGET_LATENCY else 'MISS'}")
    print(f"        beyond in-process reserve + trivial: {statistics.median(added):.0f} µs, "
          f"(a separate key lookup would add {statistics.median(auth):.0f} µs: auth route − "
          "trivial)")
    vs_auth = statistics.median(http / (inproc + auth_route) for http, inproc, auth_route in zip(
        p50s["HTTP reserve"], p50s["in-process reserve"], p50s["auth route"], strict=True))
    print(f"        against the authenticated trivial route instead: HTTP reserve ÷ (in-process "
          f"reserve + auth route) = {vs_auth:.2f}")
    own = statistics.median(http / (call + trivial) for http, call, trivial in zip(
        p50s["HTTP reserve"], p50s["in-process server call"], p50s["trivial"], strict=True))
    print(f"        against the route's own guard call in process (key, idempotency key, "
          f"metrics): HTTP reserve ÷ (in-process server call + trivial) = {own:.2f}")
    by_cpu = cpu["HTTP reserve"] / (cpu["in-process reserve"] + 2 * cpu["trivial"])
    print(f"        by CPU, reserve+commit over HTTP ÷ (in process + two trivial calls) = "
          f"{by_cpu:.2f} (load-independent)")


def report_throughput(figures: dict[str, list[LoadFigures]], settings: Settings,
                      client: str) -> None:
    print(f"  throughput, {CLIENTS} {CLIENT_KINDS[client]} clients over {CLIENT_PROCESSES} "
          f"processes, {settings.load_seconds:.0f} s phases (median of {len(figures['pairs'])})")
    print(f"    {'':<22}{'pairs/s':>9}{'server µs':>11}{'client µs':>11}{'redis µs':>10}"
          f"{'client %':>10}   (CPU per pair; client % of the machine)")
    for kind in ("trivial", "pairs"):
        rows = figures[kind]

        def med(attr: str, rows: list[LoadFigures] = rows) -> float:
            return statistics.median(getattr(row, attr) for row in rows)

        label = "trivial pairs" if kind == "trivial" else "reserve+commit pairs"
        print(f"    {label:<22}{med('pairs_per_s'):>9.0f}{med('server_cpu_us'):>11.0f}"
              f"{med('client_cpu_us'):>11.0f}{med('redis_cpu_us'):>10.0f}"
              f"{med('client_share') * 100:>9.0f}%")
    # ABBA: each round's ratio from its own two trivial and two pair phases
    per_round = []
    cpu_round = []
    for number in range(len(figures["pairs"]) // 2):
        pairs = figures["pairs"][2 * number: 2 * number + 2]
        trivial = figures["trivial"][2 * number: 2 * number + 2]
        per_round.append(sum(p.pairs_per_s for p in pairs) / sum(t.pairs_per_s for t in trivial))
        cpu_round.append(sum(t.server_cpu_us for t in trivial) / sum(p.server_cpu_us
                                                                      for p in pairs))
    ratio = statistics.median(per_round)
    print(f"    (b) pairs/s ÷ trivial pairs/s = {ratio:.2f} (rounds "
          f"{min(per_round):.2f}..{max(per_round):.2f}); target ≥ {TARGET_THROUGHPUT:.2f}: "
          f"{'PASS' if ratio >= TARGET_THROUGHPUT else 'MISS'}")
    print(f"        server CPU per trivial pair ÷ per reserve+commit pair = "
          f"{statistics.median(cpu_round):.2f} (what the ratio would be with the server alone "
          f"on its cores)")


# -- where a reserve's time goes (in process, no network) ------------------------------------


EVICTED_KIB = (1024, 4096)
"""Other work between two requests, in KiB of memory it touches: over HTTP the kernel, the
event loop and the clients (on the same two cores) run between a server's requests and
evict what the last one left in the CPU caches; a hot loop in process sees none of that."""


def _touch(memory: bytearray) -> None:
    """Write one byte per 64-byte cache line of `memory`: what other work leaves behind."""
    for at in range(0, len(memory), 64):
        memory[at] ^= 1


async def asgi_call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> tuple[int, bytes]:
    """One request through the ASGI interface, as uvicorn makes it, without a socket."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 7878)}
    received = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


class Layers:
    """Each layer of a reserve timed on its own, then the whole app through ASGI."""

    def __init__(self, store: str, metrics: bool | None = None) -> None:
        from allotment.server import create_app

        self.guard = al.Guard.from_url(store)
        self.app = create_app(self.guard, admin_key=ADMIN_KEY, metrics=metrics)
        add_bench_routes(self.app)
        tenant = f"layers{os.getpid()}"
        self.tenant = self.guard.tenant(tenant)
        self.secret = self.guard.create_key(tenant).secret
        self.subject = {**SUBJECT, "tenant": tenant}
        for scope in SCOPES:
            self.guard.set_budget(scope.replace("acme", tenant), usd=BUDGET // 10**8)
        self.headers = [(b"x-cycles-api-key", self.secret.encode()),
                        (b"content-type", b"application/json"), (b"host", b"127.0.0.1")]
        self.serial = 0
        self.actual = al.Amount(al.Unit.USD_MICROCENTS, ACTUAL)
        self.plain = in_process_guard(store)  # no metrics: as the sequential phase's
        self.plain_subject = al.Subject(tenant="inproc", workspace="production",
                                        app="assistant")
        self.action = al.Action(ACTION["kind"], ACTION["name"])
        self.estimate = al.Amount(al.Unit.USD_MICROCENTS, ESTIMATE)

    def close(self) -> None:
        self.guard.close()
        self.plain.close()

    def raw(self) -> bytes:
        self.serial += 1
        return orjson.dumps({**reserve_body(f"layer-{self.serial}"), "subject": self.subject})

    async def _reserve_asgi(self) -> str:
        status, answer = await asgi_call(self.app, "POST", "/v1/reservations", self.headers,
                                         self.raw())
        assert status == 200, answer
        return str(orjson.loads(answer)["reservation_id"])

    async def _commit_asgi(self, rid: str) -> None:
        self.serial += 1
        status, answer = await asgi_call(
            self.app, "POST", f"/v1/reservations/{rid}/commit", self.headers,
            orjson.dumps(commit_body(f"layer-{self.serial}")))
        assert status == 200, answer

    async def timings(self, calls: int) -> dict[str, float]:
        """p50 µs of each layer over `calls` calls."""
        from starlette.responses import Response

        from allotment.server import wire
        from allotment.server.auth import keyed_caller
        from allotment.server.context import body as read_body
        from allotment.server.context import json_response

        times: dict[str, list[float]] = {}

        def timed(name: str, start: int) -> None:
            times.setdefault(name, []).append((time.perf_counter_ns() - start) / 1000)

        from starlette.requests import Request

        for _ in range(calls):
            raw = self.raw()
            scope = {"type": "http", "method": "POST", "path": "/v1/reservations",
                     "headers": self.headers, "query_string": b""}

            async def receive(raw: bytes = raw) -> dict[str, Any]:
                return {"type": "http.request", "body": raw, "more_body": False}

            request = Request(scope, receive)
            start = time.perf_counter_ns()
            caller = keyed_caller(self.guard, request, "reservations:create")
            timed("1 key's handle (no lookup: checked with the reserve)", start)
            start = time.perf_counter_ns()
            data = await read_body(request, 64 * 1024)
            req = wire.parse(wire.ReserveBody, data)
            timed("2 body read + parse (orjson, pydantic)", start)
            start = time.perf_counter_ns()
            who, what = wire.subject(req.subject, caller.tenant.name), wire.action(req.action)
            estimate = req.estimate.amount_()
            timed("3 wire -> Subject, Action, Amount", start)
            start = time.perf_counter_ns()
            held = await caller.tenant.areserve(who, what, estimate, ttl_ms=req.ttl_ms,
                                                idempotency_key=req.idempotency_key)
            timed("4 guard areserve (and the key check)", start)
            start = time.perf_counter_ns()
            answer = wire.decision(held.decision, who.scopes())
            answer.update(reservation_id=held.id, scope_path=who.scope_path,
                          reserved=wire.amount(held.estimate[0]),
                          expires_at_ms=held.expires_at_ms,
                          balances=wire.balances(held.balances))
            response: Response = json_response(request, answer)
            timed("5 answer (wire body, orjson, headers)", start)
            assert response.status_code == 200
            await held.acommit(self.actual)
        for evicted in (0, *EVICTED_KIB):
            other_work = bytearray(evicted * 1024)
            suffix = f", after {evicted:,} KiB of other work" if evicted else ""
            for _ in range(calls):
                _touch(other_work)
                start = time.perf_counter_ns()
                status, _answer = await asgi_call(self.app, "POST", TRIVIAL_PATH,
                                                  self.headers, self.raw())
                timed("trivial route through ASGI" + suffix, start)
                assert status == 200
                _touch(other_work)
                start = time.perf_counter_ns()
                rid = await self._reserve_asgi()
                timed("reserve route through ASGI" + suffix, start)
                await self._commit_asgi(rid)
                _touch(other_work)
                start = time.perf_counter_ns()
                held = await self.plain.areserve(self.plain_subject, self.action,
                                                 self.estimate)
                timed("in-process areserve (the target's baseline)" + suffix, start)
                await held.acommit(self.actual)
        return {name: percentile(values, 50) for name, values in times.items()}

    async def profile(self, calls: int) -> str:
        """cProfile of `calls` reserve+commit pairs through ASGI, by own time."""
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            await self._commit_asgi(await self._reserve_asgi())
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumtime").print_stats(40)
        return text.getvalue()


def instructions(pairs: int, kind: str, metrics: bool) -> None:
    """`pairs` reserve+commit (or trivial) pairs through the ASGI app on the memory store,
    after 200 warm-up pairs: run under callgrind with N and with 0, the difference ÷ N is
    the app's instructions per pair (the cyclic collector off), whatever the machine is
    doing."""
    bench = Layers("memory://", metrics=metrics)
    headers, filler = bench.headers, {"idempotency_key": "k" * 24, "padding": "x" * 200}

    async def pair() -> None:
        if kind == "pairs":
            await bench._commit_asgi(await bench._reserve_asgi())
        else:
            for _ in range(2):
                status, _answer = await asgi_call(bench.app, "POST", TRIVIAL_PATH,
                                                  headers, orjson.dumps(filler))
                assert status == 200

    async def run() -> None:
        for _ in range(200):
            await pair()
        gc.collect()
        gc.disable()  # the cyclic collector's passes land unevenly between runs of N and 0
        for _ in range(pairs):
            await pair()

    try:
        asyncio.run(run())
    finally:
        bench.close()


def layers(store: str, name: str, calls: int, profile: bool) -> None:
    bench = Layers(store)
    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(bench.timings(200))  # warm-up
        figures = loop.run_until_complete(bench.timings(calls))
        print(f"\n== {name}: a reserve's layers in process, p50 µs over {calls:,} calls")
        layers_sum = 0.0
        for layer, value in figures.items():
            print(f"    {layer:<78}{value:>8.1f}")
            if layer[0].isdigit():
                layers_sum += value
        print(f"    {'sum of layers 1-5':<78}{layers_sum:>8.1f}")
        if profile:
            print(loop.run_until_complete(bench.profile(calls)))
        loop.close()
    finally:
        bench.close()


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A private redis-server (no RDB, no AOF) on a free loopback port: its URL and pid."""
    from redis_ops import started_redis  # the main Redis bench's server

    with started_redis() as (url, process):
        yield f"{url}/0", process.pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter phases")
    parser.add_argument("--only", choices=("memory", "redis"), help="one configuration")
    parser.add_argument("--layers", action="store_true",
                        help="time each layer of a reserve in process, then exit")
    parser.add_argument("--profile", action="store_true",
                        help="with --layers: cProfile the app's reserve+commit path")
    parser.add_argument("--instructions", nargs=2, metavar=("KIND", "N"),
                        help="run N pairs (KIND: pairs or trivial) through the ASGI app, for "
                             "callgrind; see BENCHMARKS.md")
    parser.add_argument("--no-metrics", action="store_true",
                        help="with --instructions: an app without GET /metrics (and its "
                             "observer on the guard)")
    parser.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto",
                        help="uvicorn's HTTP implementation (default: as `allotment serve`)")
    parser.add_argument("--serve", nargs=4, metavar=("STORE", "PORT", "WORKERS", "HTTP"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        store, port, workers, http = args.serve
        _serve_main(store, int(port), int(workers), http)
        return 0
    if args.instructions:
        kind, count = args.instructions
        instructions(int(count), kind, not args.no_metrics)
        return 0
    settings = QUICK if args.quick else FULL
    if args.layers:
        calls = 1_000 if args.quick else 5_000
        if args.only in (None, "memory"):
            layers("memory://", "memory store", calls, args.profile)
        if args.only in (None, "redis"):
            with redis_server() as (url, _pid):
                layers(url, "Redis store", calls, args.profile)
        return 0
    import importlib.util

    import uvicorn

    http = args.http if args.http != "auto" else (
        "httptools" if importlib.util.find_spec("httptools") else "h11")
    print(f"allotment server benchmark — Python {platform.python_version()}, uvicorn "
          f"{uvicorn.__version__} ({http}), httpx {httpx.__version__}, {os.cpu_count()} cores "
          "shared with the clients, redis-server and other work (noisy: read the ratios)")
    ok = True
    if args.only in (None, "memory"):
        ok &= measure("memory store", "memory://", 1, settings, None, args.http)
    if args.only in (None, "redis"):
        with redis_server() as (url, pid):
            ok &= measure("Redis store", url, 4, settings, pid, args.http)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
