"""OpenTelemetry spans of real guard calls, captured with the SDK's in-memory exporter, on
both stores, through the sync calls and their async twins: one span per call, a child of
the caller's span, with tenant, scope and decision attributes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import allotment as al
from allotment.integrations.opentelemetry import instrument

from support import LLM
from support.drivers import AsyncDriven
from support.outage import Outage

ACME = al.Subject(tenant="acme", workflow="chat", agent="writer")


def real(guard: Any) -> al.Guard:
    return getattr(guard, "driven", guard)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("allotment.")]


def test_each_call_is_a_span_inside_the_callers_span(
        guard: Any, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    instrument(real(guard), tracer_provider=provider)
    guard.set_budget("tenant:acme", usd=10)
    tracer = provider.get_tracer("the-application")
    with tracer.start_as_current_span("handle-request") as request:
        held = guard.reserve(ACME, LLM, al.usd(1))
        held.commit(al.usd("0.5"))
        guard.release(guard.reserve(ACME, LLM, al.usd(1)).id)
        guard.decide(ACME, LLM, al.usd(1))
        guard.record(ACME, LLM, al.usd("0.1"))

    spans = ours(exporter)
    assert [s.name for s in spans] == ["allotment.reserve", "allotment.commit",
                                       "allotment.reserve", "allotment.release",
                                       "allotment.decide", "allotment.record"]
    trace_id = request.get_span_context().trace_id
    for span in spans:
        assert span.parent is not None and span.parent.span_id == \
            request.get_span_context().span_id
        assert span.context.trace_id == trace_id
        assert span.kind is SpanKind.INTERNAL and span.status.status_code is StatusCode.UNSET
        assert span.attributes["allotment.tenant"] == "acme"
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time < span.end_time
    reserve, commit = spans[0], spans[1]
    assert dict(reserve.attributes) == {
        "allotment.call": "reserve", "allotment.tenant": "acme",
        "allotment.scope": "tenant:acme/workflow:chat/agent:writer",
        "allotment.action": "llm.completion:openai:gpt-4o",
        "allotment.reservation_id": held.id, "allotment.decision.outcome": "ALLOW"}
    assert dict(commit.attributes) == {"allotment.call": "commit", "allotment.tenant": "acme",
                                       "allotment.reservation_id": held.id}
    assert spans[4].attributes["allotment.decision.outcome"] == "ALLOW"


def test_a_denial_span_carries_the_decision_and_is_not_an_error(
        guard: Any, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    instrument(real(guard), tracer_provider=provider)
    guard.set_budget("tenant:acme/workflow:chat", usd=1)
    with pytest.raises(al.BudgetExceeded):
        guard.tenant("acme").reserve(ACME, LLM, al.usd(2))
    (span,) = ours(exporter)
    assert span.status.status_code is StatusCode.UNSET and not span.events
    assert span.attributes["allotment.decision.outcome"] == "DENY"
    assert span.attributes["allotment.decision.reason"] == "BUDGET_EXCEEDED"
    assert span.attributes["allotment.decision.scope"] == "tenant:acme/workflow:chat"
    assert "error.type" not in span.attributes


def test_shadow_mode_spans_carry_the_denial_it_let_through(
        guard: Any, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    instrument(real(guard), tracer_provider=provider)
    guard.set_budget("tenant:acme", usd=1)
    guard.set_mode("acme", "shadow")
    guard.reserve(ACME, LLM, al.usd(2)).release()
    reserve = ours(exporter)[0]
    assert reserve.attributes["allotment.decision.outcome"] == "ALLOW"
    assert reserve.attributes["allotment.decision.observed_reason"] == "BUDGET_EXCEEDED"


@pytest.mark.parametrize("way", ["sync", "async"])
def test_a_store_failure_is_an_error_span(
        store: Any, way: str, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    outage = Outage(store)
    plain = al.Guard(outage, on_store_error="deny")
    instrument(plain, tracer_provider=provider)
    loop = asyncio.new_event_loop()
    guard: Any = plain if way == "sync" else AsyncDriven(plain, loop)
    try:
        outage.down = 1
        with pytest.raises(al.StoreUnavailable):
            guard.reserve(ACME, LLM, al.usd(1))
    finally:
        loop.close()
    (span,) = ours(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "StoreUnavailable"
    assert span.attributes["allotment.store_errors"] == 1
    assert [event.name for event in span.events] == ["exception"]


def test_instrumenting_is_undone_by_removing_the_observer(
        guard: Any, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    observer = instrument(real(guard), tracer_provider=provider)
    guard.set_budget("tenant:acme", usd=10)
    guard.reserve(ACME, LLM, al.usd(1))
    real(guard).remove_observer(observer)
    guard.reserve(ACME, LLM, al.usd(1))
    assert len(ours(exporter)) == 1
    with pytest.raises(al.InvalidRequest, match="Guard"):
        instrument("guard")  # type: ignore[arg-type]
