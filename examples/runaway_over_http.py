"""The runaway-tenant incident, contained by a server: agents reach allotment over HTTP.

`allotment serve` runs on a free loopback port (the embedded store unless --store says
otherwise). The platform provisions ten tenants through the admin plane, each with a $50
budget and a key of its own. Then every tenant's agent runs at once, each through the
`runcycles` client (any Cycles client would do, in any language): nine run a small job
twenty times; tenant `t00`'s integration loops, reprocessing one long document and asking a
reasoning model for a longer analysis on every pass. The model is simulated and bills at list
prices, so the demo is offline and takes seconds.

    pip install 'allotment[server]' runcycles
    python examples/runaway_over_http.py
    python examples/runaway_over_http.py --store redis://localhost:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import runcycles as rc

USD = "USD_MICROCENTS"
DOLLAR = 100_000_000  # the wire counts money in microcents, as integers
TENANTS, JOBS, JOB_CALLS, BUDGET_USD = 10, 20, 3, 50
RUNAWAY_LIMIT = 1_000  # passes the loop would make if nothing stopped it
PRICES = {"o1-pro": (15_000, 60_000), "gpt-4o-mini": (15, 60)}
"""Microcents per input and output token: $150 and $600, $0.15 and $0.60 per million."""


@contextmanager
def server(store: str) -> Iterator[tuple[str, str]]:
    """`allotment serve` on a free loopback port until the block ends; yields the base URL
    and the admin key it was started with."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    admin_key = secrets.token_urlsafe(24)
    script = Path(sys.executable).with_name("allotment")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "allotment.cli"]
    env = {**os.environ, "ALLOTMENT_ADMIN_KEY": admin_key, "ALLOTMENT_STORE": store}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([*command, "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=log, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while not ready(url + "/actuator/health/readiness"):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"allotment serve did not start:\n{log.read()}")
                time.sleep(0.1)
            yield url, admin_key
        finally:
            process.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish
            process.wait(30)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:  # not listening yet
        return False


def provision(admin: httpx.Client, tenant: str) -> str:
    """The operator's part, over the admin plane: the tenant, its budget, its agents' key
    (runtime calls and balances only). Answers the key's secret, shown this once."""
    for path, body in (
            ("/v1/admin/tenants", {"tenant_id": tenant, "name": f"Tenant {tenant}"}),
            ("/v1/admin/budgets", {"tenant_id": tenant, "scope": f"tenant:{tenant}",
                                   "unit": USD, "allocated": {"unit": USD,
                                                              "amount": BUDGET_USD * DOLLAR}}),
            ("/v1/admin/api-keys", {"tenant_id": tenant, "name": "agents"})):
        answer = admin.post(path, json=body)
        answer.raise_for_status()
    return str(answer.json()["key_secret"])


@dataclass
class Usage:
    model: str
    input_tokens: int
    output_tokens: int

    @property
    def cost(self) -> int:
        per_input, per_output = PRICES[self.model]
        return self.input_tokens * per_input + self.output_tokens * per_output


async def simulated_model(model: str, input_tokens: int, max_tokens: int) -> Usage:
    """The provider: answers after a moment with every output token it was allowed."""
    await asyncio.sleep(0.002)
    return Usage(model, input_tokens, max_tokens)


def guarded(client: rc.AsyncCyclesClient) -> Any:
    """The model call under a reservation: the upper bound held before, the real cost
    committed after; a denial raises before the model is called."""
    @rc.cycles(estimate=lambda model, input_tokens, max_tokens: Usage(
                   model, input_tokens, max_tokens).cost,
               actual=lambda usage: usage.cost, action_kind="llm.completion",
               action_name=lambda model, *_: f"openai:{model}", client=client)
    async def call(model: str, input_tokens: int, max_tokens: int) -> Usage:
        return await simulated_model(model, input_tokens, max_tokens)
    return call


@dataclass
class Outcome:
    tenant: str
    calls: int = 0
    spent: int = 0  # microcents, as the client was told each time it committed
    jobs_done: int = 0
    stopped: str | None = None


async def runaway(outcome: Outcome, call: Any) -> None:
    """t00's loop: the whole document again, asking for a longer analysis every pass."""
    for pass_no in range(1, RUNAWAY_LIMIT + 1):
        try:
            usage = await call("o1-pro", 2_000, 1_000 * pass_no)
        except rc.BudgetExceededError as denied:
            outcome.stopped = f"{denied.error_code} on pass {pass_no}"
            return
        outcome.calls += 1
        outcome.spent += usage.cost


async def well_behaved(outcome: Outcome, call: Any) -> None:
    for _ in range(JOBS):
        for _ in range(JOB_CALLS):
            try:
                usage = await call("gpt-4o-mini", 1_000, 400)
            except rc.BudgetExceededError as denied:
                outcome.stopped = str(denied.error_code)
                return
            outcome.calls += 1
            outcome.spent += usage.cost
        outcome.jobs_done += 1


async def run(url: str, keys: dict[str, str]) -> list[tuple[Outcome, dict[str, int]]]:
    """Every tenant's agent at once, each with its own key; then each tenant's ledger, read
    back over the wire with that key."""
    clients = {name: rc.AsyncCyclesClient(rc.CyclesConfig(
        base_url=url, api_key=key, tenant=name, journal_enabled=False,
        retry_enabled=False)) for name, key in keys.items()}
    outcomes = {name: Outcome(name) for name in keys}
    try:
        await asyncio.gather(*(
            (runaway if name == "t00" else well_behaved)(outcomes[name],
                                                          guarded(clients[name]))
            for name in keys))
        results = []
        for name, client in clients.items():
            answer = await client.get_balances(tenant=name)
            row = rc.BalanceResponse.model_validate(answer.body).balances[0]
            assert row.spent is not None
            results.append((outcomes[name], {"spent": row.spent.amount,
                                             "remaining": row.remaining.amount}))
        return results
    finally:
        for client in clients.values():
            await client.aclose()


def usd(microcents: int) -> str:
    """To the cent, without a float in between."""
    return f"${(Decimal(microcents) / DOLLAR).quantize(Decimal('0.01')):,}"


def report(results: list[tuple[Outcome, dict[str, int]]]) -> None:
    print(f"{'tenant':8} {'calls':>6} {'jobs':>6} {'spent':>9} {'remaining':>10}  status")
    for outcome, ledger in results:
        jobs = "-" if outcome.tenant == "t00" else f"{outcome.jobs_done}/{JOBS}"
        status = f"stopped: {outcome.stopped}" if outcome.stopped else "done"
        print(f"{outcome.tenant:8} {outcome.calls:>6} {jobs:>6} {usd(ledger['spent']):>9} "
              f"{usd(ledger['remaining']):>10}  {status}")
    stopped = [o.tenant for o, _ in results if o.stopped]
    complete = sum(o.jobs_done == JOBS for o, _ in results if o.tenant != "t00")
    told = all(o.spent == ledger["spent"] for o, ledger in results)
    print(f"\nstopped: {', '.join(stopped) or 'nobody'}")
    print(f"tenants that completed every job: {complete} of {TENANTS - 1}")
    print("every ledger equals what its tenant's client was told: "
          + ("yes" if told else "NO"))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", default="memory://",
                        help="the store `allotment serve` runs on (default: memory://)")
    args = parser.parse_args()
    with server(args.store) as (url, admin_key):
        print(f"allotment serve on {url} ({args.store})\n")
        names = [f"t{i:02d}" for i in range(TENANTS)]
        with httpx.Client(base_url=url, headers={"X-Admin-API-Key": admin_key}) as admin:
            keys = {name: provision(admin, name) for name in names}
        report(asyncio.run(run(url, keys)))


if __name__ == "__main__":
    main()
