"""The remote guard: `Guard.from_url("http://...", api_key=...)` enforces through a real
uvicorn serving a guard on each store kind, through its sync calls and their async twins. Every
result and error is the library's own; the key's tenant is a wall; the OpenAI wrapper enforces
through it unchanged; against a server that does not announce allotment, what the plain Cycles
wire cannot carry is refused before anything is sent."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import allotment as al
from allotment.clock import system_ms
from allotment.integrations.langchain import BudgetCallbackHandler
from allotment.integrations.openai import wrap_openai

from support.cassettes import expected_cost, replay, spent
from support.drivers import AsyncDriven
from support.served import serving, serving_app
from support.snapshots import snapshot
from support.stores import STORE_KINDS, make_store

ACTION = al.Action("llm.completion", "openai:gpt-4o")
ACME = al.Subject(tenant="acme", workspace="prod")


@dataclass
class Central:
    """The server's guard (moved by `clock`), its URL and a key of tenant acme."""

    guard: al.Guard
    clock: al.ManualClock
    url: str
    key: str

    def remote(self, **options: Any) -> al.Guard:
        return al.Guard.from_url(self.url, api_key=self.key, **options)


def _central(kind: str = "memory", **app_options: Any) -> Iterator[Central]:
    clock = al.ManualClock(system_ms())
    store = make_store(kind, clock)
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme", tokens=1_000_000, period="day")
    guard.set_budget("tenant:rival", usd=10)
    key = guard.create_key("acme").secret
    with serving(guard, **app_options) as url:
        yield Central(guard, clock, url, key)
    store.close()


@pytest.fixture(params=STORE_KINDS)
def central(request: pytest.FixtureRequest) -> Iterator[Central]:
    """The server, on each store kind."""
    yield from _central(request.param)


@pytest.fixture
def plain() -> Iterator[Central]:
    """The same server speaking the plain Cycles wire: no announcement, no extensions."""
    yield from _central(extensions=False)


@pytest.fixture(params=["sync", "async"])
def remote(request: pytest.FixtureRequest, central: Central) -> Iterator[Any]:
    """A remote guard on `central`, called through its sync methods and, in a second run,
    through their async twins."""
    guard = central.remote()
    if request.param == "sync":
        yield guard
    else:
        loop = asyncio.new_event_loop()
        yield AsyncDriven(guard, loop)
        loop.run_until_complete(guard.store.aclose())
        loop.close()
    guard.close()


def rows(guard: al.Guard, tenant: str = "acme") -> dict[al.Unit, al.Balance]:
    return {b.unit: b for b in guard.balances(f"tenant:{tenant}", include_children=False)}


def test_reserve_commit_release_and_reads_go_through_the_server(remote: Any,
                                                                central: Central) -> None:
    held = remote.reserve(ACME, ACTION, [al.usd(2), al.tokens(5_000)])
    assert held.decision.outcome is al.Outcome.ALLOW
    assert held.estimate == (al.usd(2), al.tokens(5_000))
    on_server = rows(central.guard)
    assert (on_server[al.Unit.USD_MICROCENTS].reserved, on_server[al.Unit.TOKENS].reserved) == (
        al.usd(2).amount, 5_000)
    assert {b.unit for b in held.balances} == {al.Unit.USD_MICROCENTS, al.Unit.TOKENS}
    assert remote.get(held.id) == central.guard.get(held.id)
    done = held.commit([al.usd(1.5), al.tokens(3_000)],
                       usage=al.TokenUsage(input_tokens=2_000, output_tokens=1_000))
    assert done.charged == (al.usd(1.5), al.tokens(3_000))
    assert done.released == (al.usd(0.5), al.tokens(2_000))
    assert remote.balances("tenant:acme") == central.guard.balances("tenant:acme")
    other = remote.reserve(ACME, ACTION, al.usd(1), ttl_ms=5_000)
    stretched = remote.extend(other.id, 10_000)
    assert (stretched.expires_at_ms, stretched.extensions) == (
        central.guard.get(other.id).expires_at_ms, 1)
    freed = other.release("tool failed")
    assert freed.released == (al.usd(1),)
    assert central.guard.get(other.id).status is al.ReservationStatus.RELEASED
    page, cursor = remote.tenant("acme").list_reservations()
    assert cursor is None and {info.id for info in page} == {held.id, other.id}
    recorded = remote.record(ACME, ACTION, [al.usd(0.25), al.tokens(10)])
    assert recorded.charged == (al.usd(0.25), al.tokens(10))
    assert rows(central.guard)[al.Unit.USD_MICROCENTS].spent == al.usd(1.75).amount
    (usage,) = [row for row in central.guard.usage(tenant="acme")
                if row.unit is al.Unit.TOKENS]
    assert (usage.input_tokens, usage.output_tokens) == (2_000, 1_000)


