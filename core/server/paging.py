"""`limit` and `cursor` of the admin lists. Rows come in a fixed order (their sort keys),
and a cursor names the last row of its page by its key, not by a position: a row added or
removed between two calls moves no other row to another page. Filters apply again on
every page, so a cursor stays valid whatever the next call filters."""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from .errors import bad_request

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def limit(query: Mapping[str, str], most: int = MAX_LIMIT) -> int:
    """`limit`: 1..`most` (200 unless the list says less), 50 when absent or blank."""
    text = query.get("limit") or ""
    if not text:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= most):
        raise bad_request(f"limit: {text!r} is not a whole number in 1..{most}")
    return int(text)


def cursor(query: Mapping[str, str]) -> list[str] | None:
    """The sort key a `cursor` names (None: the first page)."""
    text = query.get("cursor") or ""
    if not text:
        return None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise bad_request("cursor: not a cursor this server gave out") from None
    if not (isinstance(key, list) and key and all(isinstance(k, str) for k in key)):
        raise bad_request("cursor: not a cursor this server gave out")
    return key


def window(query: Mapping[str, str], most: int = MAX_LIMIT) -> tuple[int, list[str] | None]:
    """The page a query asks for (its limit and the key it starts after), checked before
    anything is read."""
    return limit(query, most), cursor(query)


def sorting(query: Mapping[str, str], name: str, sorts: Iterable[str], default: str,
            most: int = MAX_LIMIT) -> tuple[list[str], int, list[str] | None]:
    """`sort_by` among `sorts` (`default` when absent), `sort_dir` (desc when absent),
    `limit` and `cursor` of the list `name`, checked before anything is read: the head its
    rows' keys start with (`[name, sort_by, sort_dir]`), the page size, and the key a cursor
    names. A cursor given for another list or sort is 400, never misread."""
    choices = {"sort_by": (default, sorted(sorts)), "sort_dir": ("desc", ["asc", "desc"])}
    head = [name]
    for field, (absent, known) in choices.items():
        value = query.get(field)
        if value is not None and value not in known:
            raise bad_request(f"{field}: {value!r} is not one of " + ", ".join(known))
        head.append(absent if value is None else value)
    size, after = window(query, most)
    if after is not None and after[:3] != head:
        raise bad_request("cursor: it was given for another list or sort; send the same "
                          "sort_by and sort_dir, or start again without a cursor")
    return head, size, after


def paged(rows: Sequence[T], key: Callable[[T], list[str]],
          asked: tuple[int, list[str] | None], *, descending: bool = False
          ) -> tuple[list[T], dict[str, Any]]:
    """The page of `rows` (ordered by `key`, largest first when `descending`) `asked` for,
    and the answer's paging fields: `has_more`, and `next_cursor` when it is true."""
    size, after = asked
    if after is not None:
        rows = [row for row in rows if (key(row) < after if descending else key(row) > after)]
    pick = heapq.nlargest if descending else heapq.nsmallest  # not a sort of every row
    ordered = pick(size + 1, rows, key=key)
    page = ordered[:size]
    if len(ordered) <= size:
        return page, {"has_more": False}
    return page, {"next_cursor": encoded(key(page[-1])), "has_more": True}


def encoded(key: list[str]) -> str:
    """The cursor that names a row by its sort key (what `cursor` reads back)."""
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")
