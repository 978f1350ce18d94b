"""Dimension values are ids other systems issue (users, runs, sessions): kept exactly, case
and all, over a documented printable-ASCII alphabet, and written into scope text with `%`
escapes where a character would split it. Scope kinds (levels and dimension keys) and the
names operators type (tenant, workspace, ...) stay canonical lower case."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import allotment as al
from allotment.scopes import parse_scope

from support import LLM

ACME = "tenant:acme"
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
VALUES = st.text(alphabet=PRINTABLE, min_size=1, max_size=128)


def user(value: str, **levels: str) -> al.Subject:
    return al.Subject(tenant="acme", dimensions={"user": value}, **levels)


def spent_by_scope(guard: al.Guard) -> dict[str, int]:
    return {b.scope: b.spent for b in guard.balances(ACME, include_children=True)
            if b.scope != ACME}


def test_values_that_differ_only_in_case_are_different_users(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, per="user")
    guard.reserve(user("User_AbC"), LLM, al.tokens(60)).commit(al.tokens(60))
    guard.reserve(user("user_abc"), LLM, al.tokens(60)).commit(al.tokens(60))
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(user("User_AbC"), LLM, al.tokens(41))
    assert denied.value.decision.scope == f"{ACME}/user:User_AbC"
    assert spent_by_scope(guard) == {f"{ACME}/user:User_AbC": 60, f"{ACME}/user:user_abc": 60}
    (balance,) = guard.balances(f"{ACME}/user:User_AbC")
    assert (balance.scope, balance.spent) == (f"{ACME}/user:User_AbC", 60)


WIDE = ["bob+test@example.com", "auth0|5f7c8ec7c33c6c004bbafe82", "urn:uuid:6e8bc430-9c3a",
        "AWS/role:Admin", "50%off", "a{b}c*?[x]", "O'Brien\"#$&()=~^`;<>,!\\"]


@pytest.mark.parametrize("value", WIDE)
def test_ids_beyond_names_are_accepted_and_kept_apart(guard: al.Guard, value: str) -> None:
    """E-mail addresses, provider ids with `|` or `:`, paths with `/`, and any other
    printable ASCII character: each value is its own ledger, named in scope text by its
    quoted form, which reads back to the value."""
    guard.set_budget(ACME, tokens=100, per="user")
    r = guard.reserve(user(value), LLM, al.tokens(7))
    scope = f"{ACME}/user:{al.quote_value(value)}"
    assert r.info.scopes == (scope,)
    r.commit(al.tokens(5))
    guard.record(user(value.swapcase()), LLM, al.tokens(1))
    (balance,) = guard.balances(scope)
    assert (balance.scope, balance.spent) == (scope, 5)
    assert al.unquote_value(balance.scope.rpartition("/user:")[2]) == value
    assert guard.audit("acme", types=["reservation.committed"])[0].scopes == (scope,)


def test_quoted_text_never_holds_a_separator() -> None:
    assert al.quote_value("a/b|c%d:e") == "a%2Fb%7Cc%25d:e"
    assert al.quote_value("bob+test@example.com") == "bob+test@example.com"
    assert al.unquote_value("a%2fb%7cc%25d:e") == "a/b|c%d:e"


def test_scope_text_names_a_value_exactly(guard: al.Guard) -> None:
    """A dimension value in scope text keeps its case; the kind before it does not."""
    guard.set_budget(ACME, tokens=100, per="user")
    guard.record(user("Bob"), LLM, al.tokens(3))
    assert [b.spent for b in guard.balances(f"{ACME}/USER:Bob")] == [3]
    assert guard.balances(f"{ACME}/user:bob") == ()  # no such user has spent
    guard.fund(f"{ACME}/user:Bob", "CREDIT", al.tokens(10))
    assert [(b.allocated, b.spent) for b in guard.balances(f"{ACME}/user:Bob")] == [(110, 3)]
    assert guard.balances(f"{ACME}/user:bob") == ()


def test_escapes_in_scope_text_are_read_and_made_canonical(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, per="user")
    guard.record(user("a/b"), LLM, al.tokens(2))
    for text in ("a%2Fb", "a%2fb", "%61%2F%62"):
        assert [(b.scope, b.spent) for b in guard.balances(f"{ACME}/user:{text}")] == [
            (f"{ACME}/user:a%2Fb", 2)], text


def test_names_operators_type_stay_folded(guard: al.Guard) -> None:
    """Tenant, workspace and the other levels are names chosen and typed by the platform:
    `ACME` is `acme` in a subject, a scope, a YAML plan and a Redis key alike. Dimension
    keys are kinds and fold too; only the value after them is kept as given."""
    guard.set_budget("tenant:ACME/Workspace:Prod", tokens=100)
    guard.set_budget("tenant:acme/workspace:prod", tokens=50, per="RUN")
    subject = al.Subject(tenant="Acme", workspace="PROD", dimensions={"Run": "R-1"})
    assert subject == al.Subject(tenant="acme", workspace="prod", dimensions={"run": "R-1"})
    r = guard.reserve(subject, LLM, al.tokens(5))
    assert r.info.scopes == ("tenant:acme/workspace:prod", "tenant:acme/workspace:prod/run:R-1")
    assert r.id.startswith("acme:")


def test_a_plan_reads_names_and_kinds_as_calls_do(guard: al.Guard, tmp_path: Any) -> None:
    """YAML names fold as the calls do; the dimension values of the calls stay exact."""
    path = tmp_path / "plans.yaml"
    path.write_text("plans:\n  pro:\n    budgets:\n"
                    "      - {scope: 'Workspace:Prod', tokens: 100}\n"
                    "      - {scope: 'Workspace:Prod', tokens: 10, per: USER}\n")
    guard.assign_plan("ACME", al.Plan.load_all(path)["pro"])
    bob = al.Subject(tenant="acme", workspace="prod", dimensions={"user": "Bob"})
    assert guard.reserve(bob, LLM, al.tokens(4)).info.scopes == (
        "tenant:acme/workspace:prod", "tenant:acme/workspace:prod/user:Bob")
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(bob, LLM, al.tokens(7))
    guard.reserve(al.Subject(tenant="acme", workspace="prod", dimensions={"user": "BOB"}),
                  LLM, al.tokens(7))


def test_report_rows_per_user_keep_ids_apart(guard: al.Guard) -> None:
    """Rows `by="user"` are one per exact id, named by its quoted scope, whatever it holds."""
    guard.set_budget(ACME, tokens=1_000)
    for value, spend in (("User_AbC", 5), ("user_abc", 3), ("auth0|x/y:z", 2)):
        guard.reserve(user(value), LLM, al.tokens(spend)).commit(al.tokens(spend))
    rows = guard.report("acme", by="user")
    assert [(row.scope, row.committed) for row in rows] == [
        (f"{ACME}/user:User_AbC", {al.Unit.TOKENS: 5}),
        (f"{ACME}/user:user_abc", {al.Unit.TOKENS: 3}),
        (f"{ACME}/user:auth0%7Cx%2Fy:z", {al.Unit.TOKENS: 2})]
    assert al.unquote_value(rows[2].scope.partition("/user:")[2]) == "auth0|x/y:z"


def test_runs_that_differ_in_case_are_two_runs(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=1_000)
    guard.set_quota(ACME, runs=1, window="day")
    run = al.Subject(tenant="acme", dimensions={"run": "Run-A"})
    guard.reserve(run, LLM, al.tokens(1)).commit(al.tokens(1))
    guard.reserve(run, LLM, al.tokens(1)).commit(al.tokens(1))  # the same run again
    with pytest.raises(al.QuotaExceeded):
        guard.reserve(al.Subject(tenant="acme", dimensions={"run": "run-a"}), LLM,
                      al.tokens(1))


def test_the_scope_helper_keeps_case(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, per="session")
    with al.scope(tenant="acme", session="S-XyZ"):
        r = guard.reserve(None, LLM, al.tokens(4))
    assert r.info.scopes == (f"{ACME}/session:S-XyZ",)


BAD_VALUES = [("", "1-128"), ("a b", "'a b'"), ("tab\tx", "'tab\\tx'"), ("x\ny", "'x\\ny'"),
              ("nul\x00", "'nul\\x00'"), ("caf\u00e9", "'caf\u00e9'"), ("K\u212a", "'K\u212a'"),
              ("x" * 129, "1-128"), ("\x7f", "'\\x7f'")]


@pytest.mark.parametrize(("value", "shown"), BAD_VALUES,
                         ids=[f"{v!r:.16}" for v, _ in BAD_VALUES])
def test_values_outside_the_alphabet_are_refused(guard: al.Guard, value: str,
                                                 shown: str) -> None:
    """Whitespace, control characters, non-ASCII (no look-alike folding: the Kelvin sign
    is not K) and more than 128 characters are refused with the rule, before any store."""
    guard.set_budget(ACME, tokens=100, per="user")
    with pytest.raises(al.InvalidRequest) as refused:
        guard.reserve(user(value), LLM, al.tokens(1))
    message = str(refused.value)
    assert "dimensions['user']" in message and shown in message
    assert "printable ASCII" in message and "case is kept" in message
    assert guard.balances(ACME, include_children=True) == ()


BAD_TEXT = ["50%", "50%zz", "%2", "a%20b", "%0A", "%C3%A9", "%7F", ""]


@pytest.mark.parametrize("text", BAD_TEXT)
def test_bad_escapes_in_scope_text_are_refused(guard: al.Guard, text: str) -> None:
    """A `%` that is not one of the escapes, or an escape of a character no value may hold
    (space, a control character, non-ASCII), is refused naming the text and the escapes."""
    guard.set_budget(ACME, tokens=100, per="user")
    with pytest.raises(al.InvalidRequest) as refused:
        guard.balances(f"{ACME}/user:{text}")
    message = str(refused.value)
    assert f"user: {text!r}" in message, message
    assert "printable ASCII" in message and "% as %25, / as %2F and | as %7C" in message


def test_a_raw_slash_in_scope_text_is_a_separator(guard: al.Guard) -> None:
    with pytest.raises(al.InvalidRequest, match="bad segment 'b'"):
        guard.balances(f"{ACME}/user:a/b")


def test_a_long_value_fits_the_longest_scope(guard: al.Guard) -> None:
    """The quoted form may be three times the value: six levels at their longest and a
    128-character value of `/` still make a scope the stores accept."""
    levels = {level: "x" * 128 for level in ("workspace", "app", "workflow", "agent",
                                             "toolset")}
    subject = al.Subject(tenant="t" * 128, dimensions={"user": "/" * 128}, **levels)
    guard.set_budget(subject.scope_path, tokens=10, per="user")
    r = guard.reserve(subject, LLM, al.tokens(1))
    (scope,) = r.info.scopes
    assert scope == f"{subject.scope_path}/user:{'%2F' * 128}"
    assert [b.reserved for b in guard.balances(scope)] == [1]


@settings(max_examples=200, deadline=None)
@given(value=VALUES)
def test_quoting_round_trips_and_never_leaves_a_separator(value: str) -> None:
    quoted = al.quote_value(value)
    assert "/" not in quoted and "|" not in quoted
    assert al.unquote_value(quoted) == value
    lowered = re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quoted)
    assert al.unquote_value(lowered) == value  # escapes read in either case
    subject = user(value)
    assert subject.dimensions == {"user": value}


@settings(max_examples=200, deadline=None)
@given(value=VALUES, data=st.data())
def test_scope_text_reads_any_escaping_as_the_canonical_one(value: str,
                                                            data: st.DataObject) -> None:
    """However a value is escaped in scope text (any character as %XX, hex in either case),
    it names the ledger its canonical quoted form names."""
    written = []
    for char in value:
        if char in "%/|" or data.draw(st.booleans()):
            code = f"%{ord(char):02X}"
            written.append(code.lower() if data.draw(st.booleans()) else code)
        else:
            written.append(char)
    path = parse_scope(f"tenant:Acme/Workspace:W/USER:{''.join(written)}")
    assert path == ("acme", "tenant:acme/workspace:w", ("user", al.quote_value(value)))
    assert path.path == f"tenant:acme/workspace:w/user:{al.quote_value(value)}"


@settings(max_examples=200, deadline=None)
@given(a=VALUES, b=VALUES)
def test_quoting_is_one_to_one(a: str, b: str) -> None:
    assert (al.quote_value(a) == al.quote_value(b)) == (a == b)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_any_value_round_trips_through_a_store(guard: Any, value: str) -> None:
    """Through either store: the ledger a value charges is named by its quoted form, which
    reads back to the value, and querying that scope finds exactly that ledger."""
    if not guard.balances(ACME):
        guard.set_budget(ACME, tokens=10**9)
        guard.set_budget(ACME, tokens=10**6, per="user")
    r = guard.reserve(user(value), LLM, al.tokens(1))
    scope = r.info.scopes[-1]
    assert scope == f"{ACME}/user:{al.quote_value(value)}"
    assert al.unquote_value(scope.partition("/user:")[2]) == value
    r.release()
    (balance,) = guard.balances(scope)
    assert (balance.scope, balance.reserved) == (scope, 0)
