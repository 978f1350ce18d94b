"""Checks shared by the call builders: each turns one argument as a caller may give it into
the exact value an operation carries, or raises `InvalidRequest` saying what was wrong and
what would be right. Pure: no state, no store."""

from __future__ import annotations

import hashlib
import json
from contextlib import suppress
from typing import Any

try:  # optional (the server extra installs it): a faster encoder of the same bytes
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None  # type: ignore[assignment]

from . import targets
from .amounts import (
    Amount,
    AmountsLike,
    Unit,
    Units,
    amounts_by_unit,
    to_decimal,
    usd_to_microcents,
)
from .context import current_subject
from .errors import InvalidRequest
from .models import Action, OveragePolicy
from .policy import ELASTIC_LIMIT, Degrade, QuotaKind
from .scopes import ScopePath, Subject, check_dimension_key, parse_scope
from .stores import operations as ops
from .stores.operations import in_unit_order
from .validation import (
    MAX_AMOUNT,
    MAX_NAME,
    MAX_RULES,
    MAX_TEXT,
    MAX_TOKENS,
    check_idempotency_key,
    check_int,
    check_list,
    check_mapping,
    check_text,
    shown,
)

NO_KEY: dict[str, Any] = {"idempotency_key": None, "fingerprint": ""}
TTL_RANGE = (1_000, 86_400_000)
GRACE_RANGE = (0, 60_000)


def standard_scope(scope: str, what: str) -> ScopePath:
    """A scope without a dimension: rules and statuses belong to standard scopes."""
    path = parse_scope(scope)
    if path.dimension is not None:
        raise InvalidRequest(f"scope {scope!r}: {what} takes a standard scope such as "
                             f"{path.base!r}; a {path.dimension[0]} ledger follows its "
                             f"template (per={path.dimension[0]!r}) there")
    return path


def per(value: Any) -> str:
    try:
        return check_dimension_key(value)
    except InvalidRequest as error:
        raise InvalidRequest(f"per: {error}") from None


def subject(value: Subject | None) -> Subject:
    """The subject given, or the one of the active `al.scope`, as validated: one built
    without validation is checked now, and the checked copy is what the call uses."""
    subject = value
    if subject is None:
        subject = current_subject()
        if subject is None:
            raise InvalidRequest("subject: none given and no al.scope(tenant=...) is active")
    if not isinstance(subject, Subject):
        raise InvalidRequest(f"subject: expected a Subject, got {shown(subject)}")
    return subject.checked()


def mode(value: Any, allow_none: bool) -> str | None:
    if value is None and allow_none:
        return None
    if value not in ("enforce", "shadow"):
        raise InvalidRequest(f"mode: {value!r} is not 'enforce' or 'shadow'"
                             + (" (or None to follow the guard)" if allow_none else ""))
    return str(value)


def quota_kind(kind: str) -> tuple[int | None, int | None, int | None]:
    """The calls/runs/concurrent triple that names one quota kind (limits are not needed
    to remove one)."""
    try:
        index = [k.value for k in QuotaKind].index(kind)
    except ValueError:
        raise InvalidRequest(f"kind: {kind!r} is not calls, runs or concurrent") from None
    triple: list[int | None] = [None, None, None]
    triple[index] = 0
    return triple[0], triple[1], triple[2]


