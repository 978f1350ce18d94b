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
import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client import metrics as _client_metrics
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
    from prometheus_client.utils import floatToGoString as _go_float
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("allotment.integrations.prometheus needs prometheus-client: "
                      "pip install 'allotment[prometheus]'") from error

import allotment as al

_bound_text: Callable[[float], str] = _go_float
"""How prometheus-client writes a bucket's bound (`le`)."""
LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                   0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: from an in-process reserve (tens of µs) to a slow store (seconds)."""
UTILIZATION_THRESHOLDS = (0.5, 0.8, 0.9, 1.0)
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
_DURATION = "allotment_call_duration_seconds"
_DURATION_HELP = "Latency of the guard's enforcement calls."


class _Counted:
    """One counter family: a count and a creation time per label set, in the order the sets
    were first seen (as a prometheus-client `Counter` keeps its children)."""

    __slots__ = ("documentation", "family", "labelnames", "name", "rows")

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.family = Counter(name, documentation, labelnames, registry=None)  # checks names
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.rows: dict[tuple[Any, ...], list[float]] = {}
        """Per label set (an enum label's name read at scrape time): [count, created]."""

    def add(self, labels: tuple[Any, ...]) -> None:
        """One more (the caller holds the metrics' lock)."""
        row = self.rows.get(labels)
        if row is None:
            self.rows[labels] = [1.0, time.time()]
        else:
            row[0] += 1.0

    def collect(self, rows: dict[tuple[Any, ...], list[float]]) -> Metric:
        name = self.name
        metric = Metric(name, self.documentation, "counter")
        for labels, (count, created) in rows.items():
            named = {label: value.value if isinstance(value, Enum) else value
                     for label, value in zip(self.labelnames, labels, strict=True)}
            metric.add_sample(name + "_total", named, count)
            if _client_metrics._use_created:
                metric.add_sample(name + "_created", dict(named), created)
        return metric


class GuardMetrics(Collector):
    """Counts and times a guard's calls; registered on `registry` (the default global one
    unless given; None leaves registering to you). `close()` stops observing and
    unregisters.

    A call costs a few increments of plain counts under one lock; the Prometheus families
    are built from them when the registry is scraped (`collect`), with the samples, labels
    and order prometheus-client's own `Counter` and `Histogram` would give."""

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
        # prometheus-client's own families: they check the names and buckets, and describe
        # what is exposed; the counts themselves are kept below
        self._decisions = _Counted(
            "allotment_decisions",
            "Reserve and decide answers (and refused records), by outcome and reason.",
            ("call", "outcome", "reason"))
        self._shadow = _Counted(
            "allotment_shadow_denials", "Denials that shadow mode let through, by reason.",
            ("call", "reason"))
        duration = Histogram(_DURATION, _DURATION_HELP, ("call",), registry=None,
                             buckets=tuple(buckets))  # checks the buckets
        self._errors = _Counted(
            "allotment_call_errors", "Enforcement calls that raised, by error class.",
            ("call", "error"))
        self._store_errors = _Counted(
            "allotment_store_errors",
            "Calls the store failed: fail_open, fail_closed, recovered or failed.",
            ("call", "handling"))
        self._families = (self._decisions.family, self._shadow.family, duration,
                          self._errors.family, self._store_errors.family)
        bounds = [float(bound) for bound in buckets]  # as prometheus-client keeps them
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds: tuple[float, ...] = tuple(bounds)
        self._timings: dict[str, list[Any]] = {}
        """Per call: [count per bucket (not cumulative), sum of seconds, created]."""
        self._lock = threading.Lock()
        self._utilization: OrderedDict[str, dict[tuple[al.Unit, str], float]] = OrderedDict()
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
        seconds = observation.duration_ns / 1e9
        decision, error = observation.decision, observation.error
        handling = None
        if error is not None or observation.store_errors or (
                decision is not None and decision.reason == STORE_UNAVAILABLE):
            handling = _store_handling(observation)
        with self._lock:
            timing = self._timings.get(call)
            if timing is None:
                timing = self._timings[call] = [[0] * len(self._bounds), 0.0, time.time()]
            timing[0][bisect_left(self._bounds, seconds)] += 1
            timing[1] += seconds
            if decision is not None:  # the outcome's name is read at scrape time
                key = (call, decision.outcome, decision.reason or "none")
                row = self._decisions.rows.get(key)
                if row is None:
                    self._decisions.rows[key] = [1.0, time.time()]
                else:
                    row[0] += 1.0
                if decision.observed is not None:
                    self._shadow.add((call, decision.observed.reason or "none"))
            if error is not None:
                self._errors.add((call, type(error).__name__))
            if handling is not None:
                self._store_errors.add((call, handling))
        if error is None and observation.result is not None:
            self._track(observation.tenant, observation.result)

    def _track(self, tenant: str, result: object) -> None:
        balances: Iterable[al.Balance] = getattr(result, "balances", ())
        root = f"tenant:{tenant}"
        ratios = {(b.unit, b.period or "none"): (b.spent + b.reserved + b.debt)
                  / b.allocated for b in balances if b.scope == root and b.allocated > 0}
        if not ratios:  # keyed by the unit itself: its name is read at scrape time
            return
        with self._lock:  # the most recently active tenant last
            known = self._utilization.get(tenant)
            if known is not None:
                known.update(ratios)
                self._utilization.move_to_end(tenant)
                return
            self._utilization[tenant] = ratios
            while len(self._utilization) > self.max_tracked_tenants:
                self._utilization.popitem(last=False)

    # -- collecting -----------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Every metric family (what a registry's scrape calls)."""
        with self._lock:  # a consistent copy; the families are built outside the lock
            counted = [(family, {k: list(v) for k, v in family.rows.items()})
                       for family in (self._decisions, self._shadow)]
            timings = {call: (list(t[0]), t[1], t[2]) for call, t in self._timings.items()}
            errors = [(family, {k: list(v) for k, v in family.rows.items()})
                      for family in (self._errors, self._store_errors)]
        for family, rows in counted:
            yield family.collect(rows)
        yield self._histogram(timings)
        for family, rows in errors:
            yield family.collect(rows)
        yield from self._utilization_families()

    def _histogram(self, timings: dict[str, tuple[list[int], float, float]]) -> Metric:
        name = _DURATION
        metric = Metric(name, _DURATION_HELP, "histogram")
        edges = [_bound_text(bound) for bound in self._bounds]
        for call, (counts, total, created) in timings.items():
            cumulative = 0.0
            for edge, count in zip(edges, counts, strict=True):
                cumulative += count
                metric.add_sample(name + "_bucket", {"call": call, "le": edge}, cumulative)
            metric.add_sample(name + "_count", {"call": call}, cumulative)
            if self._bounds[0] >= 0:
                metric.add_sample(name + "_sum", {"call": call}, total)
            if _client_metrics._use_created:
                metric.add_sample(name + "_created", {"call": call}, created)
        return metric

    def describe(self) -> Iterable[Metric]:
        """The families' names, for the registry's duplicate check."""
        for family in self._families:
            yield from family.describe()
        yield from self._utilization_families(empty=True)

    def _utilization_families(self, empty: bool = False) -> Iterable[Metric]:
        with self._lock:
            tenants = {} if empty else {
                t: {(unit.value, period): ratio for (unit, period), ratio in r.items()}
                for t, r in self._utilization.items()}
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
