"""What the policy layer costs on the memory store: reserve+commit pairs with a full policy
(3 budgets, 2 quotas, access rules, degrade rules) against the bare ledger (3 budgets, no
rules), at scope depth 3, in alternating rounds of the same run.

    python bench/policy_overhead.py [--pairs 20000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import allotment as al

SCOPES = ["tenant:acme", "tenant:acme/workspace:production",
          "tenant:acme/workspace:production/agent:analyzer"]
TARGET = 1.5


def bare() -> al.Guard:
    guard = al.Guard()
    for scope in SCOPES:
        guard.set_budget(scope, usd=10**6)
    return guard


def full() -> al.Guard:
    guard = al.Guard()
    guard.set_budget(SCOPES[0], usd=10**6, period="month",
                     degrade=[al.Degrade(below=0.2, max_tokens=1024),
                              al.Degrade(below=0.05, model="gpt-4o-mini")])
    guard.set_budget(SCOPES[0], tokens=10**12, period="day")
    guard.set_budget(SCOPES[2], usd=10**5, per="run")
    guard.set_quota(SCOPES[0], calls=10**9, window="minute")
    guard.set_quota(SCOPES[1], concurrent=1_000)
    guard.set_access(SCOPES[0], models_allow=["gpt-4o*", "claude-*"], tools_deny=["shell*"],
                     max_tokens_per_call=4096)
    return guard


def pairs(guard: al.Guard, estimate: list[al.Amount], actual: list[al.Amount],
          count: int) -> list[float]:
    subject = al.Subject(tenant="acme", workspace="production", agent="analyzer",
                         dimensions={"run": "run-1"})
    action = al.Action("llm.completion", "openai:gpt-4o")
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        guard.reserve(subject, action, estimate).commit(actual)
        samples.append((time.perf_counter_ns() - start) / 1_000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    usd_only = ([al.usd("0.05")], [al.usd("0.031")])
    both = ([al.usd("0.05"), al.tokens(4_000)], [al.usd("0.031"), al.tokens(2_500)])
    guards = {"bare ledger": (bare(), *usd_only), "full policy": (full(), *both)}
    for guard, estimate, actual in guards.values():
        pairs(guard, estimate, actual, 1_000)  # warm up
    medians: dict[str, list[float]] = {name: [] for name in guards}
    for _ in range(args.rounds):
        for name, (guard, estimate, actual) in guards.items():
            gc.collect()
            medians[name].append(statistics.median(
                pairs(guard, estimate, actual, args.pairs // args.rounds)))
    base = statistics.median(medians["bare ledger"])
    policy = statistics.median(medians["full policy"])
    print(f"bare ledger   reserve+commit p50 {base:7.1f} µs  (3 USD budgets, depth 3)")
    print(f"full policy   reserve+commit p50 {policy:7.1f} µs  (3 budgets incl. a per-run "
          "template and a TOKENS/day one, 2 quotas, access rules, 2 degrade rules)")
    print(f"ratio         {policy / base:.2f}×   target ≤ {TARGET}× "
          f"{'PASS' if policy / base <= TARGET else 'MISS'}")


if __name__ == "__main__":
    main()
