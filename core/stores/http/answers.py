"""Reading a Cycles server's answers: the plain Cycles shapes as the library's results (what a
server without allotment's extensions gives), and its error envelopes as the library's
errors. A denial is a decision, never an error code the caller has to parse."""

from __future__ import annotations

from typing import Any

from ...amounts import Amount, Unit
from ...errors import (
    AllotmentError,
    Forbidden,
    StoreUnavailable,
    by_code,
)
from ...models import (
    Action,
    Balance,
    BudgetStatus,
    Caps,
    Decision,
    Outcome,
    Reason,
    ReservationInfo,
    ReservationStatus,
)
from ...scopes import Subject

_DENIAL_CODES = Reason.BUDGET | {Reason.TENANT_CLOSED}
"""Error codes that are a budget's refusal (409 on the Cycles wire)."""
_PASSED = frozenset({"NOT_FOUND", "INVALID_REQUEST", "IDEMPOTENCY_MISMATCH", "UNIT_MISMATCH",
                     "RESERVATION_EXPIRED", "RESERVATION_FINALIZED", "MAX_EXTENSIONS_EXCEEDED",
                     "FORBIDDEN", "TENANT_CLOSED"})
"""Error codes that are the library's errors of the same code."""


def amount(body: Any) -> Amount:
    try:
        return Amount(Unit(body["unit"]), int(body["amount"]))
    except (KeyError, TypeError, ValueError):
        raise StoreUnavailable(f"the server answered an amount that is not one: {body!r}") from None


def caps(body: dict[str, Any]) -> Caps:
    allow, deny = body.get("tool_allowlist"), body.get("tool_denylist")
    return Caps(max_tokens=body.get("max_tokens"), cooldown_ms=body.get("cooldown_ms"),
                max_steps_remaining=body.get("max_steps_remaining"),
                tool_allowlist=None if allow is None else tuple(allow),
                tool_denylist=None if deny is None else tuple(deny))


def decision(body: dict[str, Any]) -> Decision:
    """A Cycles DecisionResponse (decide, a dry run, a reservation's evaluation part)."""
    outcome = Outcome(body["decision"])
    limits = caps(body["caps"]) if "caps" in body else None
    if outcome is not Outcome.DENY:
        return Decision(outcome, caps=limits)
    return Decision(outcome, caps=limits, reason=body.get("reason_code") or "DENIED",
                    retry_after_ms=body.get("retry_after_ms"))


def balance(body: dict[str, Any]) -> Balance:
    """A Cycles Balance; the wire carries no period, bucket or status (read as none, "" and
    ACTIVE)."""
    remaining = amount(body["remaining"])
    figures = {name: amount(body[name]).amount if name in body else 0
               for name in ("reserved", "spent", "allocated", "debt", "overdraft_limit")}
    if "allocated" not in body:  # a server that leaves it out: what makes `remaining` true
        figures["allocated"] = (remaining.amount + figures["reserved"] + figures["spent"]
                                + figures["debt"])
    return Balance(body.get("scope_path") or body["scope"], remaining.unit, None, "",
                   figures["allocated"], figures["reserved"], figures["spent"],
                   figures["debt"], figures["overdraft_limit"],
                   bool(body.get("is_over_limit", False)), BudgetStatus.ACTIVE)


def balances(rows: list[dict[str, Any]]) -> tuple[Balance, ...]:
    return tuple(balance(row) for row in rows)


def reservation(body: dict[str, Any], rid: str, tenant: str) -> ReservationInfo:
    """A Cycles ReservationDetail under the library's id `rid`; the wire carries one unit and
    no grace period, extension count or overage policy (read as none)."""
    subject = Subject(**{**body["subject"], "tenant": tenant})
    act = body["action"]
    charged = (amount(body["committed"]),) if "committed" in body else ()
    return ReservationInfo(
        rid, tenant, ReservationStatus(body["status"]), subject,
        Action(act["kind"], act["name"], tags=tuple(act.get("tags") or ())),
        (amount(body["reserved"]),), tuple(body.get("affected_scopes") or subject.scopes()),
        int(body["created_at_ms"]), int(body["expires_at_ms"]), 0, 0, None, charged,
        body.get("finalized_at_ms"))


def denial(status: int, body: dict[str, Any], headers: Any, settling: bool = False
           ) -> Decision | None:
    """The decision an error envelope carries, when it is a refusal of the call (a budget,
    a quota, an access rule, a missing budget or dimension); None for any other error, and
    for a closed tenant when `settling` (an error there, not a decision)."""
    code = body.get("error")
    if settling and code == Reason.TENANT_CLOSED:
        return None
    given = body.get("details")
    details: dict[str, Any] = given if isinstance(given, dict) else {}
    reason = details.get("reason_code")
    if reason is None:
        if code in _DENIAL_CODES:
            reason = code
        elif status == 429 or code == "LIMIT_EXCEEDED":
            reason = Reason.QUOTA_EXCEEDED
        else:
            return None
    retry = details.get("retry_after_ms")
    if retry is None and status == 429 and str(headers.get("retry-after", "")).isdigit():
        retry = int(headers["retry-after"]) * 1000
    unit = details.get("unit")
    return Decision(Outcome.DENY, reason=reason, scope=details.get("scope"),
                    unit=Unit(unit) if unit in Unit.__members__ else None,
                    remaining=details.get("remaining"), limit=details.get("limit"),
                    requested=details.get("requested"), retry_after_ms=retry,
                    missing_dimensions=tuple(details.get("missing_dimensions") or ()))


def error(status: int, body: Any, url: str) -> AllotmentError:
    """The library's error for an error answer that is not a denial."""
    if not isinstance(body, dict) or "error" not in body:
        return StoreUnavailable(f"{url} answered HTTP {status} without the Cycles error "
                                "envelope")
    code, message = str(body["error"]), str(body.get("message", ""))
    if status == 401:
        return Forbidden(f"the server refused the API key ({code}: {message})")
    if code in _PASSED:
        return by_code(code, message)
    if status >= 500:
        return StoreUnavailable(f"{url} failed: HTTP {status} {code}: {message}")
    return StoreUnavailable(f"{url} answered HTTP {status} {code}: {message}")
