"""Policy definitions and their pure evaluation: access rules, quotas, degrade rules,
elastic estimates and how caps from several sources merge into one `Caps`.

Stores call these inside their atomic step; nothing here reads or writes state.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import field_validator, model_validator

from .amounts import Amount, Unit
from .models import Caps
from .periods import Period
from .validation import (
    MAX_AMOUNT,
    MAX_COOLDOWN_MS,
    MAX_GLOBS,
    MAX_NAME,
    MAX_TOKENS,
    Model,
    check_glob,
    check_int,
    check_list,
    check_text,
)

PER_MILLION = 1_000_000
ELASTIC_LIMIT = 2**52
"""rate × max_tokens stays below this, so every store computes an elastic amount exactly."""
MAX_TARGETS = 64
"""Providers a degrade rule may name a model for."""
TARGETS_EXAMPLE = "{'openai': 'gpt-4o-mini', 'anthropic': 'claude-haiku-4-5'}"


class QuotaKind(str, Enum):
    CALLS = "calls"
    RUNS = "runs"
    CONCURRENT = "concurrent"


@dataclass(slots=True)
class QuotaRule:
    """`limit` calls / distinct runs per window, or concurrent reservations, under a scope."""

    scope: str
    kind: QuotaKind
    limit: int
    window: Period | None  # tumbling, UTC-aligned; None for CONCURRENT
    action_kind: str  # glob on Action.kind; "*" for every action

    @property
    def key(self) -> tuple[str, QuotaKind, Period | None, str]:
        return (self.scope, self.kind, self.window, self.action_kind)

    def applies_to(self, action_kind: str) -> bool:
        return self.action_kind == "*" or fnmatch.fnmatchcase(action_kind, self.action_kind)


@dataclass(slots=True)
class AccessRule:
    """Allow/deny lists (globs) for models and tools, a per-call token cap, and the
    dimensions every call under the scope must carry, at a scope."""

    scope: str
    models_allow: tuple[str, ...] = ()
    models_deny: tuple[str, ...] = ()
    tools_allow: tuple[str, ...] = ()
    tools_deny: tuple[str, ...] = ()
    max_tokens_per_call: int | None = None
    required_dimensions: tuple[str, ...] = ()


class Degrade(Model):
    """Below `below` of the allocation remaining, run with these caps instead of denying.

    `max_tokens` is 1..MAX_TOKENS, `cooldown_ms` 0..a day: a cap is a limit, so a negative
    or zero one would be no limit at all. `model` names the cheaper model per provider
    (`{"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}`), or is one name
    (`"gpt-4o-mini"`, `"openai:gpt-4o-mini"`) that setting the rule turns into the providers
    pricing it; a call whose provider the rule does not name keeps its model. Each name is
    1-128 printable characters, checked against the price data when the rule is set."""

    below: float
    max_tokens: int | None = None
    model: str | dict[str, str] | None = None
    cooldown_ms: int | None = None

    @field_validator("below", mode="before")
    @classmethod
    def _fraction(cls, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError("must be a fraction of the allocation in (0, 1], e.g. 0.2")
        return float(value)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _max_tokens(cls, value: object) -> int | None:
        return None if value is None else check_int(value, "max_tokens", 1, MAX_TOKENS)

    @field_validator("cooldown_ms", mode="before")
    @classmethod
    def _cooldown(cls, value: object) -> int | None:
        return None if value is None else check_int(value, "cooldown_ms", 0, MAX_COOLDOWN_MS)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: object) -> str | dict[str, str] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            return check_text(value, "model", MAX_NAME, printable=True)
        if not 0 < len(value) <= MAX_TARGETS:
            raise ValueError(f"name a model for 1..{MAX_TARGETS} providers, e.g. "
                             f"{TARGETS_EXAMPLE}, got {len(value)}")
        targets: dict[str, str] = {}
        for provider, model in value.items():
            name = check_text(provider, "model: a provider", MAX_NAME, printable=True)
            targets[name] = check_text(model, f"model[{name!r}]", MAX_NAME, printable=True)
        return dict(sorted(targets.items()))

    @model_validator(mode="after")
    def _something(self) -> Degrade:
        if self.max_tokens is None and self.model is None and self.cooldown_ms is None:
            raise ValueError("give at least one of max_tokens, model, cooldown_ms")
        return self

    def __hash__(self) -> int:  # frozen, and hashable with a mapping of models too
        model = self.model
        named = tuple(model.items()) if isinstance(model, dict) else model
        return hash((self.below, self.max_tokens, named, self.cooldown_ms))

    def target(self, provider: str | None) -> str | None:
        """The model a call to `provider` switches to (None: it keeps its own). A single
        name stored before rules named providers applies to every call, as it always did."""
        model = self.model
        if model is None or isinstance(model, str):
            return model
        return None if provider is None else model.get(provider)

    def caps(self, provider: str | None = None) -> Caps:
        """The caps this rule imposes on a call to `provider` when it applies."""
        return Caps(max_tokens=self.max_tokens, model=self.target(provider),
                    cooldown_ms=self.cooldown_ms)


def provider_of(action_name: str) -> str | None:
    """The provider an action name starts with (`openai` in `openai:gpt-4o`), if any."""
    provider, colon, _ = action_name.partition(":")
    return provider if colon and provider else None


class Elastic(Model):
    """An estimate that may shrink: `fixed` plus `per_mtok` for every million output tokens,
    for up to `max_tokens` output tokens and no fewer than `floor`.

    If the whole estimate does not fit but one with a smaller max_tokens (≥ floor) does, the
    reservation holds the smaller amount and answers ALLOW_WITH_CAPS(max_tokens=k).
    """

    fixed: tuple[Amount, ...]
    per_mtok: tuple[Amount, ...]
    max_tokens: int
    floor: int = 1

    @field_validator("fixed", "per_mtok", mode="before")
    @classmethod
    def _amounts(cls, value: object) -> tuple[Amount, ...]:
        if isinstance(value, Amount):
            return (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(a, Amount) for a in value):
            raise ValueError("expected an Amount or a list of Amounts, e.g. [al.usd(10), "
                             "al.tokens(1_000_000)]")
        if len({a.unit for a in value}) != len(value):
            raise ValueError("give each unit once")
        return tuple(value)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _max_tokens(cls, value: object) -> int:
        return check_int(value, "max_tokens", 1, MAX_TOKENS)

    @field_validator("floor", mode="before")
    @classmethod
    def _floor(cls, value: object) -> int:
        return check_int(value, "floor", 0, MAX_TOKENS)

    @model_validator(mode="after")
    def _bounds(self) -> Elastic:
        check_int(self.floor, "floor", 0, self.max_tokens)
        for rate in self.per_mtok:
            if rate.amount * self.max_tokens > ELASTIC_LIMIT:
                raise ValueError(f"per_mtok {rate} for {self.max_tokens} tokens is more than "
                                 "can be reserved exactly; lower max_tokens")
        return self

    def rates(self) -> dict[Unit, int]:
        """Per-million-output-token rates by unit: what each output token costs."""
        return {a.unit: a.amount for a in self.per_mtok}

    def units(self) -> dict[Unit, int]:
        """Fixed parts by unit, with every rated unit present."""
        units = {a.unit: a.amount for a in self.fixed}
        for rate in self.per_mtok:
            units.setdefault(rate.unit, 0)
        return units


def elastic_amount(fixed: int, rate: int, tokens: int) -> int:
    """fixed + rate·tokens/10^6, rounded up: never below the true cost."""
    return fixed + -(-rate * tokens // PER_MILLION)


def tokens_that_fit(room: int, fixed: int, rate: int) -> int:
    """The most output tokens whose elastic amount fits in `room` (−1 if not even fixed)."""
    if room < fixed:
        return -1
    if rate == 0:
        return MAX_AMOUNT
    return (room - fixed) * PER_MILLION // rate


def name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Globs match the whole action name or the part after its provider prefix, so
    `gpt-4o*` matches `openai:gpt-4o-mini`."""
    bare = name.rsplit(":", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(bare, p) for p in patterns)


