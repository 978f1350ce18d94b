"""Operations that carry an API key (`guard.tenant_for_key`): the store checks the key in the
operation's own atomic step, before anything is written. A live key runs the operation as
the tenant's handle would; a revoked, expired, unknown or altered key, or one without the
permission, is refused with `KeyRefused` and the tenant's state is left byte for byte as it
was. On both stores, through the sync calls and their async twins; the Redis cases run
alone and inside a batch, across stores and across processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import allotment as al
from allotment.stores import operations as al_ops
from allotment.stores.http import HttpStore
from allotment.stores.redis import RedisStore
from allotment.stores.redis.codec import CODECS

from support import LLM
from support.outage import Outage
from support.redis_server import redis_server
from support.snapshots import differences, snapshot
from support.stores import make_store

MINUTE = 60_000
EVERYTHING = ["admin:write"]


def state(guard: Any) -> dict[str, Any]:
    """Both tenants' whole state in the guard's store."""
    store = getattr(guard, "driven", guard).store
    return {tenant: snapshot(store, tenant) for tenant in ("acme", "rival")}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    for tenant in before:
        assert before[tenant] == after[tenant], differences(before[tenant], after[tenant])


@pytest.fixture
def acme(guard: Any) -> Any:
    """A guard whose tenants acme and rival have budgets, a reservation each and one
    reservation of acme's overdue (so any step of acme's would expire it first)."""
    for tenant in ("acme", "rival"):
        guard.set_budget(f"tenant:{tenant}", tokens=1_000)
        guard.reserve(al.Subject(tenant=tenant), LLM, al.tokens(10))
    guard.reserve(al.Subject(tenant="acme"), LLM, al.tokens(5), ttl_ms=1_000, grace_ms=0)
    return guard


# -- a live key -------------------------------------------------------------------------------


def script(handle: Any, tenant: str) -> list[Any]:
    """The same calls through a handle, each answer without its ids."""
    subject = al.Subject(tenant=tenant, workspace="w")
    held = handle.reserve(subject, LLM, al.tokens(40), idempotency_key="k1")
    again = handle.reserve(subject, LLM, al.tokens(40), idempotency_key="k1")
    decision = handle.decide(subject, LLM, al.tokens(5_000))
    extended = handle.extend(held.id, 1_000)
    committed = handle.commit(held.id, al.tokens(30))
    recorded = handle.record(subject, LLM, al.tokens(7))
    other = handle.reserve(subject, LLM, al.tokens(3))
    released = handle.release(other.id)
    funded = handle.fund(f"tenant:{tenant}", "CREDIT", al.tokens(100))
    with pytest.raises(al.BudgetExceeded) as denied:
        handle.reserve(subject, LLM, al.tokens(50_000))
    return [again.id == held.id, held.estimate, held.decision, decision.outcome,
            decision.reason, extended.extensions, committed.charged, committed.released,
            recorded.charged, released.released, funded.after.allocated,
            denied.value.decision.reason, handle.get(held.id).status,
            [(b.allocated, b.reserved, b.spent) for b in handle.balances()],
            [r.type for r in handle.audit()][-6:]]


def test_a_live_key_runs_each_call_as_the_tenants_handle_does(guard: Any) -> None:
    for tenant in ("acme", "rival"):
        guard.set_budget(f"tenant:{tenant}", tokens=1_000)
    secret = guard.create_key("rival", permissions=EVERYTHING).secret
    keyed = guard.tenant_for_key(secret, "reservations:create")
    assert keyed.name == "rival" and keyed.key_id == secret[4:].rpartition(".")[0]
    assert script(keyed, "rival") == script(guard.tenant("acme"), "acme")


def test_a_key_with_exactly_the_permission_runs_and_the_admin_grants_hold(guard: Any) -> None:
    guard.set_budget("tenant:acme", tokens=1_000)
    reader = guard.create_key("acme", permissions=["balances:read"]).secret
    admin_reader = guard.create_key("acme", permissions=["admin:read"]).secret
    for secret in (reader, admin_reader):
        (row,) = guard.tenant_for_key(secret, "balances:read").balances()
        assert row.allocated == 1_000
    with pytest.raises(al.KeyRefused) as refused:
        guard.tenant_for_key(admin_reader, "budgets:write").set_budget("tenant:acme",
                                                                        tokens=1)
    assert refused.value.reason == "permission" and not refused.value.unauthenticated
    assert "budgets:write" in str(refused.value)


def test_each_operation_reads_the_key_anew(guard: Any, clock: al.ManualClock) -> None:
    """No answer is remembered: the handle made before a revocation is refused after it."""
    guard.set_budget("tenant:acme", tokens=1_000)
    made = guard.create_key("acme")
    handle = guard.tenant_for_key(made.secret, "reservations:create")
    handle.reserve(handle.subject(), LLM, al.tokens(1))
    guard.revoke_key(made.key.key_id)
    with pytest.raises(al.KeyRefused) as refused:
        handle.reserve(handle.subject(), LLM, al.tokens(1))
    assert refused.value.reason == "revoked" and refused.value.unauthenticated


# -- refusals change nothing ----------------------------------------------------------------------


def _revoked(guard: Any, clock: al.ManualClock) -> str:
    made = guard.create_key("acme")
    guard.revoke_key(made.key.key_id)
    return made.secret


def _expired(guard: Any, clock: al.ManualClock) -> str:
    made = guard.create_key("acme", expires=clock() + MINUTE)
    clock.advance(MINUTE)  # the last instant it was live has passed
    return made.secret


def _wrong_secret(guard: Any, clock: al.ManualClock) -> str:
    secret = guard.create_key("acme").secret
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


def _unknown_id(guard: Any, clock: al.ManualClock) -> str:
    token = guard.create_key("acme").secret.rpartition(".")[2]
    return f"alk_acme:{'0' * 32}.{token}"


def _another_tenants_key_id(guard: Any, clock: al.ManualClock) -> str:
    """A rival key's id with acme's secret: the id names rival, whose key's hash differs."""
    acme_secret = guard.create_key("acme").secret
    rival_id = guard.create_key("rival").key.key_id
    return f"alk_{rival_id}.{acme_secret.rpartition('.')[2]}"


