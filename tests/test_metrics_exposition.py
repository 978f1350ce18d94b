"""`GuardMetrics` keeps plain counts and builds its families at scrape time: the exposition
is, sample for sample and line for line, what prometheus-client's own `Counter` and
`Histogram` write for the same calls (fed here by an observer of the same guard), with and
without the `_created` series."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as client_metrics

import allotment as al
from allotment.integrations.prometheus import LATENCY_BUCKETS, GuardMetrics

USD = al.Unit.USD_MICROCENTS


class Reference:
    """The same families, counted by prometheus-client's own metric classes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "allotment_decisions",
            "Reserve and decide answers (and refused records), by outcome and reason.",
            ("call", "outcome", "reason"), registry=registry)
        self.shadow = Counter(
            "allotment_shadow_denials", "Denials that shadow mode let through, by reason.",
            ("call", "reason"), registry=registry)
        self.duration = Histogram(
            "allotment_call_duration_seconds", "Latency of the guard's enforcement calls.",
            ("call",), registry=registry, buckets=LATENCY_BUCKETS)
        self.errors = Counter(
            "allotment_call_errors", "Enforcement calls that raised, by error class.",
            ("call", "error"), registry=registry)

    def observe(self, observation: al.Observation) -> None:
        call = observation.call
        self.duration.labels(call).observe(observation.duration_ns / 1e9)
        decision = observation.decision
        if decision is not None:
            self.decisions.labels(call, decision.outcome.value,
                                  decision.reason or "none").inc()
            if decision.observed is not None:
                self.shadow.labels(call, decision.observed.reason or "none").inc()
        if observation.error is not None:
            self.errors.labels(call, type(observation.error).__name__).inc()


def _traffic(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=1)
    tenant = guard.tenant("acme")
    subject, action = al.Subject(tenant="acme"), al.Action("llm.completion", "gpt-4o")
    for number in range(3):
        held = tenant.reserve(subject, action, al.Amount(USD, 1_000),
                              idempotency_key=f"r{number}")
        held.commit(al.Amount(USD, 600))
    with pytest.raises(al.Denied):
        tenant.reserve(subject, action, al.Amount(USD, 10**12))
    tenant.decide(subject, action, al.Amount(USD, 10))
    released = tenant.reserve(subject, action, al.Amount(USD, 1_000))
    released.release()
    with pytest.raises(al.ReservationFinalized):
        released.commit(al.Amount(USD, 5))


def _text(registry: CollectorRegistry) -> str:
    """The exposition with each `_created` timestamp blanked (each side takes its own)."""
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", generate_latest(registry).decode())


@pytest.fixture(params=[True, False], ids=["created", "no-created"])
def created(request: pytest.FixtureRequest) -> Iterator[bool]:
    was = client_metrics._use_created
    client_metrics._use_created = request.param
    yield request.param
    client_metrics._use_created = was


def test_the_exposition_is_prometheus_clients_own(created: bool) -> None:
    guard = al.Guard()
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = GuardMetrics(guard, registry=ours)
    reference = Reference(theirs)
    guard.add_observer(reference.observe)
    _traffic(guard)
    text = _text(ours)
    families = _text(theirs).splitlines(keepends=True)
    # ours has the store-error and utilization families besides: compare those we share
    shared = "".join(line for line in text.splitlines(keepends=True)
                     if not re.match(r"# (HELP|TYPE) allotment_(store_errors|tenant)|"
                                     r"allotment_(store_errors|tenant)", line))
    assert shared == "".join(families)
    assert ("_created{" in text) is created
    assert 'allotment_decisions_total{call="reserve",outcome="DENY",reason="BUDGET_EXCEEDED"}' \
        ' 1.0' in text
    assert 'allotment_call_duration_seconds_count{call="commit"} 4.0' in text  # one refused
    metrics.close()


def test_counts_survive_many_threads() -> None:
    import threading

    guard = al.Guard()
    metrics = GuardMetrics(guard, registry=None)
    guard.set_budget("tenant:acme", usd=1_000)
    tenant = guard.tenant("acme")
    subject, action = al.Subject(tenant="acme"), al.Action("llm.completion", "gpt-4o")

    def calls(_: Any) -> None:
        for _number in range(200):
            tenant.decide(subject, action, al.Amount(USD, 1))

    threads = [threading.Thread(target=calls, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = metrics.exposition().decode()
    assert 'allotment_decisions_total{call="decide",outcome="ALLOW",reason="none"} 800.0' \
        in text
    assert 'allotment_call_duration_seconds_count{call="decide"} 800.0' in text
    metrics.close()