def test_denials_are_decisions_and_errors_are_the_librarys(remote: Any,
                                                           central: Central) -> None:
    decided = remote.decide(ACME, ACTION, al.usd(100))
    assert (decided.outcome, decided.reason) == (al.Outcome.DENY, al.Reason.BUDGET_EXCEEDED)
    with pytest.raises(al.BudgetExceeded) as refused:
        remote.reserve(ACME, ACTION, al.usd(100))
    assert refused.value.decision == central.guard.decide(ACME, ACTION, al.usd(100))
    with pytest.raises(al.UnitMismatch, match="CREDITS"):
        remote.reserve(ACME, ACTION, al.credits(1))
    held = remote.reserve(ACME, ACTION, al.usd(1), idempotency_key="k-1")
    assert remote.reserve(ACME, ACTION, al.usd(1), idempotency_key="k-1").id == held.id
    with pytest.raises(al.IdempotencyMismatch):
        remote.reserve(ACME, ACTION, al.usd(2), idempotency_key="k-1")
    first = remote.commit(held.id, al.usd(0.5), idempotency_key="c-1")
    assert remote.commit(held.id, al.usd(0.5), idempotency_key="c-1") == first  # a replay
    with pytest.raises(al.ReservationFinalized):
        remote.commit(held.id, al.usd(0.5), idempotency_key="c-2")
    with pytest.raises(al.NotFound):
        remote.get(f"acme:{'0' * 32}")
    late = remote.reserve(ACME, ACTION, al.usd(1), ttl_ms=1_000, grace_ms=0)
    central.clock.advance(5_000)
    with pytest.raises(al.ReservationExpired):
        remote.commit(late.id, al.usd(1))
    assert remote.get(late.id).status is al.ReservationStatus.EXPIRED
    central.guard.set_quota("tenant:acme", concurrent=1)
    remote.reserve(ACME, ACTION, al.usd(1))
    with pytest.raises(al.QuotaExceeded) as throttled:
        remote.reserve(ACME, ACTION, al.usd(1))
    assert throttled.value.decision.reason == al.Reason.CONCURRENCY_EXCEEDED


def test_a_closed_tenant_refuses_a_reservation_and_fails_the_rest_as_in_process() -> None:
    """A Cycles server that answers 409 TENANT_CLOSED (one that, unlike allotment's, keeps
    a closed tenant's keys): a reservation is a denial, while a commit, release, extension
    or recorded spend is the TenantClosed error, as an embedded guard answers them."""
    async def closed(request: Request) -> Response:
        return JSONResponse({"error": "TENANT_CLOSED", "message": "tenant acme is closed",
                             "request_id": "req-1"}, 409)

    async def absent(request: Request) -> Response:
        return JSONResponse({"error": "NOT_FOUND", "message": "no route"}, 404)

    app = Starlette(routes=[Route("/v1/allotment", absent),
                            Route("/v1/{path:path}", closed, methods=["POST"])])
    embedded = al.Guard()
    embedded.set_budget("tenant:acme", usd=10)
    held = embedded.reserve(ACME, ACTION, al.usd(1))
    embedded.close_tenant("acme")
    with serving_app(app) as url:
        remote = al.Guard.from_url(url, api_key="k")
        for guard in (embedded, remote):
            with pytest.raises(al.Denied) as refused:
                guard.reserve(ACME, ACTION, al.usd(1))
            assert refused.value.decision.reason == al.Reason.TENANT_CLOSED
            for settle in (lambda g=guard: g.commit(held.id, al.usd(1)),
                           lambda g=guard: g.release(held.id),
                           lambda g=guard: g.extend(held.id, 1_000),
                           lambda g=guard: g.record(ACME, ACTION, al.usd(1))):
                with pytest.raises(al.TenantClosed, match="acme is closed"):
                    settle()


