"""The function library and where a call goes.

The scripts live in `lua/` beside this module: a shared prelude plus one file per kind of
operation, loaded once per server as one Redis function library (FUNCTION LOAD, then one FCALL
per operation), so the prelude is not rebuilt on every call; a server that lost the library
(restart without persistence, FUNCTION FLUSH, failover) gets it again on the next call.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from redis.exceptions import ResponseError, SlotNotCoveredError

OPERATIONS = ("reserve", "admin", "settle", "record", "read", "sweep", "keys", "outbox")
"""One function per operation file; reserve and settle take flat arguments (FLAT)."""
FLAT = {"reserve": "flat_reserve", "settle": "flat_settle"}
BATCH = "batch"
"""The function that runs several operations' calls in one (`lua/batch.lua`, `batching.py`)."""
KEYED = "keyed"
"""The function that runs one operation's call only if its API key lets it through
(`lua/keyed.lua`); a batch runs it as one more entry."""
ONCE = "once"
"""The function that claims (or finishes) the idempotency key of a call of several steps, on
a key of its own outside any tenant (`lua/once.lua`, `once.py`); it takes no prelude."""


def source(*parts: str) -> str:
    """The Lua files `parts` of `lua/`, one after another."""
    folder = resources.files(__package__) / "lua"
    return "\n".join((folder / f"{name}.lua").read_text() for name in parts)


def library() -> tuple[str, str]:
    """The function library's source and its name prefix.

    common.lua, definitions.lua and hooks.lua are the shared prelude; each operation's file
    becomes the body of one function, registered as `<prefix>_<operation>`, which appends
    what it notified to the tenant's webhook outbox (`outbox_append`) before it answers.
    The prefix carries a hash of the source, so processes of two versions never replace
    each other's functions.
    """
    body = [source("common", "definitions", "hooks")]
    for name in OPERATIONS:
        body.append(f"local function op_{name}()\n{source(name)}\nend")
    body.append(source(BATCH))  # ENTRIES, filled below, and the batch function
    # One entry per operation, the same whether the operation is called alone or in a batch
    # (`inherited`: the definitions its tenant's operations before it in a batch decoded).
    body += [f"ENTRIES.{name} = function(keys, args, inherited)\n"
             f"  begin(keys, args, {FLAT.get(name, 'nil')})\n"
             f"  inherit_definitions(inherited)\n  hooks_begin()\n"
             f"  local reply = op_{name}()\n  outbox_append()\n  return reply\nend"
             for name in OPERATIONS]
    body.append(source(KEYED))  # ENTRIES.keyed: the key's check, then an entry above
    body.append(f"ENTRIES.{ONCE} = function(keys, args)\n{source(ONCE)}\nend")
    text = "\n".join(body)
    prefix = "allotment_" + hashlib.sha1(text.encode()).hexdigest()[:12]
    register = [f"redis.register_function('{prefix}_{name}', ENTRIES.{name})"
                for name in OPERATIONS]
    register += [f"redis.register_function('{prefix}_{name}', ENTRIES.{name})"
                 for name in (KEYED, ONCE)]
    register.append(f"redis.register_function('{prefix}_{BATCH}', run_batch)")
    return f"#!lua name={prefix}\n{text}\n" + "\n".join(register) + "\n", prefix


def missing(error: Exception) -> bool:
    """The server lacks the library: a fresh or restarted server, FUNCTION FLUSH, failover."""
    return isinstance(error, ResponseError) and "function not found" in str(error).lower()


def routed(client: Any) -> bool:
    """A cluster client: it would ask a node for FCALL's keys (COMMAND GETKEYS) on every
    call, so the call is sent to the node of its first key instead."""
    return hasattr(client, "get_node_from_key") and hasattr(client, "nodes_manager")


def node_of(client: Any, key: str) -> Any:
    """The master of `key`'s slot in a cluster client's table; None when the table has none
    for it (the client's own routing then finds the node, refreshing its table; a MOVED reply
    to a routed call does the same and follows the redirect)."""
    try:
        return client.get_node_from_key(key)
    except SlotNotCoveredError:
        return None


__all__ = ["BATCH", "KEYED", "OPERATIONS", "library", "missing", "node_of", "routed", "source"]
