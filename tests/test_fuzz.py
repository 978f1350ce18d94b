"""Hostile input can't hurt: a fuzz campaign over every public entry point, on both stores.

Each example builds a small world (tenant acme with budgets, a per-run template, quotas,
access rules, spend, a live reservation and an idempotent record; a neighbour tenant with a
live reservation of its own), draws one valid call, and replaces one or two of its
arguments (or something nested inside one) by anything: wrong types, huge and negative
numbers, NaN and infinities, lone surrogates, look-alike letters, 70 KB strings, lists of
10,000 items, structures 500 deep, and the edges of every bound.

The property: the call succeeds or raises an `al.AllotmentError` (never TypeError,
OverflowError, a pydantic error, ..., nor `StoreUnavailable` from a store that is up); a
refused call leaves a full snapshot of both tenants unchanged (`support.snapshots`; a denial
may only add its audit record and report counters); what is accepted is within the
documented domain; and afterwards both tenants still reserve and commit, with exact
amounts.

CI runs a fixed seed and a small budget; `ALLOTMENT_FUZZ_EXAMPLES=5000` runs that many
examples per test (with a fresh seed each run unless `ALLOTMENT_FUZZ_SEED` is set).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import allotment as al
from allotment.budgets import set_budget_op

from support.snapshots import AUDIT_SECTIONS, differences, snapshot, without
from support.stores import START_MS, STORE_KINDS, make_store

# -- how much to run --------------------------------------------------------------------

EXAMPLES = int(os.environ.get("ALLOTMENT_FUZZ_EXAMPLES", "0"))
"""Examples per test on demand; 0 means the CI budget below, with a fixed seed."""
CI_EXAMPLES = 100
FUZZ = settings(
    max_examples=EXAMPLES or CI_EXAMPLES,
    derandomize=not EXAMPLES and "ALLOTMENT_FUZZ_SEED" not in os.environ,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
SEED = seed(int(os.environ.get("ALLOTMENT_FUZZ_SEED", "0")))

MAX = 2**53 - 1
ACME, W, OTHER = "tenant:acme", "tenant:acme/workspace:w", "tenant:other"
LLM = al.Action("llm.completion", "openai:gpt-4o")
SUBJECT = al.Subject(tenant="acme", workspace="w", dimensions={"run": "r1"})
SUBJECT_W = al.Subject(tenant="acme", workspace="w")
RIVAL = al.Subject(tenant="other")
GHOST = "acme:" + "0" * 32
MAX_TOKENS_PER_CALL = 100_000

# -- the world each example starts from -------------------------------------------------

_stores: dict[str, Any] = {}
_clock = al.ManualClock(START_MS)
_loop = asyncio.new_event_loop()


@dataclass
class World:
    kind: str
    store: Any
    guard: al.Guard
    held: al.Reservation
    done: str
    rival: al.Reservation
    overdue: str | None

    def marker(self, value: Any) -> Any:
        """Reservation ids are drawn as markers and resolved in the world they run in."""
        if isinstance(value, Marker):
            return {"held": self.held.id, "done": self.done, "rival": self.rival.id,
                    "ghost": GHOST, "overdue": self.overdue or GHOST}[value.name]
        return value


@dataclass(frozen=True)
class Marker:
    name: str

    def __repr__(self) -> str:
        return f"<{self.name} reservation id>"


def store_of(kind: str) -> Any:
    """One store per kind for the module; emptied before every example."""
    if kind not in _stores:
        _stores[kind] = make_store(kind, _clock)
    store = _stores[kind]
    if kind == "memory":
        store = _stores[kind] = al.MemoryStore(_clock)
    else:
        import redis

        redis.Redis.from_url(store.url).flushdb()
    return store


def build_world(kind: str, overdue: bool) -> World:
    _clock.set(START_MS)
    store = store_of(kind)
    g = al.Guard(store)
    g.set_budget(ACME, usd=10)
    g.set_budget(ACME, tokens=1_000_000, period="day")
    g.set_budget(W, usd=5, degrade=[al.Degrade(below=0.05, max_tokens=256)])
    g.set_budget(W, usd=1, per="run")
    g.set_quota(ACME, calls=10_000, window="minute")
    g.set_quota(W, concurrent=100)
    g.set_access(ACME, models_deny=["forbidden-*"], max_tokens_per_call=MAX_TOKENS_PER_CALL)
    g.set_budget(OTHER, usd=10)
    done = g.reserve(SUBJECT, LLM, [al.usd("0.25"), al.tokens(1_000)], idempotency_key="k1")
    done.commit([al.usd("0.2"), al.tokens(800)], idempotency_key="k1")
    held = g.reserve(SUBJECT, LLM, al.usd("0.5"))
    rival = g.reserve(RIVAL, LLM, al.usd(1))
    late = None
    if overdue:
        late = g.reserve(SUBJECT_W, LLM, al.usd("0.1"), ttl_ms=1_000, grace_ms=0).id
        _clock.advance(1_001)
    return World(kind, store, g, held, done.id, rival, late)


# -- hostile values -----------------------------------------------------------------------


class Opaque:
    """An object of no type the library knows."""

    def __repr__(self) -> str:
        return "Opaque()"


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def nested_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


LONG = "x" * 70_000
FIXED_HOSTILE: list[Any] = [
    # wrong types
    None, True, False, b"acme", bytearray(b"x"), (), [], {}, [None], {"a": 1}, {1: 2},
    [{1: 2}], {"below": 0.5, 1: 2}, Opaque(), Opaque, object(), frozenset({1}), {"x"},
    range(3), 1j, al.Period.DAY, al.Unit.TOKENS, al.OveragePolicy.REJECT,
    al.FundOperation.CREDIT, al.Subject(tenant="acme"), RIVAL, LLM,
    al.usd(1), al.tokens(MAX), al.Amount(al.Unit.RISK_POINTS, 5), [al.usd(1), al.usd(2)],
    [al.usd(1), al.tokens(2)], [al.tokens(1), None],
    al.Degrade(below=0.5, max_tokens=1), al.Elastic(fixed=[al.usd(0)], per_mtok=[al.usd(1)],
                                                    max_tokens=10),
    al.Plan(name="empty"), Marker("held"), Marker("done"), Marker("rival"), Marker("ghost"),
    # numbers at and past every bound
    0, 1, -1, 2, 255, 256, 999, 1_000, 1_001, 4_096, 8_000, 8_001, 10_000, 60_000, 60_001,
    100_000, 100_001, 86_400_000, 86_400_001, 2**31, 2**32, 10**14, 10**14 + 1, 2**52,
    MAX, MAX + 1, 2**53 + 1, 2**63, 2**64, 2**70, -(2**63), 10**400, -(10**400),
    0.0, -0.0, 1e-300, 5e-324, 0.5, 1.0, 1.5, 0.1 + 0.2, 1e14, 1e15, 9007199254740993.0,
    1e300, math.nan, math.inf, -math.inf, -0.5,
    Decimal("1e999999"), Decimal("-1e999999"), Decimal("1e-999999"), Decimal("NaN"),
    Decimal("sNaN"), Decimal("Infinity"), Decimal("-1"), Decimal("0.000000001"),
    Decimal(MAX), Decimal(MAX) / 10**8, Decimal(MAX + 1) / 10**8,
    # strings
    "", " ", "\x00", "\n", "\t", "\ud800", "a\udfffb", "\u212a", "\u212aey", "\u0130",
    "\u017f", "ﬃ", "ａｃｍｅ", "acme\u200b", "é", "Ω", "🙂", "\x7f", LONG, "a" * 64, "a" * 65,
    "a" * 128, "a" * 129, "a" * 256, "a" * 257, "0", "-1", "1e999999", "nan", "inf",
    "NaN", "Infinity", "0x10", "1_000", " 5", "5 ", "*", "%", "{acme}", "al:{acme}:defs",
    "acme:" + "0" * 32, "other:" + "f" * 32, "acme:\ud800", "acme:" + "0" * 31 + "\u212a",
    "tenant:\u212a", "tenant:acme/workspace:\u212a", "tenant:acme/workspace:\ud800",
    "tenant:acme\x00", "tenant:" + "a" * 128, "tenant:" + "a" * 129, "tenant:acme/" + LONG,
    "tenant:other", "tenant:acme/run:r1", "tenant:acme/workspace:w/run:r1",
    "tenant:acme/workspace:w/run:\ud800", "TENANT:ACME", "tenant:acme/", "tenant:acme//",
    "tenant:acme/agent:a/workspace:w", "day", "DAY", "d\u0430y", "month", "minute",
    "usd_microcents", "TOKENS", "tokens\u212a", "llm.completion", "tool.*",
    "reservation.denied", "REJECT", "CREDIT", "credit", "shadow", "enforce", "SHADOW",
    # big and deep structures
    [0.5] * 10_000, list(range(10_000)), ["a"] * 10_000, [al.usd(0)] * 10_000,
    {f"k{i}": "v" for i in range(10_000)}, nested_list(500), nested_dict(500),
    [[0.5]] * 3, [nested_list(500)],
    # dates
    datetime(2026, 11, 28), datetime(9999, 12, 31, tzinfo=timezone.utc),
    datetime(1, 1, 1, tzinfo=timezone.utc), datetime(1969, 1, 1, tzinfo=timezone.utc),
    datetime(2026, 11, 28, tzinfo=timezone(timedelta(hours=14))),
]

SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
ANY_TEXT = st.text(st.one_of(st.characters(codec=None, categories=None), SURROGATES),
                   max_size=40)
def hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


SCALAR = st.one_of(
    st.sampled_from(FIXED_HOSTILE),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.decimals(),
    st.text(max_size=20),
    ANY_TEXT,
    st.binary(max_size=8),
)
HOSTILE = st.one_of(
    SCALAR,
    st.lists(SCALAR, max_size=4),
    st.dictionaries(SCALAR.filter(hashable), SCALAR, max_size=3),
)


def mutate(data: st.DataObject, value: Any, depth: int = 0) -> Any:
    """Replace `value`, or one thing nested in it, by something hostile."""
    if depth < 4 and isinstance(value, (list, tuple)) and value and data.draw(st.booleans()):
        items = list(value)
        i = data.draw(st.integers(0, len(items) - 1))
        items[i] = mutate(data, items[i], depth + 1)
        return items if isinstance(value, list) else tuple(items)
    if depth < 4 and isinstance(value, dict) and value and data.draw(st.booleans()):
        items = dict(value)
        key = data.draw(st.sampled_from(sorted(items, key=repr)))
        if data.draw(st.booleans()):
            items[key] = mutate(data, items[key], depth + 1)
        else:
            extra = data.draw(SCALAR.filter(hashable))
            items[extra] = data.draw(HOSTILE)
        return items
    return data.draw(HOSTILE)


def mutated(data: st.DataObject, kwargs: dict[str, Any], names: list[str]) -> tuple[
        dict[str, Any], list[str]]:
    """Replace one or two arguments (given, or left at their default) by hostile ones."""
    changed = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    out = dict(kwargs)
    for name in changed:
        out[name] = mutate(data, out[name]) if name in out else data.draw(HOSTILE)
    return out, changed


# -- valid calls --------------------------------------------------------------------------

SCOPES = st.sampled_from([ACME, W, "tenant:acme/workspace:w/agent:a", "TENANT:Acme/Workspace:W",
                          "tenant:acme/app:x"])
LEDGER_SCOPES = st.one_of(SCOPES, st.just("tenant:acme/workspace:w/run:r1"))
DOLLARS = st.one_of(st.integers(0, 1_000), st.decimals(0, 1_000, places=4),
                    st.floats(0, 1_000), st.sampled_from(["0.05", "12.5"]))
SMALL_DOLLARS = st.one_of(st.integers(0, 1), st.decimals(0, 1, places=4), st.floats(0, 1),
                          st.sampled_from(["0.05", "0.5"]))
"""Estimates within a dollar: room for many calls in the setup's budgets."""
COUNTS = st.integers(0, 10**6)
PERIODS = st.sampled_from([None, "day", "month", "week", "hour", "minute", "year",
                           al.Period.DAY])
