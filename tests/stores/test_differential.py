"""The same random operation sequence on the memory store and on Redis, in lockstep: every
result, every refusal and every balance must be the same on both."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import allotment as al

from support.stores import START_MS, make_store

pytestmark = pytest.mark.filterwarnings("ignore::allotment.BudgetHierarchyWarning")
"""The random budget trees set children larger than their parents on purpose."""

LLM = al.Action("llm.completion", "openai:gpt-4o")
SCOPES = ["tenant:acme", "tenant:acme/workspace:w", "tenant:acme/workspace:w/agent:a"]
POLICIES = st.sampled_from(list(al.OveragePolicy))
RUNS = [None, "r1", "R1", "u/x|y%z:{a}*"]
"""Run ids as given: two differ only in case, one needs quoting in scope text."""


def subject(depth: int, run: str | None) -> al.Subject:
    levels = dict(list({"workspace": "w", "agent": "a"}.items())[:depth])
    dimensions = {"run": run, "user": f"u-{run}"} if run else {}
    return al.Subject(tenant="acme", dimensions=dimensions, **levels)


def outcome(call: Any) -> Any:
    """What a call answered, comparable across stores: its result without ids, or its
    error class and decision."""
    try:
        result = call()
    except al.KeyRefused as refused:
        return ("KeyRefused", refused.reason)
    except al.AllotmentError as error:
        decision = getattr(error, "decision", None)
        return (type(error).__name__, None if decision is None else (
            decision.reason, decision.scope, decision.remaining, decision.requested))
    if isinstance(result, al.Reservation):
        return ("reserved", result.decision.outcome, result.caps, result.estimate,
                result.balances)
    if isinstance(result, (al.CommitResult, al.ReleaseResult)):
        return (result.status, getattr(result, "charged", None), result.balances)
    if isinstance(result, al.RecordResult):
        return ("recorded", result.charged, result.balances)
    return result


class Lockstep(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = al.ManualClock(START_MS)
        # two days of report counters: the days that fall out are dropped alike
        self.guards = [al.Guard(make_store(kind, self.clock, report_retention_days=2))
                       for kind in ("memory", "redis")]
        self.held: list[tuple[str, str]] = []  # the same reservation on each store
        self.secrets: list[tuple[str, str]] = []  # the same API key on each store
        self.claims: list[tuple[Any, ...]] = []  # the same bulk action's claim on each store
        self.calls = 0  # lockstep calls so far: the tenant is closed late in a run, if at all
        self.closed = False

    def both(self, call: Any) -> list[Any]:
        results = [outcome(lambda g=guard: call(g)) for guard in self.guards]
        assert results[0] == results[1], results
        self.calls += 1
        return results

    @precondition(lambda self: self.calls >= 12)
    @rule(reason=st.sampled_from([None, "churned"]))
    def close_tenant(self, reason: str | None) -> None:
        """Closing releases, closes, revokes alike; every later change is refused alike."""
        self.both(lambda g: (lambda c: (c.released, c.budgets_closed, c.keys_revoked,
                                        c.changed, c.info.closed_at_ms))(
            g.close_tenant("acme", reason=reason)))
        self.closed = True

    @rule(scope=st.sampled_from(SCOPES), change=st.sampled_from(["freeze", "unfreeze",
                                                                  "close_budget"]))
    def budget_status(self, scope: str, change: str) -> None:
        """One scope's budgets frozen, unfrozen or closed by hand: a suspension after it
        counts and skips them alike."""
        self.both(lambda g: getattr(g, change)(scope))

    @rule(suspended=st.booleans(), reason=st.sampled_from([None, "unpaid"]))
    def suspend_tenant(self, suspended: bool, reason: str | None) -> None:
        """Every open budget frozen or unfrozen in one step, alike (or refused alike)."""
        self.both(lambda g: (g.suspend_tenant if suspended else g.resume_tenant)(
            "acme", reason=reason))

    @rule(scope=st.sampled_from(SCOPES), tokens=st.integers(0, 300), per=st.booleans(),
          period=st.sampled_from([None, "minute", "day"]), policy=POLICIES,
          overdraft=st.integers(0, 50))
    def set_budget(self, scope: str, tokens: int, per: bool, period: str | None,
                   policy: al.OveragePolicy, overdraft: int) -> None:
        self.both(lambda g: g.set_budget(scope, tokens=tokens, per="run" if per else None,
                                         period=period, overage_policy=policy,
                                         overdraft_limit=overdraft))

    @rule(scope=st.sampled_from(SCOPES), overdraft=st.one_of(st.none(), st.integers(0, 50)),
          policy=st.one_of(st.none(), POLICIES))
    def set_budget_terms(self, scope: str, overdraft: int | None,
                         policy: al.OveragePolicy | None) -> None:
        """New terms for a scope's token budgets (periods and templates): changed alike, each
        current ledger's over-limit flag alike (`balances_agree`), or refused alike."""
        self.both(lambda g: g.set_budget_terms(scope, "TOKENS", overdraft_limit=overdraft,
                                               overage_policy=policy))

    @rule(depth=st.integers(0, 2), run=st.sampled_from([*RUNS, "r2"]),
          amount=st.integers(0, 200))
    def reserve(self, depth: int, run: str | None, amount: int) -> None:
        made = []
        for guard in self.guards:
            try:
                made.append(guard.reserve(subject(depth, run), LLM, al.tokens(amount)))
            except al.AllotmentError as error:
                made.append(error)
        if isinstance(made[0], al.Reservation) and isinstance(made[1], al.Reservation):
            self.held.append((made[0].id, made[1].id))
        assert [type(m).__name__ for m in made] == [type(m).__name__ for m in made[::-1]]
        if isinstance(made[0], al.Reservation):
            assert isinstance(made[1], al.Reservation)
            assert (made[0].estimate, made[0].balances) == (made[1].estimate, made[1].balances)
        else:
            decisions = [getattr(m, "decision", None) for m in made]
            assert decisions[0] == decisions[1]

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), actual=st.integers(0, 400), commit=st.booleans())
    def settle(self, data: st.DataObject, actual: int, commit: bool) -> None:
        ids = data.draw(st.sampled_from(self.held))
        usage = al.TokenUsage(input_tokens=actual, cache_read_tokens=actual // 2)
        results = [outcome(lambda g=g, rid=rid: g.commit(rid, al.tokens(actual), usage=usage)
                           if commit else g.release(rid))
                   for g, rid in zip(self.guards, ids, strict=True)]
        assert results[0] == results[1], results
        if results[0][0] != "BudgetExceeded":
            self.held.remove(ids)

    @rule(depth=st.integers(0, 2), run=st.sampled_from(RUNS),
          amount=st.integers(0, 200), policy=st.one_of(st.none(), POLICIES))
    def record(self, depth: int, run: str | None, amount: int,
               policy: al.OveragePolicy | None) -> None:
        usage = al.TokenUsage(input_tokens=amount, output_tokens=depth, reasoning_tokens=1)
        self.both(lambda g: g.record(subject(depth, run), LLM, al.tokens(amount),
                                     overage_policy=policy, usage=usage))

    @rule(mode=st.sampled_from(["shadow", "enforce", None]))
    def set_mode(self, mode: str | None) -> None:
        """Shadow mode books every charge, the overage as debt: both stores alike."""
        self.both(lambda g: g.set_mode("acme", mode))

    @rule(ms=st.sampled_from([1_000, 30_000, 65_001, 86_400_000]))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)
        self.both(lambda g: g.sweep())

    @precondition(lambda self: not self.closed)  # a closed tenant makes none (tested apart)
    @rule(expires=st.sampled_from([None, 1_000, 100_000]), revoke=st.booleans())
    def api_key(self, expires: int | None, revoke: bool) -> None:
        until = None if expires is None else self.clock() + expires
        made = [g.create_key("acme", expires=until, name="k") for g in self.guards]
        self.secrets.append((made[0].secret, made[1].secret))
        if revoke:
            for guard, new in zip(self.guards, made, strict=True):
                guard.revoke_key(new.key.key_id)

    @precondition(lambda self: bool(self.secrets))
    @rule(data=st.data(), depth=st.integers(0, 2), amount=st.integers(0, 200),
          permission=st.sampled_from(["reservations:create", "balances:read"]),
          altered=st.booleans())
    def keyed_reserve(self, data: st.DataObject, depth: int, amount: int, permission: str,
                      altered: bool) -> None:
        """A reserve through each store's handle of the same key: run alike, or refused for
        the same reason (revoked, expired, an altered secret, a missing permission)."""
        pair = data.draw(st.sampled_from(self.secrets))
        if altered:
            pair = tuple(s[:-1] + ("A" if s[-1] != "A" else "B") for s in pair)
        self.both(lambda g: g.tenant_for_key(pair[self.guards.index(g)], permission).reserve(
            subject(depth, None), LLM, al.tokens(amount)))

    @precondition(lambda self: bool(self.secrets))
    @rule(data=st.data(), name=st.sampled_from([None, "renamed"]),
          permissions=st.sampled_from([None, ["balances:read"],
                                       ["reservations:create", "admin:read"]]))
    def update_key(self, data: st.DataObject, name: str | None,
                   permissions: list[str] | None) -> None:
        """The same key renamed or re-permissioned: changed alike, or left alike (revoked,
        expired); `keys_agree` then compares what each store keeps."""
        pair = data.draw(st.sampled_from(self.secrets))
        answers = [outcome(lambda g=guard, s=secret: g.update_key(
            s[len("alk_"):].rpartition(".")[0], name=name, permissions=permissions))
            for guard, secret in zip(self.guards, pair, strict=True)]
        shown = [answer if isinstance(answer[0], str) else (answer[0].name,
                 answer[0].permissions, answer[0].revoked, answer[1]) for answer in answers]
        assert shown[0] == shown[1], shown

    @rule(key=st.sampled_from(["k1", "k2"]), request=st.sampled_from(["a", "b"]),
          ttl=st.sampled_from([1, 60]))
    def claim_once(self, key: str, request: str, ttl: int) -> None:
        """A bulk action's claim answers alike (its owner is random: whether there is one)."""
        made: list[Any] = []

        def claim(guard: al.Guard) -> tuple[bool, str | None]:
            got = guard.claim_once("bulk", key, {"request": request}, ttl_s=ttl, wait_s=0)
            made.append(got)
            return got.owner is not None, got.answer

        if self.both(claim)[0][0] is True:
            self.claims.append(tuple(made))

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), answer=st.sampled_from([None, '{"rows":1}']),
          ttl=st.sampled_from([1, 60]))
    def finish_once(self, data: st.DataObject, answer: str | None, ttl: int) -> None:
        """Keeping an answer, or letting the key go, alike (a lapsed claim keeps nothing)."""
        pair = data.draw(st.sampled_from(self.claims))
        done = [outcome(lambda g=guard, c=claim: g.finish_once(c, answer, ttl_s=ttl))
                for guard, claim in zip(self.guards, pair, strict=True)]
        assert done[0] == done[1], done

    @invariant()
    def keys_agree(self) -> None:
        listed = [sorted([(k.name, k.permissions, k.created_at_ms, k.expires_at_ms, k.revoked)
                          for k in g.keys("acme")], key=repr) for g in self.guards]
        assert listed[0] == listed[1]
        for pair in self.secrets:
            live = [g.authenticate_key(secret) is not None
                    for g, secret in zip(self.guards, pair, strict=True)]
            assert live[0] == live[1]

    @invariant()
    def reservation_lists_agree(self) -> None:
        listed = []
        for guard in self.guards:
            rows, cursor = [], None
            while True:
                page, cursor = guard.list_reservations("acme", limit=3, cursor=cursor)
                rows += [(r.status, r.estimate, r.charged, r.created_at_ms, r.expires_at_ms,
                          r.subject.scope_path) for r in page]
                if cursor is None:
                    break
            listed.append(sorted(rows, key=repr))
        assert listed[0] == listed[1]

    @invariant()
    def statuses_agree(self) -> None:
        """The tenant's status, read from its definitions (templates included), alike."""
        assert len({g.tenant_status("acme") for g in self.guards}) == 1

    @invariant()
    def balances_agree(self) -> None:
        memory, redis = (g.balances("tenant:acme") for g in self.guards)
        assert memory == redis

    @invariant()
    def reports_agree(self) -> None:
        """Every report the stores give is the same: per scope and per dimension value, for
        today, this week and the day before (which may have left the retention)."""
        earlier = self.clock() - 86_400_000
        for kwargs in ({"period": "day"}, {"period": "week"}, {"period": "day", "at": earlier},
                       {"period": "month", "by": "run"}, {"period": "year", "by": "user",
                                                          "top": 1}):
            memory, redis = (g.report("acme", **kwargs) for g in self.guards)
            assert memory == redis, kwargs


    @invariant()
    def usage_agrees(self) -> None:
        """The usage export is the same on both stores: this month, and today (whose
        counters of the days that left the retention are gone alike)."""
        today = self.clock() // 86_400_000 * 86_400_000
        label = f"{datetime.fromtimestamp(today / 1000, timezone.utc):%Y-%m-%d}"
        for period in (None, label):
            memory, redis = (list(g.usage(period)) for g in self.guards)
            assert memory == redis, period


Lockstep.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
TestMemoryAndRedisInLockstep = Lockstep.TestCase
