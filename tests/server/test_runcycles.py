"""The `runcycles` client from PyPI (the version pinned in the dev extra) against the server:
its calls, whose answers it parses with its own strict models, its `@cycles` decorator
(sync and async, denial, release on error) and its streaming helper."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import runcycles as rc

USD = "USD_MICROCENTS"


def config(served: Any, tenant: str = "acme") -> rc.CyclesConfig:
    secret = served.tenant(tenant, usd=1).key  # $1 = 100,000,000 microcents
    return rc.CyclesConfig(base_url=served.url, api_key=secret, tenant=tenant,
                           journal_enabled=False, retry_enabled=False)


@pytest.fixture
def client(served: Any) -> Iterator[rc.CyclesClient]:
    with rc.CyclesClient(config(served)) as made:
        yield made


def spent(served: Any) -> tuple[int, int]:
    row = served.guard.balances("tenant:acme")[0]
    return row.spent, row.reserved


def test_the_client_reserves_commits_releases_and_extends(served: Any,
                                                          client: rc.CyclesClient) -> None:
    request = {"idempotency_key": "r-1", "subject": {"tenant": "acme", "agent": "bot"},
               "action": {"kind": "llm.completion", "name": "gpt-4o"},
               "estimate": {"unit": USD, "amount": 5_000}, "ttl_ms": 60_000}
    made = client.create_reservation(request)
    assert made.status == 200, made.error_message
    created = rc.ReservationCreateResponse.model_validate(made.body)
    rid = created.reservation_id
    assert rid is not None and created.decision == rc.Decision.ALLOW
    extended = client.extend_reservation(rid, {"idempotency_key": "e-1", "extend_by_ms": 5_000})
    rc.ReservationExtendResponse.model_validate(extended.body)
    detail = client.get_reservation(rid)
    rc.ReservationDetail.model_validate(detail.body)
    committed = client.commit_reservation(rid, {"idempotency_key": "c-1",
                                                "actual": {"unit": USD, "amount": 3_000}})
    assert rc.CommitResponse.model_validate(committed.body).charged.amount == 3_000
    other = client.create_reservation({**request, "idempotency_key": "r-2"}).body
    released = client.release_reservation(other["reservation_id"],
                                          {"idempotency_key": "rel-1", "reason": "unused"})
    assert rc.ReleaseResponse.model_validate(released.body).released.amount == 5_000
    assert spent(served) == (3_000, 0)


def test_the_client_decides_records_and_reads_balances(served: Any,
                                                       client: rc.CyclesClient) -> None:
    decided = client.decide({"idempotency_key": "d", "subject": {"tenant": "acme"},
                             "action": {"kind": "llm.completion", "name": "m"},
                             "estimate": {"unit": USD, "amount": 1}})
    assert rc.DecisionResponse.model_validate(decided.body).decision == rc.Decision.ALLOW
    event = client.create_event({"idempotency_key": "ev", "subject": {"tenant": "acme"},
                                 "action": {"kind": "tool.search", "name": "web"},
                                 "actual": {"unit": USD, "amount": 700}})
    assert event.status == 201
    rc.EventCreateResponse.model_validate(event.body)
    balances = client.get_balances(tenant="acme")
    parsed = rc.BalanceResponse.model_validate(balances.body)
    assert parsed.balances[0].spent is not None and parsed.balances[0].spent.amount == 700


def test_the_decorator_reserves_and_commits_around_a_call(served: Any,
                                                         client: rc.CyclesClient) -> None:
    @rc.cycles(estimate=2_000, actual=lambda result: len(result) * 100,
               action_kind="llm.completion", action_name="gpt-4o", client=client)
    def call(prompt: str) -> str:
        return prompt.upper()

    assert call("hello") == "HELLO"
    assert spent(served) == (500, 0)


def test_the_decorator_with_its_defaults(served: Any, client: rc.CyclesClient) -> None:
    @rc.cycles(estimate=1_000, client=client)  # action kind and name "unknown"
    def call() -> str:
        return "done"

    assert call() == "done"
    assert spent(served) == (1_000, 0)


def test_the_decorator_is_denied_beyond_the_budget(served: Any,
                                                  client: rc.CyclesClient) -> None:
    ran = []

    @rc.cycles(estimate=200_000_000, action_kind="llm.completion", client=client)
    def call() -> None:
        ran.append(1)

    with pytest.raises(rc.BudgetExceededError):
        call()
    assert ran == [] and spent(served) == (0, 0)


def test_the_decorator_releases_when_the_call_raises(served: Any,
                                                    client: rc.CyclesClient) -> None:
    @rc.cycles(estimate=5_000, action_kind="llm.completion", client=client)
    def call() -> None:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError):
        call()
    assert spent(served) == (0, 0)


def test_the_async_decorator(served: Any) -> None:
    async def run() -> str:
        async with rc.AsyncCyclesClient(config(served)) as client:
            @rc.cycles(estimate=3_000, actual=1_200, action_kind="llm.completion",
                       client=client)
            async def call() -> str:
                await asyncio.sleep(0)
                return "ok"

            @rc.cycles(estimate=3_000, action_kind="llm.completion", client=client)
            async def fails() -> None:
                raise ValueError("boom")

            result = await call()
            with pytest.raises(ValueError):
                await fails()
            return result

    assert asyncio.run(run()) == "ok"
    assert spent(served) == (1_200, 0)


def test_the_streaming_helper_commits_what_the_stream_cost(served: Any,
                                                          client: rc.CyclesClient) -> None:
    with client.stream_reservation(
            action=rc.Action(kind="llm.completion", name="gpt-4o"),
            estimate=rc.Amount(unit=rc.Unit.USD_MICROCENTS, amount=10_000),
            cost_fn=lambda usage: usage.tokens_input + usage.tokens_output) as stream:
        stream.usage.add_input_tokens(300)
        stream.usage.add_output_tokens(450)
    assert stream.settlement_error is None
    assert spent(served) == (750, 0)