UNITS = st.sampled_from([*al.Unit, "tokens", "usd_microcents", "CREDITS"])
POLICIES = st.sampled_from([*al.OveragePolicy, "REJECT", "allow_with_overdraft"])
DEGRADE = st.lists(st.one_of(
    st.builds(al.Degrade, below=st.floats(0.01, 1), max_tokens=st.integers(1, 10**5)),
    st.fixed_dictionaries({"below": st.floats(0.01, 1)},
                          optional={"max_tokens": st.integers(1, 10**5),
                                    "model": st.just("gpt-4o-mini"),
                                    "cooldown_ms": st.integers(0, 60_000)}).filter(
        lambda d: len(d) > 1)), max_size=3)
ALERTS = st.one_of(st.none(), st.lists(st.floats(0.01, 1), max_size=4))
AMOUNT = st.one_of(st.builds(al.usd, SMALL_DOLLARS),
                   st.builds(al.tokens, st.integers(0, 5_000)),
                   st.builds(al.credits, st.integers(0, 10)))
AMOUNTS = st.one_of(AMOUNT, st.lists(AMOUNT, min_size=1, max_size=3).filter(
    lambda a: len({x.unit for x in a}) == len(a)))
ELASTIC = st.builds(al.Elastic, fixed=st.just([al.usd("0.001"), al.tokens(100)]),
                    per_mtok=st.just([al.usd(10), al.tokens(1_000_000)]),
                    max_tokens=st.integers(1, 4_000), floor=st.integers(0, 1))
