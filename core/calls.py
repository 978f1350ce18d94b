"""One source for the call surface: each public call is written once, as a builder, and
`twins` (or `flow_twins`) turns it into the sync method and its async twin.

A builder checks its arguments and returns either the operation to run (`Op`), or a flow: a
generator that yields operations (and `Pause`s) and receives their results, for calls that
take more than one step (a commit retried after a store failure, a reservation let through
when the store is down). `Runner._drive` runs a flow with the blocking `_run`, `_adrive` with
the awaiting `_arun`, so the sync and async twins cannot drift: they share every line but
the waiting. Whatever runs the operations decides what a caller may touch (`Guard` runs any,
a tenant handle only its own tenant's).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from .stores.operations import Op

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="Runner")


@dataclass(frozen=True, slots=True)
class Pause:
    """A flow's wait between tries: `time.sleep` in a sync call, `asyncio.sleep` in its twin."""

    seconds: float


Flow = Generator["Op[Any] | Pause", Any, R]
"""A call of several steps: yields operations (receiving each result, or the error it
raised) and pauses; returns the call's result."""


class Runner:
    """Runs operations: `_run` blocks, `_arun` awaits. Subclasses say where operations go."""

    def _run(self, op: Op[R]) -> R:
        raise NotImplementedError

    async def _arun(self, op: Op[R]) -> R:
        raise NotImplementedError

    def _drive(self, flow: Flow[R]) -> R:
        """Run a flow's steps in order, sending each result (or error) back into it."""
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(send)
            except StopIteration as stop:
                result: R = stop.value
                return result
            send, error = None, None
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                continue
            try:
                send = self._run(step)
            except Exception as raised:  # handed to the flow, which decides
                error = raised

    async def _adrive(self, flow: Flow[R]) -> R:
        send: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(send)
            except StopIteration as stop:
                result: R = stop.value
                return result
            send, error = None, None
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
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
    def run(self: Runner, /, *args: Any, **kwargs: Any) -> Any:
        return self._run(build(*args, **kwargs))

    async def arun(self: Runner, /, *args: Any, **kwargs: Any) -> Any:
        return await self._arun(build(*args, **kwargs))

    name = build.__name__.removesuffix("_op")
    return _named(run, build, name, bound=False), _named(arun, build, "a" + name, bound=False)


def flow_twins(build: Callable[Concatenate[S, P], Flow[R]], name: str | None = None
               ) -> tuple[Sync[S, P, R], Async[S, P, R]]:
    """The method and its async twin for a flow written as a method `_name` (or named
    `name`; a private `_name` gets the twin `_aname`)."""
    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._drive(build(self, *args, **kwargs))

    async def arun(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._adrive(build(self, *args, **kwargs))

    name = name or build.__name__.lstrip("_")
    private = "_" if name.startswith("_") else ""
    twin = private + "a" + name.lstrip("_")
    return _named(run, build, name, bound=True), _named(arun, build, twin, bound=True)


def _named(method: Callable[..., Any], build: Callable[..., Any], name: str,
           bound: bool) -> Callable[..., Any]:
    """`method` under `name`, showing the builder's docstring and parameters (with `self`
    in front of a pure builder's, so both twins read alike to `inspect` and to users)."""
    method.__name__ = name
    method.__qualname__ = name
    method.__doc__ = build.__doc__
    method.__module__ = build.__module__
    signature = inspect.signature(build)
    if not bound:
        self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        signature = signature.replace(parameters=[self, *signature.parameters.values()])
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        return_annotation=inspect.Signature.empty)
    return method
