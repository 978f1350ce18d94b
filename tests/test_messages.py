"""What users rely on says what it means: misspelt type names are refused, and denial
messages tell a person what happened and what to change."""

from __future__ import annotations

import pytest

import allotment as al

ACME = "tenant:acme"


def test_every_audit_and_notification_type_is_known() -> None:
    assert "reservation.denied" in al.events.AUDIT_TYPES
    assert "budget.threshold_crossed" in al.events.NOTIFICATION_TYPES
    assert "sweep.tenant_failed" in al.events.NOTIFICATION_TYPES


def test_unknown_audit_type_is_refused_with_near_matches(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    with pytest.raises(al.InvalidRequest, match=r"'reservation.denied'") as error:
        guard.audit("acme", types=["denied"])
    assert str(error.value).startswith("types[0]: unknown type 'denied'; did you mean")
    with pytest.raises(al.InvalidRequest, match=r"did you mean 'budget.set'"):
        guard.audit("acme", types="budget.sett")
    with pytest.raises(al.InvalidRequest, match=r"known: access.set, budget.funded"):
        guard.audit("acme", types=["zzz"])
    assert [r.type for r in guard.audit("acme", types=[al.AuditType.BUDGET_SET])] == [
        "budget.set"]


def test_unknown_notification_type_is_refused_with_near_matches(guard: al.Guard) -> None:
    with pytest.raises(al.InvalidRequest, match=r"did you mean 'budget.threshold_crossed' or"):
        guard.on("budget.treshold_crossed", print)
    with pytest.raises(al.InvalidRequest, match="event_type"):
        guard.on("budget.exausted")(print)
    seen: list[str] = []
    guard.on("*", lambda note: seen.append(note.type))
    guard.on(al.NotificationType.EXHAUSTED, lambda note: seen.append("exhausted"))
    guard.set_budget(ACME, usd=1)
    guard.record(al.Subject(tenant="acme"), al.Action("tool.call", "search"), al.usd(1))
    assert "budget.exhausted" in seen and "exhausted" in seen

