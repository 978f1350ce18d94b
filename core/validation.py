"""Boundary validation: pydantic models whose errors surface as `InvalidRequest`."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidRequest

MAX_AMOUNT = 2**53 - 1
"""Largest amount accepted: every integer up to it is exact in a double (and in Lua)."""

NAME_PATTERN = re.compile(r"[a-z0-9_.@-]{1,128}")
KEY_PATTERN = re.compile(r"[a-z0-9_.-]{1,128}")
NAME_RULE = "use 1-128 characters from a-z, 0-9 and _ . @ - (upper case is lowered)"
KEY_RULE = "use 1-128 characters from a-z, 0-9 and _ . - (upper case is lowered)"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,256}")


def invalid(error: ValidationError, prefix: str = "") -> InvalidRequest:
    """One readable line per broken rule, each naming its field."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "value"
        lines.append(f"{prefix}{field}: {item['msg']} (got {item.get('input')!r})")
    return InvalidRequest("; ".join(lines))


class Model(BaseModel):
    """Frozen, strict-ish models that raise `InvalidRequest` instead of `ValidationError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise invalid(error, f"{type(self).__name__}.") from None


def check_name(value: object, field: str) -> str:
    """A scope level value or tenant name: lower-cased, then held to `NAME_PATTERN`."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected a string, got {value!r}")
    lowered = value.lower()
    if not NAME_PATTERN.fullmatch(lowered):
        raise InvalidRequest(f"{field}: {value!r} is not allowed; {NAME_RULE}")
    return lowered


def check_key(value: object, field: str) -> str:
    """A dimension key: lower-cased, then held to `KEY_PATTERN`."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: expected a string, got {value!r}")
    lowered = value.lower()
    if not KEY_PATTERN.fullmatch(lowered):
        raise InvalidRequest(f"{field}: {value!r} is not allowed; {KEY_RULE}")
    return lowered


def check_int(value: object, field: str, low: int = 0, high: int = MAX_AMOUNT) -> int:
    """An integer within [low, high]; booleans and floats are refused, never truncated."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field}: expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{field}: {value} is outside {low}..{high}")
    return value


def check_idempotency_key(value: object) -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(value):
        raise InvalidRequest(
            f"idempotency_key: {value!r} is not allowed; use 1-256 characters "
            "from A-Z, a-z, 0-9 and _ . : @ -"
        )
    return value