def test_an_elastic_estimate_is_reserved_smaller_through_the_server(remote: Any,
                                                                    central: Central) -> None:
    central.guard.set_budget("tenant:acme", usd="0.5")
    held = remote.reserve(ACME, ACTION, al.Elastic(fixed=al.usd(0.1), per_mtok=al.usd(10),
                                                   max_tokens=100_000, floor=1_000))
    assert held.decision.outcome is al.Outcome.ALLOW_WITH_CAPS
    assert held.caps == al.Caps(max_tokens=40_000)
    assert held.estimate == (al.usd(0.5),)
    assert rows(central.guard)[al.Unit.USD_MICROCENTS].reserved == al.usd(0.5).amount


def test_a_degrade_rule_and_shadow_mode_on_the_server_reach_the_remote_caller(
        remote: Any, central: Central) -> None:
    central.guard.set_budget("tenant:acme", usd=10, degrade=[
        al.Degrade(below=1, model="gpt-4o-mini", max_tokens=100)])
    remote.record(ACME, ACTION, al.usd(1))
    held = remote.reserve(ACME, ACTION, al.usd(0.01))
    assert held.decision.outcome is al.Outcome.ALLOW_WITH_CAPS
    assert held.caps == al.Caps(max_tokens=100, model="gpt-4o-mini")  # no Cycles field
    assert remote.decide(ACME, ACTION, al.usd(0.01)) == held.decision
    central.guard.set_mode("acme", "shadow")
    through = remote.reserve(ACME, ACTION, al.usd(100))
    assert through.decision.observed is not None
    assert through.decision.observed.reason == al.Reason.BUDGET_EXCEEDED


def test_the_keys_tenant_is_a_wall(remote: Any, central: Central) -> None:
    theirs = central.guard.reserve(al.Subject(tenant="rival"), ACTION, al.usd(1))
    before = snapshot(central.guard.store, "rival")
    rival = al.Subject(tenant="rival")
    attempts = [lambda: remote.reserve(rival, ACTION, al.usd(1)),
                lambda: remote.decide(rival, ACTION, al.usd(1)),
                lambda: remote.record(rival, ACTION, al.usd(1)),
                lambda: remote.commit(theirs.id, al.usd(1)),
                lambda: remote.release(theirs.id),
                lambda: remote.extend(theirs.id, 1_000),
                lambda: remote.get(theirs.id),
                lambda: remote.balances("tenant:rival"),
                lambda: remote.tenant("rival").list_reservations()]
    for attempt in attempts:
        with pytest.raises(al.Forbidden):
            attempt()
    assert snapshot(central.guard.store, "rival") == before


def test_a_key_the_server_refuses_is_forbidden(central: Central) -> None:
    stranger = al.Guard.from_url(central.url, api_key="alk_acme:" + "0" * 32 + "." + "x" * 43)
    with pytest.raises(al.Forbidden, match="refused the API key"):
        stranger.reserve(ACME, ACTION, al.usd(1))
    assert rows(central.guard)[al.Unit.USD_MICROCENTS].reserved == 0


def _dead_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("calls", ["sync", "async"])
def test_an_unreachable_server_fails_closed_or_open_as_set(calls: str) -> None:
    closed = al.Guard.from_url(_dead_url(), api_key="k", timeout=2)
    opened = al.Guard.from_url(_dead_url(), api_key="k", timeout=2, on_store_error="allow")
    loop = asyncio.new_event_loop()
    try:
        if calls == "async":
            closed, opened = AsyncDriven(closed, loop), AsyncDriven(opened, loop)
        with pytest.raises(al.StoreUnavailable, match="unreachable"):
            closed.reserve(ACME, ACTION, al.usd(1))
        through = opened.reserve(ACME, ACTION, al.usd(1))
        assert through.unguarded and through.decision.reason == "STORE_UNAVAILABLE"
        assert opened.store_failures == 1
    finally:
        loop.close()


def test_administration_is_refused_with_where_to_do_it(remote: Any) -> None:
    for attempt in [lambda: remote.set_budget("tenant:acme", usd=1),
                    lambda: remote.set_quota("tenant:acme", concurrent=2),
                    lambda: remote.fund("tenant:acme", "CREDIT", al.usd(1)),
                    lambda: remote.freeze("tenant:acme"),
                    lambda: remote.audit("acme"),
                    lambda: remote.create_key("acme")]:
        with pytest.raises(al.InvalidRequest, match="admin API"):
            attempt()
    with pytest.raises(al.InvalidRequest, match="expires its own"):
        remote.sweep()
    with pytest.raises(al.InvalidRequest, match="server's"):
        al.Guard.from_url("http://127.0.0.1:1", api_key="k", mode="shadow")


