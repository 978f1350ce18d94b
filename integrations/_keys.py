"""Which keys of a call's context become its subject. LangChain's run metadata and LlamaIndex's
instrument tags carry many keys of their own, and the adapters do not read the store on every
call to learn which budget templates are in force, so each piece reads a set of keys named
when it is made (and says which)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import allotment as al
from allotment.adapter import LEVELS

DIMENSION_KEYS = ("run", "user", "session")
"""The keys read as dimensions unless `dimension_keys=` says otherwise. A dimension outside
this list (a `per="customer"` budget) is read only when named in `dimension_keys` or given in
a `"dimensions"` dict: the pieces do not read the store to learn which templates are in
force. Declare such a template `required=True`, so a call that lacks it is denied
DIMENSION_REQUIRED rather than checked without it."""
DIMENSIONS = "dimensions"
"""The key of a dict of any further dimensions (`{"customer": "c-9"}`), read by every piece."""


class SubjectKeys:
    """The keys one piece reads: the level names, its dimension keys (a list of names, or a
    mapping from key to the dimension it fills, e.g. `{"thread_id": "session"}`), and
    `"dimensions"`. With `alias` each level and dimension key is also read as `<key><alias>`
    (LlamaIndex tags say `run_id`), the plain key winning when both are set."""

    __slots__ = ("_aliases", "_plain")

    def __init__(self, dimension_keys: Iterable[str] | Mapping[str, str],
                 alias: str = "") -> None:
        if isinstance(dimension_keys, str):
            raise al.InvalidRequest(f"dimension_keys: expected a list of keys or a mapping "
                                    f"of key to dimension, got the string {dimension_keys!r} "
                                    f"(write [{dimension_keys!r}])")
        named = (dict(dimension_keys) if isinstance(dimension_keys, Mapping)
                 else {key: key for key in dimension_keys})
        for key, dimension in named.items():
            _check(key, dimension)
        self._plain = {**{level: level for level in LEVELS}, **named}
        self._aliases = {f"{key}{alias}": name for key, name in self._plain.items()
                         if alias and f"{key}{alias}" not in self._plain}

    @property
    def names(self) -> tuple[str, ...]:
        """Every key read, in that order: levels, dimension keys, their aliases, and
        "dimensions"."""
        return (*self._plain, *self._aliases, DIMENSIONS)

    def read(self, source: Any, value: Callable[[Any], Any] = lambda found: found
             ) -> dict[str, Any]:
        """The subject fields `source` (a mapping, or an object with attributes) holds under
        these keys: levels at the top, dimensions in a "dimensions" dict. `value` turns what a
        named key holds into a field value (None: not a field); the "dimensions" dict is
        taken as it is, for the subject to check."""
        fields: dict[str, Any] = {}
        dimensions: dict[str, Any] = {}
        for key, name in (*self._aliases.items(), *self._plain.items()):
            found = _get(source, key)
            found = None if found is None else value(found)
            if found is None:
                continue
            if name in LEVELS:
                fields[name] = found
            else:
                dimensions[name] = found
        extra = _get(source, DIMENSIONS)
        if isinstance(extra, Mapping):
            for name in extra:
                if isinstance(name, str) and name.lower() in LEVELS:
                    raise al.InvalidRequest(f'"{DIMENSIONS}" names {name!r}, a scope level: '
                                            f'give it as its own key ("{name.lower()}")')
            dimensions.update(extra)
        fields[DIMENSIONS] = dimensions
        return fields


def _check(key: object, dimension: object) -> None:
    """A key read as a dimension must not shadow a level or "dimensions", and must fill a
    dimension a subject can carry: said when the piece is made, not on its first call."""
    if not isinstance(key, str) or not key:
        raise al.InvalidRequest(f"dimension_keys: {key!r} is not a key; give metadata or "
                                f"tag keys as non-empty strings")
    if key in (*LEVELS, DIMENSIONS):
        raise al.InvalidRequest(f"dimension_keys: {key!r} is read as "
                                f"{'the ' + key + ' level' if key in LEVELS else 'a dict'} "
                                f"already; name another key")
    try:
        al.Subject(tenant="t", dimensions={dimension: "v"})  # refuses a level or a bad name
    except al.InvalidRequest as error:
        raise al.InvalidRequest(f"dimension_keys: {key!r} cannot fill dimension "
                                f"{dimension!r}: {error}") from None


def _get(source: Any, key: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)
