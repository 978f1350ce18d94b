"""Watching the guard's enforcement calls from outside: one `Observation` per call, for
metrics and tracing (`allotment.integrations.prometheus`, `.opentelemetry`) or your own.

`guard.add_observer(fn)` registers `fn(observation)`. The guard's runner calls every observer
when a reserve, decide, commit, release, extend or record call ends, on the caller's thread
(or task) and after the store has answered: an observer sees what happened and never changes
it. A call refused for its arguments before it had an operation to run is not observed
(one refused by a tenant handle is, with its `Forbidden`). With no observer registered the
calls run as they always do (one check per call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import Denied, StoreUnavailable
from .models import Action, Decision
from .stores import operations as ops

log = logging.getLogger("allotment")
R = TypeVar("R")

CALLS = ("reserve", "decide", "commit", "release", "extend", "record")
"""The calls observed, as `Observation.call` names them."""


@dataclass(slots=True)
class Observation:
    """One enforcement call, as it ended.

    `call` is named after the store operation the call ran ("reserve", "decide", "commit",
    "release", "extend", "record"; the commit of a reservation let through while the store
    was down is the "record" of its spend). `duration_ns` covers the whole call, retries
    and their pauses included; `started_ns` is wall-clock time (`time.time_ns()`) for
    tracers. `store_errors` counts the tries the store failed (`StoreUnavailable`) during
    the call: a reservation let through (fail open) has one and `decision.reason`
    "STORE_UNAVAILABLE"; a call that failed closed or gave up has `error` set to the
    `StoreUnavailable` it raised."""

    call: str
    tenant: str
    started_ns: int
    duration_ns: int
    result: Any = None
    """What the call returned (a `Reservation`, `Decision`, `CommitResult`, ...; for a
    `with` block's end, what its commit or release returned), or None."""
    error: BaseException | None = None
    """What the call raised (a `Denied` for a denial), or None."""
    decision: Decision | None = None
    """The decision of a reserve or decide call, whether it allowed or denied (and of a
    refused record)."""
    scopes: tuple[str, ...] = ()
    """The subject's scopes, root first (reserve, decide, record); empty for the calls that
    settle or extend a reservation."""
    action: Action | None = None
    reservation_id: str | None = None
    store_errors: int = 0


Observer = Callable[[Observation], None]
"""A callable that receives each `Observation`; what it raises is logged and ignored."""


_NAMES: dict[type, str] = {ops.Commit: "commit", ops.Release: "release",
                           ops.Extend: "extend", ops.Record: "record"}
"""The observed operations by their exact class (a reserve is named by its `dry_run`)."""


def _call_name(op: object) -> str | None:
    """The observed call an operation starts, or None for calls not observed (reads,
    administration)."""
    name = _NAMES.get(type(op))
    if name is not None:
        return name
    if isinstance(op, ops.Reserve):
        return "decide" if op.dry_run else "reserve"
    if isinstance(op, ops.Commit):
        return "commit"
    if isinstance(op, ops.Release):
        return "release"
    if isinstance(op, ops.Extend):
        return "extend"
    if isinstance(op, ops.Record):
        return "record"
    return None


def watched(flow: Any, observers: tuple[Observer, ...]) -> Any:
    """A flow that runs `flow` step by step, as the runner would, and tells `observers`
    how the call went once it ends. The runner drives it in place of `flow` (sync and
    async alike: the timing spans the runner's waits because this generator is suspended
    through them)."""
    wall, started = time.time_ns(), time.perf_counter_ns()
    first: Any = None
    answer: Any = None  # the last operation's
    store_errors = 0
    send: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(send)
            except StopIteration as stop:
                result = stop.value
                break
            if first is None and isinstance(step, ops.Op):
                first = step
            send, error = None, None
            try:
                send = answer = yield step
            except GeneratorExit:
                flow.close()
                raise
            except Exception as raised:  # the store's error: handed to the flow
                if isinstance(raised, StoreUnavailable):
                    store_errors += 1
                error = raised
    except GeneratorExit:
        raise
    except Exception as failure:
        _tell(observers, first, wall, started, store_errors, None, failure)
        raise
    _tell(observers, first, wall, started, store_errors,
          answer if result is None else result, None)
    return result


def _tell(observers: tuple[Observer, ...], op: Any, wall: int, started: int,
          store_errors: int, result: Any, error: BaseException | None) -> None:
    call = _call_name(op)
    if call is None:  # not an enforcement call, or refused before reaching the store
        return
    decision = None
    if isinstance(error, Denied):
        decision = error.decision
    elif isinstance(result, Decision):
        decision = result
    elif call == "reserve" and result is not None:
        decision = result.decision
    observation = Observation(
        call=call, tenant=op.tenant, started_ns=wall,
        duration_ns=time.perf_counter_ns() - started, result=result, error=error,
        decision=decision, scopes=getattr(op, "scopes", ()), action=getattr(op, "action", None),
        reservation_id=getattr(op, "reservation_id", None)
        or getattr(getattr(result, "info", None), "id", None),
        store_errors=store_errors)
    for observer in observers:
        try:
            observer(observation)
        except Exception:  # an observer must never break enforcement
            log.exception("observer %r failed on %s", observer, call)


def one(op: ops.Op[R]) -> Any:
    """A flow of one operation: how an observed single-operation call is driven."""
    result = yield op
    return result


__all__ = ["CALLS", "Observation", "Observer"]
