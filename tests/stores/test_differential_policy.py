"""Policy inputs on the memory store and on Redis, in lockstep: access rules with globs
(`?`, `*`, classes, and what is special in Lua patterns: `.`, `-`, `%`), per-call caps,
alert thresholds, degrade rules, quotas and required dimensions, beside reservations,
decisions, records and settlements.
Every observable result must be the same on both: decisions (caps and reasons included),
balances, notifications, audit records and report rows.

Fixed seed and a modest number of examples for CI; ALLOTMENT_FUZZ_EXAMPLES=500 runs more.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import allotment as al

from support.stores import START_MS, make_store

pytestmark = pytest.mark.filterwarnings("ignore::allotment.BudgetHierarchyWarning")
"""The random budget trees set children larger than their parents on purpose."""

ACME = al.Subject(tenant="acme")
SCOPES = ["tenant:acme", "tenant:acme/workspace:w", "tenant:acme/workspace:w/agent:a"]
GLOB_CHARS = "ab-.%*?!:^$é"  # the dialect is * and ?; [ and ] are refused before a store
GLOBS = st.text(GLOB_CHARS, min_size=1, max_size=6) | st.sampled_from(
    ["gpt-4o*", "openai:*", "*", "a%b", "a.b", "a-b", "!a?", "a$", "^a*"])
NAMES = st.text("ab-.%:[]!é", min_size=1, max_size=6) | st.sampled_from(
    ["openai:gpt-4o", "openai:gpt-4o-mini", "anthropic:claude-sonnet-4-6", "a%b", "a.b",
     "x:a-b", "search"])
TARGETS = st.sampled_from(["gpt-4o-mini", "openai:gpt-4.1-nano", "claude-haiku-4-5",
                           {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}])
"""Degrade models: one name (set for the providers pricing it), or one per provider."""
KINDS = st.sampled_from(["llm.completion", "llm.embedding", "tool.call", "tool.search"])
KIND_GLOBS = st.sampled_from(["*", "llm.*", "tool.*", "tool.?all", "llm.?o*", "*.?earch",
                              "*.call", "tool.call"])
GLOB_LIST = st.lists(GLOBS, max_size=3)
DEGRADE = st.builds(al.Degrade, below=st.sampled_from([0.05, 0.2, 0.5, 0.9, 1.0]),
                    max_tokens=st.integers(1, 500),
                    model=st.none() | TARGETS,
                    cooldown_ms=st.none() | st.integers(0, 1_000)) | st.builds(
    al.Degrade, below=st.sampled_from([0.05, 0.5, 1.0]), model=TARGETS)
ALERTS = st.lists(st.sampled_from([0.1, 1 / 3, 0.5, 2 / 3, 0.8, 0.9, 1.0]), max_size=4,
                  unique=True)
EXAMPLES = int(os.environ.get("ALLOTMENT_FUZZ_EXAMPLES", "25"))


def subject(depth: int, run: str | None) -> al.Subject:
    levels = dict(list({"workspace": "w", "agent": "a"}.items())[:depth])
    return al.Subject(tenant="acme", dimensions={"run": run} if run else {}, **levels)


def seen(call: Any) -> Any:
    """What a call answered, comparable across stores (ids left out)."""
    try:
        result = call()
    except al.AllotmentError as error:
        return (type(error).__name__, getattr(error, "decision", None))
    if isinstance(result, al.Reservation):
        return ("reserved", result.decision, result.estimate, result.balances)
    if isinstance(result, (al.CommitResult, al.ReleaseResult)):
        return (result.status, getattr(result, "charged", None), result.balances)
    if isinstance(result, al.RecordResult):
        return ("recorded", result.charged, result.balances)
    return result


def note_row(note: al.Notification) -> tuple[Any, ...]:
    return (note.type, note.tenant, note.at_ms, note.scope, note.unit, note.bucket,
            note.threshold, note.reason, note.remaining, note.allocated,
            note.reservation_id is None, note.amounts, note.detail)


def audit_row(record: al.AuditRecord) -> tuple[Any, ...]:
    return (record.seq, record.at_ms, record.type, record.scopes, record.subject,
            record.action, record.idempotency_key, record.estimate, record.actual,
            record.charged, record.reason, record.reservation_id is None,
            json.dumps(record.detail, sort_keys=True))


class PolicyLockstep(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = al.ManualClock(START_MS)
        self.guards = [al.Guard(make_store("memory", self.clock), ttl_ms=20_000, grace_ms=0),
                       al.Guard(make_store("redis", self.clock), ttl_ms=20_000, grace_ms=0)]
        self.notes: list[list[Any]] = [[], []]
        for guard, notes in zip(self.guards, self.notes, strict=True):
            guard.on("*", lambda n, notes=notes: notes.append(n))
            # every event goes to the outbox too (and forecasts are worked out)
            guard.subscribe_webhook("https://example.com/hook", events="*")
        self.held: list[tuple[str, str]] = []

    def both(self, call: Any) -> list[Any]:
        results = [seen(lambda g=guard: call(g)) for guard in self.guards]
        assert results[0] == results[1], results
        return results

    @rule(scope=st.sampled_from(SCOPES), tokens=st.integers(0, 2_000), per=st.booleans(),
          degrade=st.lists(DEGRADE, max_size=3), alerts=ALERTS,
          period=st.sampled_from([None, "minute", "day"]), required=st.booleans())
    def set_budget(self, scope: str, tokens: int, per: bool, degrade: list[al.Degrade],
                   alerts: list[float], period: str | None, required: bool) -> None:
        self.both(lambda g: g.set_budget(scope, tokens=tokens, per="run" if per else None,
                                         period=period, degrade=degrade, alerts=alerts,
                                         required=per and required))

    @rule(scope=st.sampled_from(SCOPES), models_allow=GLOB_LIST, models_deny=GLOB_LIST,
          tools_allow=GLOB_LIST, tools_deny=GLOB_LIST,
          cap=st.none() | st.integers(1, 3_000), remove=st.booleans(),
          required=st.lists(st.sampled_from(["run", "user"]), max_size=2))
    def set_access(self, scope: str, models_allow: list[str], models_deny: list[str],
                   tools_allow: list[str], tools_deny: list[str], cap: int | None,
                   remove: bool, required: list[str]) -> None:
        if remove:
            self.both(lambda g: g.clear_access(scope))
            return
        self.both(lambda g: g.set_access(scope, models_allow=models_allow,
                                         models_deny=models_deny, tools_allow=tools_allow,
                                         tools_deny=tools_deny, max_tokens_per_call=cap,
                                         required_dimensions=required))

    @rule(scope=st.sampled_from(SCOPES), kind=st.sampled_from(["calls", "runs", "concurrent"]),
          limit=st.integers(0, 3), action_kind=KIND_GLOBS,
          window=st.sampled_from(["minute", "hour"]))
    def set_quota(self, scope: str, kind: str, limit: int, action_kind: str,
                  window: str) -> None:
        timing = {} if kind == "concurrent" else {"window": window}
        self.both(lambda g: g.set_quota(scope, **{kind: limit}, **timing,  # type: ignore[arg-type]
                                        action_kind=action_kind))

    @rule(depth=st.integers(0, 2), run=st.sampled_from([None, "r1", "r2"]), kind=KINDS,
          name=NAMES, fixed=st.integers(0, 300), elastic=st.booleans(),
          max_tokens=st.integers(1, 2_000), floor=st.integers(0, 2_000), dry=st.booleans())
    def reserve(self, depth: int, run: str | None, kind: str, name: str, fixed: int,
                elastic: bool, max_tokens: int, floor: int, dry: bool) -> None:
        action = al.Action(kind, name)
        estimate: al.Elastic | al.Amount = al.tokens(fixed)
        if elastic:
            estimate = al.Elastic(fixed=[al.tokens(fixed)], per_mtok=[al.tokens(1_000_000)],
                                  max_tokens=max_tokens, floor=min(floor, max_tokens))
        who = subject(depth, run)
        if dry:
            self.both(lambda g: g.decide(who, action, estimate))
            return
        made: list[Any] = []
        results = [seen(lambda g=g: made.append(g.reserve(who, action, estimate)) or made[-1])
                   for g in self.guards]
        assert results[0] == results[1], results
        if len(made) == 2:
            self.held.append((made[0].id, made[1].id))

    @rule(depth=st.integers(0, 2), run=st.sampled_from([None, "r1"]),
          actual=st.integers(0, 300))
    def record(self, depth: int, run: str | None, actual: int) -> None:
        who = subject(depth, run)
        self.both(lambda g: g.record(who, al.Action("llm.completion", "openai:gpt-4o"),
                                     al.tokens(actual)))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), actual=st.integers(0, 2_500), commit=st.booleans())
    def settle(self, data: st.DataObject, actual: int, commit: bool) -> None:
        ids = data.draw(st.sampled_from(self.held))
        results = [seen(lambda g=g, rid=rid: g.commit(rid, al.tokens(actual)) if commit
                        else g.release(rid)) for g, rid in zip(self.guards, ids, strict=True)]
        assert results[0] == results[1], results
        self.held.remove(ids)

    @rule(ms=st.sampled_from([1_000, 25_000, 61_000]), sweep=st.booleans())
    def advance(self, ms: int, sweep: bool) -> None:
        self.clock.advance(ms)
        if sweep:
            self.both(lambda g: g.sweep())

    @invariant()
    def everything_agrees(self) -> None:
        memory, redis = self.guards
        assert memory.balances("tenant:acme") == redis.balances("tenant:acme")
        assert [note_row(n) for n in self.notes[0]] == [note_row(n) for n in self.notes[1]]
        self.notes[0].clear()
        self.notes[1].clear()
        outboxes = [[(d.event_id, d.event_type, d.status, d.attempts, d.next_at_ms)
                     for d in g.webhook_deliveries(limit=100_000)] for g in self.guards]
        assert outboxes[0] == outboxes[1]
        audits = [[audit_row(r) for r in g.audit("acme", limit=1_000)] for g in self.guards]
        assert audits[0] == audits[1]
        if audits[0]:  # the newest few up to a moment in the middle, of some kinds
            middle = self.guards[0].audit("acme", limit=1_000)[len(audits[0]) // 2].at_ms
            kinds = ["reservation.committed", "budget.threshold_crossed", "budget.exhausted"]
            reads = [[audit_row(r) for r in g.audit("acme", until=middle, types=kinds,
                                                    limit=3)] for g in self.guards]
            assert reads[0] == reads[1]
        assert memory.report("acme", period="day") == redis.report("acme", period="day")


PolicyLockstep.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
TestPolicyInLockstep = PolicyLockstep.TestCase


_GUARDS: list[al.Guard] = []


def glob_guards() -> list[al.Guard]:
    """A memory and a Redis guard, each with a budget, shared by the glob examples."""
    if not _GUARDS:
        clock = al.ManualClock(START_MS)
        for kind in ("memory", "redis"):
            guard = al.Guard(make_store(kind, clock))
            guard.set_budget("tenant:acme", tokens=1_000)
            _GUARDS.append(guard)
    return _GUARDS


@settings(max_examples=EXAMPLES * 12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(allow=GLOB_LIST, deny=GLOB_LIST, kind=KINDS, name=NAMES, quota_kind=KIND_GLOBS)
def test_globs_match_alike(allow: list[str], deny: list[str], kind: str, name: str,
                           quota_kind: str) -> None:
    """Model and tool globs, and the action-kind globs of quotas, read alike."""
    decisions = []
    for guard in glob_guards():
        guard.set_access("tenant:acme", models_allow=allow, models_deny=deny,
                         tools_allow=allow, tools_deny=deny)
        guard.set_quota("tenant:acme", calls=0, window="day", action_kind=quota_kind)
        decisions.append(guard.decide(ACME, al.Action(kind, name), al.tokens(1)))
    assert decisions[0] == decisions[1], (allow, deny, kind, name, quota_kind)
