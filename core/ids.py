"""Ids of reservations and records: `<tenant>:<32 hex digits>`, so an id names its tenant."""

from __future__ import annotations

import os
import re

from .errors import InvalidRequest
from .validation import check_name

HEX = frozenset("0123456789abcdef")
_ID = re.compile(r"([a-z0-9_.@-]{1,128}):[0-9a-f]{32}")


def new_id(tenant: str) -> str:
    return f"{tenant}:{os.urandom(16).hex()}"


def id_tenant(reservation_id: object) -> str:
    """The tenant an id belongs to; anything not shaped like an id is refused before any
    store sees it."""
    if isinstance(reservation_id, str):
        match = _ID.fullmatch(reservation_id)
        if match is not None:  # the common case, in one C call
            return match.group(1)
        tenant, sep, token = reservation_id.partition(":")
        if sep and len(token) == 32 and HEX.issuperset(token) and tenant == tenant.lower():
            return check_name(tenant, "reservation_id tenant")
    raise InvalidRequest(f"reservation_id: {reservation_id!r} is not a reservation id "
                         "(<tenant>:<32 hex digits>)")
