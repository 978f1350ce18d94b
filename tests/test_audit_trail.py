""""Why was my agent stopped?" answered from the audit alone: a denial record says what was
requested (the whole estimate, as evaluated), which scope and limit refused, for which run,
and what caps were offered; every administrative change says who made it and why; and the
plan a tenant is on and the tenants that exist are queries of their own, not of the log."""

from __future__ import annotations

from typing import Any

import pytest

import allotment as al

from support import LLM

ACME = "tenant:acme"
AGENT = f"{ACME}/workflow:docs/agent:analyzer"
RUN = al.Subject(tenant="acme", workflow="docs", agent="analyzer",
                 dimensions={"run": "run-7a3f", "user": "u-42"})
USD = al.Unit.USD_MICROCENTS

# $0.0000375 fixed (the prompt) + $10 per million output tokens, 4,096 of them at least:
# $0.0409975 in all, of which the fixed part alone is 3,750 microcents.
ELASTIC = al.Elastic(fixed=[al.usd(0.0000375), al.tokens(100)],
                     per_mtok=[al.usd(10), al.tokens(1_000_000)], max_tokens=4_096,
                     floor=4_096)
WHOLE = 3_750 + 4_096 * 1_000
WHOLE_TOKENS = 100 + 4_096


def only(records: tuple[al.AuditRecord, ...]) -> al.AuditRecord:
    assert len(records) == 1, records
    return records[0]


# -- denial records -------------------------------------------------------------------------


def test_a_denial_records_the_whole_elastic_estimate_the_app_saw(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=0.01, period="month")
    guard.set_budget(ACME, tokens=1_000_000, period="day")
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(RUN, LLM, ELASTIC)
    seen = denied.value.decision
    assert seen.requested == WHOLE  # what the app was told
    record = only(guard.audit("acme", types=["reservation.denied"]))
    assert record.estimate == (al.Amount(USD, WHOLE), al.tokens(WHOLE_TOKENS))
    assert record.reason == "BUDGET_EXCEEDED" and record.scopes == (ACME,)
    assert record.detail == {
        "unit": "USD_MICROCENTS", "period": "month", "requested": WHOLE,
        "limit": 1_000_000, "remaining": 1_000_000, "max_tokens": 4_096}
    assert seen.never_fits  # larger than the whole budget: no retry_after_ms to record
    assert record.subject == RUN and record.subject.dimensions["run"] == "run-7a3f"
    assert record.action == "llm.completion openai:gpt-4o"


