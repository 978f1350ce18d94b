"""One source for the call surface: each public call is written once, as a builder, and
`twins` (or `flow_twins`) turns it into the sync method and its async twin.

A builder checks its arguments and returns either the operation to run (`Op`), or a flow: a
generator that yields operations (and `Pause`s) and receives their results, for calls that
take more than one step (a commit retried after a store failure, a reservation let through
when the store is down). `Runner._drive` runs a flow with the blocking `_run`, `_adrive` with
the awaiting `_arun`, so the sync and async twins cannot drift: they share every line but
the waiting. Whatever runs the operations decides what a caller may touch (`Guard` runs any,
a tenant handle only its own tenant's).

Observers (`Guard.add_observer`) are told how each enforcement call ended: when the engine
has any, the runner drives the call's flow through `observation.watched` (a call of one
operation becomes a flow of one step); when it has none, that is one check per call.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .observation import one, watched
from .stores.operations import Op

if TYPE_CHECKING:
    from .engine import Engine

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="Runner")
B = TypeVar("B", bound="Op[Any]")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pause:
    """A flow's wait between tries: `time.sleep` in a sync call, `asyncio.sleep` in its twin."""

    seconds: float


Flow = Generator["Op[Any] | Pause", Any, R]
"""A call of several steps: yields operations (receiving each result, or the error it
raised) and pauses; returns the call's result."""


@dataclass(frozen=True, slots=True)
class Item:
    """What a stream hands its caller: one value of the call's result, as it comes."""

    value: Any


Stream = Generator["Op[Any] | Item", Any, None]
"""A call that answers with many values: yields operations (receiving each result) and
`Item`s, which go to the caller one by one (a sync iterator, or an async one for the twin)."""


class Runner:
    """Runs operations: `_run` blocks, `_arun` awaits. Subclasses say where operations go."""

    __slots__ = ()  # a subclass may do without a `__dict__` (a reservation handle does)
    _engine: Engine

    def _run(self, op: Op[R]) -> R:
        raise NotImplementedError

    async def _arun(self, op: Op[R]) -> R:
        raise NotImplementedError

    def _drive(self, flow: Flow[R]) -> R:
        """Run a flow's steps in order, sending each result (or error) back into it."""
        observers = self._engine.observers
        if observers:
            flow = watched(flow, observers)
        try:
            step = flow.send(None)
            while True:
                if isinstance(step, Pause):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    result = self._run(step)
                except Exception as raised:  # handed to the flow, which decides
                    error = raised
                else:
                    step = flow.send(result)
                    continue
                step = flow.throw(error)  # outside the handler, so nothing is chained to it
        except StopIteration as stop:
            done: R = stop.value
            return done

    async def _adrive(self, flow: Flow[R]) -> R:
        observers = self._engine.observers
        if observers:
            flow = watched(flow, observers)
        try:
            step = flow.send(None)
            while True:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    result = await self._arun(step)
                except Exception as raised:
                    error = raised
                else:
                    step = flow.send(result)
                    continue
                step = flow.throw(error)  # outside the handler, so nothing is chained to it
        except StopIteration as stop:
            done: R = stop.value
            return done

    def _stream(self, stream: Stream) -> Iterator[Any]:
        """Run a stream's operations as its caller iterates, handing out its items."""
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = stream.throw(error) if error is not None else stream.send(send)
            except StopIteration:
                return
            send, error = None, None
            if isinstance(step, Item):
                yield step.value
                continue
            try:
                send = self._run(step)
            except Exception as raised:
                error = raised

    async def _astream(self, stream: Stream) -> AsyncIterator[Any]:
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = stream.throw(error) if error is not None else stream.send(send)
            except StopIteration:
                return
            send, error = None, None
            if isinstance(step, Item):
                yield step.value
                continue
            try:
                send = await self._arun(step)
            except Exception as raised:
                error = raised


Sync = Callable[Concatenate[S, P], R]
Async = Callable[Concatenate[S, P], Coroutine[Any, Any, R]]