def is_tool(action_kind: str) -> bool:
    return action_kind.startswith("tool.")


def access_refusal(rule: AccessRule, action_kind: str, action_name: str) -> str | None:
    """MODEL_NOT_ALLOWED / TOOL_NOT_ALLOWED when the rule forbids this action."""
    if is_tool(action_kind):
        allow, deny, reason = rule.tools_allow, rule.tools_deny, "TOOL_NOT_ALLOWED"
    elif action_kind.startswith("llm."):
        allow, deny, reason = rule.models_allow, rule.models_deny, "MODEL_NOT_ALLOWED"
    else:
        return None
    if name_matches(action_name, deny) or (allow and not name_matches(action_name, allow)):
        return reason
    return None


@dataclass(slots=True)
class CapsBuilder:
    """Merges caps from several sources: the tightest of each wins."""

    max_tokens: int | None = None
    tool_allowlist: set[str] | None = None
    tool_denylist: set[str] = field(default_factory=set)
    cooldown_ms: int | None = None
    model: str | None = None
    model_severity: float = 2.0

    def add(self, caps: Caps, severity: float = 1.0) -> None:
        if caps.max_tokens is not None:
            self.max_tokens = min(self.max_tokens or caps.max_tokens, caps.max_tokens)
        if caps.tool_allowlist is not None:
            allowed = set(caps.tool_allowlist)
            self.tool_allowlist = allowed if self.tool_allowlist is None else (
                self.tool_allowlist & allowed)
        if caps.tool_denylist:
            self.tool_denylist |= set(caps.tool_denylist)
        if caps.cooldown_ms is not None:
            self.cooldown_ms = max(self.cooldown_ms or 0, caps.cooldown_ms)
        if caps.model is not None and severity < self.model_severity:
            self.model, self.model_severity = caps.model, severity  # the deepest cut wins

    def add_access(self, rule: AccessRule) -> None:
        self.add(Caps(max_tokens=rule.max_tokens_per_call,
                      tool_allowlist=rule.tools_allow or None,
                      tool_denylist=rule.tools_deny or None))

    def build(self) -> Caps | None:
        if (self.max_tokens is None and self.tool_allowlist is None and not self.tool_denylist
                and self.cooldown_ms is None and self.model is None):
            return None  # nothing capped: the common case, answered without building a Caps
        return Caps(
            max_tokens=self.max_tokens,
            tool_allowlist=None if self.tool_allowlist is None else tuple(sorted(
                self.tool_allowlist)),
            tool_denylist=tuple(sorted(self.tool_denylist)) or None,
            cooldown_ms=self.cooldown_ms, model=self.model)


def glob_list(value: Any, field_name: str) -> tuple[str, ...]:
    """An allow or deny list: at most MAX_GLOBS globs (see `check_glob`)."""
    if value is None:
        return ()
    return check_list(value, field_name, MAX_GLOBS, check_glob, "['gpt-4o*', 'claude-*']")
