"""Hostile input can't hurt: every value that reaches a store is bounded and checked at the
boundary, so both stores see the same, and refuse nothing the other accepts.

Each case is refused with an `InvalidRequest` naming its field, on both stores and through
both ways of calling, and changes nothing: the tenant's balances and audit log are the same
before and after. The bounds are the ones README.md lists under "Limits on input".
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import allotment as al
from allotment.validation import MAX_TOKENS

from support import LLM

ACME = "tenant:acme"
SUBJECT = al.Subject(tenant="acme", dimensions={"run": "r1"})
SURROGATE = "bad\ud800text"
KELVIN = "\u212a"  # KELVIN SIGN: lower-cases to the ASCII "k"
MAX = 2**53 - 1


def snapshot(guard: al.Guard) -> tuple[Any, ...]:
    return (guard.balances(ACME), guard.audit("acme", limit=1_000))


@pytest.fixture
def acme(guard: al.Guard) -> al.Guard:
    """acme with $10 (REJECT), a day's tokens, some spend and one live reservation."""
    guard.set_budget(ACME, usd=10, overage_policy="REJECT")
    guard.set_budget(ACME, tokens=1_000_000, period="day")
    guard.reserve(SUBJECT, LLM, al.usd(0.25)).commit(al.usd(0.2))
    guard.reserve(SUBJECT, LLM, al.usd(0.5))
    return guard


def refused(guard: al.Guard, call: Callable[[al.Guard], object], *fragments: str) -> str:
    """`call` raises InvalidRequest (a ValueError) holding every fragment; nothing changed."""
    before = snapshot(guard)
    with pytest.raises(al.InvalidRequest) as caught:
        call(guard)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    assert len(message) < 2_000, "the message echoes the input back"
    assert snapshot(guard) == before, "a refused call changed the store"
    return message


def bad(value: object) -> Any:
    """A value of the wrong type, passed on purpose."""
    return value


def case(call: Callable[[al.Guard], object], *fragments: str, id: str) -> Any:
    return pytest.param(call, fragments, id=id)


def degrade(**rule: Any) -> Callable[[al.Guard], object]:
    return lambda g: g.set_budget(ACME, usd=10, degrade=[rule])


# -- 1. degrade rules: every cap bounded -------------------------------------------------

DEGRADE_CASES = [
    case(degrade(below=0.5, max_tokens=-1), "Degrade.max_tokens", f"1..{MAX_TOKENS}",
         id="max_tokens=-1"),
    case(degrade(below=0.5, max_tokens=0), "Degrade.max_tokens", id="max_tokens=0"),
    case(degrade(below=0.5, max_tokens=2**70), "Degrade.max_tokens", id="max_tokens=2**70"),
    case(degrade(below=0.5, max_tokens=MAX_TOKENS + 1), "Degrade.max_tokens",
         id="max_tokens=MAX+1"),
    case(degrade(below=0.5, max_tokens=bad(1.5)), "Degrade.max_tokens", "whole number",
         id="max_tokens=1.5"),
    case(degrade(below=0.5, max_tokens=bad("5")), "Degrade.max_tokens", "whole number",
         id="max_tokens='5'"),
    case(degrade(below=0.5, cooldown_ms=-5), "Degrade.cooldown_ms", "0..86400000",
         id="cooldown_ms=-5"),
    case(degrade(below=0.5, cooldown_ms=10**12), "Degrade.cooldown_ms", id="cooldown-huge"),
    case(degrade(below=0.5, model="m" * 70_000), "Degrade.model", "1-128",
         id="model-70KB"),
    case(degrade(below=0.5, model=""), "Degrade.model", "1-128", id="model-empty"),
    case(degrade(below=0.5, model=bad(b"gpt")), "Degrade.model", "string", id="model-bytes"),
    case(degrade(below=0.5, model=SURROGATE), "Degrade.model", "UTF-8",
         id="model-surrogate"),
    case(degrade(below=0.5, model="gpt\n4o"), "Degrade.model", "printable",
         id="model-newline"),
    case(lambda g: g.set_budget(ACME, usd=10, degrade=[bad({1: 2})]), "degrade[0]",
         "not a string", id="rule-int-key"),
    case(lambda g: g.set_budget(ACME, usd=10, degrade=bad("x")), "degrade",
         "expected a list", id="rules-str"),
    case(lambda g: g.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1, max_tokens=1)] * 17),
         "degrade", "at most 16", id="17-rules"),
    case(lambda g: g.set_budget(ACME, usd=10, alerts=[0.5] * 8_001), "alerts", "at most 16",
         id="8001-alerts"),
    case(lambda g: g.set_budget(ACME, usd=10, alerts=[0.5] * 17), "alerts", "at most 16",
         id="17-alerts"),
    case(lambda g: g.set_budget(ACME, usd=10, alerts=bad("0.5")), "alerts", "expected a list",
         id="alerts-str"),
    case(lambda g: g.set_budget(ACME, usd=10, alerts=[bad(None)]), "alerts[0]", "(0, 1]",
         id="alert-none"),
]


