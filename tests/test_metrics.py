"""Prometheus metrics of real guard traffic, read back through the Prometheus client's own
parser (and once over HTTP as a scraper would), on both stores, through the sync calls and
their async twins; the tenant label stays bounded however many tenants there are."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import allotment as al
from allotment.integrations.prometheus import GuardMetrics

from support import LLM
from support.outage import failing_guards, store_failures

ACME = al.Subject(tenant="acme", workflow="chat")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def real(guard: Any) -> al.Guard:
    return getattr(guard, "driven", guard)


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_decisions_latency_and_errors_are_exposed(guard: Any,
                                                  registry: CollectorRegistry) -> None:
    metrics = GuardMetrics(real(guard), registry=registry)
    guard.set_budget("tenant:acme", usd=10)
    guard.set_access("tenant:acme", models_deny=["openai:gpt-3.5*"])
    for _ in range(3):
        guard.reserve(ACME, LLM, al.usd(1)).commit(al.usd("0.5"))
    guard.release(guard.reserve(ACME, LLM, al.usd(1)).id)
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(ACME, LLM, al.usd(20))
    with pytest.raises(al.NotAllowed):
        guard.reserve(ACME, al.Action("llm.completion", "openai:gpt-3.5-turbo"), al.usd(1))
    guard.decide(ACME, LLM, al.usd(20))
    guard.record(ACME, LLM, al.usd("0.1"))
    with pytest.raises(al.NotFound):
        guard.commit(f"acme:{'0' * 32}", al.usd(1))

    samples = parse(metrics.exposition().decode())
    assert samples == parse(generate_latest(registry).decode())
    decisions = "allotment_decisions_total"
    assert value(samples, decisions, call="reserve", outcome="ALLOW", reason="none") == 4
    assert value(samples, decisions, call="reserve", outcome="DENY",
                 reason="BUDGET_EXCEEDED") == 1
    assert value(samples, decisions, call="reserve", outcome="DENY",
                 reason="MODEL_NOT_ALLOWED") == 1
    assert value(samples, decisions, call="decide", outcome="DENY",
                 reason="BUDGET_EXCEEDED") == 1
    counts = {call: value(samples, "allotment_call_duration_seconds_count", call=call)
              for call in ("reserve", "decide", "commit", "release", "record")}
    assert counts == {"reserve": 6, "decide": 1, "commit": 4, "release": 1, "record": 1}
    assert value(samples, "allotment_call_duration_seconds_bucket", call="reserve",
                 le="+Inf") == 6
    assert value(samples, "allotment_call_duration_seconds_sum", call="reserve") > 0
    errors = "allotment_call_errors_total"
    assert value(samples, errors, call="reserve", error="BudgetExceeded") == 1
    assert value(samples, errors, call="reserve", error="NotAllowed") == 1
    assert value(samples, errors, call="commit", error="NotFound") == 1
    assert not labelled(samples, "allotment_store_errors_total", "handling")
    # the tenant label is off by default: no series names a tenant
    assert not any("tenant" in dict(labels) for (_, labels) in samples)
    spent = guard.balances("tenant:acme", include_children=False)[0]
    assert value(samples, "allotment_tenants_tracked") == 1
    assert spent.spent == al.usd("1.6").amount
    assert value(samples, "allotment_tenants_at_utilization", at_least="0.5") == 0


def test_shadow_denials_are_counted(guard: Any, registry: CollectorRegistry) -> None:
    metrics = GuardMetrics(real(guard), registry=registry)
    guard.set_budget("tenant:acme", usd=1)
    guard.set_mode("acme", "shadow")
    guard.reserve(ACME, LLM, al.usd(5)).release()
    samples = parse(metrics.exposition().decode())
    assert value(samples, "allotment_shadow_denials_total", call="reserve",
                 reason="BUDGET_EXCEEDED") == 1
    assert value(samples, "allotment_decisions_total", call="reserve", outcome="ALLOW",
                 reason="none") == 1


def test_utilization_is_exposed_for_the_top_tenants_only(
        guard: Any, registry: CollectorRegistry) -> None:
    """Forty tenants, each using a different share of its $100: the gauge names only the
    five most used; the counts by threshold cover all forty."""
    metrics = GuardMetrics(real(guard), registry=registry, top_tenants=5)
    for i in range(40):
        tenant = al.Subject(tenant=f"t{i:02d}")
        guard.set_budget(f"tenant:t{i:02d}", usd=100)
        guard.set_budget(f"tenant:t{i:02d}", tokens=1_000_000, period="day")
        guard.reserve(tenant, LLM, [al.usd(i * 2 + 10), al.tokens(100)]).commit(
            [al.usd(i * 2 + 10), al.tokens(100)])

    samples = parse(metrics.exposition().decode())
    ratio = "allotment_tenant_utilization_ratio"
    assert labelled(samples, ratio, "tenant") == {"t35", "t36", "t37", "t38", "t39"}
    assert value(samples, ratio, tenant="t39", unit="USD_MICROCENTS", period="none") == 0.88
    assert value(samples, ratio, tenant="t39", unit="TOKENS", period="day") == 0.0001
    assert len([key for key in samples if key[0] == ratio]) == 10
    at = "allotment_tenants_at_utilization"
    # t20 uses $50 (50 %) ... t39 $88; none reaches 90 %
    assert {threshold: value(samples, at, at_least=threshold)
            for threshold in ("0.5", "0.8", "0.9", "1.0")} == {
        "0.5": 20, "0.8": 5, "0.9": 0, "1.0": 0}
    assert value(samples, "allotment_tenants_tracked") == 40


def test_many_tenants_stay_within_the_tracking_bound(guard: Any,
                                                     registry: CollectorRegistry) -> None:
    metrics = GuardMetrics(real(guard), registry=registry, top_tenants=3,
                           max_tracked_tenants=10)
    for i in range(30):
        guard.set_budget(f"tenant:t{i:02d}", usd=100)
        guard.reserve(al.Subject(tenant=f"t{i:02d}"), LLM, al.usd(30 - i)).release()
        guard.record(al.Subject(tenant=f"t{i:02d}"), LLM, al.usd(30 - i))
    samples = parse(metrics.exposition().decode())
    assert value(samples, "allotment_tenants_tracked") == 10
    # the ten most recently active are t20..t29; the most used of them t20, t21, t22
    assert labelled(samples, "allotment_tenant_utilization_ratio", "tenant") == {
        "t20", "t21", "t22"}


@pytest.fixture(params=["sync", "async"])
def switched(request: pytest.FixtureRequest, store: Any) -> Iterator[Any]:
    yield from failing_guards(store, request.param)


def test_store_errors_are_counted_by_how_they_were_handled(
        switched: Any, registry: CollectorRegistry) -> None:
    outage, (fail_open, fail_closed) = switched
    metrics = GuardMetrics(real(fail_open), registry=registry)
    GuardMetrics(real(fail_closed), registry=None).close()  # never registered: closes too
    real(fail_closed).add_observer(metrics.observe)
    store_failures(outage, fail_open, fail_closed, ACME, LLM)
    outage.down = 1
    with pytest.raises(al.StoreUnavailable):
        fail_open.decide(ACME, LLM, al.usd(1))

    samples = parse(metrics.exposition().decode())
    store_errors = {(dict(labels)["call"], dict(labels)["handling"]): v
                    for (name, labels), v in samples.items()
                    if name == "allotment_store_errors_total"}
    assert store_errors == {("reserve", "fail_open"): 1, ("reserve", "fail_closed"): 1,
                            ("commit", "recovered"): 1, ("record", "failed"): 1,
                            ("decide", "failed"): 1}
    assert value(samples, "allotment_decisions_total", call="reserve", outcome="ALLOW",
                 reason="STORE_UNAVAILABLE") == 1


def test_a_scrape_over_http_reads_the_registry(guard: Any,
                                               registry: CollectorRegistry) -> None:
    GuardMetrics(real(guard), registry=registry)
    guard.set_budget("tenant:acme", usd=10)
    guard.reserve(ACME, LLM, al.usd(1)).commit(al.usd(1))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            samples = parse(response.read().decode())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert value(samples, "allotment_call_duration_seconds_count", call="commit") == 1


def test_close_stops_observing_and_leaves_the_registry(guard: Any,
                                                       registry: CollectorRegistry) -> None:
    metrics = GuardMetrics(real(guard), registry=registry)
    guard.set_budget("tenant:acme", usd=10)
    guard.reserve(ACME, LLM, al.usd(1))
    metrics.close()
    assert "allotment_decisions_total" not in generate_latest(registry).decode()
    again = GuardMetrics(real(guard), registry=registry)  # the names are free again
    guard.reserve(ACME, LLM, al.usd(1))
    samples = parse(again.exposition().decode())
    assert value(samples, "allotment_call_duration_seconds_count", call="reserve") == 1


def test_bad_settings_are_refused(guard: Any, registry: CollectorRegistry) -> None:
    with pytest.raises(al.InvalidRequest, match="top_tenants"):
        GuardMetrics(real(guard), registry=registry, top_tenants=-1)
    with pytest.raises(al.InvalidRequest, match="max_tracked_tenants"):
        GuardMetrics(real(guard), registry=registry, max_tracked_tenants=0)
    with pytest.raises(al.InvalidRequest, match="Guard"):
        GuardMetrics("redis://", registry=registry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Duplicated"):  # one collector per registry
        GuardMetrics(real(guard), registry=registry)
        GuardMetrics(real(guard), registry=registry)
