"""Prometheus metrics for a guard, on a registry of your choice.

    pip install 'allotment[prometheus]'

    from prometheus_client import CollectorRegistry, make_asgi_app
    from allotment.integrations.prometheus import GuardMetrics

    registry = CollectorRegistry()
    metrics = GuardMetrics(guard, registry=registry, top_tenants=10)
    app.mount("/metrics", make_asgi_app(registry))      # or: metrics.exposition() -> bytes

`GuardMetrics` observes every enforcement call of the guard, its tenant handles and their
reservations (`Guard.add_observer`) and exposes:

- `allotment_decisions_total{call, outcome, reason}`: reserve and decide answers (and
  refused records) by outcome (ALLOW, ALLOW_WITH_CAPS, DENY) and reason ("none" when there
  is none);
- `allotment_shadow_denials_total{call, reason}`: denials shadow mode let through;
- `allotment_call_duration_seconds{call}`: a histogram of each call's latency (reserve,
  decide, commit, release, extend, record), retries included;
- `allotment_call_errors_total{call, error}`: calls that raised, by error class (a denial
  is also a decision above);
- `allotment_store_errors_total{call, handling}`: calls the store failed: `fail_open` (a
  reservation let through), `fail_closed` (refused), `recovered` (a retry landed),
  `failed` (the call raised `StoreUnavailable`);
- `allotment_tenant_utilization_ratio{tenant, unit, period}`: (spent + reserved + debt) ÷
  allocated of each tenant-level budget, for the `top_tenants` most used tenants only (none
  by default): the one label whose values grow with your customers is capped at N;
- `allotment_tenants_at_utilization{at_least}`: how many tenants have a tenant-level budget
  used at least 50 %, 80 %, 90 %, 100 % (bounded, no tenant label);
- `allotment_tenants_tracked`: tenants whose utilization is known.

Utilization is taken from the balances each call already returns (no store reads at scrape
time), so a tenant's figure is as of its last settled call; the `max_tracked_tenants` most
recently active tenants are tracked.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("allotment.integrations.prometheus needs prometheus-client: "
                      "pip install 'allotment[prometheus]'") from error

import allotment as al

LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                   0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: from an in-process reserve (tens of µs) to a slow store (seconds)."""
UTILIZATION_THRESHOLDS = (0.5, 0.8, 0.9, 1.0)
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"


