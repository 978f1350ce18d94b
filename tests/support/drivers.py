"""Drive the async twins from sync test code, so the behavioural suite runs through both.

`AsyncDriven(guard, loop).reserve(...)` runs `await guard.areserve(...)` on `loop` and hands
back what it returned; a reservation or tenant handle it returns is driven the same way, and
`with` blocks go through `__aenter__`/`__aexit__`. Anything without an async twin (reading an
attribute, `guard.on(...)`) is the object's own.
"""

from __future__ import annotations

import asyncio
import inspect
from types import TracebackType
from typing import Any

import allotment as al

DRIVEN = (al.Guard, al.TenantGuard, al.Reservation)


async def _drained(rows: Any) -> list[Any]:
    return [row async for row in rows]


class AsyncDriven:
    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    @property
    def driven(self) -> Any:
        """The object behind the driver."""
        return self._target

    def __repr__(self) -> str:
        return f"<async-driven {self._target!r}>"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name.startswith("_") or not callable(attr):
            return attr
        twin = getattr(self._target, "a" + name, None)
        if twin is not None and inspect.iscoroutinefunction(twin):
            def call(*args: Any, **kwargs: Any) -> Any:
                return self._wrap(self._loop.run_until_complete(twin(*args, **kwargs)))

            return call

        if twin is not None and callable(twin):  # a stream's twin: an async iterator
            def streamed(*args: Any, **kwargs: Any) -> Any:
                rows = twin(*args, **kwargs)
                if not hasattr(rows, "__aiter__"):
                    raise AssertionError(f"{name}'s twin a{name} is neither a coroutine "
                                         "function nor a stream")
                return iter(self._loop.run_until_complete(_drained(rows)))

            return streamed

        def plain(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(attr(*args, **kwargs))

        return plain

    def _wrap(self, result: Any) -> Any:
        return AsyncDriven(result, self._loop) if isinstance(result, DRIVEN) else result

    def __enter__(self) -> AsyncDriven:
        self._loop.run_until_complete(self._target.__aenter__())
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._loop.run_until_complete(self._target.__aexit__(kind, error, trace))