@pytest.mark.parametrize(("call", "fragments"), DEGRADE_CASES)
def test_budget_rules_are_bounded(acme: al.Guard, call: Callable[[al.Guard], object],
                                  fragments: tuple[str, ...]) -> None:
    refused(acme, call, *fragments)


def test_the_largest_rule_lists_are_accepted(acme: al.Guard) -> None:
    models = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}  # priced: checked
    rules = [al.Degrade(below=(i + 1) / 16, max_tokens=MAX_TOKENS, model=models,
                        cooldown_ms=86_400_000) for i in range(16)]
    alerts = [(i + 1) / 16 for i in range(16)]
    acme.set_budget(ACME, usd=10, degrade=rules, alerts=alerts)


def test_a_negative_degrade_cap_cannot_overspend_a_reject_budget(guard: al.Guard) -> None:
    """A cap of -1 tokens once shrank elastic holds below nothing, and a REJECT budget of
    $10 ended with $901 spent. The rule is refused when set; the tightest legal rule keeps
    spend within the budget."""
    for cap in (-1, 0):
        with pytest.raises(al.InvalidRequest, match="max_tokens"):
            guard.set_budget(ACME, usd=10, overage_policy="REJECT",
                             degrade=[{"below": 1, "max_tokens": cap}])
    assert guard.balances(ACME) == ()
    guard.set_budget(ACME, usd=10, overage_policy="REJECT",
                     degrade=[al.Degrade(below=1, max_tokens=1)])
    estimate = al.Elastic(fixed=[al.usd(1)], per_mtok=[al.usd(100)], max_tokens=4_000,
                          floor=0)
    for _ in range(30):
        try:
            r = guard.reserve(SUBJECT, LLM, estimate)
        except al.Denied:
            break
        try:
            r.commit(al.usd(1))
        except al.AllotmentError:
            r.release()
    (balance,) = guard.balances(ACME)
    assert balance.spent + balance.debt <= al.usd(10).amount


# -- 2./3. globs: bounded, and one dialect on both stores --------------------------------

GLOB_CASES = [
    *[case(lambda g, f=f: g.set_access(ACME, **{f: ["gpt-[4]*"]}), f, "[ ]", "* ", "?",
           id=f"{f}-class") for f in ("models_allow", "models_deny", "tools_allow",
                                      "tools_deny")],
    case(lambda g: g.set_access(ACME, models_deny=["gpt-4]"]), "models_deny[0]", "[ ]",
         id="close-bracket"),
    case(lambda g: g.set_access(ACME, models_allow=bad(5)), "models_allow", "expected a list",
         id="models_allow=5"),
    case(lambda g: g.set_access(ACME, models_allow=bad("gpt-4o*")), "models_allow",
         "expected a list", id="models_allow-str"),
    case(lambda g: g.set_access(ACME, tools_deny=[bad(5)]), "tools_deny[0]", "string",
         id="glob-int"),
    case(lambda g: g.set_access(ACME, tools_deny=["x" * 129]), "tools_deny[0]", "1-128",
         id="glob-129-chars"),
    case(lambda g: g.set_access(ACME, tools_deny=[""]), "tools_deny[0]", "1-128",
         id="glob-empty"),
    case(lambda g: g.set_access(ACME, tools_deny=[f"t{i}" for i in range(65)]), "tools_deny",
         "at most 64", id="65-globs"),
    case(lambda g: g.set_access(ACME, models_deny=[SURROGATE]), "models_deny[0]", "UTF-8",
         id="glob-surrogate"),
    case(lambda g: g.set_quota(ACME, calls=5, window="day", action_kind="llm.[c]*"),
         "action_kind", "[ ]", id="quota-class"),
    case(lambda g: g.set_quota(ACME, calls=5, window="day", action_kind="llm.%c+"),
         "action_kind", "a-z0-9_.*?", id="quota-magic"),
    case(lambda g: g.set_quota(ACME, calls=5, window="day", action_kind="l" * 65),
         "action_kind", id="quota-65-chars"),
    case(lambda g: g.set_quota(ACME, calls=5, window="day", action_kind=bad(5)),
         "action_kind", "string", id="quota-int"),
]


