"""`al.scope(...)`: the subject of the code running inside it, carried by a contextvar so
that it follows threads started with copied contexts and every asyncio task.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import InvalidRequest
from .scopes import LEVELS, Subject

_current: ContextVar[dict[str, Any] | None] = ContextVar("allotment_scope", default=None)


@contextmanager
def scope(**fields: str) -> Iterator[Subject | None]:
    """Nest freely: inner levels override outer ones and dimensions merge.

    Level keywords (tenant, workspace, app, workflow, agent, toolset) set levels; any other
    keyword is a dimension, e.g. `run="run-7a3f"` or `user="u-42"`. Yields the subject in
    force (None while no tenant is known).
    """
    outer = _current.get() or {"dimensions": {}}
    merged: dict[str, Any] = {**outer, "dimensions": dict(outer["dimensions"])}
    for key, value in fields.items():
        if key == "dimensions":
            if not isinstance(value, dict):
                raise InvalidRequest("scope(dimensions=...): expected a dict of str to str")
            merged["dimensions"].update(value)
        elif key in LEVELS:
            merged[key] = value
        else:
            merged["dimensions"][key] = value
    subject = Subject(**merged) if merged.get("tenant") else None
    if subject is None:  # still validate what was given, without a tenant
        Subject(tenant="_", **{k: v for k, v in merged.items() if k != "tenant"})
    token = _current.set(merged)
    try:
        yield subject
    finally:
        _current.reset(token)


def current_subject() -> Subject | None:
    """The subject set by the innermost `scope(...)`, or None outside any (or tenant-less)."""
    fields = _current.get()
    if not fields or not fields.get("tenant"):
        return None
    return Subject(**fields)


def current_fields() -> dict[str, Any]:
    """The raw fields in force, for adapters that merge them with their own arguments."""
    fields = _current.get() or {"dimensions": {}}
    return {**fields, "dimensions": dict(fields["dimensions"])}
