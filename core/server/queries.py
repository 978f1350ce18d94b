"""Query parameters, read strictly: an unknown name or a malformed value is a 400 that says
what was wrong, never a silent default."""

from __future__ import annotations

from starlette.requests import Request

from ..clock import moment_ms
from .errors import bad_request


def query_int(request: Request, name: str) -> int | None:
    """An integer query parameter, absent as None; anything else is a 400 that says so."""
    text = request.query_params.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.lstrip("-").isdigit() and len(text) <= 19):
        raise bad_request(f"{name}: {text!r} is not an integer")
    return int(text)


def only(request: Request, *known: str) -> None:
    """Refuse query parameters the route does not take (a typo never passes silently)."""
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        raise bad_request(f"unknown query parameters {unknown}; this route takes "
                          + ", ".join(known))


def since_ms(text: str | None, name: str = "since") -> int | None:
    """A moment (`since`, `until`): epoch milliseconds, or an ISO-8601 time with its zone."""
    if text is None:
        return None
    at = moment_ms(text)
    if at is None:
        raise bad_request(f"{name}: {text!r} is not epoch milliseconds or an ISO-8601 time "
                          "with its zone (e.g. 2026-12-01T00:00:00Z)")
    return at