ESTIMATE = st.one_of(AMOUNTS, ELASTIC)
SUBJECTS = st.builds(al.Subject, tenant=st.just("acme"),
                     workspace=st.sampled_from([None, "w"]),
                     agent=st.sampled_from([None, "a"]),
                     dimensions=st.sampled_from([{}, {"run": "r1"}, {"run": "r2", "user": "u"}]))
ACTIONS = st.sampled_from([LLM, al.Action("tool.call", "search"),
                           al.Action("llm.completion", "openai:forbidden-x"),
                           al.Action("llm.embedding", "openai:text-embedding-3-small")])
IDS = st.sampled_from([Marker("held"), Marker("done"), Marker("ghost"), Marker("overdue")])
KEYS = st.sampled_from([None, "k1", "k2", "A:b@c.d-e_f"])
TTL = st.sampled_from([None, 1_000, 60_000, 86_400_000])
GRACE = st.sampled_from([None, 0, 5_000, 60_000])
WHEN = st.sampled_from([None, START_MS, datetime(2026, 11, 28, tzinfo=timezone.utc)])
TYPES = st.sampled_from([None, "reservation.denied", ["reservation.committed",
                                                      "budget.set"], ()])
FUND_OPS = st.sampled_from([*al.FundOperation, "credit"])


def _budget_amount() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries({"usd": DOLLARS}),
        st.fixed_dictionaries({"tokens": COUNTS}),
        st.fixed_dictionaries({"credits": COUNTS}),
        st.fixed_dictionaries({"amount": COUNTS, "unit": UNITS}))


def kw(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(fields)


ADMIN: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "set_budget": st.tuples(_budget_amount(), kw(
        scope=SCOPES, period=PERIODS, per=st.sampled_from([None, "run", "user"]),
        overdraft_limit=st.sampled_from([0, 1, 100]), overage_policy=POLICIES,
        degrade=DEGRADE, alerts=ALERTS)).map(lambda pair: {**pair[1], **pair[0]}),
    "remove_budget": kw(scope=SCOPES, unit=UNITS, period=PERIODS,
                        per=st.sampled_from([None, "run"])),
    "set_quota": st.one_of(
        kw(scope=SCOPES, calls=COUNTS, window=PERIODS.filter(bool),
           action_kind=st.sampled_from(["*", "tool.*", "llm.completion"])),
        kw(scope=SCOPES, runs=COUNTS, window=PERIODS.filter(bool)),
        kw(scope=SCOPES, concurrent=COUNTS)),
    "remove_quota": st.one_of(
        kw(scope=SCOPES, kind=st.sampled_from(["calls", "runs"]), window=PERIODS.filter(bool),
           action_kind=st.sampled_from(["*", "tool.*"])),
        kw(scope=SCOPES, kind=st.just("concurrent"))),
    "set_access": kw(
        scope=SCOPES, models_allow=st.sampled_from([None, ["gpt-4o*", "claude-*"]]),
        models_deny=st.sampled_from([None, ["forbidden-*"]]),
        tools_allow=st.sampled_from([None, ["search"]]),
        tools_deny=st.sampled_from([None, ["shell*"]]),
        max_tokens_per_call=st.sampled_from([None, 1, 4_096])),
    "clear_access": kw(scope=SCOPES),
    "freeze": kw(scope=SCOPES, unit=st.one_of(st.none(), UNITS)),
    "unfreeze": kw(scope=SCOPES, unit=st.one_of(st.none(), UNITS)),
    "close_budget": kw(scope=SCOPES, unit=st.one_of(st.none(), UNITS)),
    "set_budget_terms": kw(scope=SCOPES, unit=UNITS,
                           overdraft_limit=st.sampled_from([None, 0, 7, al.usd(1), MAX]),
                           overage_policy=st.one_of(st.none(), POLICIES)),
    "fund": kw(scope=LEDGER_SCOPES, operation=FUND_OPS, amount=AMOUNT,
               period=st.sampled_from([None, "day"]), spent=st.sampled_from([None, 0, 10]),
               idempotency_key=KEYS),
    "transfer": kw(source=SCOPES, destination=SCOPES, amount=AMOUNT,
                   period=st.sampled_from([None, "day"]), idempotency_key=KEYS),
}
USAGE = st.sampled_from([None, al.TokenUsage(input_tokens=120, cache_read_tokens=100,
                                              output_tokens=30, reasoning_tokens=9)])
