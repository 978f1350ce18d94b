"""The incident, contained: fifty tenants share one provider account; one loops.

Every tenant's calls go through one guard. Forty-nine tenants each run a modest document job
per round. Tenant `t00`'s integration reprocesses a 200-page document once per round, with a
context that grows each time. The provider account has one hard cap for everybody.

    python examples/runaway_tenant.py                   # with allotment
    python examples/runaway_tenant.py --no-enforcement  # what happens without it

The provider is simulated in process (priced like gpt-4o: $2.50 / 1M input tokens,
$10 / 1M output tokens) so the demo runs offline in about a second.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from decimal import Decimal

import allotment as al

ACCOUNT_CAP = al.usd(5_000).amount
INPUT_PRICE, OUTPUT_PRICE = Decimal("2.50") / 10**6, Decimal("10") / 10**6
MODEL = al.Action("llm.completion", "openai:gpt-4o")
ROUNDS, TENANTS, PAGES = 40, 50, 200


class AccountCapReached(Exception):
    """The provider refuses every call once the shared account is spent."""


@dataclass
class Provider:
    """One provider account shared by every tenant, with an account-wide hard cap."""

    spent: int = 0

    def complete(self, input_tokens: int, output_tokens: int) -> int:
        if self.spent >= ACCOUNT_CAP:
            raise AccountCapReached("provider account budget exhausted")
        cost = al.usd(input_tokens * INPUT_PRICE + output_tokens * OUTPUT_PRICE).amount
        self.spent += cost
        return cost


@dataclass
class Tally:
    spent: int = 0
    calls: int = 0
    denied: int = 0
    failed: int = 0
    jobs_done: int = 0


def call(guard: al.Guard | None, provider: Provider, tally: Tally, subject: al.Subject,
         input_tokens: int, max_tokens: int) -> bool:
    """reserve → call → commit; the estimate is an upper bound (max_tokens of output)."""
    estimate = al.usd(input_tokens * INPUT_PRICE + max_tokens * OUTPUT_PRICE)
    try:
        if guard is None:
            cost = provider.complete(input_tokens, max_tokens // 2)
        else:
            with guard.reserve(subject, MODEL, estimate) as held:
                cost = provider.complete(input_tokens, max_tokens // 2)
                held.commit(al.Amount(al.Unit.USD_MICROCENTS, cost))
    except al.Denied:
        tally.denied += 1
        return False
    except AccountCapReached:
        tally.failed += 1
        return False
    tally.spent += cost
    tally.calls += 1
    return True


def run(enforce: bool) -> tuple[dict[str, Tally], Provider, al.Guard | None]:
    guard = al.Guard() if enforce else None
    provider = Provider()
    names = [f"t{i:02d}" for i in range(TENANTS)]
    if guard is not None:
        for name in names:  # every tenant on the Starter tier
            guard.set_budget(f"tenant:{name}", usd=100, period="month")
            guard.set_budget(f"tenant:{name}/workflow:ingest", usd=25, per="run")
    tallies = {name: Tally() for name in names}
    for round_no in range(1, ROUNDS + 1):
        runaway = al.Subject(tenant="t00", workflow="ingest",
                             dimensions={"run": f"reprocess-{round_no}"})
        for _ in range(PAGES):  # the loop: every page again, with all context so far
            if not call(guard, provider, tallies["t00"], runaway, 20_000 * round_no, 500):
                break
        for name in names[1:]:
            job = al.Subject(tenant=name, workflow="ingest",
                             dimensions={"run": f"job-{round_no}"})
            if all(call(guard, provider, tallies[name], job, 8_000, 1_000) for _ in range(5)):
                tallies[name].jobs_done += 1
    return tallies, provider, guard


def report(tallies: dict[str, Tally], provider: Provider, guard: al.Guard | None) -> None:
    print(f"{'tenant':8} {'spend':>11} {'calls':>6} {'denied':>7} {'failed':>7} "
          f"{'jobs':>6} {'remaining':>11}")
    shown = list(tallies.items())
    for name, tally in [*shown[:6], ("...", None), *shown[-2:]]:
        if tally is None:
            print("...")
            continue
        remaining = "-"
        if guard is not None:
            (balance,) = guard.balances(f"tenant:{name}", include_children=False)
            remaining = al.format_amount(al.Unit.USD_MICROCENTS, balance.remaining)
        jobs = "-" if name == "t00" else f"{tally.jobs_done}/{ROUNDS}"
        print(f"{name:8} {al.format_amount(al.Unit.USD_MICROCENTS, tally.spent):>11} "
              f"{tally.calls:>6} {tally.denied:>7} {tally.failed:>7} {jobs:>6} {remaining:>11}")
    complete = sum(t.jobs_done == ROUNDS for n, t in tallies.items() if n != "t00")
    print(f"\nprovider account: {al.format_amount(al.Unit.USD_MICROCENTS, provider.spent)} "
          f"of {al.format_amount(al.Unit.USD_MICROCENTS, ACCOUNT_CAP)} spent")
    print(f"tenants that completed every job: {complete} of {TENANTS - 1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-enforcement", action="store_true",
                        help="call the provider directly, as a platform without allotment does")
    args = parser.parse_args()
    enforce = not args.no_enforcement
    print("with allotment: per-tenant budgets enforced before each call\n" if enforce else
          "without enforcement: one shared provider cap for everybody\n")
    report(*run(enforce))


if __name__ == "__main__":
    main()
