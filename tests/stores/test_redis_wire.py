"""The Redis store packs each script call itself and sends it on connections it keeps from
the client's pool (`stores/redis/resp.py`): the bytes are those redis-py would send, what
cannot be sent is refused before anything goes out, a kept connection that the server
dropped is replaced before a call is sent on it, a forked child never shares its parent's,
and `close()` hands the kept ones back. Real redis-server processes only."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import pytest
import redis
from redis.connection import Connection
from redis.exceptions import DataError

import allotment as al
from allotment.reservation import commit_op
from allotment.stores.redis import RedisStore, resp

from support import LLM
from support.redis_server import redis_server

SUBJECT = al.Subject(tenant="wire", workspace="w", dimensions={"run": "r-1"})


def _store_and_guard(url: str) -> tuple[RedisStore, al.Guard]:
    store = RedisStore(url=url)
    guard = al.Guard(store)
    guard.set_budget("tenant:wire", tokens=1_000_000)
    return store, guard


def test_a_packed_call_is_the_bytes_redis_py_would_send() -> None:
    """A reserve's and a commit's FCALL (keys, UTF-8 text, integers, empty strings), packed
    by hiredis and by the plain fallback, equal what redis-py's own packer writes."""
    with redis_server() as (url, _):
        store, guard = _store_and_guard(url)
        action = al.Action("llm.completion", "openai:gpt-4o", tags=("é", "x"))
        op = guard._reserve_op(SUBJECT, action, al.tokens(7))
        reply = store._send(store._flows.call(op))
        commands = [store._flows.call(op).command,
                    store._flows.call(commit_op(reply[1], al.tokens(3))).command,
                    ("FCALL", "f", 2, "k1", "k2", -2, 0, "")]
        for command in commands:
            expected = b"".join(Connection().pack_command(*command))
            assert resp.pack(command) == expected
            assert resp._plain_pack(command) == expected
        guard.close()


@pytest.mark.parametrize("bad", [True, None, 1.5, ["a"]])
def test_what_redis_cannot_take_is_refused_before_anything_is_sent(bad: Any) -> None:
    with pytest.raises(DataError):
        resp._plain_pack(("FCALL", "f", 0, bad))
    if not isinstance(bad, float):  # hiredis packs floats; the store never sends one
        with pytest.raises(DataError):
            resp.pack(("FCALL", "f", 0, bad))


def test_a_kept_connection_the_server_dropped_is_replaced_before_the_call() -> None:
    """The server closes every client connection between two calls: the next call finds its
    kept connection readable (closed), reconnects first, and succeeds once, exactly."""
    with redis_server() as (url, _):
        store, guard = _store_and_guard(url)
        guard.reserve(SUBJECT, LLM, al.tokens(10)).commit(al.tokens(10))
        assert store._packed is not None and len(store._packed._idle) == 1
        admin = redis.Redis.from_url(url)
        admin.client_kill_filter(_type="normal", skipme=True)
        guard.reserve(SUBJECT, LLM, al.tokens(10)).commit(al.tokens(5))
        [balance] = guard.balances("tenant:wire")
        assert (balance.spent, balance.reserved) == (15, 0)
        admin.close()
        guard.close()


def _child(store: RedisStore, out: Any) -> None:
    guard = al.Guard(store)
    guard.reserve(SUBJECT, LLM, al.tokens(1)).commit(al.tokens(1))
    assert store._packed is not None
    out.put([c._sock.getsockname()[1] for c in store._packed._idle])


def test_a_forked_child_sends_on_connections_of_its_own() -> None:
    """A child forked while its parent keeps a connection makes its calls on a new one, and
    both processes' calls land."""
    with redis_server() as (url, _):
        store, guard = _store_and_guard(url)
        guard.reserve(SUBJECT, LLM, al.tokens(1)).commit(al.tokens(1))
        assert store._packed is not None
        parents = [c._sock.getsockname()[1] for c in store._packed._idle]
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_child, args=(store, out))
        child.start()
        childs = out.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert parents and childs and not set(parents) & set(childs)
        guard.reserve(SUBJECT, LLM, al.tokens(1)).commit(al.tokens(1))
        assert guard.balances("tenant:wire")[0].spent == 3
        guard.close()


def test_close_hands_the_kept_connections_back_to_the_pool() -> None:
    with redis_server() as (url, _):
        store, guard = _store_and_guard(url)
        guard.reserve(SUBJECT, LLM, al.tokens(1)).commit(al.tokens(1))
        pool = store.client.connection_pool
        assert store._packed is not None and store._packed._idle
        guard.close()
        assert not store._packed._idle
        assert not pool._in_use_connections  # type: ignore[attr-defined]
