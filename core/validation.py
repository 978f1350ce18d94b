"""Boundary validation: the shared checks every entry point uses, and pydantic models whose
errors surface as `InvalidRequest`.

Every value that reaches a store is checked here first, against a bound documented in
README.md ("Limits on input"): both stores then see only values they hold alike. The Redis
packer keeps strings behind 16-bit lengths and passes lists through Lua's `unpack`, and cjson
returns numbers with 14 significant digits, so sizes and token caps stay far inside those.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import InvalidRequest

T = TypeVar("T")

MAX_AMOUNT = 2**53 - 1
"""Largest amount accepted: every integer up to it is exact in a double (and in Lua)."""
MAX_TOKENS = 100_000_000
"""Largest token cap (max_tokens_per_call, Degrade.max_tokens, Elastic.max_tokens): far
inside what every store returns exactly (cjson keeps 14 significant digits)."""
MAX_COOLDOWN_MS = 86_400_000
"""A degrade rule's cooldown: at most a day."""
MAX_RULES = 16
"""Degrade rules per budget, and alert thresholds per budget."""
MAX_GLOBS = 64
"""Globs per allow or deny list."""
MAX_GLOB = 128
"""Characters per glob."""
MAX_NAME = 128
"""Characters in a name a store keeps: a plan's, a degrade rule's model."""
MAX_TEXT = 256
"""Characters in free text a store keeps: action names, release reasons, audit types."""
MAX_LIST = 64
"""Entries of other lists a call names: audit record types, a plan's definitions."""

NAME_PATTERN = re.compile(r"[a-z0-9_.@-]{1,128}")
KEY_PATTERN = re.compile(r"[a-z0-9_.-]{1,128}")
NAME_RULE = "use 1-128 characters from a-z, 0-9 and _ . @ - (upper case is lowered)"
KEY_RULE = "use 1-128 characters from a-z, 0-9 and _ . - (upper case is lowered)"
VALUE_PATTERN = re.compile(r"[!-~]{1,128}")
VALUE_RULE = ("use 1-128 printable ASCII characters other than space, e.g. an id or an "
              "e-mail address (case is kept)")
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,256}")
GLOB_RULE = "globs use * (any run of characters) and ? (one character) only"


def shown(value: object, limit: int = 60) -> str:
    """`repr(value)`, shortened: an error message never echoes a megabyte back."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr of a huge int may raise
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def invalid(error: ValidationError, prefix: str = "") -> InvalidRequest:
    """One readable line per broken rule, each naming its field. A check of this module
    raised inside a validator keeps its own words (pydantic's "Value error, " and the
    repeated field name are dropped)."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check of the whole model names its own fields
            lines.append(f"{prefix}{message}")
            continue
        field = ".".join(str(part) for part in item["loc"])
        message = message.removeprefix(f"{item['loc'][-1]}: ")
        lines.append(f"{prefix}{field}: {message} (got {shown(item.get('input'))})")
    return InvalidRequest("; ".join(lines))