def _lacking(guard: Any, clock: al.ManualClock) -> str:
    return guard.create_key("acme", permissions=["balances:read"]).secret


REFUSED = {"revoked": (_revoked, "revoked"), "expired": (_expired, "expired"),
           "wrong secret": (_wrong_secret, "mismatch"), "unknown id": (_unknown_id, "unknown"),
           "another tenant's key id": (_another_tenants_key_id, "mismatch"),
           "lacking the permission": (_lacking, "permission")}
CALLS: dict[str, Callable[[Any, str], Any]] = {
    "reserve": lambda h, rid: h.reserve(h.subject(), LLM, al.tokens(1)),
    "reserve with a key": lambda h, rid: h.reserve(h.subject(), LLM, al.tokens(1),
                                                   idempotency_key="fresh"),
    "decide": lambda h, rid: h.decide(h.subject(), LLM, al.tokens(1)),
    "commit": lambda h, rid: h.commit(rid, al.tokens(10)),
    "release": lambda h, rid: h.release(rid),
    "extend": lambda h, rid: h.extend(rid, 1_000),
    "record": lambda h, rid: h.record(h.subject(), LLM, al.tokens(1)),
    "balances": lambda h, rid: h.balances(),
    "set_budget": lambda h, rid: h.set_budget(h.subject().scope_path, tokens=5),
    "fund": lambda h, rid: h.fund(h.subject().scope_path, "CREDIT", al.tokens(5)),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_key_is_an_error_and_the_tenants_state_is_unchanged(
        acme: Any, clock: al.ManualClock, case: str, call: str) -> None:
    make, reason = REFUSED[case]
    handle = acme.tenant_for_key(make(acme, clock), "reservations:create")
    rid = max(acme.list_reservations(handle.name, status="ACTIVE")[0],
              key=lambda r: r.expires_at_ms).id
    clock.advance(1_000)  # the short reservation is overdue: a step of acme's would expire it
    before = state(acme)
    with pytest.raises(al.KeyRefused) as refused:
        CALLS[call](handle, rid)
    assert refused.value.reason == reason
    assert refused.value.unauthenticated is (reason != "permission")
    if reason != "permission":  # one message for every missing key: it reveals nothing
        assert str(refused.value) == "unknown, revoked or expired API key"
    assert_unchanged(before, state(acme))


def test_a_key_of_a_tenant_with_nothing_stored_registers_nothing(guard: Any) -> None:
    """A secret that names a tenant the store has never seen makes no tenant."""
    handle = guard.tenant_for_key(f"alk_ghost:{'1' * 32}.{'x' * 43}", "reservations:create")
    store = getattr(guard, "driven", guard).store
    before = snapshot(store, "ghost")
    for call in ("reserve", "record", "set_budget", "balances"):
        with pytest.raises(al.KeyRefused):
            CALLS[call](handle, f"ghost:{'2' * 32}")
    assert snapshot(store, "ghost") == before
    assert "ghost" not in guard.tenants()


@pytest.mark.parametrize("secret", [
    "", "alk_acme", "cyc_live_abc", f"alk_acme:{'0' * 32}-{'x' * 43}",
    f"alk_acme:{'0' * 31}.{'x' * 43}", f"alk_Acme:{'0' * 32}.{'x' * 43}",
    f"alk_acme:{'0' * 32}.{'x' * 42}", None, 7])
def test_a_malformed_secret_is_refused_at_once(store: Any, secret: Any) -> None:
    """No store call: a store that holds nothing is left without even a tenant."""
    guard = al.Guard(store)
    with pytest.raises(al.KeyRefused) as refused:
        guard.tenant_for_key(secret, "reservations:create")
    assert refused.value.reason == "malformed" and refused.value.unauthenticated
    assert guard.tenants() == ()


def test_an_unknown_permission_is_invalid(guard: Any) -> None:
    secret = guard.create_key("acme").secret
    with pytest.raises(al.InvalidRequest, match="permission"):
        guard.tenant_for_key(secret, "reservations:everything")


def test_the_handle_of_a_key_touches_its_own_tenant_only(acme: Any) -> None:
    """A live key of acme asked for rival's data: Forbidden before any store call."""
    handle = acme.tenant_for_key(acme.create_key("acme", permissions=EVERYTHING).secret,
                                 "admin:write")
    rival_rid = acme.list_reservations("rival")[0][0].id
    before = state(acme)
    for call in (lambda: handle.commit(rival_rid, al.tokens(1)),
                 lambda: handle.balances("tenant:rival"),
                 lambda: handle.reserve(al.Subject(tenant="rival"), LLM, al.tokens(1)),
                 lambda: handle.set_budget("tenant:rival", tokens=1)):
        with pytest.raises(al.Forbidden):
            call()
    assert_unchanged(before, state(acme))


def test_webhook_calls_check_the_key_too(guard: Any) -> None:
    """A webhook call takes several store steps: the key is checked before the first."""
    guard.set_budget("tenant:acme", tokens=100)
    made = guard.create_key("acme", permissions=["webhooks:write", "webhooks:read"])
    live = guard.tenant_for_key(made.secret, "webhooks:write")
    hook = live.subscribe_webhook("https://example.com/hook", events=["budget.exhausted"])
    assert [w.id for w in live.webhooks()] == [hook.id]
    guard.revoke_key(made.key.key_id)
    before = state(guard)
    with pytest.raises(al.KeyRefused):
        live.subscribe_webhook("https://example.com/other", events=["budget.exhausted"])
    with pytest.raises(al.KeyRefused):
        live.remove_webhook(hook.id)
    assert_unchanged(before, state(guard))
    assert [w.id for w in guard.tenant("acme").webhooks()] == [hook.id]


def test_a_remote_store_refuses_keyed_handles_clearly() -> None:
    """The server checks each request's key itself; no request is sent."""
    guard = al.Guard(HttpStore("http://127.0.0.1:9", api_key="alk_x"))
    handle = guard.tenant_for_key(f"alk_acme:{'0' * 32}.{'x' * 43}", "reservations:create")
    with pytest.raises(al.InvalidRequest, match="tenant_for_key"):
        handle.reserve(handle.subject(), LLM, al.tokens(1))


# -- Redis: across stores and processes, alone and in a batch ------------------------------------


@pytest.fixture
def url() -> Iterator[str]:
    with redis_server() as (address, _):
        yield address


def test_a_revocation_by_another_process_holds_for_the_next_operation(url: str) -> None:
    guard = al.Guard(RedisStore(url=url))
    guard.set_budget("tenant:acme", tokens=1_000)
    made = guard.create_key("acme")
    handle = al.Guard(RedisStore(url=url)).tenant_for_key(made.secret, "reservations:create")
    handle.reserve(handle.subject(), LLM, al.tokens(1))
    revoke = (f"import allotment as al\nfrom allotment.stores.redis import RedisStore\n"
              f"al.Guard(RedisStore(url={url!r})).revoke_key({made.key.key_id!r})\n")
    subprocess.run([sys.executable, "-c", revoke], check=True, timeout=120,
                   cwd=Path(__file__).parent)
    with pytest.raises(al.KeyRefused) as refused:
        handle.reserve(handle.subject(), LLM, al.tokens(1))
    assert refused.value.reason == "revoked"
    assert guard.balances("tenant:acme")[0].reserved == 1


def test_a_refused_first_call_of_a_process_registers_no_tenant(url: str) -> None:
    """A process's first registering call of a tenant adds it to the sweeper's set and wires
    the global webhooks into it, outside the call: a refused key must do neither."""
    admin = al.Guard(RedisStore(url=url))
    admin.subscribe_webhook("https://example.com/all", events=["budget.exhausted"])
    secret = f"alk_ghost:{'1' * 32}.{'x' * 43}"
    fresh = al.Guard(RedisStore(url=url))
    before = snapshot(fresh.store, "ghost")
    with pytest.raises(al.KeyRefused):
        fresh.tenant_for_key(secret, "reservations:create").reserve(
            al.Subject(tenant="ghost"), LLM, al.tokens(1))
    assert snapshot(fresh.store, "ghost") == before
    assert not redis.Redis.from_url(url).sismember("al:tenants", "ghost")


def test_a_refused_key_checked_before_a_call_of_several_steps_reaps_nothing(
        url: str, clock: al.ManualClock) -> None:
    """A process's first registering call of a tenant and a webhook call check the key in a
    call of their own before their steps: refused, that call expires nothing either."""
    guard = al.Guard(RedisStore(url=url, clock=clock))
    guard.set_budget("tenant:acme", tokens=100)
    guard.reserve(al.Subject(tenant="acme"), LLM, al.tokens(5), ttl_ms=1_000, grace_ms=0)
    made = guard.create_key("acme", permissions=EVERYTHING)
    guard.revoke_key(made.key.key_id)
    clock.advance(2_000)  # the reservation is overdue: any step of acme's would expire it
    fresh = al.Guard(RedisStore(url=url, clock=clock))  # a process that never saw acme
    handle = fresh.tenant_for_key(made.secret, "admin:write")
    before = snapshot(fresh.store, "acme")
    for call in (lambda: handle.reserve(handle.subject(), LLM, al.tokens(1)),
                 lambda: handle.subscribe_webhook("https://example.com/h",
                                                  events=["budget.exhausted"])):
        with pytest.raises(al.KeyRefused):
            call()
    assert snapshot(fresh.store, "acme") == before
    assert guard.balances("tenant:acme")[0].reserved == 0  # a live step expires it


def held_batch(url: str, store: RedisStore, calls: list[Callable[[], Any]]) -> tuple[
        list[Any], int]:
    """Each call in its own thread while the server is paused for writes: the first goes at
    once and waits on the server, the rest queue up behind it and go as one batch. Each
    call's result or error, and the FCALLs the server ran."""
    admin = redis.Redis.from_url(url)
    admin.config_resetstat()
    outcomes: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            outcomes[i] = calls[i]()
        except Exception as error:
            outcomes[i] = error

    def lane() -> Any:
        return store._batcher._lanes.get(None) if store._batcher else None

    def until(ok: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not ok():
            assert time.monotonic() < deadline, "the calls never queued up"
            time.sleep(0.002)

    admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    try:
        threads[0].start()
        until(lambda: lane() is not None and lane().busy)
        for i, thread in enumerate(threads[1:], 1):
            thread.start()
            until(lambda i=i: len(lane().queue) == i)  # type: ignore[misc]
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    for thread in threads:
        thread.join()
    return outcomes, int(admin.info("commandstats")["cmdstat_fcall"]["calls"])


def test_a_refused_keyed_call_in_a_batch_fails_alone(url: str) -> None:
    guard = al.Guard(RedisStore(url=url))
    for tenant in ("acme", "rival"):
        guard.set_budget(f"tenant:{tenant}", tokens=1_000)
    live = guard.create_key("acme").secret
    reader = guard.create_key("acme", permissions=["balances:read"]).secret
    gone = guard.create_key("acme")
    guard.revoke_key(gone.key.key_id)
    acme = al.Subject(tenant="acme")

    def keyed(secret: str, tokens: int) -> Callable[[], Any]:
        return lambda: guard.tenant_for_key(secret, "reservations:create").reserve(
            acme, LLM, al.tokens(tokens))

    outcomes, sent = held_batch(url, guard.store, [  # type: ignore[arg-type]
        keyed(live, 1), keyed(live, 2), keyed(gone.secret, 4), keyed(reader, 8),
        lambda: guard.reserve(acme, LLM, al.tokens(16)), keyed(live, 32),
        lambda: guard.reserve(al.Subject(tenant="rival"), LLM, al.tokens(64)),
        keyed(live, 5_000)])
    assert sent == 2
    first, second, revoked, lacking, plain, last, rival, too_big = outcomes
    assert (revoked.reason, lacking.reason) == ("revoked", "permission")
    assert isinstance(too_big, al.BudgetExceeded)
    assert [r.estimate[0].amount for r in (first, second, plain, last, rival)] == [
        1, 2, 16, 32, 64]
    assert guard.balances("tenant:acme")[0].reserved == 1 + 2 + 16 + 32
    assert guard.balances("tenant:rival")[0].reserved == 64


def test_the_memory_and_redis_stores_refuse_alike(clock: al.ManualClock) -> None:
    """The same keys and calls on both stores: the same results and the same reasons."""
    guards = [al.Guard(make_store(kind, clock)) for kind in ("memory", "redis")]
    answers: list[list[Any]] = [[], []]
    for guard, out in zip(guards, answers, strict=True):
        guard.set_budget("tenant:acme", tokens=100)
        keys = [guard.create_key("acme", permissions=p, expires=clock() + MINUTE)
                for p in (["reservations:create"], ["balances:read"], ["admin:read"])]
        for made in keys:
            for permission in ("reservations:create", "balances:read"):
                handle = guard.tenant_for_key(made.secret, permission)
                for call in ("reserve", "balances"):
                    try:
                        result = CALLS[call](handle, "")
                        out.append(result.estimate if call == "reserve" else result)
                    except al.KeyRefused as refused:
                        out.append(refused.reason)
    clock.advance(MINUTE)
    for guard, out in zip(guards, answers, strict=True):
        for made in guard.keys("acme"):
            try:
                guard.tenant_for_key(f"alk_{made.key_id}.{'x' * 43}", "balances:read").balances()
            except al.KeyRefused as refused:
                out.append(refused.reason)
    assert answers[0] == answers[1]
    assert answers[0].count("permission") == 6 and answers[0][-3:] == ["mismatch"] * 3


def test_a_keyed_reserve_fails_closed_while_the_store_is_down(clock: al.ManualClock) -> None:
    """A guard that lets calls through while its store is down does not let a keyed one
    through: only the store can say whether its key is live."""
    store = Outage(al.MemoryStore(clock))
    guard = al.Guard(store, on_store_error="allow")
    guard.set_budget("tenant:acme", tokens=100)
    handle = guard.tenant_for_key(guard.create_key("acme").secret, "reservations:create")
    store.down = 2
    assert guard.tenant("acme").reserve(al.Subject(tenant="acme"), LLM,
                                        al.tokens(1)).decision.reason == "STORE_UNAVAILABLE"
    with pytest.raises(al.StoreUnavailable):
        handle.reserve(handle.subject(), LLM, al.tokens(1))
    assert guard.store_failures == 2
    assert handle.reserve(handle.subject(), LLM, al.tokens(1)).estimate[0].amount == 1


def test_a_batch_sends_the_tenants_keys_once_for_keyed_calls_too(url: str) -> None:
    """Calls of one tenant after the first send only their own keys after the tenant's 11:
    two for a plain call, three for a keyed one (its tenant's key hash)."""
    from allotment.stores.redis.batching import packed

    store = RedisStore(url=url)
    guard = al.Guard(store)
    secret = guard.create_key("acme").secret
    handle = guard.tenant_for_key(secret, "reservations:create")
    plain = guard._reserve_op(al.Subject(tenant="acme"), LLM, al.tokens(1))
    keyed = handle._own(plain)
    calls = [store._flows._keyed(keyed.op, CODECS[al_ops.Reserve], keyed.proof),
             store._flows.call(plain),
             store._flows._keyed(keyed.op, CODECS[al_ops.Reserve], keyed.proof)]
    batch = packed(calls[0].function, calls)
    assert batch.keys == [*calls[0].keys, *calls[1].keys[11:], *calls[2].keys[11:]]
    counts, at = [], 1
    for call in calls:
        counts.append(batch.args[at + 1])
        at += 3 + len(call.args)
    assert counts == [14, -2, -3]