def degrade(value: Any) -> tuple[Degrade, ...]:
    """At most MAX_RULES rules, each an `al.Degrade` or a mapping of its fields."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return ()
    rules = check_list(value, "degrade", MAX_RULES, degrade_rule,
                       "[al.Degrade(below=0.2, max_tokens=1024)]")
    return tuple(sorted(rules, key=lambda rule: -rule.below))


def degrade_rule(value: Any, field: str) -> Degrade:
    """A rule, its model checked against the price data and named per provider."""
    if isinstance(value, dict):
        value = Degrade(**check_mapping(value, field))
    elif not isinstance(value, Degrade):
        raise InvalidRequest(f"{field}: expected al.Degrade(below=..., max_tokens=..., "
                             f"model=..., cooldown_ms=...) or a dict of those, got "
                             f"{shown(value)}")
    return targets.resolve(value, f"{field}.model")


def alerts(value: Any) -> tuple[float, ...]:
    """At most MAX_RULES fractions of the allocation used, each in (0, 1]."""
    if value is None:
        return (0.5, 0.8, 1.0)
    return tuple(sorted(check_list(value, "alerts", MAX_RULES, alert, "[0.5, 0.8, 1.0]")))


def alert(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InvalidRequest(f"{field}: expected a fraction of the allocation in (0, 1], "
                             f"e.g. [0.5, 0.8, 1.0], got {shown(value)}")
    return float(value)


def reason(value: Any) -> str:
    """A release reason, kept in the audit log: 1-256 characters of UTF-8 text."""
    return check_text(value, "reason")


def signed(actor: Any, reason: Any) -> dict[str, str | None]:
    """Who made an administrative change and why, kept on its audit record: each optional,
    `actor` 1-128 and `reason` 1-256 printable characters (no newlines or control
    characters: a log line cannot be forged with one)."""
    return {"actor": None if actor is None else check_text(actor, "actor", MAX_NAME,
                                                           printable=True),
            "reason": None if reason is None else check_text(reason, "reason", MAX_TEXT,
                                                             printable=True)}


def exact(elastic: ops.ElasticTerms) -> ops.ElasticTerms:
    """An elastic estimate the store can hold exactly (checked again for every estimate:
    `model_construct()` and the adapters' units skip the model's own validation)."""
    for _, rate in elastic.rates:
        if rate * elastic.max_tokens > ELASTIC_LIMIT:
            raise InvalidRequest("estimate: per_mtok × max_tokens is more than can be "
                                 "reserved exactly; lower max_tokens")
    check_int(elastic.max_tokens, "estimate max_tokens", 1, MAX_TOKENS)
    check_int(elastic.floor, "estimate floor", 0, elastic.max_tokens)
    return elastic


def units(value: AmountsLike, field: str) -> Units:
    if isinstance(value, Amount):
        return ((value.unit, value.amount),)
    return in_unit_order(amounts_by_unit(value, field))


def unit(value: Unit | str | None) -> Unit:
    if value is None:
        raise InvalidRequest("unit: required with amount=; one of "
                             + ", ".join(u.value for u in Unit))
    unit: Unit = enum(Unit, value, "unit")
    return unit


def policy(value: OveragePolicy | str | None) -> OveragePolicy | None:
    return None if value is None else enum(OveragePolicy, value, "overage_policy")


def enum(kind: Any, value: Any, field: str) -> Any:
    """A member by value, in either case (ASCII only: `ſ` would upper to `S`)."""
    try:
        if isinstance(value, str) and not value.isascii():
            raise ValueError(value)
        return kind(value.upper() if isinstance(value, str) else value)
    except ValueError:
        names = ", ".join(member.value for member in kind)
        raise InvalidRequest(f"{field}: {shown(value)} is not one of {names}") from None


def limit_like(value: Any, unit: Unit, in_dollars: bool) -> int:
    """overdraft_limit in the same terms as the limit: dollars with usd=, else the unit."""
    if isinstance(value, Amount):
        if value.unit is not unit:
            raise InvalidRequest(f"overdraft_limit: {value.unit.value} given for a "
                                 f"{unit.value} budget")
        return value.amount
    if in_dollars:
        return usd_to_microcents(to_decimal(value, "overdraft_limit"), "overdraft_limit")
    return check_int(value, "overdraft_limit", 0, MAX_AMOUNT)


def keyed(key: str | None, *payload: Any) -> dict[str, Any]:
    """Idempotency fields: a caller's key gets a payload fingerprint; with no key there is
    nothing to replay, so none is stored."""
    if key is None:
        return NO_KEY
    return {"idempotency_key": check_idempotency_key(key), "fingerprint": fingerprint(payload)}


_FIELDS_AS_JSON = {model: tuple(model.model_fields) for model in (Subject, Action)}
"""Models whose fields are already JSON values (text, None, a dict of text, a tuple of
text), so the fields read from `__dict__` encode as `model_dump(mode="json")` does (the
`__dict__` itself may also hold cached properties)."""
_MEMBERS = (Unit, OveragePolicy)
"""The enums payloads hold: encoded as their value."""


def fingerprint(payload: tuple[Any, ...]) -> str:
    """SHA-256 of the payload as canonical JSON: sorted keys, no spaces, ASCII only (the
    stdlib's `json.dumps(..., sort_keys=True, separators=(",", ":"))`). orjson writes the
    same bytes for what payloads hold (ints, strings, booleans, nulls, no floats) as long as
    its output is ASCII without DEL, which the stdlib escapes; anything else (non-ASCII
    text, a number past 64 bits), or without orjson installed, the stdlib encodes it: a
    fingerprint is the same bytes either way."""
    data = _plain(payload)
    text = b""
    if _orjson is not None:
        with suppress(TypeError):  # orjson.JSONEncodeError: an int past 64 bits
            text = _orjson.dumps(data, option=_orjson.OPT_SORT_KEYS)
    if not text or not text.isascii() or b"\x7f" in text:
        text = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest()


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or value is None:
        return value
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    names = _FIELDS_AS_JSON.get(kind)
    if names is not None:  # what model_dump(mode="json") gives, without its cost
        fields = value.__dict__
        return {name: fields[name] for name in names}
    if kind in _MEMBERS:
        return value.value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "value"):
        return value.value
    return value if isinstance(value, (int, str)) else repr(value)
