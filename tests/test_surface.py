"""The call surface cannot drift: every sync call has an async twin with the same parameters,
the tenant handle leads nowhere beyond its tenant, the package exports what it says, and
every exported class and public method says why it exists."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import allotment as al
from allotment import adapter
from allotment.stores.operations import Store
from allotment.stores.redis import RedisStore

from support import LLM

NOT_IO = {
    "on": "registers a subscriber in process",
    "add_sink": "registers a sink in process",
    "add_observer": "registers an observer in process",
    "remove_observer": "unregisters an observer in process",
    "tenant": "builds a handle, touches no store",
    "tenant_for_key": "builds a handle carrying an API key, touches no store",
    "subject": "builds a Subject, touches no store",
    "start_sweeper": "starts a background thread",
    "stop_sweeper": "stops that thread",
    "from_url": "builds a guard or store",
    "close": "closes connections the object owns",
    "subscribe": "registers a listener in process",
    "lease": "the sweeper thread's lease, taken from that thread only",
    "load_library": "an operator's one-off load before pipelining",
}
"""Public sync methods that need no async twin, and why."""

SURFACES = [al.Guard, al.TenantGuard, al.Reservation, al.MemoryStore, RedisStore]


def public_methods(cls: type) -> dict[str, Any]:
    methods = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(cls, name)
        if isinstance(static, property) or not callable(getattr(cls, name)):
            continue
        methods[name] = getattr(cls, name)
    return methods


def parameters(method: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default)
            for p in inspect.signature(method).parameters.values()]


@pytest.mark.parametrize("cls", SURFACES, ids=lambda c: c.__name__)
def test_every_sync_call_has_an_async_twin_with_the_same_parameters(cls: type) -> None:
    methods = public_methods(cls)
    checked = 0
    for name, method in methods.items():
        if inspect.iscoroutinefunction(method) or getattr(method, "streams", False):
            assert name[1:] in methods, f"{cls.__name__}.{name} has no sync twin"
            continue
        if name in NOT_IO:
            continue
        twin = methods.get("a" + name)
        assert twin is not None, f"{cls.__name__}.{name} has no async twin a{name}"
        assert inspect.iscoroutinefunction(twin) or getattr(twin, "streams", False), (
            f"{cls.__name__}.a{name} is not async")
        assert parameters(twin) == parameters(method), f"{cls.__name__}.{name} drifted"
        checked += 1
    assert checked >= (1 if cls in (al.MemoryStore, RedisStore) else 3)


def test_the_surfaces_offer_the_documented_calls() -> None:
    """The families each surface composes: the guard has every call, the handle no
    platform call, and both have the calls DESIGN §4 names."""
    guard_calls = set(public_methods(al.Guard))
    handle_calls = set(public_methods(al.TenantGuard))
    enforcement = {"reserve", "decide", "commit", "release", "extend", "record", "get"}
    budgets = {"set_budget", "remove_budget", "set_quota", "remove_quota", "set_access",
               "clear_access", "freeze", "unfreeze", "close_budget", "set_budget_terms", "fund",
               "transfer"}
    reads = {"balances", "audit", "report", "usage", "plan_of"}
    platform = {"set_mode", "assign_plan", "close_tenant", "suspend_tenant", "resume_tenant",
                "sweep", "tenants", "tenant_status", "claim_once", "finish_once"}
    for calls in (enforcement, budgets, reads, platform):
        assert calls | {"a" + c for c in calls} <= guard_calls
    for calls in (enforcement, budgets, reads):
        assert calls | {"a" + c for c in calls} <= handle_calls
    assert not (platform | {"a" + c for c in platform}) & handle_calls
    assert parameters(al.Guard.commit) == parameters(al.TenantGuard.commit)
    assert parameters(al.Guard.set_budget) == parameters(al.TenantGuard.set_budget)
    assert [p[0] for p in parameters(al.TenantGuard.plan_of)] == ["self"]


ADMIN_CALLS = ["set_budget", "remove_budget", "set_quota", "remove_quota", "set_access",
               "clear_access", "freeze", "unfreeze", "close_budget", "set_budget_terms", "fund",
               "transfer", "set_mode", "assign_plan", "close_tenant", "suspend_tenant",
               "resume_tenant"]


@pytest.mark.parametrize("name", ADMIN_CALLS)
def test_every_admin_call_takes_an_actor_and_a_reason(name: str) -> None:
    """Who changed what, and why: optional keyword arguments of every administrative call,
    sync and async (the records are tested in test_audit_trail)."""
    for method in (getattr(al.Guard, name), getattr(al.Guard, "a" + name)):
        found = {p.name: p for p in inspect.signature(method).parameters.values()}
        for field in ("actor", "reason"):
            assert found[field].kind is inspect.Parameter.KEYWORD_ONLY, (name, field)
            assert found[field].default is None, (name, field)


def reachable(root: object, depth: int = 4) -> list[tuple[str, object]]:
    """Everything reachable from `root` through public attributes and properties."""
    found: list[tuple[str, object]] = []
    seen: set[int] = set()

    def walk(path: str, value: object, left: int) -> None:
        if id(value) in seen or left == 0 or isinstance(value, (str, int, float, bytes)):
            return
        seen.add(id(value))
        found.append((path, value))
        names = [n for n in dir(value) if not n.startswith(("_", "model_"))]
        for name in names:
            try:
                attr = getattr(value, name)
            except Exception:  # a property with nothing to show yet
                continue
            if inspect.ismethod(attr) or inspect.isfunction(attr) or inspect.isbuiltin(attr):
                continue
            walk(f"{path}.{name}", attr, left - 1)
        if isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                walk(f"{path}[{i}]", item, left - 1)

    walk("handle", root, depth)
    return found


def test_the_tenant_handle_leads_nowhere_beyond_its_tenant(store: Store) -> None:
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=10)
    acme = guard.tenant("acme")
    held = acme.reserve(acme.subject(), LLM, al.usd(1))
    assert held.guard is acme  # the reservation leads back to the handle only
    keyed = guard.tenant_for_key(guard.create_key("acme").secret, "reservations:create")
    for root in (acme, held, keyed, keyed.reserve(keyed.subject(), LLM, al.usd(1))):
        for path, value in reachable(root):
            assert not isinstance(value, (al.Guard, al.MemoryStore, RedisStore)), path
            assert not hasattr(value, "execute"), path  # no store of any kind
    held.commit(al.usd(1))
    assert acme.balances()[0].spent == al.usd(1).amount
    assert acme.balances()[0].reserved == al.usd(1).amount


def test_the_handle_refuses_an_operation_of_another_tenant_however_it_was_built(
        guard: al.Guard) -> None:
    """The check is on the operation the store would run, built from checked values."""
    guard.set_budget("tenant:rival", usd=10)
    rival = guard.reserve(al.Subject(tenant="rival"), LLM, al.usd(1))
    acme = guard.tenant("acme")
    with pytest.raises(al.Forbidden):
        acme.commit(rival.id, al.usd(1))
    with pytest.raises(al.Forbidden):
        acme.set_budget("TENANT:Rival", usd=1)
    assert guard.get(rival.id).status is al.ReservationStatus.ACTIVE


EXPORTS = [
    "REPORT_RETENTION_DAYS", "AccessSpec", "Action", "AllotmentError", "Amount", "AuditRecord",
    "AuditType", "Balance", "BudgetExceeded", "BudgetHierarchyWarning", "BudgetSpec",
    "BudgetStatus", "Caps", "CommitResult", "CrossTenant",
    "Decision", "Degrade", "Denied", "Elastic", "ExtendResult", "Forbidden", "FundOperation",
    "FundResult", "Guard", "IdempotencyMismatch", "InvalidRequest", "KeyRefused", "ManualClock",
    "MaxExtensionsExceeded", "MemoryStore", "NotAllowed", "NotFound", "Notification",
    "NotificationType", "Observation", "Observer", "Outcome", "OveragePolicy", "Period",
    "Plan", "QuotaExceeded",
    "QuotaSpec", "Reason", "RecordResult", "ReleaseResult", "ReportRow", "Reservation",
    "ReservationExpired", "ReservationFinalized", "ReservationInfo", "ReservationStateError",
    "ReservationStatus", "Sink", "StoreUnavailable", "Subject", "TenantClosed", "TenantGuard",
    "TenantStatus", "TokenUsage", "TransferResult", "Unit", "UnitMismatch", "UsageRow", "Webhook",
    "WebhookDelivery", "WebhookEvent", "WebhookSecurity", "credits", "current_subject",
    "format_amount",
    "microcents_to_usd", "quote_value", "scope", "tokens", "unquote_value", "usd",
    "write_usage",
]
ADAPTER_EXPORTS = [
    "LEVELS", "ElasticTerms", "ModelPrice", "Pricer", "TokenUsage", "Unit", "Units",
    "acommit_units", "areserve_units", "check_int", "commit_units", "current_fields",
    "input_tokens", "reserve_units", "text_tokens", "tier_of", "trusted_amounts",
]


def test_the_package_exports_exactly_its_public_names() -> None:
    assert sorted(al.__all__) == sorted(EXPORTS)
    assert sorted(adapter.__all__) == sorted(ADAPTER_EXPORTS)
    for module, names in ((al, EXPORTS), (adapter, ADAPTER_EXPORTS)):
        for name in names:
            assert getattr(module, name) is not None


def test_every_exported_class_and_public_method_says_why() -> None:
    missing = []
    for name in EXPORTS + ["adapter." + n for n in ADAPTER_EXPORTS]:
        value = getattr(adapter, name[8:]) if name.startswith("adapter.") else getattr(al,
                                                                                       name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if not (getattr(value, "__module__", "") or "").startswith("allotment"):
            continue
        if not inspect.getdoc(value):
            missing.append(name)
        if inspect.isclass(value):
            for method_name, method in vars(value).items():
                function = getattr(method, "__func__", method)
                if method_name.startswith("_") or not inspect.isfunction(function):
                    continue
                if not function.__doc__:
                    missing.append(f"{name}.{method_name}")
    assert not missing, f"no docstring: {missing}"


RIVAL = "tenant:rival"
HANDLE_CALLS_ON_ANOTHER_TENANT = {
    "set_budget": lambda h: h.set_budget(RIVAL, usd=1),
    "remove_budget": lambda h: h.remove_budget(RIVAL, "USD_MICROCENTS"),
    "set_quota": lambda h: h.set_quota(RIVAL, calls=1, window="minute"),
    "remove_quota": lambda h: h.remove_quota(RIVAL, "calls", window="minute"),
    "set_access": lambda h: h.set_access(RIVAL, models_deny=["*"]),
    "clear_access": lambda h: h.clear_access(RIVAL),
    "freeze": lambda h: h.freeze(RIVAL),
    "unfreeze": lambda h: h.unfreeze(RIVAL),
    "close_budget": lambda h: h.close_budget(RIVAL),
    "set_budget_terms": lambda h: h.set_budget_terms(RIVAL, "USD_MICROCENTS", overdraft_limit=1),
    "fund": lambda h: h.fund(RIVAL, "CREDIT", al.usd(1)),
    "transfer": lambda h: h.transfer(RIVAL, f"{RIVAL}/workspace:w", al.usd(1)),
    "balances": lambda h: h.balances(RIVAL),
    "reserve": lambda h: h.reserve(al.Subject(tenant="rival"), LLM, al.usd(1)),
    "decide": lambda h: h.decide(al.Subject(tenant="rival"), LLM, al.usd(1)),
    "record": lambda h: h.record(al.Subject(tenant="rival"), LLM, al.usd(1)),
    "commit": lambda h: h.commit(f"rival:{'0' * 32}", al.usd(1)),
    "release": lambda h: h.release(f"rival:{'0' * 32}"),
    "extend": lambda h: h.extend(f"rival:{'0' * 32}", 1_000),
    "get": lambda h: h.get(f"rival:{'0' * 32}"),
    "remove_webhook": lambda h: h.remove_webhook(f"rival/whk_{'0' * 24}"),
    "enable_webhook": lambda h: h.enable_webhook(f"rival/whk_{'0' * 24}", False),
    "update_webhook": lambda h: h.update_webhook(f"rival/whk_{'0' * 24}", events="*"),
    "webhook_deliveries": lambda h: h.webhook_deliveries(event_id=f"rival/evt_{'0' * 20}"),
    "replay_webhook_event": lambda h: h.replay_webhook_event(f"rival/evt_{'0' * 20}",
                                                             f"acme/whk_{'0' * 24}"),
}


def test_every_handle_call_that_names_a_tenant_is_covered_below() -> None:
    """A new call on the handle must be added to the cross-tenant test."""
    # they take no tenant: always their own
    own_tenant_only = {"audit", "report", "usage", "plan_of", "subject", "subscribe_webhook",
                       "webhooks", "list_reservations"}
    sync_calls = {n for n, m in public_methods(al.TenantGuard).items()
                  if not inspect.iscoroutinefunction(m) and not getattr(m, "streams", False)}
    assert sync_calls - own_tenant_only == set(HANDLE_CALLS_ON_ANOTHER_TENANT)


@pytest.mark.parametrize("name", sorted(HANDLE_CALLS_ON_ANOTHER_TENANT))
def test_every_handle_call_refuses_another_tenant(
        guard: Any, name: str) -> None:
    """On both stores and through both the sync calls and their async twins: Forbidden,
    and the other tenant's budget exactly as it was."""
    guard.set_budget(RIVAL, usd=10)
    before = guard.balances(RIVAL)
    with pytest.raises(al.Forbidden):
        HANDLE_CALLS_ON_ANOTHER_TENANT[name](guard.tenant("acme"))
    assert guard.balances(RIVAL) == before
