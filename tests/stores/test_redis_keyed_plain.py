"""A reserve or commit with an idempotency key takes the Redis store's plain path when its key
is new, and must leave and answer exactly what the general evaluation would: the same
reply, the same replay record (so a replay answers byte for byte the same), the same audit
entry with the key, the same ledgers. Each call is made twice on one real redis-server:
through the store's library and through a copy of it with the plain paths left out (every
call then takes the general path), for two tenants whose names differ in one letter, at one
fixed clock; then every key of both tenants is compared. A third copy, whose general paths
refuse to run, shows the store's calls were the plain ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

import allotment as al
from allotment.reservation import commit_op
from allotment.stores.redis import RedisStore
from allotment.stores.redis.functions import library

from support import LLM
from support.redis_server import redis_server

NOW_MS = 1_780_000_000_000
PLAIN, GENERAL, ONLY_PLAIN = "kpa", "kpb", "kpc"  # tenants: one name length, one letter apart


def _subject(tenant: str) -> al.Subject:
    return al.Subject(tenant=tenant, workspace="w", app="a", dimensions={"run": "r-1"})


def _copies(text: str, prefix: str) -> dict[str, str]:
    """The library's copies by their function prefix: one without plain paths, one whose
    general reserve and commit fail (so a call that succeeds there ran a plain path)."""
    plain = "local function plain()\n"
    done = "  if done then return done end\nend\n"  # what follows is the general path
    assert text.count(plain) == 2 and text.count(done) == 2
    return {prefix + "_np": text.replace(plain, plain + "  do return nil end\n"),
            prefix + "_op": text.replace(done, done + "error('the general path ran')\n")}


@pytest.fixture
def world() -> Iterator[tuple[redis.Redis, RedisStore, dict[str, str]]]:
    """A server, a store at a fixed clock, the three tenants' budgets and which library
    each tenant's calls go to."""
    with redis_server() as (url, _):
        client = redis.Redis.from_url(url)
        store = RedisStore(url=url, clock=lambda: NOW_MS)
        guard = al.Guard(store)
        text, prefix = library()
        for own, body in _copies(text, prefix).items():
            client.function_load(body.replace(prefix, own), replace=True)
        for tenant in (PLAIN, GENERAL, ONLY_PLAIN):
            guard.set_budget(f"tenant:{tenant}", usd=100)
            guard.set_budget(f"tenant:{tenant}/workspace:w", tokens=1_000_000)
        yield client, store, {PLAIN: prefix, GENERAL: prefix + "_np",
                              ONLY_PLAIN: prefix + "_op"}
        guard.close()
        client.close()


def _call(client: redis.Redis, store: RedisStore, prefix: str, op: Any) -> Any:
    call = store._flows.call(op)
    own = call.function.replace(store.library_name, prefix)
    return client.fcall(own, len(call.keys), *call.keys, *call.args)