@pytest.mark.parametrize(("call", "fragments"), GLOB_CASES)
def test_globs_are_bounded_and_use_one_dialect(acme: al.Guard,
                                               call: Callable[[al.Guard], object],
                                               fragments: tuple[str, ...]) -> None:
    refused(acme, call, *fragments)


GLOBS = ["gpt-4o*", "gpt-4o", "*mini", "gpt-?o*", "*.(mini)", "%d+", "a^b$", "*-*-*",
         "gpt?4o-mini", "ü?", "?ü*", "??", "*?*", "*", "x.y*", "*+*", "gpt-4o-mini*?"]
NAMES = ["openai:gpt-4o", "openai:gpt-4o-mini", "gpt-4o.(mini)", "%d+", "a^b$", "x-y-z",
         "gpt.4o-mini", "über", "üü", "çü", "aü", "x.y", "a+b", "gpt-4o-mini"]


def test_globs_match_alike_on_both_stores(guard: al.Guard) -> None:
    """Each glob denies exactly the names fnmatchcase matches (whole name or the part after
    the provider), Lua pattern characters and non-ASCII names included."""
    for glob in GLOBS:
        guard.set_access(ACME, models_deny=[glob])
        for name in NAMES:
            bare = name.rsplit(":", 1)[-1]
            expected = fnmatch.fnmatchcase(name, glob) or fnmatch.fnmatchcase(bare, glob)
            decision = guard.decide(SUBJECT, al.Action("llm.completion", name), al.usd(0))
            assert (decision.reason == al.Reason.MODEL_NOT_ALLOWED) == expected, (glob, name)


def test_a_glob_with_many_stars_does_not_stall_the_store(guard: al.Guard) -> None:
    """A Lua pattern with many `.*` backtracks exponentially (a Redis script blocks every
    client): matching stays a scan per piece."""
    guard.set_budget(ACME, usd=10)
    guard.set_access(ACME, models_deny=["*a" * 30 + "b"] * 64, tools_deny=["*a" * 60 + "b"])
    guard.set_quota(ACME, calls=5, window="day", action_kind="*l" * 20 + "x")
    started = time.perf_counter()
    decision = guard.decide(SUBJECT, al.Action("llm.completion", "a" * 256), al.usd(0))
    assert decision.allowed
    assert time.perf_counter() - started < 2


# -- 4. token caps round-trip exactly ------------------------------------------------------

CAP_CASES = [
    case(lambda g: g.set_access(ACME, max_tokens_per_call=MAX), "max_tokens_per_call",
         f"1..{MAX_TOKENS}", id="2**53-1"),
    case(lambda g: g.set_access(ACME, max_tokens_per_call=MAX_TOKENS + 1),
         "max_tokens_per_call", id="MAX+1"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=[al.usd(0)], per_mtok=[],
                                                      max_tokens=MAX_TOKENS + 1)),
         "Elastic.max_tokens", f"1..{MAX_TOKENS}", id="elastic-max_tokens"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=[al.usd(0)], per_mtok=[],
                                                      max_tokens=10, floor=11)),
         "Elastic.floor", "0..10", id="elastic-floor"),
]


@pytest.mark.parametrize(("call", "fragments"), CAP_CASES)
def test_token_caps_are_bounded(acme: al.Guard, call: Callable[[al.Guard], object],
                                fragments: tuple[str, ...]) -> None:
    refused(acme, call, *fragments)


def test_the_largest_token_cap_round_trips_exactly(guard: al.Guard) -> None:
    """cjson keeps 14 significant digits: every allowed cap comes back as the same int."""
    guard.set_budget(ACME, usd=10)
    guard.set_access(ACME, max_tokens_per_call=MAX_TOKENS)
    r = guard.reserve(SUBJECT, LLM, al.usd(1))
    assert r.caps is not None
    assert r.caps.max_tokens == MAX_TOKENS and type(r.caps.max_tokens) is int
    r.commit(al.usd(1))
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1, max_tokens=MAX_TOKENS - 1)])
    r = guard.reserve(SUBJECT, LLM, al.usd(1))
    assert r.caps is not None
    assert r.caps.max_tokens == MAX_TOKENS - 1 and type(r.caps.max_tokens) is int


# -- 5. text a store keeps is valid UTF-8 and bounded ----------------------------------------