USAGE_PERIODS = st.sampled_from([None, "2026-11", "2026-11-28"])
HOOK_ID, EVENT_ID = f"acme/whk_{'0' * 24}", f"acme/evt_{'0' * 20}"
HOOK_URLS = st.sampled_from(["https://hooks.example.com/allotment", "http://127.0.0.1:9/h"])
HOOK_EVENTS = st.sampled_from(["*", ["budget.exhausted", "reservation.denied"]])
SECRETS = st.sampled_from([None, "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"])
WEBHOOK_IDS = st.sampled_from([HOOK_ID, f"whk_{'0' * 24}"])
ENFORCEMENT: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "reserve": kw(subject=SUBJECTS, action=ACTIONS, estimate=ESTIMATE, ttl_ms=TTL,
                  grace_ms=GRACE, overage_policy=st.one_of(st.none(), POLICIES),
                  idempotency_key=KEYS),
    "decide": kw(subject=SUBJECTS, action=ACTIONS, estimate=ESTIMATE),
    "commit": kw(reservation_id=IDS, actual=AMOUNTS, idempotency_key=KEYS, usage=USAGE),
    "release": kw(reservation_id=IDS, reason=st.sampled_from(["released", "x" * 256]),
                  idempotency_key=KEYS),
    "extend": kw(reservation_id=IDS, by_ms=st.sampled_from([1, 1_000, 86_400_000]),
                 idempotency_key=KEYS),
    "record": kw(subject=SUBJECTS, action=ACTIONS, actual=AMOUNTS,
                 overage_policy=st.one_of(st.none(), POLICIES), idempotency_key=KEYS,
                 usage=USAGE),
    "get": kw(reservation_id=IDS),
}
GUARD_ONLY: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "balances": kw(scope=LEDGER_SCOPES, include_children=st.booleans()),
    "audit": kw(tenant=st.sampled_from(["acme", "ACME"]), since=WHEN, types=TYPES,
                limit=st.sampled_from([1, 100, 100_000])),
    "report": kw(tenant=st.just("acme"), period=st.sampled_from(["day", "month", "year"]),
                 at=WHEN),
    "set_mode": kw(tenant=st.just("acme"), mode=st.sampled_from([None, "shadow", "enforce"])),
    "assign_plan": kw(tenant=st.just("acme"), plan=st.just(al.Plan.from_dict({
        "budgets": [{"usd": 20}, {"tokens": 1_000, "period": "day", "scope": "workspace:w"}],
        "quotas": [{"calls": 100, "window": "minute"}]}, "pro"))),
    "sweep": kw(limit=st.sampled_from([1, 1_000])),
    "create_key": kw(tenant=st.sampled_from(["acme", "ACME"]),
                     permissions=st.sampled_from([["balances:read"], ("admin:write",)]),
                     expires=WHEN, name=st.just("worker")),
    "keys": kw(tenant=st.sampled_from(["acme", "tenant:acme"])),
    "revoke_key": kw(key_id=st.just(f"acme:{'0' * 32}")),
    "authenticate_key": kw(secret=st.just(f"alk_acme:{'0' * 32}.{'x' * 43}")),
    "validate_key": kw(secret=st.just(f"alk_acme:{'0' * 32}.{'x' * 43}")),
    "update_key": kw(key_id=st.just(f"acme:{'0' * 32}"), name=st.sampled_from([None, "w"]),
                     permissions=st.sampled_from([None, ["balances:read"]])),
    "register_tenant": kw(tenant=st.just("acme"), name=st.just("Acme Corp")),
    "tenant_info": kw(tenant=st.just("acme")),
    "usage": kw(period=USAGE_PERIODS, tenant=st.sampled_from([None, "acme", "ACME"])),
    "plan_of": kw(tenant=st.sampled_from(["acme", ACME, "TENANT:Acme"])),
    "subscribe_webhook": kw(url=HOOK_URLS, events=HOOK_EVENTS,
                            tenant=st.sampled_from([None, "acme"]), secret=SECRETS,
                            enabled=st.booleans()),
    "webhooks": kw(tenant=st.sampled_from([None, "acme"])),
    "remove_webhook": kw(webhook_id=WEBHOOK_IDS),
    "enable_webhook": kw(webhook_id=WEBHOOK_IDS, enabled=st.booleans()),
    "update_webhook": kw(webhook_id=WEBHOOK_IDS, url=st.one_of(st.none(), HOOK_URLS),
                         events=st.one_of(st.none(), HOOK_EVENTS), secret=SECRETS,
                         enabled=st.one_of(st.none(), st.booleans())),
    "webhook_deliveries": kw(event_id=st.sampled_from([None, EVENT_ID]),
                             webhook_id=st.sampled_from([None, HOOK_ID]),
                             tenant=st.sampled_from([None, "acme"]),
                             limit=st.sampled_from([1, 100])),
    "replay_webhook_event": kw(event_id=st.just(EVENT_ID),
                               webhook_id=st.sampled_from([None, HOOK_ID])),
    "set_webhook_security": kw(
        blocked_cidr_ranges=st.sampled_from([["10.0.0.0/8", "fc00::/7"], ["0.0.0.0/0"]]),
        allowed_url_patterns=st.sampled_from([[], ["https://*.example.com/*"]]),
        allow_http=st.booleans()),
}
HANDLE_ONLY: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "balances": kw(scope=st.one_of(st.none(), LEDGER_SCOPES), include_children=st.booleans()),
    "audit": kw(since=WHEN, types=TYPES, limit=st.sampled_from([1, 100, 100_000])),
    "report": kw(period=st.sampled_from(["day", "month", "year"]), at=WHEN),
    "usage": kw(period=USAGE_PERIODS),
    "subscribe_webhook": kw(url=HOOK_URLS, events=HOOK_EVENTS, secret=SECRETS,
                            enabled=st.booleans()),
    "remove_webhook": kw(webhook_id=st.just(HOOK_ID)),
    "enable_webhook": kw(webhook_id=st.just(HOOK_ID), enabled=st.booleans()),
    "update_webhook": kw(webhook_id=st.just(HOOK_ID), url=st.one_of(st.none(), HOOK_URLS),
                         events=st.one_of(st.none(), HOOK_EVENTS), secret=SECRETS,
                         enabled=st.one_of(st.none(), st.booleans())),
    "webhook_deliveries": kw(event_id=st.sampled_from([None, EVENT_ID]),
                             webhook_id=st.sampled_from([None, HOOK_ID]),
                             limit=st.sampled_from([1, 100])),
    "replay_webhook_event": kw(event_id=st.just(EVENT_ID), webhook_id=st.just(HOOK_ID)),
}
RESERVATION: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "commit": kw(actual=st.just(al.usd("0.4")), idempotency_key=KEYS, usage=USAGE),
    "release": kw(reason=st.just("released"), idempotency_key=KEYS),
    "extend": kw(by_ms=st.sampled_from([1, 1_000]), idempotency_key=KEYS),
}
READS = frozenset({"get", "balances", "audit", "report", "usage", "decide", "plan_of"})
NAME_PARAMS = frozenset({"scope", "source", "destination", "tenant", "per", "unit",
                         "window", "period", "kind", "operation", "mode",
                         "overage_policy", "reservation_id"})
"""Parameters that name something: a non-ASCII string must never be accepted as one."""


def parameters(method: Callable[..., Any]) -> list[str]:
    return [name for name in inspect.signature(method).parameters if name != "self"]


# -- running a call and judging its outcome ------------------------------------------------


def call(method: Callable[..., Any], kwargs: dict[str, Any], asynchronous: bool) -> Any:
    if not asynchronous:
        result = method(**kwargs)
        return tuple(result) if inspect.isgenerator(result) else result  # a stream: read it
    twin = getattr(method.__self__, "a" + method.__name__)
    if getattr(twin, "streams", False):
        return _loop.run_until_complete(_drained(twin(**kwargs)))
    return _loop.run_until_complete(twin(**kwargs))


