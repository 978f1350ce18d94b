"""Subjects and scope paths: who is spending, and which budgets that touches."""

from __future__ import annotations

from functools import cached_property
from string import hexdigits
from typing import NamedTuple

from pydantic import Field, PrivateAttr, field_validator, model_validator

from .errors import InvalidRequest
from .validation import (
    NAME_RULE,
    VALUE_PATTERN,
    VALUE_RULE,
    Model,
    check_key,
    check_name,
    check_value,
    shown,
)

LEVELS = ("tenant", "workspace", "app", "workflow", "agent", "toolset")
"""The canonical order; derived scopes are its cumulative prefixes, missing levels skipped."""

MAX_DIMENSIONS = 16
MAX_SCOPE = 2_048
"""Scope text beyond this is refused unread (six levels and a dimension at their longest,
its value quoted to three times its length, come to about 1,250 characters)."""

_QUOTES = str.maketrans({"%": "%25", "/": "%2F", "|": "%7C"})
"""`/` separates a scope's segments and `|` the parts of a store's keys (a ledger's
`path|unit|period|bucket`), so neither ever appears in scope text inside a value; `%`
introduces the escape. Every other character a value may hold is written as itself, so
values of the earlier alphabet (`a-z 0-9 _ . @ -`) read and key exactly as before."""
ESCAPES = "write % as %25, / as %2F and | as %7C (al.quote_value does it)"


