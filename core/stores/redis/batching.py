"""Natural batching (group commit): calls that queue up while a call to the same Redis node is
in flight go together in one FCALL of the library's batch function (`lua/batch.lua`).

Nothing ever waits for company. The first call on an idle lane goes at once, alone and as it
would without batching; calls that arrive while it is in flight queue up, and when it returns
the queue goes as one batch (at most `LIMIT` calls), whose leader is the first of them (threads)
or a task of the loop (asyncio). Each call in a batch runs its own function's body in turn,
all-or-nothing on its own, and gets back exactly its own reply or its own error: the flows
above see the same replies and errors as without batching, so idempotency, the reload of a
missing library, strict durability (one WAITAOF/WAIT after the batch covers every write in
it) and the store's fail-closed/fail-open handling do not change.

A lane is one Redis node: the whole server, or on a cluster one hash slot (a Lua call's keys
must share a slot; each tenant is one slot), so a batch goes to the master of its slot.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from .flow import Call, Durable

LIMIT = 64
"""The most calls in one batch: bounds how long one FCALL holds the server."""
TENANT_KEYS = 11
"""The leading keys every call of a tenant declares (`keys.tenant_keys`); a call after one of
the same tenant sends only the keys after them."""
TENANT_CALLS = (TENANT_KEYS + 2, TENANT_KEYS + 3)
"""How many keys a tenant's call declares: its 11, the reservation and the replay, and for
a keyed call the tenant's key hash (`lua/keyed.lua`)."""

Batched = Call | Durable
Outcome = tuple[bool, Any]
"""(True, the reply) or (False, the exception the call gets)."""


def lane_of(client: Any, routed: bool, step: Batched) -> Any:
    """Where a call may join others: the server (None), or on a cluster its hash slot."""
    if not routed:
        return None
    call = step.call if isinstance(step, Durable) else step
    return client.keyslot(call.keys[0])


def packed(function: str, steps: Sequence[Batched]) -> Batched:
    """One call of the batch function carrying every step's call (see `lua/batch.lua` for the
    layout); a Durable when any step must wait for durability, so the wait follows the batch."""
    prefix = function[:function.rindex("_") + 1]  # each function by its name in the library
    keys: list[str] = []
    args: list[Any] = [len(steps)]
    tenant = None
    wait = None
    for step in steps:
        if isinstance(step, Durable):
            wait = wait or step.wait
            call = step.call
        else:
            call = step
        own = call.keys
        tenants = len(own) in TENANT_CALLS
        if tenants and own[0] == tenant:
            keys += own[TENANT_KEYS:]
            args += [call.function.removeprefix(prefix), TENANT_KEYS - len(own),
                     len(call.args), *call.args]
        else:
            keys += own
            args += [call.function.removeprefix(prefix), len(own), len(call.args), *call.args]
            tenant = own[0] if tenants else None
    batch = Call(function, keys, args)
    return batch if wait is None else Durable(batch, wait)


def _answered(steps: Sequence[Batched], batch: Batched, reply: Any) -> list[Outcome]:
    """Each step's own outcome from the batch's reply: its call's reply (with the wait's acks
    for a Durable step, as it would have had alone) or its call's error."""
    answers, acks = reply if isinstance(batch, Durable) else (reply, None)
    outcomes: list[Outcome] = []
    for i, step in enumerate(steps):
        ok, value = answers[2 * i], answers[2 * i + 1]
        if not ok:
            outcomes.append((False, ResponseError(str(value))))
        elif isinstance(step, Durable):
            outcomes.append((True, [value, acks]))
        else:
            outcomes.append((True, value))
    return outcomes


class _Waiter:
    """One call in a lane: its step, then its outcome. One that queues up waits on `done` for
    its outcome or the word to lead: a lock taken when it queues and released by the call that
    answers it, cheaper than an Event (a call sent at once needs none)."""

    __slots__ = ("done", "lead", "outcome", "step")

    def __init__(self, step: Batched) -> None:
        self.step = step
        self.done: threading.Lock | None = None
        self.lead = False
        self.outcome: Outcome = (False, None)


class _Lane:
    __slots__ = ("busy", "lock", "queue")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: deque[_Waiter] = deque()
        self.busy = False


def _outcomes(steps: Sequence[Batched], batch: Batched | None,
              reply: Any) -> list[Outcome]:
    if batch is None:
        return [(True, reply)]
    return _answered(steps, batch, reply)