def test_a_plain_cycles_server_refuses_what_its_wire_lacks(plain: Central) -> None:
    remote = plain.remote()
    before = snapshot(plain.guard.store, "acme")
    for estimate, feature in [
            ([al.usd(1), al.tokens(10)], "an estimate in several units"),
            (al.Elastic(fixed=al.usd(0.1), per_mtok=al.usd(10), max_tokens=1_000),
             "an elastic estimate")]:
        with pytest.raises(al.InvalidRequest, match=feature) as refused:
            remote.reserve(ACME, ACTION, estimate)
        assert "does not announce allotment" in str(refused.value)
    assert remote.store.allotment is False
    assert snapshot(plain.guard.store, "acme") == before
    held = remote.reserve(ACME, ACTION, al.usd(1))  # what the Cycles wire carries works
    with pytest.raises(al.InvalidRequest, match="a commit in several units"):
        held.commit([al.usd(1), al.tokens(5)])
    done = held.commit(al.usd(0.25), usage=al.TokenUsage(input_tokens=5, output_tokens=2))
    assert (done.charged, done.released) == ((al.usd(0.25),), (al.usd(0.75),))
    assert remote.get(held.id).status is al.ReservationStatus.COMMITTED
    assert rows(plain.guard)[al.Unit.USD_MICROCENTS].spent == al.usd(0.25).amount
    with pytest.raises(al.BudgetExceeded):
        remote.reserve(ACME, ACTION, al.usd(100))


def test_the_openai_wrapper_enforces_through_the_remote_guard(central: Central) -> None:
    client = wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0), central.remote(),
                         tenant="acme")
    with replay("openai_chat.yaml", ignore_localhost=True) as cassette:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
    assert reply.choices[0].message.content == "Hello! How can I assist you today?"
    assert cassette.play_count == 1
    assert spent(central.guard) == (expected_cost("openai", "gpt-4o-mini", 9, 9), 18)
    (usage,) = [row for row in central.guard.usage(tenant="acme")
                if row.unit is al.Unit.TOKENS]
    assert (usage.input_tokens, usage.output_tokens) == (9, 9)
    central.guard.set_budget("tenant:acme", usd="0.000001")
    with replay("openai_chat.yaml", ignore_localhost=True) as cassette, pytest.raises(
            al.BudgetExceeded):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
    assert cassette.play_count == 0  # refused before the provider was called


def test_the_async_openai_client_streams_through_the_remote_guard(central: Central) -> None:
    remote = central.remote()

    async def main() -> None:
        wrapped = wrap_openai(openai.AsyncOpenAI(api_key="sk-test", max_retries=0), remote,
                              tenant="acme")
        with replay("openai_chat_stream.yaml", ignore_localhost=True) as cassette:
            stream = await wrapped.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "UK?"}],
                stream=True)
            async for _ in stream:
                pass
        assert cassette.play_count == 1
        await remote.store.aclose()

    asyncio.run(main())
    assert spent(central.guard) == (expected_cost("openai", "gpt-4o-mini", 53, 15), 68)


def test_the_langchain_handler_enforces_through_the_remote_guard(central: Central) -> None:
    handler = BudgetCallbackHandler(central.remote(), tenant="acme")
    chat = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0)
    with replay("openai_chat.yaml", ignore_localhost=True) as cassette:
        reply = chat.invoke("Hello!", config={"callbacks": [handler]})
    assert reply.content == "Hello! How can I assist you today?"
    assert cassette.play_count == 1
    assert spent(central.guard) == (expected_cost("openai", "gpt-4o-mini", 9, 9), 18)


def test_a_failing_announcement_is_asked_again_never_guessed() -> None:
    async def failing(request: Request) -> Response:
        return JSONResponse({"error": "INTERNAL_ERROR", "message": "down"}, 503)

    app = Starlette(routes=[Route("/v1/allotment", failing)])
    with serving_app(app) as url:
        remote = al.Guard.from_url(url, api_key="k")
        for _ in range(2):
            with pytest.raises(al.StoreUnavailable, match="HTTP 503"):
                remote.reserve(ACME, ACTION, [al.usd(1), al.tokens(5)])
            assert remote.store.allotment is None


