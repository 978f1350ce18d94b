"""Quotas and caps under random operation sequences, on every store kind, against a small
independent model: calls per minute, concurrency, and elastic estimates that shrink to fit.

Kept apart from test_stateful.py (the ledger model) so each model stays small enough to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import allotment as al

from support.stores import START_MS, STORE_KINDS, make_store

LLM = al.Action("llm.completion", "openai:gpt-4o")
TOOL = al.Action("tool.call", "search")
SUBJECT = al.Subject(tenant="acme", workspace="w")
RATE = 1_000_000  # one TOKENS unit per output token
FIXED = 100


@dataclass
class Model:
    budget: int = 0
    defined: bool = False
    reserved: int = 0
    spent: int = 0
    calls_limit: int | None = None
    calls: dict[int, int] = field(default_factory=dict)  # minute -> calls counted
    concurrent_limit: int | None = None
    active: dict[str, int] = field(default_factory=dict)  # reservation id -> held tokens
    counted: set[str] = field(default_factory=set)  # held while a concurrency rule existed

    @property
    def remaining(self) -> int:
        return self.budget - self.reserved - self.spent


def machine_for(kind: str) -> type[RuleBasedStateMachine]:
    class Policy(RuleBasedStateMachine):
        """One tenant, one TOKENS budget, a calls-per-minute quota on LLM calls and a
        concurrency quota on everything; model calls reserve elastic estimates."""

        def __init__(self) -> None:
            super().__init__()
            self.clock = al.ManualClock(START_MS)
            self.guard = al.Guard(make_store(kind, self.clock), ttl_ms=86_400_000)
            self.model = Model()

        @rule(limit=st.integers(0, 5_000))
        def set_budget(self, limit: int) -> None:
            self.guard.set_budget("tenant:acme", tokens=limit)
            self.model.budget, self.model.defined = limit, True

        @rule(limit=st.integers(0, 4))
        def set_calls_quota(self, limit: int) -> None:
            self.guard.set_quota("tenant:acme/workspace:w", calls=limit, window="minute",
                                 action_kind="llm.*")
            self.model.calls_limit = limit

        @rule(limit=st.integers(0, 3))
        def set_concurrency(self, limit: int) -> None:
            self.guard.set_quota("tenant:acme", concurrent=limit)
            self.model.concurrent_limit = limit

        @rule(max_tokens=st.integers(1, 3_000), floor=st.integers(0, 3_000),
              tool=st.booleans())
        def reserve(self, max_tokens: int, floor: int, tool: bool) -> None:
            floor = min(floor, max_tokens)
            m = self.model
            estimate: al.Elastic | al.Amount
            if tool:
                estimate, action = al.tokens(FIXED), TOOL
            else:
                estimate = al.Elastic(fixed=[al.tokens(FIXED)], per_mtok=[al.tokens(RATE)],
                                      max_tokens=max_tokens, floor=floor)
                action = LLM
            minute = self.clock() // 60_000
            expected: str | None = None
            # Scopes are checked outermost first: the tenant's concurrency, then the
            # workspace's calls. A quota counts what happened while it existed.
            if m.concurrent_limit is not None and len(m.counted) >= m.concurrent_limit:
                expected = "CONCURRENCY_EXCEEDED"
            elif m.calls_limit is not None and not tool and m.calls.get(minute, 0) >= (
                    m.calls_limit):
                expected = "QUOTA_EXCEEDED"
            held, capped = FIXED, None
            if expected is None and not m.defined:
                expected = "BUDGET_NOT_FOUND"
            if expected is None and not tool:
                held = FIXED + max_tokens
                if held > m.remaining:
                    fits = m.remaining - FIXED
                    if fits >= floor:
                        held, capped = FIXED + fits, fits
                    else:
                        expected = "BUDGET_EXCEEDED"
            elif expected is None and held > m.remaining:
                expected = "BUDGET_EXCEEDED"
            try:
                r = self.guard.reserve(SUBJECT, action, estimate)
            except al.Denied as denied:
                assert denied.decision.reason == expected, (denied.decision, expected)
                return
            assert expected is None, (expected, r.decision)
            assert r.estimate == (al.tokens(held),)
            assert (r.caps.max_tokens if r.caps else None) == capped
            m.reserved += held
            m.active[r.id] = held
            if m.concurrent_limit is not None:
                m.counted.add(r.id)
            if not tool and m.calls_limit is not None:
                m.calls[minute] = m.calls.get(minute, 0) + 1

        @precondition(lambda self: bool(self.model.active))
        @rule(data=st.data(), commit=st.booleans())
        def settle(self, data: st.DataObject, commit: bool) -> None:
            # creation order: the ids are random, so a sorted list would differ between runs
            rid = data.draw(st.sampled_from(list(self.model.active)))
            held = self.model.active.pop(rid)
            self.model.counted.discard(rid)
            self.model.reserved -= held
            if commit:
                used = data.draw(st.integers(0, held))
                self.guard.commit(rid, al.tokens(used))
                self.model.spent += used
            else:
                self.guard.release(rid)

        @rule(ms=st.sampled_from([1_000, 30_000, 60_000]))
        def advance(self, ms: int) -> None:
            self.clock.advance(ms)

        @invariant()
        def ledger_matches(self) -> None:
            balances = [b for b in self.guard.balances("tenant:acme") if b.unit is al.Unit.TOKENS]
            if not balances:
                return
            (b,) = balances
            m = self.model
            assert (b.allocated, b.reserved, b.spent) == (m.budget, m.reserved, m.spent)
            assert b.allocated == b.remaining + b.reserved + b.spent + b.debt

    Policy.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
    return Policy


for _kind in STORE_KINDS:
    globals()[f"TestPolicy{_kind.title()}"] = pytest.mark.filterwarnings("ignore")(
        machine_for(_kind).TestCase)
