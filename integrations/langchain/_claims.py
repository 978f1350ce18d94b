"""How the pieces stay out of each other's way, so no call is held twice: the middleware and
`capped()` mark the calls they meter, and the callback handler leaves marked calls alone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

METERED = "allotment_reservation"
"""Run metadata set by `capped()` on the call it meters (the reservation id)."""

Kind = Literal["model", "tool"]


@dataclass(slots=True)
class _Claim:
    kind: Kind
    used: bool = False


_claim: ContextVar[_Claim | None] = ContextVar("allotment_langchain_claim", default=None)


@contextmanager
def claiming(kind: Kind) -> Iterator[None]:
    """Around the call the middleware meters: the first start of that kind under it is that
    call, which the handler then leaves alone (a tool's own model calls are not)."""
    token = _claim.set(_Claim(kind))
    try:
        yield
    finally:
        _claim.reset(token)


def claimed(kind: Kind, metadata: Mapping[str, Any] | None) -> bool:
    """Whether a starting call is already metered by `capped()` or the middleware."""
    if kind == "model" and metadata and metadata.get(METERED):
        return True
    claim = _claim.get()
    if claim is None or claim.used or claim.kind != kind:
        return False
    claim.used = True
    return True