def _steps(guard: Any, clock: al.ManualClock) -> list[Any]:
    """One script of calls; every result (or error) it gives, in order."""
    seen: list[Any] = []

    def do(call: Any) -> Any:
        try:
            result = call()
        except al.AllotmentError as error:
            seen.append((type(error).__name__, getattr(error, "decision", None)))
            return None
        held = getattr(result, "driven", result)  # a reservation the async driver wraps
        seen.append(held.info if isinstance(held, al.Reservation) else result)
        return result

    run = al.Subject(tenant="acme", workflow="docs", dimensions={"run": "r-1"})
    two = do(lambda: guard.reserve(ACME, ACTION, [al.usd(1), al.tokens(2_000)], ttl_ms=5_000))
    shrunk = do(lambda: guard.reserve(run, ACTION, al.Elastic(
        fixed=[al.usd(0.5), al.tokens(100)], per_mtok=[al.usd(20), al.tokens(1_000_000)],
        max_tokens=400_000, floor=100)))
    do(lambda: guard.decide(run, ACTION, al.usd(9)))
    do(lambda: guard.reserve(run, ACTION, al.usd(9)))
    do(lambda: guard.extend(two.id, 2_000))
    do(lambda: guard.commit(two.id, [al.usd(1.25), al.tokens(500)],
                            usage=al.TokenUsage(input_tokens=300, output_tokens=200)))
    do(lambda: guard.commit(two.id, al.usd(1)))
    do(lambda: guard.release(shrunk.id, "cancelled"))
    do(lambda: guard.record(run, ACTION, [al.usd(0.1), al.tokens(7)],
                            overage_policy="ALLOW_WITH_OVERDRAFT"))
    do(lambda: guard.reserve(ACME, ACTION, al.credits(1)))
    late = do(lambda: guard.reserve(ACME, ACTION, al.usd(0.5), ttl_ms=1_000, grace_ms=0))
    clock.advance(3_000)
    do(lambda: guard.commit(late.id, al.usd(0.5)))
    for rid in (two.id, shrunk.id, late.id):
        do(lambda rid=rid: guard.get(rid))
    do(lambda: guard.balances("tenant:acme"))
    do(lambda: guard.balances("tenant:acme/workflow:docs/run:r-1"))
    return seen


def _same_ids(seen: list[Any]) -> str:
    """The results with each reservation and event id replaced by its first place."""
    text, ids = repr(seen), {}
    for found in re.findall(r"acme:[0-9a-f]{32}", text):
        ids.setdefault(found, f"<id {len(ids)}>")
    for found, name in ids.items():
        text = text.replace(found, name)
    return text


@pytest.mark.parametrize("calls", ["sync", "async"])
def test_a_remote_guard_answers_exactly_as_an_embedded_one(calls: str) -> None:
    """The same calls, on the same clock, through a remote guard and an embedded one: every
    result and error is the same, ids aside."""
    loop = asyncio.new_event_loop()

    def driven(guard: al.Guard) -> Any:
        return guard if calls == "sync" else AsyncDriven(guard, loop)

    answers = []
    start = system_ms() // 1000 * 1000  # one start for both: a second may tick between them
    for remote in (False, True):
        clock = al.ManualClock(start)
        central = al.Guard(al.MemoryStore(clock))
        central.set_budget("tenant:acme", usd=5)
        central.set_budget("tenant:acme", tokens=1_000_000, period="day")
        central.set_budget("tenant:acme/workflow:docs", usd=3, per="run")
        if not remote:
            answers.append(_same_ids(_steps(driven(central), clock)))
            continue
        with serving(central) as url:
            guard = al.Guard.from_url(url, api_key=central.create_key("acme").secret)
            answers.append(_same_ids(_steps(driven(guard), clock)))
            loop.run_until_complete(guard.store.aclose())
    loop.close()
    embedded, through_http = answers
    assert through_http == embedded


def test_a_remote_guard_needs_a_key_and_a_url_it_can_use() -> None:
    with pytest.raises(al.InvalidRequest, match="api_key: expected a tenant API key"):
        al.Guard.from_url("http://127.0.0.1:7878")
    with pytest.raises(al.InvalidRequest, match="timeout"):
        al.Guard.from_url("http://127.0.0.1:7878", api_key="k", timeout=0)