class GuardMetrics(Collector):
    """Counts and times a guard's calls; registered on `registry` (the default global one
    unless given; None leaves registering to you). `close()` stops observing and
    unregisters."""

    def __init__(self, guard: al.Guard, registry: CollectorRegistry | None = REGISTRY, *,
                 top_tenants: int = 0, max_tracked_tenants: int = 10_000,
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        if not isinstance(guard, al.Guard):
            raise al.InvalidRequest(f"guard: expected an allotment Guard, got {guard!r}")
        for name, value, low in (("top_tenants", top_tenants, 0),
                                 ("max_tracked_tenants", max_tracked_tenants, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise al.InvalidRequest(f"{name}: expected an integer ≥ {low}, got {value!r}")
        self.top_tenants = top_tenants
        self.max_tracked_tenants = max_tracked_tenants
        self._decisions = Counter(
            "allotment_decisions",
            "Reserve and decide answers (and refused records), by outcome and reason.",
            ("call", "outcome", "reason"), registry=None)
        self._shadow = Counter(
            "allotment_shadow_denials", "Denials that shadow mode let through, by reason.",
            ("call", "reason"), registry=None)
        self._duration = Histogram(
            "allotment_call_duration_seconds", "Latency of the guard's enforcement calls.",
            ("call",), registry=None, buckets=tuple(buckets))
        self._errors = Counter(
            "allotment_call_errors", "Enforcement calls that raised, by error class.",
            ("call", "error"), registry=None)
        self._store_errors = Counter(
            "allotment_store_errors",
            "Calls the store failed: fail_open, fail_closed, recovered or failed.",
            ("call", "handling"), registry=None)
        self._children = (self._decisions, self._shadow, self._duration, self._errors,
                          self._store_errors)
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._utilization: OrderedDict[str, dict[tuple[str, str], float]] = OrderedDict()
        self._guard = guard
        self._registry = registry
        if registry is not None:
            registry.register(self)  # first: a refused registration leaves nothing behind
        guard.add_observer(self.observe)

    def close(self) -> None:
        """Stop observing the guard and leave the registry."""
        self._guard.remove_observer(self.observe)
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    def exposition(self) -> bytes:
        """These metrics in the Prometheus text format (content type
        `prometheus_client.CONTENT_TYPE_LATEST`), for a `/metrics` endpoint."""
        return generate_latest(self)

    # -- observing ------------------------------------------------------------------------

    def observe(self, observation: al.Observation) -> None:
        """Count and time one call (the guard calls this; see `Guard.add_observer`)."""
        call = observation.call
        self._child(self._duration, call).observe(observation.duration_ns / 1e9)
        decision, error = observation.decision, observation.error
        if decision is not None:
            self._child(self._decisions, call, decision.outcome.value,
                        decision.reason or "none").inc()
            if decision.observed is not None:
                self._child(self._shadow, call, decision.observed.reason or "none").inc()
        if error is not None:
            self._child(self._errors, call, type(error).__name__).inc()
        handling = _store_handling(observation)
        if handling is not None:
            self._child(self._store_errors, call, handling).inc()
        if error is None and observation.result is not None:
            self._track(observation.tenant, observation.result)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """The labelled child, looked up once per label set (`labels()` is slow on the hot
        path; the label sets are few)."""
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)
        return child

    def _track(self, tenant: str, result: object) -> None:
        balances: Iterable[al.Balance] = getattr(result, "balances", ())
        root = f"tenant:{tenant}"
        ratios = {(b.unit.value, b.period or "none"): (b.spent + b.reserved + b.debt)
                  / b.allocated for b in balances if b.scope == root and b.allocated > 0}
        if not ratios:
            return
        with self._lock:
            known = self._utilization.pop(tenant, {})
            known.update(ratios)
            self._utilization[tenant] = known
            while len(self._utilization) > self.max_tracked_tenants:
                self._utilization.popitem(last=False)

    # -- collecting -----------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Every metric family (what a registry's scrape calls)."""
        for child in self._children:
            yield from child.collect()
        yield from self._utilization_families()

    def describe(self) -> Iterable[Metric]:
        """The families' names, for the registry's duplicate check."""
        for child in self._children:
            yield from child.describe()
        yield from self._utilization_families(empty=True)

    def _utilization_families(self, empty: bool = False) -> Iterable[Metric]:
        with self._lock:
            tenants = {} if empty else {t: dict(r) for t, r in self._utilization.items()}
        per_tenant = GaugeMetricFamily(
            "allotment_tenant_utilization_ratio",
            "Used share ((spent + reserved + debt) / allocated) of each tenant-level budget, "
            "for the most used tenants.", labels=("tenant", "unit", "period"))
        top = heapq.nlargest(self.top_tenants, tenants, key=lambda t: max(tenants[t].values()))
        for tenant in sorted(top):
            for (unit, period), ratio in sorted(tenants[tenant].items()):
                per_tenant.add_metric((tenant, unit, period), ratio)
        at = GaugeMetricFamily(
            "allotment_tenants_at_utilization",
            "Tenants with a tenant-level budget used at least this share.",
            labels=("at_least",))
        highest = [max(ratios.values()) for ratios in tenants.values()]
        for threshold in UTILIZATION_THRESHOLDS:
            at.add_metric((str(threshold),), sum(1 for h in highest if h >= threshold))
        tracked = GaugeMetricFamily("allotment_tenants_tracked",
                                    "Tenants whose utilization is known.", value=len(tenants))
        return (per_tenant, at, tracked)


def _store_handling(observation: al.Observation) -> str | None:
    """How a call the store failed was handled, or None if the store never failed it."""
    error = observation.error
    if isinstance(error, al.StoreUnavailable):
        return "fail_closed" if observation.call == "reserve" else "failed"
    decision = observation.decision
    if decision is not None and decision.reason == STORE_UNAVAILABLE:
        return "fail_open"
    return "recovered" if observation.store_errors else None


__all__ = ["LATENCY_BUCKETS", "UTILIZATION_THRESHOLDS", "GuardMetrics"]