async def _drained(rows: Any) -> tuple[Any, ...]:
    return tuple([row async for row in rows])


def attempt(what: str, run: Callable[[], Any]) -> tuple[Any, al.AllotmentError | None]:
    """Run one call: its result, or the AllotmentError it raised; anything else fails."""
    try:
        return run(), None
    except al.StoreUnavailable as error:
        pytest.fail(f"{what} raised StoreUnavailable from a store that is up: {error}"[:2000])
    except AssertionError:
        raise
    except al.AllotmentError as error:
        if isinstance(error, al.InvalidRequest):
            assert isinstance(error, ValueError)
        return None, error
    except Exception as error:
        pytest.fail(f"{what} raised {type(error).__name__} instead of an AllotmentError: "
                    f"{str(error)[:500]}")


def show(kwargs: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        try:
            text = repr(value)
        except Exception:  # e.g. a structure too deep to print
            text = f"<{type(value).__name__}>"
        return text if len(text) <= 80 else f"{text[:60]}...<{len(text)} chars>"

    return ", ".join(f"{k}={short(v)}" for k, v in kwargs.items())


def snapshots(world: World) -> dict[str, Any]:
    return {t: snapshot(world.store, t) for t in ("acme", "other")}


def unchanged(before: dict[str, Any], after: dict[str, Any], what: str,
              allow: frozenset[str] = frozenset()) -> None:
    for tenant in before:
        old, new = without(before[tenant], allow), without(after[tenant], allow)
        assert old == new, f"{what} changed tenant {tenant}: {differences(old, new)}"


def not_ascii_name(kwargs: dict[str, Any], changed: list[str]) -> str | None:
    for name in changed:
        value = kwargs[name]
        if name in NAME_PARAMS and isinstance(value, str) and not value.isascii():
            return name
    return None


def judge(world: World, what: str, target: str, name: str, kwargs: dict[str, Any],
          changed: list[str], run: Callable[[], Any]) -> bool:
    """Run the call and check the property; True when it was refused."""
    before = snapshots(world)
    result, error = attempt(what, run)
    after = snapshots(world)
    if error is not None:
        if isinstance(error, al.Denied):
            unchanged(before, after, f"{what} (denied)", AUDIT_SECTIONS
                      if name != "decide" else frozenset())
        elif world.overdue and not isinstance(error, (al.InvalidRequest, al.Forbidden)):
            # a store-side refusal may expire overdue holds first, by design; nothing else
            unchanged({"other": before["other"]}, {"other": after["other"]}, what)
        else:
            unchanged(before, after, f"{what} (refused: {type(error).__name__})")
        return True
    field = not_ascii_name(kwargs, changed)
    assert field is None, f"{what} accepted a non-ASCII {field}: {kwargs[field]!r}"
    if target == "handle":
        assert after["other"] == before["other"], f"{what} on acme's handle changed other"
        rows = result if isinstance(result, tuple) else ()
        for row in rows:
            if isinstance(row, al.Balance):
                assert row.scope.startswith(ACME), f"{what} read {row.scope}"
            if isinstance(row, al.UsageRow):
                assert row.tenant == "acme", f"{what} read {row.tenant}'s usage"
    if name == "decide" or (name in READS and not world.overdue):
        unchanged(before, after, f"{what} (a read)")
    if name == "set_budget" and target != "reservation":
        exact_definition(world, kwargs, what)
    if name == "fund" and isinstance(result, al.FundResult):
        exact_funding(result, kwargs, what)
    in_domain(world.guard.balances(ACME), what)
    return False


def exact_definition(world: World, kwargs: dict[str, Any], what: str) -> None:
    """A budget set in a fresh world holds exactly its limit in the current bucket."""
    op = set_budget_op(**kwargs)
    if op.per is not None:
        return
    rows = [b for b in world.guard.balances(op.scope, include_children=False)
            if b.scope == op.scope and b.unit is op.unit
            and b.period == (op.period.value if op.period else None)]
    assert rows, f"{what}: no balance for the budget just set"
    assert rows[0].allocated == op.limit, (
        f"{what}: allocated {rows[0].allocated}, set {op.limit}")


def exact_funding(result: al.FundResult, kwargs: dict[str, Any], what: str) -> None:
    operation = str(getattr(kwargs["operation"], "value", kwargs["operation"])).upper()
    amount = kwargs["amount"].amount if isinstance(kwargs["amount"], al.Amount) else None
    if operation == "CREDIT" and amount is not None:
        assert result.after.allocated == result.before.allocated + amount, (
            f"{what}: {result.before.allocated} + {amount} -> {result.after.allocated}")


def in_domain(rows: tuple[al.Balance, ...], what: str) -> None:
    for row in rows:
        for field in ("allocated", "reserved", "spent", "debt", "overdraft_limit"):
            value = getattr(row, field)
            assert type(value) is int and 0 <= value <= MAX, (
                f"after {what}: {row.scope} {field}={value!r} outside 0..2^53-1")


Key = tuple[str, al.Unit, Any, str]


def ledgers(guard: al.Guard, scope: str) -> dict[Key, al.Balance]:
    return {(b.scope, b.unit, b.period, b.bucket): b for b in guard.balances(scope)}


def spends_exactly(guard: al.Guard, subject: al.Subject, estimate: list[al.Amount],
                   actual: list[al.Amount], strict: bool, what: str) -> None:
    """Reserve and commit; every ledger charged moves by exactly `actual`, nothing else
    moves. `strict`: the world is as built, so the reservation must be allowed."""
    scope = f"tenant:{subject.tenant}"
    before = ledgers(guard, scope)
    r, error = attempt(f"{what}; then reserve {subject.tenant}",
                       lambda: guard.reserve(subject, LLM, estimate))
    if error is not None:
        assert not strict, f"after {what}: {subject.tenant} refused a sane reserve: {error}"
        return
    result, error = attempt(f"{what}; then commit {subject.tenant}",
                            lambda: r.commit(actual))
    if error is not None:
        assert not strict, f"after {what}: {subject.tenant} refused a sane commit: {error}"
        return
    after = ledgers(guard, scope)
    charged = {a.unit: a.amount for a in actual}
    touched = {(b.scope, b.unit, b.period, b.bucket) for b in result.balances}
    assert touched or not strict, f"after {what}: the commit charged no ledger"
    for key in touched:
        old, new = before.get(key), after[key]
        if old is None:
            continue
        assert (new.allocated, new.reserved, new.debt) == (
            old.allocated, old.reserved, old.debt), f"after {what}: {key} {old} -> {new}"
        assert new.spent == old.spent + charged[key[1]], (
            f"after {what}: {key} spent {old.spent} + {charged[key[1]]} -> {new.spent}")
    for key in before.keys() - touched:
        assert after.get(key) == before[key], f"after {what}: {key} moved"


def still_works(world: World, refused: bool, what: str) -> None:
    """The neighbour always reserves and commits exactly; acme does too when the call was
    refused (its state is as built), and otherwise at least answers cleanly."""
    spends_exactly(world.guard, RIVAL, [al.usd("0.02")], [al.usd("0.013")], True, what)
    spends_exactly(world.guard, SUBJECT, [al.usd("0.02"), al.tokens(100)],
                   [al.usd("0.013"), al.tokens(37)], refused, what)


# -- the campaign ----------------------------------------------------------------------------

GUARD_CALLS = sorted({**ADMIN, **ENFORCEMENT, **GUARD_ONLY})
HANDLE_CALLS = sorted({**ADMIN, **ENFORCEMENT, **HANDLE_ONLY})


@pytest.mark.parametrize("kind", STORE_KINDS)
@FUZZ
@SEED
@given(data=st.data())
def test_guard_call_with_hostile_arguments(kind: str, data: st.DataObject) -> None:
    """Every call of the guard (and of a live reservation), sync or async."""
    world = build_world(kind, overdue=data.draw(st.booleans(), label="overdue"))
    target = data.draw(st.sampled_from(["guard", "reservation"]), label="target")
    table = {**ADMIN, **ENFORCEMENT, **GUARD_ONLY} if target == "guard" else RESERVATION
    name = data.draw(st.sampled_from(sorted(table)), label="call")
    obj: Any = world.guard if target == "guard" else world.held
    method = getattr(obj, name)
    valid = data.draw(table[name], label="valid arguments")
    kwargs, changed = mutated(data, valid, parameters(method))
    kwargs = {k: world.marker(v) for k, v in kwargs.items()}
    asynchronous = data.draw(st.booleans(), label="async")
    what = f"{target}.{'a' if asynchronous else ''}{name}({show(kwargs)}) [{kind}]"
    refused = judge(world, what, target, name, kwargs, changed,
                    lambda: call(method, kwargs, asynchronous))
    still_works(world, refused, what)


@pytest.mark.parametrize("kind", STORE_KINDS)
@FUZZ
@SEED
@given(data=st.data())
def test_tenant_handle_call_with_hostile_arguments(kind: str, data: st.DataObject) -> None:
    """Every call of `guard.tenant("acme")`; other tenants' data stays out of reach."""
    world = build_world(kind, overdue=data.draw(st.booleans(), label="overdue"))
    handle = world.guard.tenant("acme")
    table = {**ADMIN, **ENFORCEMENT, **HANDLE_ONLY}
    name = data.draw(st.sampled_from(sorted(table)), label="call")
    method = getattr(handle, name)
    valid = data.draw(table[name], label="valid arguments")
    kwargs, changed = mutated(data, valid, parameters(method))
    kwargs = {k: world.marker(v) for k, v in kwargs.items()}
    asynchronous = data.draw(st.booleans(), label="async")
    what = f"tenant('acme').{'a' if asynchronous else ''}{name}({show(kwargs)}) [{kind}]"
    refused = judge(world, what, "handle", name, kwargs, changed,
                    lambda: call(method, kwargs, asynchronous))
    still_works(world, refused, what)


@pytest.mark.parametrize("kind", STORE_KINDS)
@FUZZ
@SEED
@given(data=st.data())
def test_decide_changes_nothing(kind: str, data: st.DataObject) -> None:
    """A dry run, allowed, denied or refused, changes nothing: not even overdue holds are
    expired by it (the next mutating call does that)."""
    world = build_world(kind, overdue=True)
    target = data.draw(st.sampled_from(["guard", "handle"]), label="target")
    obj = world.guard if target == "guard" else world.guard.tenant("acme")
    valid = data.draw(ENFORCEMENT["decide"], label="valid arguments")
    if data.draw(st.booleans(), label="hostile"):
        valid, _ = mutated(data, valid, list(valid))
    before = snapshots(world)
    decision, _ = attempt(f"decide({show(valid)}) [{kind}]", lambda: obj.decide(**valid))
    unchanged(before, snapshots(world), f"{target}.decide({show(valid)}) [{kind}]")
    assert decision is None or isinstance(decision, al.Decision)


# -- models, plans and the guard's own options --------------------------------------------


def _use_subject(world: World, subject: al.Subject) -> Any:
    r = world.guard.reserve(subject, LLM, al.usd("0.01"))
    return r.commit(al.usd("0.01"))


def _use_action(world: World, action: al.Action) -> Any:
    r = world.guard.reserve(SUBJECT_W, action, al.usd("0.01"))
    return r.commit(al.usd("0.01"))


def _use_degrade(world: World, rule: al.Degrade) -> Any:
    """Installed on W (86 % remaining): applies when `below` is above that, and the caps
    come back exactly as set, on both stores."""
    world.guard.set_budget(W, usd=5, degrade=[rule])
    r = world.guard.reserve(SUBJECT_W, LLM, al.usd("0.01"))
    applies = rule.below > (5 - 0.7) / 5
    caps = r.caps or al.Caps()
    want_tokens = MAX_TOKENS_PER_CALL
    if applies and rule.max_tokens is not None:
        want_tokens = min(want_tokens, rule.max_tokens)
    assert caps.max_tokens == want_tokens, f"{rule}: caps {caps}"
    assert caps.model == (rule.model if applies else None), f"{rule}: caps {caps}"
    assert caps.cooldown_ms == (rule.cooldown_ms if applies else None), f"{rule}: caps {caps}"
    return r.commit(al.usd("0.01"))


def _use_amount(world: World, estimate: Any) -> Any:
    r = world.guard.reserve(SUBJECT_W, LLM, estimate)
    held = {a.unit: a.amount for a in r.estimate}
    if isinstance(estimate, al.Amount):
        assert held.get(estimate.unit) == estimate.amount, f"held {r.estimate}"
    return r.commit(list(r.estimate))


def _use_plan(world: World, plan: al.Plan) -> Any:
    return world.guard.assign_plan("acme", plan)


def _use_guard(world: World, guard: al.Guard) -> Any:
    r = guard.reserve(SUBJECT_W, LLM, al.usd("0.01"))
    return r.commit(al.usd("0.01"))


def _use_scope(world: World, fields: dict[str, Any]) -> Any:
    with al.scope(**fields):
        r = world.guard.reserve(None, LLM, al.usd("0.01"))
    return r.commit(al.usd("0.01"))


def _guard_on(world: World, **options: Any) -> al.Guard:
    return al.Guard(world.store, **options)


PLAN_DICT = st.fixed_dictionaries({
    "budgets": st.lists(st.one_of(
        st.fixed_dictionaries({"usd": st.integers(0, 100)},
                              optional={"period": st.sampled_from(["day", "month"]),
                                        "scope": st.sampled_from(["", "workspace:w"]),
                                        "degrade": st.just([{"below": 0.2, "max_tokens": 64}]),
                                        "alerts": st.just([0.5, 1.0]),
                                        "overdraft_limit": st.just(1)}),
        st.fixed_dictionaries({"tokens": st.integers(0, 10**6), "per": st.just("run")}),
        st.fixed_dictionaries({"amount": st.integers(0, 100), "unit": st.just("CREDITS")})),
        max_size=3),
    "quotas": st.lists(st.one_of(
        st.fixed_dictionaries({"calls": st.integers(0, 100), "window": st.just("minute")}),
        st.fixed_dictionaries({"concurrent": st.integers(0, 10)})), max_size=2),
    "access": st.lists(st.fixed_dictionaries(
        {"models_allow": st.just(["gpt-4o*"]), "max_tokens_per_call": st.integers(1, 4096)}),
        max_size=1),
}, optional={"mode": st.sampled_from(["enforce", "shadow"])})

MODELS: dict[str, tuple[Callable[..., Any], st.SearchStrategy[dict[str, Any]], list[str],
                        Callable[[World, Any], Any]]] = {
    "Subject": (al.Subject, st.fixed_dictionaries(
        {"tenant": st.just("acme")},
        optional={"workspace": st.just("w"), "agent": st.just("a"),
                  "dimensions": st.just({"run": "r1", "user": "u"})}),
        ["tenant", "workspace", "app", "workflow", "agent", "toolset", "dimensions"],
        _use_subject),
    "Action": (al.Action, kw(kind=st.sampled_from(["llm.completion", "tool.call"]),
                             name=st.sampled_from(["openai:gpt-4o", "search"]),
                             tags=st.sampled_from([(), ("a", "b")])),
               ["kind", "name", "tags"], _use_action),
    "Degrade": (al.Degrade, st.fixed_dictionaries(
        {"below": st.floats(0.01, 1)},
        optional={"max_tokens": st.integers(1, 10**5), "model": st.just("gpt-4o-mini"),
                  "cooldown_ms": st.integers(0, 60_000)}).filter(lambda d: len(d) > 1),
        ["below", "max_tokens", "model", "cooldown_ms"], _use_degrade),
    "Elastic": (al.Elastic, kw(fixed=st.just([al.usd("0.001"), al.tokens(10)]),
                               per_mtok=st.just([al.usd(10), al.tokens(1_000_000)]),
                               max_tokens=st.integers(1, 4_000), floor=st.integers(0, 1)),
                ["fixed", "per_mtok", "max_tokens", "floor"], _use_amount),
    "usd": (al.usd, kw(dollars=SMALL_DOLLARS), ["dollars"], _use_amount),
    "tokens": (al.tokens, kw(count=st.integers(0, 5_000)), ["count"], _use_amount),
    "credits": (al.credits, kw(count=st.integers(0, 5)), ["count"], _use_amount),
    "Amount": (al.Amount, kw(unit=st.sampled_from([*al.Unit, "TOKENS"]),
                             amount=st.integers(0, 5)), ["unit", "amount"], _use_amount),
    "Plan.from_dict": (al.Plan.from_dict, kw(data=PLAN_DICT, name=st.just("pro")),
                       ["data", "name"], _use_plan),
    "Guard": (_guard_on, kw(ttl_ms=st.just(60_000), grace_ms=st.just(5_000),
                            max_extensions=st.just(10), mode=st.just("enforce"),
                            default_plan=st.none(), on_store_error=st.just("deny"),
                            commit_retries=st.just(3)),
              ["ttl_ms", "grace_ms", "max_extensions", "mode", "default_plan",
               "on_store_error", "commit_retries"], _use_guard),
    "scope": (dict, st.fixed_dictionaries({"tenant": st.just("acme")},
                                          optional={"workspace": st.just("w"),
                                                    "run": st.just("r1")}),
              ["tenant", "workspace", "agent", "run", "user"], _use_scope),
}


def used(world: World, what: str, use: Callable[[], Any]) -> None:
    """An accepted value put to use (several calls): each succeeds or raises an
    AllotmentError, the ledgers stay in their domain, and both tenants still spend."""
    attempt(what, use)
    in_domain(world.guard.balances(ACME), what)
    still_works(world, False, what)


def in_model_domain(value: Any, what: str) -> None:
    """What a model accepted is within the documented domain: whole numbers in
    0..2^53-1 (counts of tokens at least 1), finite fractions, text a store can hold."""
    def text(v: Any, field: str) -> None:
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                pytest.fail(f"{what} accepted {field}={v!r}, which no store can hold")

    def whole(v: Any, field: str, low: int = 0) -> None:
        if v is not None:
            assert type(v) is int and low <= v <= MAX, f"{what} accepted {field}={v!r}"

    if isinstance(value, al.Degrade):
        assert math.isfinite(value.below) and 0 < value.below <= 1, f"{what}: {value}"
        whole(value.max_tokens, "max_tokens", 1)
        whole(value.cooldown_ms, "cooldown_ms")
        text(value.model, "model")
        assert value.model is None or 0 < len(value.model) <= 256, f"{what}: {value}"
    elif isinstance(value, al.Action):
        for field, v in (("kind", value.kind), ("name", value.name), *(
                (f"tags[{i}]", tag) for i, tag in enumerate(value.tags))):
            text(v, field)
    elif isinstance(value, al.Subject):
        for level, name in [*value.levels(), *value.dimensions.items()]:
            assert name.isascii() and level.isascii(), f"{what} accepted {level}={name!r}"
    elif isinstance(value, al.Elastic):
        whole(value.max_tokens, "max_tokens", 1)
        whole(value.floor, "floor")
        for amount in (*value.fixed, *value.per_mtok):
            assert isinstance(amount, al.Amount), f"{what} accepted {amount!r}"
    elif isinstance(value, al.Amount):
        whole(value.amount, "amount")
    elif isinstance(value, al.Plan):
        for spec in (*value.budgets, *value.quotas, *value.access):
            for field, v in spec:
                if isinstance(v, Decimal):
                    assert v.is_finite() and v >= 0, f"{what} accepted {field}={v!r}"
                elif isinstance(v, int) and not isinstance(v, bool):
                    whole(v, field)
                text(v, field)
            for rule in getattr(spec, "degrade", ()):
                in_model_domain(rule, what)


def _accepted_non_ascii_names(name: str, kwargs: dict[str, Any]) -> list[str]:
    if name != "Subject":
        return []
    found = [f for f, v in kwargs.items() if isinstance(v, str) and not v.isascii()]
    dims = kwargs.get("dimensions")
    if isinstance(dims, dict):
        found += [f"dimensions[{k!r}]" for k, v in dims.items()
                  if any(isinstance(x, str) and not x.isascii() for x in (k, v))]
    return found


@pytest.mark.parametrize("kind", STORE_KINDS)
@FUZZ
@SEED
@given(data=st.data())
def test_model_with_hostile_arguments(kind: str, data: st.DataObject) -> None:
    """Subject, Action, Degrade, Elastic, the amounts, plans, scopes and the guard's own
    options: refused with an AllotmentError, or accepted within the domain and usable."""
    world = build_world(kind, overdue=False)
    name = data.draw(st.sampled_from(sorted(MODELS)), label="model")
    make, strategy, names, use = MODELS[name]
    valid = data.draw(strategy, label="valid arguments")
    kwargs, _ = mutated(data, valid, names)
    built_what = f"{name}({show(kwargs)}) [{kind}]"
    value, error = attempt(built_what, lambda: make(world, **kwargs) if name == "Guard"
                           else make(**kwargs))
    if error is not None:
        assert isinstance(error, al.InvalidRequest), f"{built_what}: {error!r}"
        still_works(world, True, built_what)
        return
    accepted = _accepted_non_ascii_names(name, kwargs)
    assert not accepted, f"{built_what} accepted non-ASCII names {accepted}"
    in_model_domain(value, built_what)
    used(world, f"using {built_what}", lambda: use(world, value))


# -- plans from YAML files -----------------------------------------------------------------


def _yaml_safe(value: Any) -> bool:
    try:
        yaml.safe_dump(value, allow_unicode=True)
    except Exception:
        return False
    return True


YAML_SCALAR = st.one_of(
    st.sampled_from([v for v in FIXED_HOSTILE if _yaml_safe(v)]),
    st.integers(min_value=-(2**80), max_value=2**80), st.floats(), st.text(max_size=20))
RAW_YAML = st.sampled_from([
    "plans: [", "plans: {pro: [1, 2]}", "plans: {pro: {budgets: [{usd: .nan}]}}",
    "plans: {pro: {budgets: [{usd: .inf}]}}", "plans: {pro: {budgets: [{usd: -.inf}]}}",
    "plans: {pro: {budgets: [{usd: 1e999999}]}}", "plans: {pro: {budgets: [{usd: '1e999999'}]}}",
    "plans:\n  pro:\n    budgets:\n      - {tokens: 0x20000000000000}",
    "plans: {pro: {budgets: [{usd: 5, scope: \"\\ud800\"}]}}",
    "plans: {pro: {budgets: [{usd: 5, scope: \"workspace:\\u212a\"}]}}",
    "plans: {pro: !!python/object/apply:os.getcwd []}",
    "plans: {pro: {budgets: *nothing}}", "plans: {? [1, 2] : {}}", "plans: {1: {}}",
    "plans: {pro: {budgets: [{usd: 5, degrade: [{1: 2}]}]}}",
    "plans: {pro: {quotas: [{calls: 2018-01-01, window: day}]}}",
    "plans: {pro: {budgets: [{usd: !!binary aGk=}]}}", "plans: {pro: {mode: yes}}",
    "- 1\n- 2", "", "~", "\t", "plans: {pro: {budgets: [{usd: 5}]}}\n---\nplans: {}",
    "a: &a [*a]",
    "plans: {pro: {budgets: " + "[" * 500 + "]" * 500 + "}}",
])


@pytest.mark.parametrize("kind", STORE_KINDS)
@FUZZ
@SEED
@given(data=st.data())
def test_plan_file_with_hostile_content(kind: str, data: st.DataObject) -> None:
    """`al.Plan.load` of a YAML file with hostile content (or a hostile plan name)."""
    world = build_world(kind, overdue=False)
    name: Any = "pro"
    if data.draw(st.booleans(), label="raw document"):
        text = data.draw(RAW_YAML, label="document")
    else:
        plan = data.draw(PLAN_DICT, label="plan")
        document: Any = {"plans": {"pro": plan}}
        path = data.draw(st.sampled_from(["plans", "name", "plan", "deep"]), label="mutate")
        if path == "plans":
            document["plans"] = data.draw(YAML_SCALAR)
        elif path == "name":
            name = data.draw(st.one_of(YAML_SCALAR, SCALAR))
        else:
            hostile = st.deferred(lambda: st.one_of(
                YAML_SCALAR, st.lists(YAML_SCALAR, max_size=3),
                st.dictionaries(st.text(max_size=12), YAML_SCALAR, max_size=3)))
            field = data.draw(st.sampled_from(["budgets", "quotas", "access", "mode", "x"]))
            if path == "plan" or not isinstance(plan.get(field), list) or not plan[field]:
                plan[field] = data.draw(hostile)
            else:
                items = plan[field]
                i = data.draw(st.integers(0, len(items) - 1))
                key = data.draw(st.sampled_from([*sorted(items[i]), "scope", "usd", "zz"]))
                items[i] = {**items[i], key: data.draw(hostile)}
        text = yaml.safe_dump(document, allow_unicode=True)
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "plans.yaml"
        file.write_text(text, encoding="utf-8")
        what = f"Plan.load(<{text[:200]!r}>, {show({'name': name})}) [{kind}]"
        plan_value, error = attempt(what, lambda: al.Plan.load(file, name))
    if error is not None:
        assert isinstance(error, al.InvalidRequest), f"{what}: {error!r}"
        still_works(world, True, what)
        return
    in_model_domain(plan_value, what)
    used(world, f"assigning {what}", lambda: world.guard.assign_plan("acme", plan_value))
