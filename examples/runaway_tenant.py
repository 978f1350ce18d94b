"""The incident, contained: fifty tenants share one provider account; one integration loops.

Forty-nine tenants run a small document job each round. Tenant `t00`'s integration keeps
reprocessing a 200-page document, each pass asking a reasoning model for a longer analysis
than the last. The provider account has one hard cap, $5,000, for everybody. All calls go
through the real OpenAI SDK to a simulated provider that bills at list prices; the platform's
ten hours are simulated too (a round every quarter of an hour), so the demo takes seconds.

    python examples/runaway_tenant.py                    # with allotment (embedded store)
    python examples/runaway_tenant.py --no-enforcement   # what happens without it
    python examples/runaway_tenant.py --redis redis://localhost:6379/0
    python examples/runaway_tenant.py --plot spend.png   # spend over time, per tenant
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx2
import openai

import allotment as al
from allotment.integrations.openai import wrap_openai
from allotment.pricing import Pricer, TokenUsage
from allotment.stores.redis import RedisStore

ACCOUNT_CAP = Decimal(5_000)
ROUNDS, TENANTS, CHUNKS, JOB_CALLS = 40, 50, 25, 3
START_MS = 1_794_787_200_000  # 2026-11-10 00:00 UTC: the platform's day, simulated
ROUND_MS = 15 * 60_000  # a round of jobs every quarter of an hour
PLANS = al.Plan.load_all(Path(__file__).with_name("plans.yaml"))
PRICES = Pricer()


class Provider:
    """One provider account for the whole platform: it bills every call at list price and
    refuses everything, for everyone, once the account's cap is spent."""

    def __init__(self) -> None:
        self.spent = Decimal(0)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if self.spent >= ACCOUNT_CAP:
            return httpx2.Response(429, json={"error": {
                "type": "insufficient_quota", "code": "insufficient_quota",
                "message": "You exceeded your current quota (account budget)."}})
        prompt = max(1, len(json.dumps(body["messages"])) // 4)
        output = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        usage = TokenUsage(input_tokens=prompt, output_tokens=output)
        self.spent += PRICES.price_of("openai", body["model"]).cost(usage)
        return httpx2.Response(200, json={
            "id": "chatcmpl-sim", "object": "chat.completion", "created": 0,
            "model": body["model"], "choices": [{
                "index": 0, "finish_reason": "length",
                "message": {"role": "assistant", "content": "…analysis…"}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": output,
                      "total_tokens": prompt + output}})


@dataclass
class Tally:
    spent: Decimal = Decimal(0)
    calls: int = 0
    denied: int = 0
    failed: int = 0
    jobs_done: int = 0
    history: list[float] = field(default_factory=list)


def call(client: openai.OpenAI, tally: Tally, model: str, text: str, max_tokens: int,
         run: str) -> bool:
    try:
        reply = client.chat.completions.create(
            model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": text}],
            extra_headers={"x-allotment-run": run})
    except al.Denied:
        tally.denied += 1
        return False
    except openai.RateLimitError:  # the shared account is spent: the provider refuses
        tally.failed += 1
        return False
    assert reply.usage is not None
    usage = TokenUsage(input_tokens=reply.usage.prompt_tokens,
                       output_tokens=reply.usage.completion_tokens)
    tally.spent += PRICES.price_of("openai", reply.model).cost(usage)  # a degrade may switch
    tally.calls += 1
    return True


def run(guard: al.Guard | None, clock: al.ManualClock) -> tuple[dict[str, Tally], Provider]:
    provider = Provider()
    http = httpx2.Client(transport=httpx2.MockTransport(provider))
    sdk = openai.OpenAI(api_key="sk-simulated", http_client=http, max_retries=0)
    names = [f"t{i:02d}" for i in range(TENANTS)]
    clients = {}
    for i, name in enumerate(names):
        if guard is not None:  # every tenant on a plan; ingest runs capped at $25 each
            guard.assign_plan(name, PLANS["pro" if i % 3 == 1 else "starter"])
            guard.set_budget(f"tenant:{name}/workflow:ingest", usd=25, per="run")
        clients[name] = sdk if guard is None else wrap_openai(
            sdk, guard, tenant=name, workflow="ingest")
    tallies = {name: Tally() for name in names}
    page = "Section text of the quarterly filing. " * 40
    for round_no in range(1, ROUNDS + 1):
        for _ in range(CHUNKS):  # the loop: the whole document again, asking for more
            if not call(clients["t00"], tallies["t00"], "o1-pro", page, 1_000 * round_no,
                        f"reprocess-{round_no}"):
                break
        for name in names[1:]:
            if all(call(clients[name], tallies[name], "gpt-4o-mini", page, 400, f"job-{round_no}")
                   for _ in range(JOB_CALLS)):
                tallies[name].jobs_done += 1
        for tally in tallies.values():
            tally.history.append(float(tally.spent))
        clock.advance(ROUND_MS)
    return tallies, provider


def report(tallies: dict[str, Tally], provider: Provider, guard: al.Guard | None) -> None:
    def usd(value: Decimal | int) -> str:
        """Every figure in one format, to the cent: dollars, or a ledger's microcents."""
        microcents = value if isinstance(value, int) else al.usd(value).amount
        return al.format_amount(al.Unit.USD_MICROCENTS, round(microcents, -6))

    print(f"{'tenant':8} {'spend':>11} {'calls':>6} {'denied':>7} {'failed':>7} "
          f"{'jobs':>6} {'remaining':>11}")
    shown = list(tallies.items())
    for name, tally in [*shown[:5], ("...", None), *shown[-2:]]:
        if tally is None:
            print("...")
            continue
        remaining = "-"
        if guard is not None:
            month = [b for b in guard.balances(f"tenant:{name}", include_children=False)
                     if b.unit is al.Unit.USD_MICROCENTS and b.period == "month"]
            remaining = usd(month[0].remaining)
        jobs = "-" if name == "t00" else f"{tally.jobs_done}/{ROUNDS}"
        print(f"{name:8} {usd(tally.spent):>11} {tally.calls:>6} {tally.denied:>7} "
              f"{tally.failed:>7} {jobs:>6} {remaining:>11}")
    complete = sum(t.jobs_done == ROUNDS for n, t in tallies.items() if n != "t00")
    print(f"\nprovider account: {usd(provider.spent)} of {usd(ACCOUNT_CAP)} spent")
    print(f"tenants that completed every job: {complete} of {TENANTS - 1}")
    if guard is not None:
        stops = guard.audit("t00", types=["reservation.denied"], limit=1_000)
        print(f"t00 first stopped at {stops[0].scopes[0]} ({stops[0].reason}),")
        print(f"    then for good at {stops[-1].scopes[0]} ({stops[-1].reason})")


def plot(tallies: dict[str, Tally], path: str, enforced: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    figure, axes = plt.subplots(figsize=(9, 5))
    for name, tally in tallies.items():
        axes.plot(range(1, ROUNDS + 1), tally.history, color="crimson" if name == "t00"
                  else "steelblue", alpha=1.0 if name == "t00" else 0.25,
                  label="t00 (runaway)" if name == "t00" else None)
    axes.set(xlabel="round", ylabel="spend (USD)", yscale="symlog",
             title="with allotment" if enforced else "without enforcement")
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    print(f"chart written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--no-enforcement", action="store_true",
                        help="call the provider directly, as a platform without allotment does")
    parser.add_argument("--redis", metavar="URL", help="a shared Redis store instead")
    parser.add_argument("--plot", metavar="FILE.png", help="chart spend over time per tenant")
    args = parser.parse_args()
    clock = al.ManualClock(START_MS)  # the simulated day's clock, for every store
    guard = None
    if not args.no_enforcement:
        guard = al.Guard(RedisStore.from_url(args.redis, clock=clock) if args.redis
                         else al.MemoryStore(clock))
    print("with allotment: per-tenant budgets enforced before each call\n" if guard else
          "without enforcement: one shared provider cap for everybody\n")
    tallies, provider = run(guard, clock)
    report(tallies, provider, guard)
    if args.plot:
        plot(tallies, args.plot, guard is not None)


if __name__ == "__main__":
    main()