class Batcher:
    """Group commit for threads sharing one store: `send` performs one step on the client."""

    def __init__(self, send: Callable[[Batched], Any], function: str) -> None:
        self._send, self._function = send, function
        self._lanes: dict[Any, _Lane] = {}
        self._guard = threading.Lock()

    def submit(self, lane_key: Any, step: Batched) -> Any:
        """The step's reply (raised if it is an error), sent alone when the lane is idle, or
        with the steps that queued up behind the call in flight."""
        lane = self._lanes.get(lane_key)
        if lane is None:
            with self._guard:
                lane = self._lanes.setdefault(lane_key, _Lane())
        with lane.lock:
            if lane.busy:
                me = _Waiter(step)
                me.done = threading.Lock()
                me.done.acquire()
                lane.queue.append(me)
            else:
                lane.busy = True
                me = None
        if me is None:  # an idle lane: the call goes at once, alone, as without batching
            try:
                return self._send(step)
            finally:
                self._hand_on(lane, ())
        me.done.acquire()  # type: ignore[union-attr]  # queued: it has one
        if not me.lead:
            return _given(me.outcome)
        with lane.lock:
            batch = [lane.queue.popleft() for _ in range(min(LIMIT, len(lane.queue)))]
        try:
            self._run(batch)
        finally:
            self._hand_on(lane, batch)
        return _given(me.outcome)

    @staticmethod
    def _hand_on(lane: _Lane, batch: list[_Waiter] | tuple[()]) -> None:
        """After a call: the next leader takes what queued up meanwhile (or the lane goes
        idle), then the batch's callers get their outcomes."""
        with lane.lock:
            if lane.queue:
                following = lane.queue[0]
                following.lead = True
                following.done.release()  # type: ignore[union-attr]  # queued: it has one
            else:
                lane.busy = False
        for waiter in batch:
            if not waiter.lead:
                waiter.done.release()  # type: ignore[union-attr]

    def _run(self, batch: list[_Waiter]) -> None:
        steps = [waiter.step for waiter in batch]
        sent = steps[0] if len(steps) == 1 else packed(self._function, steps)
        try:
            reply = self._send(sent)
        except BaseException as error:
            for waiter in batch:
                waiter.outcome = (False, _own(error))
            if not isinstance(error, Exception):
                raise
            return
        for waiter, outcome in zip(batch, _outcomes(steps, None if len(steps) == 1 else sent,
                                                    reply), strict=True):
            waiter.outcome = outcome


class AsyncBatcher:
    """Group commit for the tasks of one event loop: `send` performs one step on the loop's
    client. The first call on an idle lane is sent by its own task; what queues up behind it is
    sent by a task of the loop, batch after batch, until the lane is idle again."""

    def __init__(self, send: Callable[[Batched], Awaitable[Any]], function: str) -> None:
        self._send, self._function = send, function
        self._busy: set[Any] = set()
        self._queues: dict[Any, deque[tuple[Batched, asyncio.Future[Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, lane_key: Any, step: Batched) -> Any:
        """As `Batcher.submit`, awaited."""
        if lane_key in self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queues.setdefault(lane_key, deque()).append((step, future))
            return await future
        self._busy.add(lane_key)
        try:
            return await self._send(step)
        finally:
            self._next(lane_key)

    def _next(self, lane_key: Any) -> None:
        if self._queues.get(lane_key):
            task = asyncio.get_running_loop().create_task(self._drain(lane_key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._busy.discard(lane_key)

    async def _drain(self, lane_key: Any) -> None:
        queue = self._queues[lane_key]
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(LIMIT, len(queue)))]
                steps = [step for step, _ in batch]
                sent = steps[0] if len(steps) == 1 else packed(self._function, steps)
                try:
                    outcomes = _outcomes(steps, None if len(steps) == 1 else sent,
                                         await self._send(sent))
                except Exception as error:  # the whole batch failed: each call gets it
                    outcomes = [(False, _own(error)) for _ in batch]
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled while waiting
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            while queue:  # only when cancelled: nothing may wait for a drain that is gone
                queue.popleft()[1].cancel()
            self._busy.discard(lane_key)


def _own(error: BaseException) -> BaseException:
    """A copy of a whole batch's error for each of its calls, raised in their own threads or
    tasks (one exception object raised in several at once would share one traceback)."""
    try:
        copy = type(error)(*error.args)
    except Exception:  # one that cannot be rebuilt is shared
        return error
    copy.__cause__ = error.__cause__
    return copy


def _given(outcome: Outcome) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


__all__ = ["LIMIT", "AsyncBatcher", "Batcher", "lane_of", "packed"]