def twins(build: Callable[P, Op[R]]) -> tuple[Sync[Runner, P, R], Async[Runner, P, R]]:
    """The method and its async twin for a pure builder `name_op`: `name` and `aname`, with
    the builder's parameters and docstring.

        def release_op(reservation_id: str, reason: str = "released") -> ops.Release:
            '''Return the whole estimate to the budgets.'''
            ...
        class EnforcementCalls(Runner):
            release, arelease = twins(release_op)
    """
    name = build.__name__.removesuffix("_op")
    return (_method(build, name, "_run", bound=False),
            _method(build, "a" + name, "_arun", bound=False))


def followed_twins(build: Callable[P, B], follow: Callable[[B], Flow[T]]
                   ) -> tuple[Sync[Runner, P, T], Async[Runner, P, T]]:
    """As `twins`, for a call whose operation a flow runs with more steps around it (a
    check before or after it, say): the builder still checks the arguments when the call is
    made, and `follow(op)` is the flow that runs the operation and returns the call's
    result."""
    @functools.wraps(build)
    def flow(*args: Any, **kwargs: Any) -> Flow[T]:
        return follow(build(*args, **kwargs))

    name = build.__name__.removesuffix("_op")
    return (_method(flow, name, "_drive", bound=False),
            _method(flow, "a" + name, "_adrive", bound=False))


def flow_twins(build: Callable[Concatenate[S, P], Flow[R]], name: str | None = None
               ) -> tuple[Sync[S, P, R], Async[S, P, R]]:
    """The method and its async twin for a method `_name` that returns a flow (a generator
    method, or a method that checks its arguments at once and returns another flow); named
    `name` if given, and a private `_name` gets the twin `_aname`."""
    name = name or build.__name__.lstrip("_")
    twin = ("_" if name.startswith("_") else "") + "a" + name.lstrip("_")
    return (_method(build, name, "_drive", bound=True),
            _method(build, twin, "_adrive", bound=True))


def stream_twins(build: Callable[Concatenate[S, P], Stream], name: str | None = None
                 ) -> tuple[Callable[Concatenate[S, P], Iterator[Any]],
                            Callable[Concatenate[S, P], AsyncIterator[Any]]]:
    """As `flow_twins`, for a method `_name` that checks its arguments at once and returns a
    stream: `name` returns an iterator, its twin `aname` an async iterator (`async for`);
    each runs the stream's operations only as the caller asks for more."""
    name = name or build.__name__.lstrip("_")
    twin = _method(build, "a" + name, "_astream", bound=True)
    twin.streams = True  # an async iterator, not a coroutine: how a caller tells them apart
    return _method(build, name, "_stream", bound=True), twin


def _method(build: Callable[..., Any], name: str, runner: str, bound: bool) -> Any:
    """`def name(self, <the builder's parameters>): return self.<runner>(build(...))`, with
    `await` for an async runner. Written out with the builder's own parameter list (as
    dataclasses write `__init__`), so callers see the real signature and the call costs no
    `*args, **kwargs` repacking."""
    parameters = list(inspect.signature(build).parameters.values())[1 if bound else 0:]
    defaults: dict[str, Any] = {}
    declared, passed = ["self"], ["self"] if bound else []
    for parameter in parameters:
        assert parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in declared:
            declared.append("*")
        text = parameter.name
        if parameter.default is not parameter.empty:
            defaults[f"_default_{parameter.name}"] = parameter.default
            text += f"=_default_{parameter.name}"
        declared.append(text)
        passed.append(parameter.name if parameter.kind is parameter.POSITIONAL_OR_KEYWORD
                      else f"{parameter.name}={parameter.name}")
        assert parameter.name not in ("self", "_build", "_one"), parameter.name
    awaited = "await " if runner in ("_arun", "_adrive") else ""
    built = f"_build({', '.join(passed)})"
    observed = ""
    if runner in ("_run", "_arun"):  # one operation: a flow of one step when observed
        drive = "_adrive" if awaited else "_drive"
        observed = (f"    if self._engine.observers:\n"
                    f"        return {awaited}self.{drive}(_one({built}))\n")
    source = (f"{'async ' if awaited else ''}def {name}({', '.join(declared)}):\n"
              f"{observed}"
              f"    return {awaited}self.{runner}({built})\n")
    namespace: dict[str, Any] = {"_build": build, "_one": one, **defaults}
    exec(source, namespace)
    method = namespace[name]
    method.__qualname__ = name
    method.__doc__ = build.__doc__
    method.__module__ = build.__module__
    return method
