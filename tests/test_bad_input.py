"""Bad input: every invalid argument is refused with an error that names the field and the
rule it broke, and nothing changes (DESIGN §3.1-3.4 and §3.11).

Each refusal is checked against a snapshot of both tenants' ledgers and of two live
reservations, taken just before the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

import allotment as al

from support import LLM

ACME = "tenant:acme"
W = "tenant:acme/workspace:w"
OTHER = "tenant:other"
MAX = 2**53 - 1
NAME_RULE = "1-128 characters from a-z, 0-9 and _ . @ -"
KEY_RULE = "1-128 characters from a-z, 0-9 and _ . -"
VALUE_RULE = "1-128 printable ASCII characters other than space"
SCOPE_RULE = "tenant:<name>[/workspace:<name>...]"
ID_RULE = "<tenant>:<32 hex digits>"
KEY_CHARS = "1-256 characters"
SUBJECT = al.Subject(tenant="acme", workspace="w", dimensions={"run": "r1"})
GHOST = "0" * 32


@dataclass
class World:
    """Two tenants with budgets, some spend, and one live reservation each."""

    guard: al.Guard
    held: al.Reservation
    rival: al.Reservation

    def snapshot(self) -> tuple[Any, ...]:
        g = self.guard
        return (g.balances(ACME), g.balances(OTHER), g.get(self.held.id), g.get(self.rival.id))


@pytest.fixture
def world(guard: al.Guard) -> World:
    guard.set_budget(ACME, usd=10, overage_policy="REJECT")
    guard.set_budget(ACME, tokens=10_000, period="day")
    guard.set_budget(W, usd=5)
    guard.set_budget(W, usd=1, per="run")
    guard.set_budget(OTHER, usd=10)
    guard.reserve(SUBJECT, LLM, al.usd(0.25)).commit(al.usd(0.2))
    held = guard.reserve(SUBJECT, LLM, al.usd(0.5))
    rival = guard.reserve(al.Subject(tenant="other"), LLM, al.usd(1))
    return World(guard, held, rival)


Call = Callable[[World], object]


def refused(world: World, call: Call, fragments: tuple[str, ...],
            error: type[Exception] = al.InvalidRequest) -> str:
    """`call` raises `error` whose message holds every fragment, and changes nothing."""
    before = world.snapshot()
    with pytest.raises(error) as caught:
        call(world)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    if error is al.InvalidRequest:
        assert isinstance(caught.value, ValueError)
    assert world.snapshot() == before, "a refused call changed the store"
    return message


def case(call: Call, *fragments: str, id: str) -> Any:
    """One case: the call and the fragments its message must hold."""
    return pytest.param(call, fragments, id=id)


def each(field: str, make: Callable[[Any], Call], values: Iterable[Any],
         *fragments: str) -> list[Any]:
    """One case per value: `make(value)` is the call, and the message names `field`."""
    return [pytest.param(make(v), (field, *fragments), id=f"{field}={_show(v)}")
            for v in values]


def _show(value: object) -> str:
    return f"<{len(value)} chars>" if isinstance(value, str) and len(value) > 12 else repr(value)


def bad(value: object) -> Any:
    """A value of the wrong type, passed on purpose."""
    return value


def run_case(world: World, call: Call, fragments: tuple[str, ...]) -> None:
    refused(world, call, fragments)


# -- subjects --------------------------------------------------------------------------


SUBJECT_CASES = [
    pytest.param({"tenant": "a b"}, ("Subject.tenant", "'a b'", NAME_RULE), id="space"),
    pytest.param({"tenant": "acme", "workspace": "w/x"}, ("Subject.workspace", "'w/x'"),
                 id="slash"),
    pytest.param({"tenant": "acme", "agent": "a:b"}, ("Subject.agent", "'a:b'", NAME_RULE),
                 id="colon"),
    pytest.param({"tenant": "{acme}"}, ("Subject.tenant", "'{acme}'", NAME_RULE),
                 id="hash-tag-open"),
    pytest.param({"tenant": "acme", "toolset": "x}"}, ("Subject.toolset", "'x}'"),
                 id="hash-tag-close"),
    pytest.param({"tenant": "acme", "workflow": ""}, ("Subject.workflow", NAME_RULE),
                 id="empty"),
    pytest.param({"tenant": "acme", "app": "x" * 129}, ("Subject.app", "1-128"),
                 id="129-chars"),
    pytest.param({"tenant": 5}, ("Subject.tenant", "expected a string"), id="int"),
    pytest.param({"tenant": "acme", "workspace": b"w"}, ("Subject.workspace", "string"),
                 id="bytes"),
    pytest.param({"tenant": None}, ("Subject.tenant", "string"), id="tenant-none"),
    pytest.param({}, ("Subject.tenant", "required"), id="tenant-missing"),
    pytest.param({"tenant": "acme", "user": "u"}, ("Subject.user", "not permitted"),
                 id="unknown-field"),
    pytest.param({"tenant": "acme", "dimensions": {f"k{i}": "v" for i in range(17)}},
                 ("Subject.dimensions", "at most 16 dimensions, got 17"), id="17-dimensions"),
    pytest.param({"tenant": "acme", "dimensions": {"tenant": "x"}},
                 ("Subject.dimensions", "'tenant' is a scope level", "tenant="),
                 id="dimension-key-tenant"),
    pytest.param({"tenant": "acme", "dimensions": {"Agent": "x"}},
                 ("Subject.dimensions", "'agent' is a scope level", "agent="),
                 id="dimension-key-agent"),
    pytest.param({"tenant": "acme", "dimensions": {"a b": "x"}},
                 ("Subject.dimensions", "dimension key", "'a b'", KEY_RULE),
                 id="dimension-key-space"),
    pytest.param({"tenant": "acme", "dimensions": {"@x": "x"}},
                 ("dimension key", "'@x'", KEY_RULE), id="dimension-key-at"),
    pytest.param({"tenant": "acme", "dimensions": {"": "x"}}, ("dimension key", KEY_RULE),
                 id="dimension-key-empty"),
    pytest.param({"tenant": "acme", "dimensions": {5: "x"}},
                 ("dimension key", "expected a string"), id="dimension-key-int"),
    pytest.param({"tenant": "acme", "dimensions": {"run": "r 1"}},
                 ("Subject.dimensions", "dimensions['run']", "'r 1'", VALUE_RULE),
                 id="dimension-value-space"),
    pytest.param({"tenant": "acme", "dimensions": {"run": "r\u00e9"}},
                 ("dimensions['run']", "'r\u00e9'", VALUE_RULE), id="dimension-value-non-ascii"),
    pytest.param({"tenant": "acme", "dimensions": {"run": 7}},
                 ("dimensions['run']", "expected a string"), id="dimension-value-int"),
    pytest.param({"tenant": "acme", "dimensions": [("run", "r1")]},
                 ("Subject.dimensions", "dict"), id="dimensions-not-a-dict"),
    # "Run" and "run" both lower to "run": keeping either value would be a silent rewrite
    pytest.param({"tenant": "acme", "dimensions": {"Run": "r1", "run": "r2"}},
                 ("Subject.dimensions", "run"), id="dimension-keys-equal-once-lowered"),
]


@pytest.mark.parametrize(("fields", "fragments"), SUBJECT_CASES)
def test_bad_subject_is_refused(world: World, fields: dict[str, Any],
                                fragments: tuple[str, ...]) -> None:
    """Only checked text becomes a scope or a store key (DESIGN §3.1)."""
    refused(world, lambda w: w.guard.reserve(al.Subject(**fields), LLM, al.usd(0.1)),
            fragments)


def test_upper_case_is_lowered_not_refused(world: World) -> None:
    """Upper case in names and kinds is the one rewrite allowed: it is lowered, and charges
    the same ledgers. A dimension value is an id and keeps its case (tests/test_ids.py)."""
    loud = al.Subject(tenant="ACME", workspace="W", dimensions={"RUN": "r1"})
    assert loud == SUBJECT
    assert world.guard.reserve(loud, LLM, al.usd(0.1)).info.scopes == (
        ACME, W, f"{W}/run:r1")


def test_edges_of_the_name_rules_are_accepted(world: World) -> None:
    """128 characters, 16 dimensions and every allowed character pass."""
    longest = al.Subject(tenant="acme", agent="a" * 128,
                         dimensions={f"k{i}": "v" for i in range(16)})
    assert longest.scope_path == f"{ACME}/agent:{'a' * 128}"
    assert len(longest.dimensions) == 16
    odd = al.Subject(tenant="acme", workspace="a-z_0.9@x", dimensions={"a-b_c.d": "e@f"})
    assert odd.scopes() == (ACME, f"{ACME}/workspace:a-z_0.9@x")
    assert world.guard.reserve(odd, LLM, al.usd(0.1)).info.scopes == (ACME,)


# -- scopes ----------------------------------------------------------------------------


SCOPE_CASES = [
    # a bare tenant name is that tenant's scope (tests/test_tenant_forms.py); a bare first
    # segment followed by levels reads two ways and is refused
    pytest.param("acme/workspace:w", ("'acme/workspace:w'", SCOPE_RULE), id="no-level"),
    pytest.param("workspace:w", ("'workspace:w'", SCOPE_RULE), id="no-tenant"),
    pytest.param("tenant:acme/agent:a/workspace:w", ("out of order", "tenant > workspace"),
                 id="out-of-order"),
    pytest.param("tenant:acme/tenant:b", ("'tenant' is out of order",), id="two-tenants"),
    pytest.param("tenant:", ("'tenant:'", NAME_RULE), id="empty-tenant"),
    pytest.param("tenant:acme//agent:x", ("bad segment ''", SCOPE_RULE), id="empty-segment"),
    pytest.param("tenant:acme/", ("bad segment ''",), id="trailing-slash"),
    pytest.param("tenant:a/run:r1/agent:x", ("bad segment 'agent:x'", "one <dimension>"),
                 id="level-after-dimension"),
    pytest.param("tenant:acme/run:r1/user:u", ("bad segment 'user:u'", "one <dimension>"),
                 id="two-dimensions"),
    pytest.param("tenant:{acme}", ("'{acme}'", NAME_RULE), id="hash-tag"),
    pytest.param("tenant:acme/workspace:{w}", ("'{w}'", NAME_RULE), id="hash-tag-level"),
    pytest.param("tenant:acme/a b:c", ("dimension key", "'a b'", KEY_RULE),
                 id="dimension-key-space"),
    pytest.param("tenant:acme/@x:c", ("dimension key", "'@x'", KEY_RULE),
                 id="dimension-key-at"),
    pytest.param(" tenant:acme", ("must start with tenant:<name>",), id="leading-space"),
    pytest.param("tenant:" + "a" * 129, ("1-128",), id="129-chars"),
    pytest.param("", ("scope", SCOPE_RULE), id="empty"),
    pytest.param(None, ("scope", SCOPE_RULE), id="none"),
]

SCOPE_OPS = [
    pytest.param(lambda g, s: g.set_budget(s, usd=1), id="set_budget"),
    pytest.param(lambda g, s: g.balances(s), id="balances"),
    pytest.param(lambda g, s: g.fund(s, "CREDIT", al.usd(1)), id="fund"),
    pytest.param(lambda g, s: g.transfer(s, W, al.usd(1)), id="transfer-from"),
    pytest.param(lambda g, s: g.transfer(W, s, al.usd(1)), id="transfer-to"),
    pytest.param(lambda g, s: g.freeze(s), id="freeze"),
    pytest.param(lambda g, s: g.close_budget(s), id="close_budget"),
    pytest.param(lambda g, s: g.remove_budget(s, "USD_MICROCENTS"), id="remove_budget"),
    pytest.param(lambda g, s: g.set_quota(s, calls=5, window="day"), id="set_quota"),
    pytest.param(lambda g, s: g.set_access(s, models_deny=["gpt-4o*"]), id="set_access"),
]


@pytest.mark.parametrize(("scope", "fragments"), SCOPE_CASES)
@pytest.mark.parametrize("op", SCOPE_OPS)
def test_bad_scope_is_refused(world: World, op: Callable[[al.Guard, Any], object], scope: Any,
                              fragments: tuple[str, ...]) -> None:
    """Every call that takes a scope reads it with the same strict grammar."""
    message = refused(world, lambda w: op(w.guard, scope), fragments)
    assert "scope" in message


def test_budget_on_a_dimension_scope_points_to_per(world: World) -> None:
    """A dimension ledger comes from a template; naming one in set_budget says how."""
    refused(world, lambda w: w.guard.set_budget(f"{ACME}/run:r1", usd=1),
            ("'tenant:acme/run:r1'", "per='run'", "'tenant:acme'"))


RUN_2 = al.Subject(tenant="acme", workspace="w", dimensions={"run": "r2"})


def _nothing(world: World) -> None:
    pass


def _deny_gpt_4o(world: World) -> None:
    world.guard.set_access(W, models_deny=["gpt-4o*"])


def _parent_active(world: World) -> None:
    statuses = {b.scope: b.status.value for b in world.guard.balances(ACME)}
    assert statuses[W] == statuses[ACME] == "ACTIVE", f"a parent changed status: {statuses}"
    world.guard.reserve(RUN_2, LLM, al.usd(0.1))  # another run of the workspace still spends


def _parent_budget_kept(world: World) -> None:
    scopes = {b.scope for b in world.guard.balances(ACME)}
    assert W in scopes, f"the workspace's own budget was removed: {scopes}"


def _parent_allows(world: World) -> None:
    decision = world.guard.decide(RUN_2, LLM, al.usd(0.1))
    assert decision.allowed, f"another run is refused: {decision.explain()}"


def _parent_still_denies(world: World) -> None:
    decision = world.guard.decide(RUN_2, LLM, al.usd(0.1))
    assert decision.reason == al.Reason.MODEL_NOT_ALLOWED, "the workspace's rule was cleared"


DIMENSION_OPS = [
    pytest.param(lambda g, s: g.freeze(s), _nothing, _parent_active, id="freeze"),
    pytest.param(lambda g, s: g.close_budget(s), _nothing, _parent_active, id="close_budget"),
    pytest.param(lambda g, s: g.remove_budget(s, "USD_MICROCENTS"), _nothing,
                 _parent_budget_kept, id="remove_budget"),
    pytest.param(lambda g, s: g.set_access(s, models_deny=["gpt-4o*"]), _nothing,
                 _parent_allows, id="set_access"),
    pytest.param(lambda g, s: g.clear_access(s), _deny_gpt_4o, _parent_still_denies,
                 id="clear_access"),
]


@pytest.mark.parametrize(("change", "setup", "parent_untouched"), DIMENSION_OPS)
def test_change_on_a_dimension_scope_never_hits_its_parent(
        world: World, change: Callable[[al.Guard, str], object],
        setup: Callable[[World], None], parent_untouched: Callable[[World], None]) -> None:
    """Naming one run must not freeze, close, remove or re-rule the workspace (and so every
    other run): either it is refused, as set_budget and set_quota refuse it, or only that
    run is affected."""
    setup(world)
    before = world.snapshot()
    try:
        change(world.guard, f"{W}/run:r1")
    except al.InvalidRequest as error:
        assert "run:r1" in str(error)
        assert world.snapshot() == before
    parent_untouched(world)


# -- amounts ---------------------------------------------------------------------------


AMOUNT_CASES = [
    pytest.param(lambda: al.Amount(al.Unit.TOKENS, -1), ("Amount.amount", "-1", f"0..{MAX}"),
                 id="negative"),
    pytest.param(lambda: al.Amount(al.Unit.TOKENS, bad(1.5)), ("Amount.amount", "whole number"),
                 id="float"),
    pytest.param(lambda: al.Amount(al.Unit.TOKENS, True), ("Amount.amount", "whole number"),
                 id="bool"),
    pytest.param(lambda: al.Amount(al.Unit.TOKENS, 2**53),
                 ("Amount.amount", str(2**53), f"0..{MAX}"), id="2**53"),
    pytest.param(lambda: al.Amount(al.Unit.TOKENS, bad("5")), ("Amount.amount", "whole number"),
                 id="str"),
    pytest.param(lambda: al.Amount(al.Unit.TOKENS, bad(Decimal(5))),
                 ("Amount.amount", "whole number"), id="decimal"),
    pytest.param(lambda: al.Amount(bad("DOLLARS"), 5),
                 ("Amount.unit", "'DOLLARS'", "USD_MICROCENTS, TOKENS, CREDITS, RISK_POINTS"),
                 id="unknown-unit"),
    pytest.param(lambda: al.usd(-1), ("usd", "-1", ">= 0"), id="usd-negative"),
    pytest.param(lambda: al.usd("-0.01"), ("usd", "'-0.01'", ">= 0"), id="usd-negative-str"),
    pytest.param(lambda: al.usd("abc"), ("usd", "'abc'", "not a number"), id="usd-abc"),
    pytest.param(lambda: al.usd(float("nan")), ("usd", "nan", "finite"), id="usd-nan"),
    pytest.param(lambda: al.usd(float("inf")), ("usd", "inf", "finite"), id="usd-inf"),
    pytest.param(lambda: al.usd(Decimal("NaN")), ("usd", "finite"), id="usd-decimal-nan"),
    pytest.param(lambda: al.usd(True), ("usd", "expected a number"), id="usd-bool"),
    pytest.param(lambda: al.usd(bad(None)), ("usd", "expected a number"), id="usd-none"),
    pytest.param(lambda: al.usd(2**53), ("usd", "more than the ledger can hold"),
                 id="usd-too-large"),
    pytest.param(lambda: al.tokens(-1), ("Amount.amount", "-1"), id="tokens-negative"),
    pytest.param(lambda: al.credits(bad(1.5)), ("Amount.amount", "whole number"),
                 id="credits-float"),
]


@pytest.mark.parametrize(("build", "fragments"), AMOUNT_CASES)
def test_bad_amount_is_refused(world: World, build: Callable[[], al.Amount],
                               fragments: tuple[str, ...]) -> None:
    """Amounts are integers in 0..2**53-1 of a known unit; dollars are exact decimals."""
    refused(world, lambda w: w.guard.reserve(SUBJECT, LLM, build()), fragments)


SET_BUDGET_CASES = [
    *each("usd", lambda v: lambda w: w.guard.set_budget(ACME, usd=v),
          (-1, "-0.01", "abc", float("nan"), float("inf"), True, 2**53, [1])),
    *each("tokens", lambda v: lambda w: w.guard.set_budget(ACME, tokens=v, period="day"),
          (-1, 1.5, True, "5", 2**53)),
    case(lambda w: w.guard.set_budget(W, credits=bad(0.5)), "credits", "whole number",
         id="credits=0.5"),
    case(lambda w: w.guard.set_budget(ACME, usd=1, overdraft_limit=-1), "overdraft_limit",
         ">= 0", id="overdraft-negative"),
    case(lambda w: w.guard.set_budget(ACME, usd=1, overdraft_limit="x"), "overdraft_limit",
         "not a number", id="overdraft-str"),
    case(lambda w: w.guard.set_budget(ACME, tokens=5, period="day", overdraft_limit=1.5),
         "overdraft_limit", "whole number", id="overdraft-float-tokens"),
    case(lambda w: w.guard.set_budget(ACME, tokens=5, period="day",
                                      overdraft_limit=al.usd(1)),
         "overdraft_limit", "USD_MICROCENTS given for a TOKENS budget",
         id="overdraft-other-unit"),
    # units
    case(lambda w: w.guard.set_budget(W, amount=5), "unit", "required with amount=",
         id="amount-without-unit"),
    case(lambda w: w.guard.set_budget(W, amount=5, unit="DOLLARS"), "unit", "'DOLLARS'",
         "not one of", id="amount-unknown-unit"),
    case(lambda w: w.guard.set_budget(W, tokens=5, unit="CREDITS"), "unit='CREDITS'",
         "contradicts tokens=", id="unit-contradicts-tokens"),
    case(lambda w: w.guard.set_budget(W, usd=5, unit="TOKENS"), "unit='TOKENS'",
         "contradicts usd=", id="unit-contradicts-usd"),
    case(lambda w: w.guard.set_budget(W, usd=1, tokens=1), "exactly one of usd=",
         "['tokens', 'usd']", id="usd-and-tokens"),
    case(lambda w: w.guard.set_budget(W), "exactly one of usd=", "none", id="no-amount"),
    # periods
    *each("period", lambda p: lambda w: w.guard.set_budget(W, usd=1, period=p),
          ("fortnight", 7, "", True), "is not a period", "minute, hour, day, week, month, year"),
    # per keys
    *each("per", lambda k: lambda w: w.guard.set_budget(W, usd=1, per=k),
          ("a b", "@x", "", "run/x", "x" * 129), KEY_RULE),
    case(lambda w: w.guard.set_budget(W, usd=1, per=bad(5)), "per", "expected a string",
         id="per=5"),
    # a template keyed by a level could never match: Subject refuses such dimensions
    case(lambda w: w.guard.set_budget(W, usd=1, per="agent"), "per", "scope level",
         id="per=agent"),
    case(lambda w: w.guard.set_budget(ACME, usd=1, per="tenant"), "per", "scope level",
         id="per=tenant"),
    # overage policies
    case(lambda w: w.guard.set_budget(W, usd=1, overage_policy="SOMETIMES"), "overage_policy",
         "'SOMETIMES'", "REJECT, ALLOW_IF_AVAILABLE, ALLOW_WITH_OVERDRAFT",
         id="policy-SOMETIMES"),
    case(lambda w: w.guard.set_budget(W, usd=1, overage_policy=bad(5)), "overage_policy",
         id="policy-int"),
    # alerts and degrade rules
    case(lambda w: w.guard.set_budget(ACME, usd=1, alerts=[2]), "alerts", "(0, 1]",
         id="alert-above-1"),
    case(lambda w: w.guard.set_budget(ACME, usd=1, alerts=0.5), "alerts", id="alerts-float"),
    case(lambda w: w.guard.set_budget(ACME, usd=1, degrade=[{"below": 2, "max_tokens": 5}]),
         "Degrade.below", "(0, 1]", id="degrade-below-2"),
    case(lambda w: w.guard.set_budget(ACME, usd=1, degrade=[5]), "degrade", id="degrade-int"),
]


@pytest.mark.parametrize(("call", "fragments"), SET_BUDGET_CASES)
def test_bad_budget_definition_is_refused(world: World, call: Call,
                                          fragments: tuple[str, ...]) -> None:
    """A refused definition leaves the existing one (and its ledgers) as they were."""
    run_case(world, call, fragments)


def test_dollars_are_exact_and_round_up(guard: al.Guard) -> None:
    """usd() reads floats by their shortest repr and never rounds an amount down."""
    assert al.usd(0.05) == al.Amount(al.Unit.USD_MICROCENTS, 5_000_000)
    assert al.usd(0.05).amount == al.usd("0.05").amount == al.usd(Decimal("0.05")).amount
    assert al.usd(19.99).amount == 1_999_000_000
    assert al.usd("0.000000001").amount == 1  # a tenth of a microcent rounds up
    assert al.usd(1e-9).amount == 1
    assert al.usd("0.0000000101").amount == 2
    assert al.usd("0.00000001").amount == 1
    assert al.usd(0).amount == 0
    assert al.usd("90071992.54740991").amount == MAX  # the largest amount, to the microcent
    with pytest.raises(al.InvalidRequest, match="more than the ledger can hold"):
        al.usd("90071992.547409911")  # rounds up past it
    (b,) = guard.set_budget(ACME, usd=0.05)
    assert b.allocated == 5_000_000
    (b,) = guard.set_budget(ACME, usd="0.000000001")
    assert b.allocated == 1


# -- reservations ----------------------------------------------------------------------


RESERVE_CASES = [
    *each("ttl_ms", lambda v: lambda w: w.guard.reserve(SUBJECT, LLM, al.usd(0.1), ttl_ms=v),
          (0, 999, 10**9, -1), "is outside 1000..86400000"),
    *each("ttl_ms", lambda v: lambda w: w.guard.reserve(SUBJECT, LLM, al.usd(0.1), ttl_ms=v),
          (1.5, True, "5"), "expected a whole number"),
    *each("grace_ms", lambda v: lambda w: w.guard.reserve(SUBJECT, LLM, al.usd(0.1),
                                                         grace_ms=v),
          (-1, 60_001, 10**9), "is outside 0..60000"),
    *each("grace_ms", lambda v: lambda w: w.guard.reserve(SUBJECT, LLM, al.usd(0.1),
                                                         grace_ms=v),
          (1.5, "5"), "expected a whole number"),
    case(lambda w: w.guard.reserve(SUBJECT, LLM, al.usd(0.1), overage_policy="SOMETIMES"),
         "overage_policy", "'SOMETIMES'", "REJECT", id="policy-SOMETIMES"),
    case(lambda w: w.guard.record(SUBJECT, LLM, al.usd(0.1), overage_policy="sometimes"),
         "overage_policy", "'sometimes'", id="record-policy"),
    # extend
    *each("by_ms", lambda v: lambda w: w.guard.extend(w.held.id, v), (0, -1, 86_400_001),
          "is outside 1..86400000"),
    *each("by_ms", lambda v: lambda w: w.guard.extend(w.held.id, v), (1.5, True, None),
          "expected a whole number"),
    case(lambda w: w.held.extend(0), "by_ms", "1..86400000", id="handle-extend-0"),
    case(lambda w: w.guard.release(w.held.id, "x" * 257), "reason", "256",
         id="release-reason-long"),
    case(lambda w: w.guard.release(w.held.id, bad(5)), "reason", "string", id="release-reason-int"),
]


@pytest.mark.parametrize(("call", "fragments"), RESERVE_CASES)
def test_bad_reservation_option_is_refused(world: World, call: Call,
                                           fragments: tuple[str, ...]) -> None:
    """ttl, grace, extension and policy bounds are checked before anything is held."""
    run_case(world, call, fragments)


def test_guard_options_out_of_range_are_refused(store: al.MemoryStore) -> None:
    """A guard cannot be built with defaults its reservations could not use."""
    for options, field in (({"ttl_ms": 0}, "ttl_ms"), ({"ttl_ms": 10**9}, "ttl_ms"),
                           ({"grace_ms": -1}, "grace_ms"), ({"grace_ms": 1.5}, "grace_ms"),
                           ({"max_extensions": -1}, "max_extensions")):
        with pytest.raises(al.InvalidRequest, match=field):
            al.Guard(store, **options)


RID_CASES = [
    pytest.param("nope", ("reservation_id", "'nope'", ID_RULE), id="nope"),
    pytest.param("acme:xyz", ("reservation_id", "'acme:xyz'", ID_RULE), id="short-token"),
    pytest.param("acme:" + "A" * 32, ("reservation_id", ID_RULE), id="upper-hex"),
    pytest.param("acme:" + "0" * 31, ("reservation_id", ID_RULE), id="31-hex"),
    pytest.param("acme:" + "0" * 33, ("reservation_id", ID_RULE), id="33-hex"),
    pytest.param(":" + GHOST, ("reservation_id tenant", NAME_RULE), id="empty-tenant"),
    pytest.param("{acme}:" + GHOST, ("reservation_id tenant", "'{acme}'"), id="hash-tag"),
    pytest.param("", ("reservation_id", ID_RULE), id="empty"),
    pytest.param(None, ("reservation_id", ID_RULE), id="none"),
    pytest.param(5, ("reservation_id", ID_RULE), id="int"),
]

RID_OPS = [
    pytest.param(lambda g, rid: g.get(rid), id="get"),
    pytest.param(lambda g, rid: g.commit(rid, al.usd(0.1)), id="commit"),
    pytest.param(lambda g, rid: g.release(rid), id="release"),
    pytest.param(lambda g, rid: g.extend(rid, 1_000), id="extend"),
]


@pytest.mark.parametrize(("rid", "fragments"), RID_CASES)
@pytest.mark.parametrize("op", RID_OPS)
def test_malformed_reservation_id_is_refused(world: World, op: Callable[[al.Guard, Any],
                                                                        object],
                                             rid: Any, fragments: tuple[str, ...]) -> None:
    """An id that is not `<tenant>:<32 hex>` never reaches the store."""
    refused(world, lambda w: op(w.guard, rid), fragments)


@pytest.mark.parametrize("op", RID_OPS)
@pytest.mark.parametrize("tenant", ["acme", "other", "nobody"])
def test_well_formed_unknown_reservation_id_is_not_found(
        world: World, op: Callable[[al.Guard, Any], object], tenant: str) -> None:
    """Through the unbound guard, an unknown id of any tenant is NotFound, naming the id."""
    refused(world, lambda w: op(w.guard, f"{tenant}:{GHOST}"), (f"{tenant}:{GHOST}",),
            al.NotFound)


def test_reservation_id_with_upper_case_tenant(world: World) -> None:
    """`ACME:<hex>` passes the id check with its tenant lowered (as a Subject's would be),
    so it must name the same reservation as `acme:<hex>`, or be refused as malformed;
    answering NotFound for a reservation that exists is neither."""
    token = world.held.id.split(":")[1]
    try:
        info = world.guard.get(f"ACME:{token}")
    except al.InvalidRequest as error:
        assert "reservation_id" in str(error)
    else:
        assert info.id == world.held.id


KEY_OPS = [
    pytest.param(lambda g, w, k: g.reserve(SUBJECT, LLM, al.usd(0.1), idempotency_key=k),
                 id="reserve"),
    pytest.param(lambda g, w, k: g.commit(w.held.id, al.usd(0.1), idempotency_key=k),
                 id="commit"),
    pytest.param(lambda g, w, k: g.release(w.held.id, idempotency_key=k), id="release"),
    pytest.param(lambda g, w, k: g.extend(w.held.id, 1_000, idempotency_key=k), id="extend"),
    pytest.param(lambda g, w, k: g.record(SUBJECT, LLM, al.usd(0.1), idempotency_key=k),
                 id="record"),
    pytest.param(lambda g, w, k: g.fund(ACME, "CREDIT", al.usd(1), idempotency_key=k),
                 id="fund"),
    pytest.param(lambda g, w, k: g.transfer(ACME, W, al.usd(1), idempotency_key=k),
                 id="transfer"),
]


@pytest.mark.parametrize("key", ["", "x" * 300, "x" * 257, "a b", "{x}", "ключ", 5],
                         ids=["empty", "300-chars", "257-chars", "space", "hash-tag",
                              "non-ascii", "int"])
@pytest.mark.parametrize("op", KEY_OPS)
def test_bad_idempotency_key_is_refused(world: World, op: Callable[..., object],
                                        key: Any) -> None:
    """Keys become part of store keys: 1-256 of A-Z a-z 0-9 _ . : @ - only."""
    refused(world, lambda w: op(w.guard, w, key), ("idempotency_key", KEY_CHARS))


def test_longest_idempotency_key_is_accepted(world: World) -> None:
    key = "K" * 256
    first = world.guard.reserve(SUBJECT, LLM, al.usd(0.1), idempotency_key=key)
    assert world.guard.reserve(SUBJECT, LLM, al.usd(0.1), idempotency_key=key).id == first.id


# -- actions, estimates and other arguments --------------------------------------------


OTHER_CASES = [
    *each("Action.kind", lambda k: lambda w: w.guard.reserve(
        SUBJECT, al.Action(k, "openai:gpt-4o"), al.usd(0.1)),
          ("LLM", "llm", "llm completion", "llm.", "a.b.c.d.e", ""), "<category>.<operation>"),
    *each("Action.name", lambda n: lambda w: w.guard.reserve(
        SUBJECT, al.Action("llm.completion", n), al.usd(0.1)),
          ("", "x" * 300, "x" * 257, "gpt\n4o"), "1-256 printable"),
    case(lambda w: w.guard.reserve(SUBJECT, al.Action("llm.completion", bad(5)),
                                   al.usd(0.1)),
         "Action.name", "string", id="name-int"),
    case(lambda w: w.guard.reserve(
        SUBJECT, al.Action("llm.completion", "m", tags=tuple("abcdefghijk")), al.usd(0.1)),
        "Action.tags", "at most 10", id="11-tags"),
    case(lambda w: w.guard.reserve(SUBJECT, bad("llm.completion"), al.usd(0.1)), "action",
         "expected an Action", id="action-str"),
    case(lambda w: w.guard.record(SUBJECT, bad("llm.completion"), al.usd(0.1)), "action",
         "expected an Action", id="record-action-str"),
    case(lambda w: w.guard.reserve(bad("acme"), LLM, al.usd(0.1)), "subject",
         "expected a Subject", id="subject-str"),
    case(lambda w: w.guard.reserve(None, LLM, al.usd(0.1)), "subject", "al.scope",
         id="subject-none"),
    # estimates and actuals
    case(lambda w: w.guard.reserve(SUBJECT, LLM, []), "estimate", "at least one Amount",
         id="estimate-empty"),
    case(lambda w: w.guard.reserve(SUBJECT, LLM, [al.usd(1), al.tokens(1), al.usd(2)]),
         "estimate", "USD_MICROCENTS is given twice", id="estimate-duplicate-unit"),
    case(lambda w: w.guard.reserve(SUBJECT, LLM, [al.usd(1), bad(5)]), "estimate",
         "expected Amount values", id="estimate-int-item"),
    case(lambda w: w.guard.reserve(SUBJECT, LLM, [bad("x")]), "estimate",
         "expected Amount values", id="estimate-str-item"),
    case(lambda w: w.guard.reserve(SUBJECT, LLM, bad(5)), "estimate", id="estimate-int"),
    case(lambda w: w.guard.reserve(SUBJECT, LLM, bad(None)), "estimate", id="estimate-none"),
    case(lambda w: w.guard.decide(SUBJECT, LLM, []), "estimate", id="decide-estimate-empty"),
    case(lambda w: w.guard.commit(w.held.id, []), "actual", "at least one Amount",
         id="actual-empty"),
    case(lambda w: w.guard.commit(w.held.id, [al.usd(0.1), al.usd(0.2)]), "actual",
         "given twice", id="actual-duplicate-unit"),
    case(lambda w: w.held.commit([bad(0.1)]), "actual", "expected Amount values",
         id="actual-float-item"),
    case(lambda w: w.guard.record(SUBJECT, LLM, []), "actual", "at least one Amount",
         id="record-actual-empty"),
    # fund, transfer, freeze, sweep
    case(lambda w: w.guard.fund(ACME, "GIVE", al.usd(1)), "operation", "'GIVE'",
         "CREDIT, DEBIT, RESET, RESET_SPENT, REPAY_DEBT", id="fund-operation"),
    case(lambda w: w.guard.fund(ACME, "CREDIT", bad([al.usd(1), al.tokens(1)])), "amount",
         "one unit at a time", id="fund-two-units"),
    case(lambda w: w.guard.fund(ACME, "CREDIT", bad(5)), "amount", id="fund-int"),
    case(lambda w: w.guard.fund(ACME, "RESET_SPENT", al.usd(1), spent=-1), "spent",
         f"0..{MAX}", id="fund-spent-negative"),
    case(lambda w: w.guard.fund(ACME, "CREDIT", al.usd(1), period="fortnight"), "period",
         "'fortnight'", id="fund-period"),
    case(lambda w: w.guard.fund(ACME, "REPAY_DEBT", al.usd(1)), "amount",
         "repay at most the debt (0)", id="repay-more-than-debt"),
    case(lambda w: w.guard.transfer(ACME, ACME, al.usd(1)), "transfer", "same budget",
         id="transfer-to-itself"),
    case(lambda w: w.guard.transfer(ACME, OTHER, al.usd(1)), "transfer", "one tenant",
         "'acme'", "'other'", id="transfer-across-tenants"),
    case(lambda w: w.guard.transfer(ACME, W, bad([al.usd(1), al.tokens(1)])), "amount",
         "one unit at a time", id="transfer-two-units"),
    case(lambda w: w.guard.freeze(ACME, "DOLLARS"), "unit", "'DOLLARS'", id="freeze-unit"),
    case(lambda w: w.guard.sweep(0), "limit", id="sweep-0"),
    case(lambda w: w.guard.tenant("a b"), "tenant", "'a b'", NAME_RULE, id="tenant-handle"),
]


@pytest.mark.parametrize(("call", "fragments"), OTHER_CASES)
def test_bad_argument_is_refused(world: World, call: Call, fragments: tuple[str, ...]) -> None:
    """Actions, estimates and administrative arguments follow the same rule: a clear
    InvalidRequest (a ValueError) and no change."""
    run_case(world, call, fragments)


UNIT_CASES = [
    case(lambda w: w.guard.reserve(SUBJECT, LLM, al.Amount(al.Unit.RISK_POINTS, 1)),
         "RISK_POINTS", "USD_MICROCENTS", id="reserve-unbudgeted-unit"),
    case(lambda w: w.guard.commit(w.held.id, al.tokens(5)), "TOKENS", "estimate",
         id="commit-unit-not-held"),
]


@pytest.mark.parametrize(("call", "fragments"), UNIT_CASES)
def test_amount_in_a_unit_nobody_holds_is_a_unit_mismatch(
        world: World, call: Call, fragments: tuple[str, ...]) -> None:
    """Valid amounts in the wrong unit are UnitMismatch, naming the units on both sides."""
    refused(world, call, fragments, al.UnitMismatch)


# -- cross-tenant isolation --------------------------------------------------------------


class CountingStore:
    """Passes every operation to a real store and counts them, to prove a refusal came
    before any store access; anything else (subscribe, close, ...) goes straight through."""

    def __init__(self, inner: al.MemoryStore) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def execute(self, op: Any) -> Any:
        self.calls += 1
        return self.inner.execute(op)

    async def aexecute(self, op: Any) -> Any:
        self.calls += 1
        return await self.inner.aexecute(op)


def _in_rival_scope(handle: al.TenantGuard) -> object:
    with al.scope(tenant="other"):
        return handle.reserve(None, LLM, al.usd(0.1))


FORBIDDEN_CASES = [
    pytest.param(lambda h, w: h.get(w.rival.id), id="get"),
    pytest.param(lambda h, w: h.commit(w.rival.id, al.usd(1)), id="commit"),
    pytest.param(lambda h, w: h.release(w.rival.id), id="release"),
    pytest.param(lambda h, w: h.extend(w.rival.id, 1_000), id="extend"),
    pytest.param(lambda h, w: h.get(f"other:{GHOST}"), id="get-unknown-id"),
    pytest.param(lambda h, w: h.commit(f"nobody:{GHOST}", al.usd(1)),
                 id="commit-unknown-tenant-id"),
    pytest.param(lambda h, w: h.release(f"other:{GHOST}"), id="release-unknown-id"),
    pytest.param(lambda h, w: h.balances(OTHER), id="balances"),
    pytest.param(lambda h, w: h.balances(f"{OTHER}/workspace:w"), id="balances-child"),
    pytest.param(lambda h, w: h.set_budget(OTHER, usd=1_000_000), id="set_budget"),
    pytest.param(lambda h, w: h.fund(OTHER, "CREDIT", al.usd(1)), id="fund"),
    pytest.param(lambda h, w: h.transfer(ACME, OTHER, al.usd(1)), id="transfer-to"),
    pytest.param(lambda h, w: h.transfer(OTHER, ACME, al.usd(1)), id="transfer-from"),
    pytest.param(lambda h, w: h.freeze(OTHER), id="freeze"),
    pytest.param(lambda h, w: h.unfreeze(OTHER), id="unfreeze"),
    pytest.param(lambda h, w: h.reserve(al.Subject(tenant="other"), LLM, al.usd(0.1)),
                 id="reserve"),
    pytest.param(lambda h, w: h.decide(al.Subject(tenant="other"), LLM, al.usd(0.1)),
                 id="decide"),
    pytest.param(lambda h, w: h.record(al.Subject(tenant="other"), LLM, al.usd(0.1)),
                 id="record"),
    pytest.param(lambda h, w: _in_rival_scope(h), id="reserve-in-scope"),
    pytest.param(lambda h, w: asyncio.run(h.acommit(w.rival.id, al.usd(1))), id="acommit"),
    pytest.param(lambda h, w: asyncio.run(h.aget(f"other:{GHOST}")), id="aget-unknown-id"),
    pytest.param(lambda h, w: asyncio.run(h.abalances(OTHER)), id="abalances"),
    pytest.param(lambda h, w: asyncio.run(h.areserve(al.Subject(tenant="other"), LLM,
                                                     al.usd(0.1))), id="areserve"),
]


@pytest.mark.parametrize("call", FORBIDDEN_CASES)
def test_tenant_handle_refuses_other_tenants_before_the_store(
        world: World, store: al.MemoryStore,
        call: Callable[[al.TenantGuard, World], object]) -> None:
    """guard.tenant("acme") raises Forbidden for another tenant's reservation (even one
    that does not exist: Forbidden, not NotFound), scope or subject, with zero store
    operations and nothing changed."""
    counting = CountingStore(store)
    acme = al.Guard(counting).tenant("acme")
    before = world.snapshot()
    with pytest.raises(al.Forbidden) as caught:
        call(acme, world)
    assert counting.calls == 0, "the store was touched before the refusal"
    assert "other" in str(caught.value) or "nobody" in str(caught.value)
    assert world.snapshot() == before


def test_tenant_handle_reaches_the_store_for_its_own_ids(world: World,
                                                         store: al.MemoryStore) -> None:
    """The contrast: its own unknown id is looked up (NotFound), its own live one found."""
    counting = CountingStore(store)
    acme = al.Guard(counting).tenant("ACME")
    with pytest.raises(al.NotFound):
        acme.get(f"acme:{GHOST}")
    assert counting.calls == 1
    assert acme.get(world.held.id).id == world.held.id
    assert counting.calls == 2


def test_isolation_holds_both_ways(world: World) -> None:
    """The handle of "other" cannot settle acme's live reservation either, while the unbound
    guard answers NotFound for an unknown id of "other"."""
    other = world.guard.tenant("other")
    touches: list[Call] = [
        lambda w: other.get(w.held.id), lambda w: other.release(w.held.id),
        lambda w: other.commit(w.held.id, al.usd(0.1)), lambda w: other.balances(W),
        lambda w: other.reserve(SUBJECT, LLM, al.usd(0.1))]
    for touch in touches:
        refused(world, touch, ("acme",), al.Forbidden)
    refused(world, lambda w: w.guard.get(f"other:{GHOST}"), ("no reservation",), al.NotFound)
    assert other.get(world.rival.id).status is al.ReservationStatus.ACTIVE