def test_a_denial_at_a_run_budget_names_the_run_ledger_and_its_figures(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_budget(AGENT, usd=0.05, per="run")
    guard.reserve(RUN, LLM, al.usd(0.04)).commit(al.usd(0.04))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(RUN, LLM, al.usd(0.02))
    record = only(guard.audit("acme", types=["reservation.denied"]))
    assert record.scopes == (f"{AGENT}/run:run-7a3f",)
    assert record.estimate == (al.usd(0.02),)
    assert record.detail == {"unit": "USD_MICROCENTS", "period": None,
                             "requested": al.usd(0.02).amount, "limit": al.usd(0.05).amount,
                             "remaining": al.usd(0.01).amount}
    assert record.subject is not None and record.subject.dimensions == {
        "run": "run-7a3f", "user": "u-42"}


def test_a_denial_records_the_caps_it_offered(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1, degrade=[al.Degrade(below=0.5, max_tokens=256)])
    guard.record(RUN, LLM, al.usd(0.6))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(RUN, LLM, al.usd(0.5))
    record = only(guard.audit("acme", types=["reservation.denied"]))
    assert record.detail["caps"] == {"max_tokens": 256}
    assert record.detail["requested"] == al.usd(0.5).amount
    assert record.detail["remaining"] == al.usd(0.4).amount


def test_a_quota_denial_names_the_quota_and_its_window(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_quota(AGENT, calls=1, window="minute")
    guard.reserve(RUN, LLM, ELASTIC).release()
    with pytest.raises(al.QuotaExceeded) as denied:
        guard.reserve(RUN, LLM, ELASTIC)
    record = only(guard.audit("acme", types=["reservation.denied"]))
    assert (record.reason, record.scopes) == ("QUOTA_EXCEEDED", (AGENT,))
    assert record.estimate == (al.Amount(USD, WHOLE), al.tokens(WHOLE_TOKENS))
    assert record.detail == {"quota": "calls", "window": "minute", "limit": 1,
                             "remaining": 0, "requested": 1, "max_tokens": 4_096,
                             "retry_after_ms": denied.value.decision.retry_after_ms}


def test_an_access_denial_records_what_was_asked(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_access(ACME, models_deny=["gpt-4o"])
    with pytest.raises(al.NotAllowed):
        guard.reserve(RUN, LLM, al.usd(0.3))
    record = only(guard.audit("acme", types=["reservation.denied"]))
    assert (record.reason, record.scopes, record.estimate) == (
        "MODEL_NOT_ALLOWED", (ACME,), (al.usd(0.3),))
    assert record.detail == {}


def test_a_shadow_would_deny_records_the_same_figures(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=0.01, period="month")
    guard.set_budget(ACME, tokens=1_000_000, period="day")
    guard.set_mode("acme", "shadow")
    r = guard.reserve(RUN, LLM, ELASTIC)
    record = only(guard.audit("acme", types=["reservation.observed_denied"]))
    assert record.reservation_id == r.id and record.subject == RUN
    assert record.estimate == (al.Amount(USD, WHOLE), al.tokens(WHOLE_TOKENS))
    assert record.detail == {
        "unit": "USD_MICROCENTS", "period": "month", "requested": WHOLE,
        "limit": 1_000_000, "remaining": 1_000_000, "max_tokens": 4_096}


def test_a_missing_dimension_is_recorded_before_anything_else_is_weighed(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(AGENT, usd=1, per="run", required=True)
    guard.set_access(ACME, max_tokens_per_call=100)
    no_run = al.Subject(tenant="acme", workflow="docs", agent="analyzer")
    with pytest.raises(al.Denied):
        guard.reserve(no_run, LLM, ELASTIC)
    record = only(guard.audit("acme", types=["reservation.denied"]))
    assert (record.reason, record.estimate) == (
        "DIMENSION_REQUIRED", (al.Amount(USD, WHOLE), al.tokens(WHOLE_TOKENS)))
    assert record.detail == {"missing_dimensions": ["run"], "max_tokens": 4_096}


# -- actor and reason of administrative changes -----------------------------------------------

WHO = {"actor": "ops@example.com", "reason": "ticket OPS-42: upgrade"}
ADMIN_CALLS: dict[str, tuple[str, Any]] = {
    "set_budget": ("budget.set", lambda g: g.set_budget(ACME, usd=20, **WHO)),
    "remove_budget": ("budget.set", lambda g: g.remove_budget(ACME, "TOKENS", period="day",
                                                             **WHO)),
    "set_quota": ("quota.set", lambda g: g.set_quota(ACME, calls=5, window="minute", **WHO)),
    "remove_quota": ("quota.set", lambda g: g.remove_quota(ACME, "calls", window="minute",
                                                           **WHO)),
    "set_access": ("access.set", lambda g: g.set_access(ACME, models_deny=["o1*"], **WHO)),
    "clear_access": ("access.set", lambda g: g.clear_access(ACME, **WHO)),
    "freeze": ("budget.status_changed", lambda g: g.freeze(ACME, **WHO)),
    "unfreeze": ("budget.status_changed", lambda g: g.unfreeze(ACME, **WHO)),
    "close_budget": ("budget.status_changed", lambda g: g.close_budget(ACME, **WHO)),
    "fund": ("budget.funded", lambda g: g.fund(ACME, "CREDIT", al.usd(1), period="month",
                                               **WHO)),
    "transfer": ("budget.transferred",
                 lambda g: g.transfer(ACME, f"{ACME}/workspace:eng", al.usd(1), **WHO)),
    "set_mode": ("tenant.mode_set", lambda g: g.set_mode("acme", "shadow", **WHO)),
    "assign_plan": ("plan.assigned", lambda g: g.assign_plan("acme", al.Plan.from_dict(
        {"name": "pro", "budgets": [{"scope": "", "usd": 500, "period": "month"}]}), **WHO)),
}


def provisioned(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, period="month")
    guard.set_budget(ACME, tokens=1_000, period="day")
    guard.set_budget(f"{ACME}/workspace:eng", usd=10, period="month")


@pytest.mark.parametrize("name", sorted(ADMIN_CALLS))
def test_every_admin_change_records_its_actor_and_reason(guard: al.Guard, name: str) -> None:
    provisioned(guard)
    kind, call = ADMIN_CALLS[name]
    call(guard)
    record = guard.audit("acme", types=[kind])[-1]
    assert (record.actor, record.reason) == (WHO["actor"], WHO["reason"])


def test_a_plan_records_its_actor_on_every_definition_it_writes(guard: al.Guard) -> None:
    ADMIN_CALLS["assign_plan"][1](guard)
    records = guard.audit("acme")
    assert [r.type for r in records] == ["budget.set", "plan.assigned"]
    assert {(r.actor, r.reason) for r in records} == {(WHO["actor"], WHO["reason"])}


def test_actor_and_reason_are_optional_and_absent_when_not_given(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.freeze(ACME, actor="ops")
    set_, frozen = guard.audit("acme")
    assert (set_.actor, set_.reason) == (None, None)
    assert (frozen.actor, frozen.reason) == ("ops", None)


@pytest.mark.parametrize("bad", ["", "x" * 257, "tab\there", "new\nline", 42, "\ud800"])
@pytest.mark.parametrize("field", ["actor", "reason"])
def test_a_bad_actor_or_reason_is_refused_and_changes_nothing(guard: al.Guard, field: str,
                                                               bad: Any) -> None:
    guard.set_budget(ACME, usd=10)
    before = (guard.balances(ACME), guard.audit("acme"))
    with pytest.raises(al.InvalidRequest, match=field):
        guard.set_budget(ACME, usd=20, **{field: bad})
    with pytest.raises(al.InvalidRequest, match=field):
        guard.fund(ACME, "CREDIT", al.usd(1), **{field: bad})
    assert (guard.balances(ACME), guard.audit("acme")) == before


def test_a_tenant_administrator_signs_its_own_changes(guard: al.Guard) -> None:
    provisioned(guard)
    acme = guard.tenant("acme")
    acme.transfer(ACME, f"{ACME}/workspace:eng", al.usd(1), actor="cfo@acme.example",
                  reason="Q4 reallocation")
    record = acme.audit(types=["budget.transferred"])[-1]
    assert (record.actor, record.reason) == ("cfo@acme.example", "Q4 reallocation")


def test_denial_records_keep_their_reason_code_and_no_actor(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=0.01, actor="ops")
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(RUN, LLM, al.usd(1))
    record = only(guard.audit("acme", types=["reservation.denied"]))
    assert (record.reason, record.actor) == ("BUDGET_EXCEEDED", None)


# -- queries that do not depend on the audit log ---------------------------------------------

PRO = al.Plan.from_dict({"name": "pro", "budgets": [{"scope": "", "usd": 500,
                                                      "period": "month"}]})


def test_the_plan_of_a_tenant_survives_audit_retention(clock: al.ManualClock) -> None:
    guard = al.Guard(al.MemoryStore(clock, audit_retention=2))
    guard.assign_plan("acme", PRO)
    for _ in range(5):
        guard.record(al.Subject(tenant="acme"), LLM, al.usd(0.01))
    assert guard.audit("acme", types=["plan.assigned"]) == ()
    assert guard.plan_of("acme") == "pro"


def test_the_plan_of_a_tenant(guard: al.Guard) -> None:
    assert guard.plan_of("acme") is None
    guard.set_budget(ACME, usd=10)
    assert guard.plan_of("acme") is None  # budgets set by hand: no plan
    guard.assign_plan("acme", PRO)
    assert guard.plan_of("acme") == "pro"
    assert guard.plan_of(ACME) == "pro"  # a tenant's scope names it too
    assert guard.tenant("acme").plan_of() == "pro"
    assert guard.tenant("other").plan_of() is None


def test_a_default_plan_shows_once_installed(store: Any) -> None:
    guard = al.Guard(store, default_plan=PRO)
    assert guard.plan_of("newco") is None
    guard.reserve(al.Subject(tenant="newco"), LLM, al.usd(1)).release()
    assert guard.plan_of("newco") == "pro"


def test_the_tenants_that_exist(guard: al.Guard) -> None:
    assert guard.tenants() == ()
    guard.set_budget("tenant:zeta", usd=1)
    guard.assign_plan("acme", PRO)
    with pytest.raises(al.Denied):  # no budget: denied, and on the record
        guard.reserve(al.Subject(tenant="stranger"), LLM, al.usd(1))
    guard.balances("tenant:reader")  # reads create nothing
    guard.decide(al.Subject(tenant="decider"), LLM, al.usd(1))
    with pytest.raises(al.NotFound):  # refused: nothing written
        guard.freeze("tenant:ghost")
    guard.tenant_info("looked-up")  # nor does looking a tenant up
    guard.register_tenant("newco", "New Co")  # registered, nothing else yet: listed
    assert guard.tenants() == ("acme", "newco", "stranger", "zeta")


def test_a_tenant_handle_reads_its_own_plan_and_never_lists_tenants(guard: al.Guard) -> None:
    guard.assign_plan("rival", PRO)
    acme = guard.tenant("acme")
    assert acme.plan_of() is None  # the rival's plan is not acme's
    guard.assign_plan("acme", PRO)
    assert acme.plan_of() == "pro"
    assert not hasattr(acme, "tenants") and not hasattr(acme, "atenants")


# -- reading the log between two moments, and the notifications on record ---------------------


def test_the_newest_records_between_two_moments(guard: al.Guard,
                                                clock: al.ManualClock) -> None:
    from datetime import datetime, timezone

    guard.set_budget(ACME, usd=1)
    start = clock()
    for _ in range(5):
        clock.advance(10)
        guard.fund(ACME, "CREDIT", al.usd(1))
    funded = [r.at_ms for r in guard.audit("acme", types=["budget.funded"])]
    assert funded == [start + 10 * n for n in range(1, 6)]
    assert [r.at_ms for r in guard.audit("acme", until=start + 30, limit=2)] == funded[1:3]
    assert [r.at_ms for r in guard.audit("acme", since=start + 20, until=start + 40)] == (
        funded[1:4])
    moment = datetime.fromtimestamp((start + 20) / 1000, timezone.utc)
    assert [r.at_ms for r in guard.tenant("acme").audit(until=moment)] == [start, funded[0],
                                                                          funded[1]]
    assert guard.audit("acme", until=start - 1) == ()
    with pytest.raises(al.InvalidRequest, match="until: give an aware datetime"):
        guard.audit("acme", until=datetime(2026, 1, 1))
    with pytest.raises(al.InvalidRequest, match="until"):
        guard.audit("acme", until="yesterday")  # type: ignore[arg-type]


def test_a_budgets_notifications_are_on_record_with_its_figures(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, alerts=[0.5])
    guard.set_budget(f"{ACME}/workspace:w", usd=1, overdraft_limit=1,
                     overage_policy="ALLOW_WITH_OVERDRAFT")
    r = guard.reserve(al.Subject(tenant="acme", workspace="w"), LLM, al.usd("0.5"))
    r.commit(al.usd("1.5"))  # over its estimate; the workspace runs out and owes $0.50
    kinds = [rec.type for rec in guard.audit("acme")]
    assert kinds[kinds.index("reservation.committed"):] == [
        "reservation.committed", "budget.threshold_crossed", "budget.threshold_crossed",
        "budget.threshold_crossed", "budget.exhausted", "budget.debt_incurred",
        "reservation.commit_overage"]
    crossed = guard.audit("acme", types=["budget.threshold_crossed"])
    assert [(rec.scopes, rec.detail["threshold"]) for rec in crossed] == [
        ((f"{ACME}/workspace:w",), 0.5), ((f"{ACME}/workspace:w",), 0.8),
        ((f"{ACME}/workspace:w",), 1.0)]  # the tenant's 15 % is below its 50 %
    (debt,) = guard.audit("acme", types=["budget.debt_incurred"])
    assert debt.reservation_id == r.id and debt.detail == {
        "unit": "USD_MICROCENTS", "remaining": -al.usd("0.5").amount,
        "allocated": al.usd(1).amount, "debt_incurred": al.usd("0.5").amount}
    (over,) = guard.audit("acme", types=["reservation.commit_overage"])
    assert (over.estimate, over.actual) == ((al.usd("0.5"),), (al.usd("1.5"),))
    # over the limit and back: a shadow-mode tenant's debt, then repaid
    guard.set_budget("tenant:trial", usd=1)
    guard.set_mode("trial", "shadow")
    guard.reserve(al.Subject(tenant="trial"), LLM, al.usd(5)).commit(al.usd(5))
    guard.fund("tenant:trial", "REPAY_DEBT", al.usd(4), actor="ops")
    kinds = [rec.type for rec in guard.audit("trial")]
    assert kinds[-2:] == ["budget.over_limit_exited", "budget.funded"]  # one step
    assert kinds.index("budget.over_limit_entered") < len(kinds) - 2
    exited = guard.audit("trial", types=["budget.over_limit_exited"])[0]
    assert (exited.scopes, exited.reservation_id, exited.detail["remaining"]) == (
        ("tenant:trial",), None, 0)


def test_a_tenants_own_webhooks_made_changed_and_removed_are_on_record_never_a_secret(
        guard: al.Guard) -> None:
    made = guard.subscribe_webhook("https://hooks.example.com/T0KEN?sig=s3cr3t", tenant="acme",
                                   events=["budget.exhausted"], actor="ops", reason="alerts")
    rotated = "whsec_" + "QUJD" * 8
    guard.update_webhook(made.id, url="https://user:pw@hooks.example.com:8443/b", secret=rotated)
    guard.enable_webhook(made.id, False, actor="ops")
    guard.tenant("acme").update_webhook(made.id, events=["reservation.denied"], enabled=True)
    everyone = guard.subscribe_webhook("https://hooks.example.com/all", events="*")
    guard.update_webhook(everyone.id, enabled=False)  # a global one: on no tenant's log
    assert guard.remove_webhook(made.id, actor="ops", reason="moved") is True
    assert guard.remove_webhook(made.id) is False  # gone already: nothing on record
    records = guard.audit("acme")
    assert [(r.type, r.detail, r.actor, r.reason) for r in records] == [
        ("webhook.created", {"webhook_id": made.id, "destination": "https://hooks.example.com",
                             "events": ["budget.exhausted"], "format": "standard",
                             "enabled": True}, "ops", "alerts"),
        ("webhook.updated", {"webhook_id": made.id,  # never a URL's path, query or user
                             "destination": "https://hooks.example.com:8443",
                             "secret_rotated": True}, None, None),
        ("webhook.updated", {"webhook_id": made.id, "enabled": False}, "ops", None),
        ("webhook.updated", {"webhook_id": made.id, "events": ["reservation.denied"],
                             "enabled": True}, None, None),
        ("webhook.deleted", {"webhook_id": made.id}, "ops", "moved")]
    kept = repr(records)
    assert made.secret is not None and made.secret not in kept and rotated not in kept
    assert "T0KEN" not in kept and "s3cr3t" not in kept and "pw" not in kept


def test_keys_and_tenants_made_and_changed_are_on_record_never_a_secret(
        guard: al.Guard, clock: al.ManualClock) -> None:
    from allotment.keys import secret_hash

    assert guard.register_tenant("acme", "Acme Corp")[1] is True
    guard.register_tenant("acme", "Acme Corp")  # there already: nothing new on record
    made = guard.create_key("acme", name="worker", expires=clock() + 60_000)
    guard.update_key(made.key.key_id, name="batch")  # renamed
    guard.update_key(made.key.key_id, permissions=["reservations:create", "balances:read"])
    guard.revoke_key(made.key.key_id)
    guard.revoke_key(made.key.key_id)  # revoked already: on record once
    guard.update_key(made.key.key_id, name="late")  # a revoked key changes no more
    records = guard.audit("acme")
    assert [(r.type, r.detail) for r in records] == [
        ("tenant.created", {"name": "Acme Corp"}),
        ("api_key.created", {"key_id": made.key.key_id, "name": "worker",
                             "permissions": list(made.key.permissions),
                             "expires_at_ms": clock() + 60_000}),
        ("api_key.updated", {"key_id": made.key.key_id, "name": "batch"}),
        ("api_key.updated", {"key_id": made.key.key_id,  # in their canonical order
                             "permissions": ["balances:read", "reservations:create"]}),
        ("api_key.revoked", {"key_id": made.key.key_id})]
    assert records[0].scopes == ("tenant:acme",)
    kept = repr(records)
    assert made.secret not in kept and secret_hash(made.secret) not in kept
