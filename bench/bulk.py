"""Bulk actions over HTTP: one request of 500 rows against the 500 single calls it replaces.

    .venv/bin/python bench/bulk.py            # memory store and Redis, one worker each

`allotment serve` (as bench/server.py starts it) with 500 tenants of one budget each, and
one tenant with 500 budgets (provisioned over HTTP). For each store, wall ms of: SUSPEND
then REACTIVATE of the 500 tenants in one bulk request each and as 500 `PATCH
/v1/admin/tenants/{id}` calls; CREDIT of the 500 budgets in one bulk request and as 500
`POST /v1/admin/budgets/fund` calls; the bulk CREDIT replayed (its idempotency key again);
the ratio bulk ÷ single calls from the same run. One client on a keep-alive connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from redis_ops import redis_server  # this folder's: a private redis-server
from server import ADMIN_KEY, served  # this folder's: `allotment serve` in a subprocess

USD = "USD_MICROCENTS"
ROWS = 500
TENANTS = [f"t-{i:03d}" for i in range(ROWS)]
SCOPES = ["tenant:acme", *(f"tenant:acme/workspace:w{i:03d}" for i in range(ROWS - 1))]


def _provision(http: httpx.Client) -> None:
    for tenant in TENANTS:
        http.post("/v1/admin/tenants", json={"tenant_id": tenant, "name": tenant})
        http.post("/v1/admin/budgets", json={"tenant_id": tenant, "scope": f"tenant:{tenant}",
                                             "unit": USD, "allocated": {"unit": USD,
                                                                        "amount": 10**8}})
    for scope in SCOPES:
        http.post("/v1/admin/budgets", json={"tenant_id": "acme", "scope": scope, "unit": USD,
                                             "allocated": {"unit": USD, "amount": 10**8}})


def _ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def _bulk(http: httpx.Client, path: str, body: dict[str, object]) -> None:
    answer = http.post(path, json=body).json()
    assert len(answer["succeeded"]) == ROWS, answer


def _patched(http: httpx.Client, status: str) -> None:
    for tenant in TENANTS:
        assert http.patch(f"/v1/admin/tenants/{tenant}", json={"status": status}
                          ).status_code == 200


def _funded(http: httpx.Client) -> None:
    for scope in SCOPES:
        assert http.post("/v1/admin/budgets/fund", params={"scope": scope, "unit": USD,
                                                           "tenant_id": "acme"},
                         json={"operation": "CREDIT", "amount": {"unit": USD, "amount": 5}}
                         ).status_code == 200


def measure(name: str, store: str) -> None:
    with served(store, 1) as (url, _):
        http = httpx.Client(base_url=url, headers={"X-Admin-API-Key": ADMIN_KEY}, timeout=120)
        _provision(http)
        tenants = "/v1/admin/tenants/bulk-action"
        credit = {"filter": {"tenant_id": "acme"}, "action": "CREDIT",
                  "amount": {"unit": USD, "amount": 5}, "idempotency_key": "credit"}
        rows = {
            "SUSPEND": (_ms(lambda: _bulk(http, tenants, {
                "filter": {"search": "t-"}, "action": "SUSPEND", "idempotency_key": "s"})),
                        None),
            "REACTIVATE": (_ms(lambda: _bulk(http, tenants, {
                "filter": {"search": "t-"}, "action": "REACTIVATE", "idempotency_key": "r"})),
                           None),
            "CREDIT": (_ms(lambda: _bulk(http, "/v1/admin/budgets/bulk-action", credit)),
                       _ms(lambda: _funded(http))),
        }
        single_suspend = _ms(lambda: _patched(http, "SUSPENDED"))
        single_resume = _ms(lambda: _patched(http, "ACTIVE"))
        rows["SUSPEND"] = (rows["SUSPEND"][0], single_suspend)
        rows["REACTIVATE"] = (rows["REACTIVATE"][0], single_resume)
        replay = _ms(lambda: _bulk(http, "/v1/admin/budgets/bulk-action", credit))
        http.close()
    print(f"\n== {name}: {ROWS} rows, wall ms")
    print(f"    {'action':<12}{'bulk':>8}{'single calls':>14}{'bulk ÷ single':>15}")
    for action, (bulk, single) in rows.items():
        assert single is not None
        print(f"    {action:<12}{bulk:>8.0f}{single:>14.0f}{bulk / single:>15.2f}")
    print(f"    CREDIT replayed (same idempotency key): {replay:.0f} ms")


def main() -> None:
    measure("memory store", "memory://")
    with redis_server() as url:
        measure("Redis store", url)


if __name__ == "__main__":
    main()