class Model(BaseModel):
    """Frozen, strict-ish models that raise `InvalidRequest` instead of `ValidationError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise invalid(error, f"{type(self).__name__}.") from None

    @model_validator(mode="before")
    @classmethod
    def _string_keys(cls, data: Any) -> Any:
        """Mappings in a list (a plan's budgets, a budget's degrade rules) must have string
        keys before models are built from them, as `check_mapping` asks of the top."""
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, (list, tuple)):
                    for item in value:
                        if isinstance(item, dict):
                            check_mapping(item, str(name))
        return data


def check_text(value: object, field: str, longest: int = MAX_TEXT, *,
               printable: bool = False) -> str:
    """Text a store keeps: a `str` of 1..`longest` characters that encodes as UTF-8 (a lone
    surrogate does not, and would fail on Redis only), printable if asked."""
    rule = f"1-{longest} printable characters" if printable else f"1-{longest} characters"
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected a string of {rule}, got {shown(value)}")
    if not 0 < len(value) <= longest:
        raise InvalidRequest(f"{field}: must be {rule}, got {len(value)}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidRequest(f"{field}: {shown(value)} is not valid Unicode text (a lone "
                                 "surrogate cannot be stored); give UTF-8 text") from None
    if printable and not value.isprintable():
        raise InvalidRequest(f"{field}: must be {rule}, got {shown(value)}")
    return value


def check_list(value: object, field: str, longest: int, check: Callable[[Any, str], T],
               example: str) -> tuple[T, ...]:
    """A list or tuple of at most `longest` items, each passed through `check` (a bare
    string, a number or a mapping is refused, never iterated)."""
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"{field}: expected a list, e.g. {example}, got {shown(value)}")
    if len(value) > longest:
        raise InvalidRequest(f"{field}: at most {longest} entries, got {len(value)}")
    return tuple(check(item, f"{field}[{i}]") for i, item in enumerate(value))


def check_glob(value: object, field: str, alphabet: re.Pattern[str] | None = None) -> str:
    """A glob both stores read alike: `*` and `?` are its only wildcards, so `[`, `]` (a
    character class to fnmatch, literal text to the Redis matcher) are refused."""
    glob = check_text(value, field, MAX_GLOB, printable=True)
    if "[" in glob or "]" in glob:
        raise InvalidRequest(f"{field}: {shown(glob)} uses [ ]; {GLOB_RULE}")
    if alphabet is not None and not alphabet.fullmatch(glob):
        raise InvalidRequest(f"{field}: {shown(glob)} is not allowed; {GLOB_RULE}, "
                             f"on characters {alphabet.pattern}")
    return glob


def check_mapping(value: object, field: str) -> dict[str, Any]:
    """A mapping of string keys, e.g. a plan or a rule read from YAML (where an unquoted
    `on:` or `no:` key is read as a boolean)."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field}: expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidRequest(f"{field}: key {shown(key)} is not a string (YAML reads "
                                 "unquoted on/off/yes/no as booleans: quote the key)")
    return value


def check_name(value: object, field: str) -> str:
    """A scope level value or tenant name: ASCII, lower-cased, then held to `NAME_PATTERN`
    (ASCII first: the Kelvin sign would lower to `k` and be silently rewritten)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected a string, got {shown(value)}")
    lowered = value.lower()
    if not value.isascii() or not NAME_PATTERN.fullmatch(lowered):
        raise InvalidRequest(f"{field}: {shown(value)} is not allowed; {NAME_RULE}")
    return lowered


def check_value(value: object, field: str) -> str:
    """A dimension value: an id another system issued (a user, a run, a session), kept
    exactly as given: printable ASCII without spaces, case and all (no folding, so no
    look-alike such as the Kelvin sign can turn into another value)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected a string, got {shown(value)}")
    if not VALUE_PATTERN.fullmatch(value):
        raise InvalidRequest(f"{field}: {shown(value)} is not allowed; {VALUE_RULE}")
    return value


def check_key(value: object, field: str) -> str:
    """A dimension key: ASCII, lower-cased, then held to `KEY_PATTERN`."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected a string, got {shown(value)}")
    lowered = value.lower()
    if not value.isascii() or not KEY_PATTERN.fullmatch(lowered):
        raise InvalidRequest(f"{field}: {shown(value)} is not allowed; {KEY_RULE}")
    return lowered


def check_int(value: object, field: str, low: int = 0, high: int = MAX_AMOUNT) -> int:
    """An integer within [low, high]; booleans and floats are refused, never truncated."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field}: expected a whole number, got {shown(value)}")
    if not low <= value <= high:
        raise InvalidRequest(f"{field}: {shown(value)} is outside {low}..{high}")
    return value


def check_idempotency_key(value: object) -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(value):
        raise InvalidRequest(
            f"idempotency_key: {shown(value)} is not allowed; use 1-256 characters "
            "from A-Z, a-z, 0-9 and _ . : @ -"
        )
    return value