TEXT_CASES = [
    case(lambda g: g.reserve(SUBJECT, al.Action("llm.completion", SURROGATE), al.usd(1)),
         "Action.name", "UTF-8", id="action-name"),
    case(lambda g: g.reserve(SUBJECT, al.Action("llm.completion", bad(b"gpt")), al.usd(1)),
         "Action.name", "string", id="action-name-bytes"),
    case(lambda g: g.reserve(SUBJECT, al.Action("llm.completion", "m", tags=(SURROGATE,)),
                             al.usd(1)), "Action.tags", "UTF-8", id="action-tag"),
    case(lambda g: g.reserve(SUBJECT, al.Action("llm.completion", "m", tags=bad("abc")),
                             al.usd(1)), "Action.tags", "expected a list", id="tags-str"),
    case(lambda g: g.reserve(SUBJECT, al.Action("llm.completion", "m", tags=(bad(5),)),
                             al.usd(1)), "Action.tags", "string", id="tag-int"),
    case(lambda g: g.reserve(SUBJECT, al.Action("llm.completion", "m", tags=("x" * 65,)),
                             al.usd(1)), "Action.tags", "1-64", id="tag-65-chars"),
    case(lambda g: g.reserve(SUBJECT, al.Action(bad(5), "m"), al.usd(1)), "Action.kind",
         "string", id="action-kind-int"),
    case(lambda g: g.audit("acme", types=[SURROGATE]), "types[0]", "UTF-8",
         id="audit-type"),
    case(lambda g: g.assign_plan("acme", al.Plan(name=SURROGATE)), "Plan.name", "UTF-8",
         id="plan-name"),
]


@pytest.mark.parametrize(("call", "fragments"), TEXT_CASES)
def test_text_is_checked_before_any_store(acme: al.Guard, call: Callable[[al.Guard], object],
                                          fragments: tuple[str, ...]) -> None:
    refused(acme, call, *fragments)


def test_a_release_reason_is_utf8_text(acme: al.Guard) -> None:
    r = acme.reserve(SUBJECT, LLM, al.usd(1))
    refused(acme, lambda g: r.release(SURROGATE), "reason", "UTF-8")
    refused(acme, lambda g: r.release(bad(b"done")), "reason", "string")


# -- 6. wrong types are InvalidRequest, never TypeError --------------------------------------

TYPE_CASES = [
    case(lambda g: g.set_budget(ACME, usd="1e999999"), "usd", "more than the ledger",
         id="usd-1e999999"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.usd("1e999999")), "usd", "more than the ledger",
         id="usd()-1e999999"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.tokens(10**5000)), "Amount.amount",
         id="tokens-huge"),
    case(lambda g: g.audit("acme", types=bad(5)), "types", "expected a list",
         id="audit-types=5"),
    case(lambda g: g.audit("acme", types=[bad(5)]), "types[0]", "string", id="audit-type=5"),
    case(lambda g: g.audit("acme", types=["t"] * 65), "types", "at most 64",
         id="audit-65-types"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=bad(5), per_mtok=[],
                                                      max_tokens=10)),
         "Elastic.fixed", "Amount", id="elastic-fixed-int"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=[bad(5)], per_mtok=[],
                                                      max_tokens=10)),
         "Elastic.fixed", "Amount", id="elastic-fixed-item"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=[], per_mtok=bad("x"),
                                                      max_tokens=10)),
         "Elastic.per_mtok", "Amount", id="elastic-per_mtok-str"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=[], per_mtok=[],
                                                      max_tokens=bad("10"))),
         "Elastic.max_tokens", "whole number", id="elastic-max_tokens-str"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=[], per_mtok=[],
                                                      max_tokens=bad(float("inf")))),
         "Elastic.max_tokens", "whole number", id="elastic-max_tokens-inf"),
    case(lambda g: g.reserve(SUBJECT, LLM, al.Elastic(fixed=[], per_mtok=[], max_tokens=10,
                                                      floor=bad(None))),
         "Elastic.floor", "whole number", id="elastic-floor-none"),
]


@pytest.mark.parametrize(("call", "fragments"), TYPE_CASES)
def test_wrong_types_are_invalid_requests(acme: al.Guard, call: Callable[[al.Guard], object],
                                          fragments: tuple[str, ...]) -> None:
    refused(acme, call, *fragments)


def test_plans_refuse_keys_that_are_not_strings(acme: al.Guard, tmp_path: Path) -> None:
    refused(acme, lambda g: al.Plan.from_dict(bad({1: 2}), "pro"), "plan 'pro'", "key 1",
            "quote the key")
    refused(acme, lambda g: al.Plan.from_dict(bad({1: 2})), "plan", "key 1")
    refused(acme, lambda g: al.Plan.from_dict(bad([1])), "plan", "mapping")
    yaml = tmp_path / "plans.yaml"
    yaml.write_text("plans:\n  pro:\n    on: true\n    budgets: [{usd: 5}]\n")
    refused(acme, lambda g: al.Plan.load_all(yaml), "plan 'pro'", "key True", "quote")
    yaml.write_text("plans:\n  yes: {budgets: [{usd: 5}]}\n")
    refused(acme, lambda g: al.Plan.load_all(yaml), "plans", "key True", "quote")


