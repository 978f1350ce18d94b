"""OpenTelemetry spans for a guard's enforcement calls.

    pip install 'allotment[opentelemetry]'     # the API; your application brings the SDK

    from allotment.integrations.opentelemetry import instrument
    observer = instrument(guard)                # or instrument(guard, tracer_provider=...)
    ...
    guard.remove_observer(observer)             # to stop

Each reserve, decide, commit, release, extend and record call of the guard, its tenant
handles and their reservations becomes one span, `allotment.<call>` (kind INTERNAL), a child
of the span current where the call was made, with the attributes:

- `allotment.call`, `allotment.tenant`, `allotment.scope` (the subject's deepest scope, for
  reserve, decide and record), `allotment.action` (`kind:name`), `allotment.reservation_id`;
- `allotment.decision.outcome`, `.reason`, `.scope` (the scope that refused), and
  `.observed_reason` (a denial shadow mode let through);
- `allotment.store_errors` when the store failed some tries, `error.type` when the call
  raised (other than a denial).

A denial is an answer, not a failure: its span keeps status UNSET and carries the decision.
Any other error sets status ERROR and records the exception.

What we chose: the span is written when the call ends, with the call's own start and end
times (the guard's observers are told after the fact, which costs nothing when none is
registered). So spans of the store's client (a Redis instrumentation, say) appear beside the
guard's span rather than inside it.
"""

from __future__ import annotations

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.util.types import AttributeValue
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("allotment.integrations.opentelemetry needs opentelemetry-api: "
                      "pip install 'allotment[opentelemetry]'") from error

import allotment as al

TRACER_NAME = "allotment"


def instrument(guard: al.Guard, tracer_provider: TracerProvider | None = None) -> al.Observer:
    """Trace every enforcement call of `guard` with a tracer from `tracer_provider` (the
    global one if None); returns the observer, for `guard.remove_observer`."""
    if not isinstance(guard, al.Guard):
        raise al.InvalidRequest(f"guard: expected an allotment Guard, got {guard!r}")
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)

    def observe(observation: al.Observation) -> None:
        span = tracer.start_span(f"allotment.{observation.call}", kind=SpanKind.INTERNAL,
                                 start_time=observation.started_ns,
                                 attributes=attributes(observation))
        error = observation.error
        if error is not None and not isinstance(error, al.Denied):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end(end_time=observation.started_ns + observation.duration_ns)

    return guard.add_observer(observe)


def attributes(observation: al.Observation) -> dict[str, AttributeValue]:
    """The span attributes of one call."""
    found: dict[str, AttributeValue] = {"allotment.call": observation.call,
                                        "allotment.tenant": observation.tenant}
    if observation.scopes:
        found["allotment.scope"] = observation.scopes[-1]
    if observation.action is not None:
        found["allotment.action"] = f"{observation.action.kind}:{observation.action.name}"
    if observation.reservation_id is not None:
        found["allotment.reservation_id"] = observation.reservation_id
    decision = observation.decision
    if decision is not None:
        found["allotment.decision.outcome"] = decision.outcome.value
        if decision.reason is not None:
            found["allotment.decision.reason"] = decision.reason
        if decision.scope is not None:
            found["allotment.decision.scope"] = decision.scope
        if decision.observed is not None and decision.observed.reason is not None:
            found["allotment.decision.observed_reason"] = decision.observed.reason
    if observation.store_errors:
        found["allotment.store_errors"] = observation.store_errors
    if observation.error is not None and not isinstance(observation.error, al.Denied):
        found["error.type"] = type(observation.error).__name__
    return found


__all__ = ["TRACER_NAME", "attributes", "instrument"]
