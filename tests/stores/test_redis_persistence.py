"""A RedisStore looks once at how the server keeps data, and warns when budgets could be
lost (no AOF) or evicted (an evicting maxmemory-policy); the check never fails a call."""

from __future__ import annotations

import asyncio
import logging

import pytest

import allotment as al
from allotment.stores.redis import RedisStore

from support.redis_server import redis_server

NO_AOF = "without `appendonly yes`"
EVICTING = "maxmemory-policy is allkeys-lru"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "allotment" and r.levelno == logging.WARNING]


def test_a_server_without_aof_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    with redis_server() as (url, _), caplog.at_level(logging.WARNING, logger="allotment"):
        guard = al.Guard(RedisStore(url=url))
        guard.set_budget("tenant:acme", usd=1)
        guard.balances("tenant:acme")
        guard.close()
    (warning,) = warnings_of(caplog)
    assert NO_AOF in warning


def test_the_async_twins_check_the_same_way(caplog: pytest.LogCaptureFixture) -> None:
    with (redis_server("--maxmemory-policy", "allkeys-lru") as (url, _),
          caplog.at_level(logging.WARNING, logger="allotment")):
        guard = al.Guard(RedisStore(url=url))
        asyncio.run(guard.aset_budget("tenant:acme", usd=1))
        guard.close()
    assert [NO_AOF in w or EVICTING in w for w in warnings_of(caplog)] == [True, True]


def test_a_durable_server_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with (redis_server("--appendonly", "yes") as (url, _),
          caplog.at_level(logging.WARNING, logger="allotment")):
        guard = al.Guard(RedisStore(url=url))
        guard.set_budget("tenant:acme", usd=1)
        guard.close()
    assert warnings_of(caplog) == []


def test_without_config_the_check_reads_info(caplog: pytest.LogCaptureFixture) -> None:
    with (redis_server("--rename-command", "CONFIG", "", "--maxmemory-policy", "allkeys-lru")
          as (url, _), caplog.at_level(logging.WARNING, logger="allotment")):
        guard = al.Guard(RedisStore(url=url))
        guard.set_budget("tenant:acme", usd=1)
        assert guard.balances("tenant:acme")[0].allocated == al.usd(1).amount
        guard.close()
    assert [NO_AOF in w or EVICTING in w for w in warnings_of(caplog)] == [True, True]