PLAN_CASES = [
    case({"budgets": [{"usd": 5, "alerts": [0.5] * 8_001}]}, "budgets[0]", "alerts",
         "at most 16", id="8001-alerts"),
    case({"budgets": [{"usd": 5, "degrade": [{"below": 0.5, "max_tokens": -1}]}]},
         "max_tokens", id="negative-degrade"),
    case({"budgets": [{"usd": 5}] * 65}, "at most 64", id="65-definitions"),
    case({"access": [{"models_deny": ["gpt-[4]*"]}]}, "access[0]", "models_deny[0]", "[ ]",
         id="glob-class"),
    case({"access": [{"max_tokens_per_call": MAX}]}, "access[0]", "max_tokens_per_call",
         id="huge-cap"),
    case({"quotas": [{"calls": 5, "window": "day", "action_kind": "llm.[c]"}]}, "quotas[0]",
         "action_kind", id="quota-glob"),
    case({"budgets": [{"usd": "1e999999"}]}, "budgets[0]", "usd", id="usd-overflow"),
    case({"name": "x" * 129}, "Plan.name", "1-128", id="name-129"),
]


@pytest.mark.parametrize(("body", "fragments"), PLAN_CASES)
def test_a_plan_is_checked_when_it_loads(acme: al.Guard, body: dict[str, Any],
                                         fragments: tuple[str, ...]) -> None:
    """A plan that loads can be assigned: each definition is checked as its own call would
    check it, so a bad default plan fails at startup, not on every reserve."""
    refused(acme, lambda g: al.Plan.from_dict({"name": "pro", **body}), *fragments)


# -- 7. no silent rewrite of non-ASCII names ---------------------------------------------------

KELVIN_CASES = [
    case(lambda g: g.reserve(al.Subject(tenant=f"{KELVIN}evin"), LLM, al.usd(1)),
         "Subject.tenant", id="subject-tenant"),
    case(lambda g: g.reserve(al.Subject(tenant="acme", agent=f"{KELVIN}"), LLM, al.usd(1)),
         "Subject.agent", id="subject-level"),
    case(lambda g: g.reserve(al.Subject(tenant="acme", dimensions={f"{KELVIN}ey": "v"}), LLM,
                             al.usd(1)), "dimension key", id="dimension-key"),
    case(lambda g: g.reserve(al.Subject(tenant="acme", dimensions={"run": f"{KELVIN}"}), LLM,
                             al.usd(1)), "dimensions['run']", id="dimension-value"),
    case(lambda g: g.set_budget(f"tenant:acme/wor{KELVIN}space:w", usd=1), "scope",
         id="scope-level-name"),
    case(lambda g: g.set_budget(f"tenant:{KELVIN}evin", usd=1), "scope", id="scope-tenant"),
    case(lambda g: g.balances(f"tenant:acme/run:{KELVIN}"), "scope", id="scope-dimension"),
    case(lambda g: g.set_budget(ACME, usd=1, per=f"{KELVIN}ey"), "per", id="per"),
    case(lambda g: g.tenant(f"{KELVIN}evin"), "tenant", id="tenant-handle"),
    case(lambda g: g.get(f"{KELVIN}evin:{'0' * 32}"), "reservation_id", id="reservation-id"),
    case(lambda g: g.audit(f"{KELVIN}evin"), "tenant", id="audit-tenant"),
    case(lambda g: g.set_mode(f"{KELVIN}evin", "shadow"), "tenant", id="mode-tenant"),
    case(lambda g: g.set_budget(ACME, amount=5, unit="TOKEN\u017f"), "unit", id="unit-long-s"),
    case(lambda g: g.set_budget(ACME, usd=5, overage_policy="REJECT\u017f"), "overage_policy",
         id="policy-long-s"),
    case(lambda g: g.set_budget(ACME, usd=5, period=f"wee{KELVIN}"), "period", id="period"),
]


@pytest.mark.parametrize(("call", "fragments"), KELVIN_CASES)
def test_non_ascii_names_are_refused_not_lowered(acme: al.Guard,
                                                 call: Callable[[al.Guard], object],
                                                 fragments: tuple[str, ...]) -> None:
    """`'\u212aevin'.lower() == 'kevin'`: checking after lowering would accept it as
    another name."""
    refused(acme, call, *fragments)
