"""`GET /metrics` on the server: the guard's calls made over HTTP, in the Prometheus text
format, read back with prometheus-client's own parser, and no tenant named in it."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from test_runtime import reserve_body

import allotment as al
from allotment.server import create_app


def test_metrics_count_the_decisions_made_over_http(served: Any) -> None:
    api = served.tenant("acme", usd=1)
    assert api.post("/v1/reservations", reserve_body("ok", 1_000_000)).status == 200
    refused = api.post("/v1/reservations", reserve_body("big", 10_000_000_000))
    assert refused.status == 409, refused.body
    answer = httpx.get(f"{served.url}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    decisions = {(s.labels["outcome"], s.labels["reason"]): s.value
                 for family in text_string_to_metric_families(answer.text)
                 if family.name == "allotment_decisions"
                 for s in family.samples if s.name == "allotment_decisions_total"}
    assert decisions[("ALLOW", "none")] == 1
    assert decisions[("DENY", "BUDGET_EXCEEDED")] == 1
    assert "acme" not in answer.text  # no tenant label unless asked for in-process


def test_metrics_can_be_left_off() -> None:
    app = create_app(al.Guard(), metrics=False)
    assert "/metrics" not in {getattr(route, "path", None) for route in app.routes}