class Subject(Model):
    """Who a call is for. `dimensions` carry per-run, per-user or per-session identities."""

    tenant: str
    workspace: str | None = None
    app: str | None = None
    workflow: str | None = None
    agent: str | None = None
    toolset: str | None = None
    dimensions: dict[str, str] = Field(default_factory=dict)
    _checked: bool = PrivateAttr(default=False)
    """Built through validation: `model_construct()` (and a subclass) skip it, and such a
    subject is checked again before a store sees it (see `checked`)."""

    @model_validator(mode="after")
    def _mark_checked(self) -> Subject:
        self._checked = True
        return self

    def checked(self) -> Subject:
        """This subject if it was validated as a `Subject`, else a validated copy of its
        fields: what reaches a store is always what the rules allow, read once."""
        private = self.__pydantic_private__  # read directly: `self._checked` goes through
        if type(self) is Subject and private and private.get("_checked"):  # pydantic's hook
            return self
        return Subject(**{name: getattr(self, name) for name in Subject.model_fields})

    @field_validator("tenant", "workspace", "app", "workflow", "agent", "toolset", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        if value is None:
            return None
        try:
            return check_name(value, "value")
        except InvalidRequest as error:
            raise ValueError(str(error).removeprefix("value: ")) from None

    @field_validator("dimensions", mode="before")
    @classmethod
    def _dimensions(cls, value: object) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ValueError("must be a dict of str to str")
        if len(value) > MAX_DIMENSIONS:
            raise ValueError(f"at most {MAX_DIMENSIONS} dimensions, got {len(value)}")
        try:
            checked = {check_dimension_key(k): check_value(v, f"dimensions[{k!r}]")
                       for k, v in value.items()}
        except InvalidRequest as error:
            raise ValueError(str(error)) from None
        if len(checked) != len(value):
            keys = sorted(value, key=str.lower)
            raise ValueError(f"dimension keys {keys} are the same once lower-cased; give "
                             "each key once")
        return checked

    def levels(self) -> list[tuple[str, str]]:
        """The standard levels the subject names, in canonical order, as (level, value)."""
        return [(level, value) for level in LEVELS if (value := getattr(self, level)) is not None]

    def scopes(self) -> tuple[str, ...]:
        """Derived standard scopes, outermost first: `tenant:acme`, `tenant:acme/agent:x`, ..."""
        return self._derived

    @cached_property
    def _derived(self) -> tuple[str, ...]:
        segments = [f"{level}:{value}" for level, value in self.levels()]
        return tuple("/".join(segments[: i + 1]) for i in range(len(segments)))

    @cached_property
    def dimension_items(self) -> tuple[tuple[str, str], ...]:
        """Dimensions as sorted pairs, each value quoted as scope text writes it: the
        canonical form stores (which build ledger paths of it) and fingerprints use."""
        return tuple(sorted((k, v.translate(_QUOTES)) for k, v in self.dimensions.items()))

    @property
    def scope_path(self) -> str:
        return self.scopes()[-1]


def quote_value(value: object) -> str:
    """A dimension value as scope text writes it (`auth0|5f7c` is `auth0%7C5f7c`): the
    way to build the scope of one value's ledger, e.g. for `balances` or `fund`."""
    return check_value(value, "value").translate(_QUOTES)


def unquote_value(text: object) -> str:
    """The dimension value a scope's text names (`%XX` escapes read in either case); text
    with a stray `%`, or naming a character no value may hold, is refused."""
    return _unquoted(text, "value")


def _unquoted(text: object, field: str) -> str:
    if not isinstance(text, str):
        raise InvalidRequest(f"{field}: expected a string, got {shown(text)}")
    value = text
    if "%" in text:
        head, *rest = text.split("%")
        parts = [head]
        for part in rest:
            code = part[:2]
            if len(code) < 2 or not all(c in hexdigits for c in code):
                value = ""  # refused below
                break
            parts += [chr(int(code, 16)), part[2:]]
        else:
            value = "".join(parts)
    if not VALUE_PATTERN.fullmatch(value):
        raise InvalidRequest(f"{field}: {shown(text)} is not allowed; {VALUE_RULE}; in "
                             f"scope text {ESCAPES}")
    return value


def check_dimension_key(key: object) -> str:
    name = check_key(key, "dimension key")
    if name in LEVELS:
        raise InvalidRequest(f"dimension key {name!r} is a scope level; use the {name}= field")
    return name


class ScopePath(NamedTuple):
    """A parsed scope: its tenant, its standard part, and at most one trailing dimension."""

    tenant: str
    base: str
    dimension: tuple[str, str] | None

    @property
    def path(self) -> str:
        if self.dimension is None:
            return self.base
        return f"{self.base}/{self.dimension[0]}:{self.dimension[1]}"


def parse_scope(text: object) -> ScopePath:
    """Parse `tenant:acme/workspace:prod[/run:R-1]`, refusing anything else. Kinds and level
    names are lower-cased; a dimension value is kept exactly, its escapes made canonical
    (`a%2fb` reads as `a%2Fb`, `auth0|1` as `auth0%7C1`). A bare tenant name (`acme`) is
    that tenant's scope: no other reading is possible."""
    rule = ("write a scope as tenant:<name>[/workspace:<name>...] with levels in the order "
            + " > ".join(LEVELS) + ", optionally ending in one <dimension>:<value>")
    if not isinstance(text, str):
        raise InvalidRequest(f"scope: expected a string, got {shown(text)}; {rule}")
    if not text:
        raise InvalidRequest(f"scope: empty; {rule}")
    if not text.isascii() or len(text) > MAX_SCOPE:  # ASCII before lowering: no rewrites
        raise InvalidRequest(f"scope {shown(text)}: not allowed; {rule}, each name "
                             f"{NAME_RULE.removeprefix('use ')}")
    if ":" not in text and "/" not in text:
        text = f"tenant:{text}"
    segments: list[tuple[str, str]] = []
    dimension: tuple[str, str] | None = None
    last_level = -1
    for part in text.split("/"):
        level, sep, value = part.partition(":")
        level = level.lower()
        if not sep or dimension is not None:
            raise InvalidRequest(f"scope {text!r}: bad segment {part!r}; {rule}")
        if not segments and level != "tenant":
            raise InvalidRequest(f"scope {text!r}: must start with tenant:<name>; {rule}")
        if level in LEVELS:
            index = LEVELS.index(level)
            if index <= last_level:
                raise InvalidRequest(f"scope {text!r}: level {level!r} is out of order; {rule}")
            last_level = index
            segments.append((level, check_name(value, f"scope {text!r} {level}")))
        elif segments:
            key = check_key(level, f"scope {text!r} dimension key")
            dimension = (key, _unquoted(value, f"scope {text!r} {key}").translate(_QUOTES))
        else:
            raise InvalidRequest(f"scope {text!r}: must start with tenant:<name>; {rule}")
    base = "/".join(f"{level}:{value}" for level, value in segments)
    return ScopePath(segments[0][1], base, dimension)


def tenant_name(value: object, field: str = "tenant") -> str:
    """A tenant given by name (`acme`) or by its scope (`tenant:acme`): either way the
    checked name, so calls that take a tenant and calls that take a scope read alike."""
    if isinstance(value, str) and value[:7].lower() == "tenant:" and "/" not in value:
        value = value[7:]
    return check_name(value, field)