def _state(client: redis.Redis, tenant: str) -> dict[str, Any]:
    """Every key of a tenant and what it holds (a stream without its entries' ids)."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(f"al:{{{tenant}}}:*"):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"string":
            out[key] = client.get(key)
        elif kind == b"zset":
            out[key] = [list(pair) for pair in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            out[key] = [fields for _, fields in client.xrange(key)]
        else:
            out[key] = (kind, client.dump(key))
    return out


def _as(value: Any, swaps: list[tuple[bytes, bytes]]) -> Any:
    """`value` with each (old, new) of `swaps` put in every bytes or str inside it."""
    if isinstance(value, bytes):
        for old, new in swaps:
            value = value.replace(old, new)
        return value
    if isinstance(value, str):
        return _as(value.encode(), swaps).decode()
    if isinstance(value, dict):
        return {_as(k, swaps): _as(v, swaps) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as(v, swaps) for v in value]
    return value


def test_a_keyed_reserve_and_commit_on_the_plain_path_leave_what_the_general_path_would(
        world: tuple[redis.Redis, RedisStore, dict[str, str]]) -> None:
    client, store, prefixes = world
    guard = al.Guard(store)
    replies: dict[str, list[Any]] = {}
    rids: dict[str, str] = {}
    prints: dict[str, list[str]] = {}  # the requests' fingerprints (they hash the tenant)
    for tenant, prefix in prefixes.items():
        subject = _subject(tenant)
        both = guard._reserve_op(subject, LLM, [al.usd(0.25), al.tokens(40)],
                                 idempotency_key="res-1")  # two units, two scopes
        single = guard._reserve_op(subject, LLM, al.usd(0.5), idempotency_key="res-2")
        made = [_call(client, store, prefix, op) for op in (both, both, single, single)]
        assert all(isinstance(m, list) for m in made), made
        rids[tenant], rids[tenant + "2"] = made[0][1].decode(), made[2][1].decode()
        commit = commit_op(rids[tenant + "2"], al.usd(0.2), idempotency_key="com-1")
        made += [_call(client, store, prefix, commit) for _ in range(2)]
        assert made[0] == made[1] and made[2] == made[3] and made[4] == made[5]  # replays
        replies[tenant] = made
        prints[tenant] = [op.fingerprint for op in (both, single, commit)]
    for tenant in (PLAIN, ONLY_PLAIN):
        swaps = [(rids[tenant].encode(), rids[GENERAL].encode()),  # ids hold the tenant
                 (rids[tenant + "2"].encode(), rids[GENERAL + "2"].encode()),
                 *[(mine.encode(), theirs.encode())
                   for mine, theirs in zip(prints[tenant], prints[GENERAL], strict=True)],
                 (tenant.encode(), GENERAL.encode())]
        assert _as(replies[tenant], swaps) == replies[GENERAL]
        assert _as(_state(client, tenant), swaps) == _state(client, GENERAL)
    audit = [f for f in _state(client, PLAIN)[f"al:{{{PLAIN}}}:audit".encode()]
             if f[b"type"] in (b"reservation.reserved", b"reservation.committed")]
    assert [(f[b"type"], f[b"idempotency_key"]) for f in audit] == [
        (b"reservation.reserved", b"res-1"), (b"reservation.reserved", b"res-2"),
        (b"reservation.committed", b"com-1")]
    guard.close()


@pytest.mark.parametrize("tenant", [PLAIN, GENERAL])
def test_a_key_used_again_for_another_request_is_refused_and_changes_nothing(
        world: tuple[redis.Redis, RedisStore, dict[str, str]], tenant: str) -> None:
    """Through the guard, on the plain path (the store's own tenant) and, for a tenant with a
    quota, the general one: the replay returns the first answer, another request under the
    same key is refused (IDEMPOTENCY_MISMATCH) and writes nothing."""
    client, store, _ = world
    guard = al.Guard(store)
    if tenant == GENERAL:
        guard.set_quota(f"tenant:{tenant}", calls=1_000, window="day")
    subject = _subject(tenant)
    first = guard.reserve(subject, LLM, al.usd(0.25), idempotency_key="k-1")
    assert guard.reserve(subject, LLM, al.usd(0.25), idempotency_key="k-1").id == first.id
    before = _state(client, tenant)
    with pytest.raises(al.IdempotencyMismatch):
        guard.reserve(subject, LLM, al.usd(0.3), idempotency_key="k-1")
    assert _state(client, tenant) == before
    done = guard.commit(first.id, al.usd(0.1), idempotency_key="c-1")
    assert guard.commit(first.id, al.usd(0.1), idempotency_key="c-1") == done
    before = _state(client, tenant)
    with pytest.raises(al.IdempotencyMismatch):
        guard.commit(first.id, al.usd(0.2), idempotency_key="c-1")
    assert _state(client, tenant) == before
    [usd] = [b for b in guard.balances(f"tenant:{tenant}") if b.unit is al.Unit.USD_MICROCENTS]
    assert (usd.reserved, usd.spent) == (0, al.usd(0.1).amount)
    guard.close()


def test_plain_commits_that_cross_alerts_and_exhaust_a_budget_leave_what_the_general_would(
        world: tuple[redis.Redis, RedisStore, dict[str, str]]) -> None:
    """Commits on a monthly budget with alerts, crossing each threshold and then spending the
    last of it: the plain commit notifies and records exactly what the general one does."""
    client, store, prefixes = world
    guard = al.Guard(store)
    replies: dict[str, list[Any]] = {}
    swaps: dict[str, list[tuple[bytes, bytes]]] = {}
    for tenant, prefix in prefixes.items():
        guard.set_budget(f"tenant:{tenant}/workspace:w/app:a", usd=1, period="month",
                         alerts=[0.5, 0.8, 1.0])
        subject, made, own = _subject(tenant), [], []
        for step, dollars in enumerate((0.3, 0.3, 0.3, 0.1)):
            reserve = guard._reserve_op(subject, LLM, al.usd(dollars),
                                        idempotency_key=f"res-{step}")
            held = _call(client, store, prefix, reserve)
            assert isinstance(held, list), held
            commit = commit_op(held[1].decode(), al.usd(dollars), idempotency_key=f"com-{step}")
            made += [held, _call(client, store, prefix, commit)]
            own += [held[1], reserve.fingerprint.encode(), commit.fingerprint.encode()]
        replies[tenant], swaps[tenant] = made, own
    [ledger] = [b for b in guard.balances(f"tenant:{PLAIN}/workspace:w/app:a")
                if b.unit is al.Unit.USD_MICROCENTS and b.period == "month"]
    assert ledger.spent == ledger.allocated  # the last commit spent the whole budget
    notes = [reply[3] for reply in replies[PLAIN][1::2]]  # each commit's notifications
    assert notes[0] is None and all(b"budget.threshold_crossed" in n for n in notes[1:])
    assert b"budget.exhausted" in notes[3]
    for tenant in (PLAIN, ONLY_PLAIN):
        pairs = [*zip(swaps[tenant], swaps[GENERAL], strict=True),
                 (tenant.encode(), GENERAL.encode())]
        assert _as(replies[tenant], pairs) == replies[GENERAL]
        assert _as(_state(client, tenant), pairs) == _state(client, GENERAL)
    kinds = [f[b"type"] for f in _state(client, PLAIN)[f"al:{{{PLAIN}}}:audit".encode()]]
    assert kinds.count(b"reservation.committed") == 4
    guard.close()
