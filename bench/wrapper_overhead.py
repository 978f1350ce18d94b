"""What wrapping an OpenAI client costs: wrapped vs unwrapped calls against a simulated
provider served over loopback HTTP, measured in the same run, in alternating rounds (this
machine is shared and noisy, so the ratio is what to read). Also the guard's own work per
call (estimate, price, reserve, commit) without any HTTP.

    python bench/wrapper_overhead.py [--calls 12000] [--rounds 60]

Single rounds' ratios spread widely on this machine (quartiles 2–5 % either side of the
median, extremes 0.7–1.8×), so the median of 20 rounds moved by about ±4 % from run to run;
60 rounds of 200 calls per client narrow that to about ±1 %.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai

import allotment as al
from allotment.integrations._metering import Metering, Request
from allotment.integrations.openai import wrap_openai
from allotment.pricing import TokenUsage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from simulated_provider import serve

MESSAGES = [{"role": "system", "content": "You answer questions about budgets."},
            {"role": "user", "content": "Why does a shared platform need per-tenant limits?"}]
TARGET = 1.10


def timed_calls(client: Any, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=200)
        samples.append((time.perf_counter_ns() - start) / 1_000)
    return samples


def guard_work(calls: int) -> list[float]:
    """estimate + price + reserve + commit, as the adapter does them, with no HTTP at all."""
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=10**6)
    metering = Metering(guard)
    subject = al.Subject(tenant="acme", workflow="bench")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 200}
    usage = TokenUsage(input_tokens=30, output_tokens=120)
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        meter = metering.start(Request(subject, "llm.completion", "openai", "gpt-4o-mini",
                                       body, 200))
        meter.commit(usage)
        samples.append((time.perf_counter_ns() - start) / 1_000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=12_000,
                        help="timed calls per client, split evenly over the rounds "
                             "(a remainder is dropped)")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    if args.rounds < 2 or args.calls < args.rounds:
        parser.error("needs --rounds ≥ 2 and --calls ≥ --rounds (calls are split evenly over "
                     "the rounds; a remainder is not timed)")
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=10**6)
    with serve() as provider:
        plain = openai.OpenAI(api_key="sk-bench", base_url=provider + "/v1", max_retries=0)
        wrapped = wrap_openai(plain, guard, tenant="acme", workflow="bench")
        timed_calls(plain, 200)  # warm both paths up
        timed_calls(wrapped, 200)
        plain_p50, wrapped_p50, ratios = [], [], []
        for index in range(args.rounds):
            # each round times both clients back to back, in alternating order, so drift in
            # the machine's load hits the pair alike; the ratio is the median of the rounds'
            p50 = {}
            for name, client in ((("plain", plain), ("wrapped", wrapped)) if index % 2 == 0
                                 else (("wrapped", wrapped), ("plain", plain))):
                gc.collect()
                p50[name] = statistics.median(timed_calls(client, args.calls // args.rounds))
            plain_p50.append(p50["plain"])
            wrapped_p50.append(p50["wrapped"])
            ratios.append(p50["wrapped"] / p50["plain"])
    work = sorted(guard_work(args.calls))
    base, guarded = statistics.median(plain_p50), statistics.median(wrapped_p50)
    ratio = statistics.median(ratios)
    (balance,) = guard.balances("tenant:acme")
    print(f"unwrapped call p50   {base:9.1f} µs   (loopback HTTP, simulated provider)")
    print(f"wrapped call p50     {guarded:9.1f} µs")
    print(f"ratio                {ratio:9.3f}×   median of {args.rounds} paired rounds; "
          f"target ≤ {TARGET}× "
          f"{'PASS' if ratio <= TARGET else 'MISS'}")
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"per-round ratios     min {min(ratios):.3f}, quartiles {quartiles[0]:.3f} / "
          f"{quartiles[1]:.3f} / {quartiles[2]:.3f}, max {max(ratios):.3f}")
    print(f"guard's own work     p50 {work[len(work) // 2]:.1f} µs, "
          f"p99 {work[int(len(work) * 0.99)]:.1f} µs per call "
          "(estimate, price, reserve, commit)")
    settled = balance.reserved == 0 and balance.allocated == (
        balance.remaining + balance.reserved + balance.spent + balance.debt)
    print(f"ledger after the run: spent {al.format_amount(balance.unit, balance.spent)}, "
          f"reserved {balance.reserved}, identity {'holds' if settled else 'BROKEN'}")
    return 0 if settled else 1


if __name__ == "__main__":
    raise SystemExit(main())
