"""What the handler, `capped()` and the middleware share: their settings and subject, a
LangChain call turned into a metered `Request`, the caps it runs under, and settling it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.tools import BaseTool

import allotment as al
from allotment.adapter import Pricer

from .._keys import SubjectKeys
from .._metering import Meter, Metering, Request, allowed_tools, resolve_subject
from ..anthropic import hidden_prompt_tokens
from .usage import MAX_TOKEN_KEYS, estimator_messages, from_cache, message_usage

log = logging.getLogger("allotment")

INTERRUPTED = (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt)
"""Ways a call can stop after its request left: it may have been charged, so it is."""
_FREE = al.usd(0)


class Budget:
    """One piece's settings, and LangChain's calls turned into metered requests."""

    def __init__(self, guard: al.Guard, *, tool_prices: Mapping[str, Any] | None,
                 pricer: Pricer | None, default_max_tokens: int, floor: int,
                 ttl_ms: int | None, dimension_keys: Iterable[str] | Mapping[str, str],
                 subject: dict[str, Any]) -> None:
        self.metering = Metering(guard, pricer=pricer, default_max_tokens=default_max_tokens,
                                 floor=floor, ttl_ms=ttl_ms)
        self.tool_prices = {name: _usd(price) for name, price in (tool_prices or {}).items()}
        self.keys = SubjectKeys(dimension_keys)
        self.subject = subject
        self.warned_unapplied = False
        log.info("LangChain budgets read the subject from metadata keys %s",
                 ", ".join(self.metadata_keys))

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """Every metadata key the subject is read from: the levels, the dimension keys, and
        "dimensions" (a dict of any others)."""
        return self.keys.names

    @property
    def guard(self) -> al.Guard:
        """The guard tool calls are reserved with (model calls go through the metering)."""
        return self.metering.guard

    def subject_of(self, *sources: Any) -> al.Subject:
        """Arguments ← al.scope ← each source in turn (metadata, agent context)."""
        call: dict[str, Any] = {"dimensions": {}}
        for source in sources:
            if source is None:
                continue
            fields = self.keys.read(source)
            call["dimensions"].update(fields.pop("dimensions"))
            call.update(fields)
        return resolve_subject(self.subject, call)

    def chat(self, subject: al.Subject, provider: str, model: str,
             messages: list[BaseMessage] | list[str], max_tokens: int | None,
             tools: Any = None, thinking: Any = None,
             service_tier: str | None = None) -> Request:
        """A chat model call as the meter takes it; without max_tokens it is held for the
        default bound."""
        payload: dict[str, Any] = {"messages": estimator_messages(messages)}
        if tools:
            payload["tools"] = tools
        overhead = 0
        if provider == "anthropic":
            overhead = hidden_prompt_tokens({"tools": tools, "thinking": thinking})
        return Request(subject, "llm.completion", provider, model, payload,
                       max_tokens or self.metering.default_max_tokens, overhead, service_tier)

    def hold(self, request: Request) -> Meter:
        """Reserve at the model asked for (a callback cannot switch it), or raise Denied."""
        meter = self.metering.reserve(request)
        self._unapplied(meter, request)
        return meter

    async def ahold(self, request: Request) -> Meter:
        """`hold` without blocking the event loop."""
        meter = await self.metering.areserve(request)
        self._unapplied(meter, request)
        return meter

    def _unapplied(self, meter: Meter, request: Request) -> None:
        """A callback cannot shrink the call it lets through: say so when the caps would have,
        once as a warning and then at debug level (a capped tenant would log every call)."""
        caps = meter.caps
        if caps is None:
            return
        tools = request.payload.get("tools") if isinstance(request.payload, dict) else None
        if ((caps.max_tokens is not None and caps.max_tokens < (request.max_tokens or 0))
                or caps.model not in (None, request.model)
                or (tools and (caps.tool_allowlist is not None or caps.tool_denylist))):
            level = logging.DEBUG if self.warned_unapplied else logging.WARNING
            self.warned_unapplied = True
            log.log(level, "%s: %s cannot be applied by a callback; the call runs as sent "
                    "(BudgetMiddleware and capped() apply caps; further ones are logged at "
                    "debug level)", meter.reservation.id, caps)

    def tool(self, name: str) -> tuple[al.Action, al.Amount]:
        """A tool call's action and price (free unless `tool_prices` names it)."""
        return al.Action("tool.call", name), self.tool_prices.get(name, _FREE)

    def caps(self, meter: Meter, request: Request, settings: Mapping[str, Any],
             tools: list[Any] | None) -> tuple[dict[str, Any], list[Any] | None]:
        """The settings that make a call run under its caps, and the tools it may keep.
        A bound on output is always set, so the reservation is a real upper bound."""
        caps = meter.caps
        key = next((k for k in MAX_TOKEN_KEYS if k in settings), "max_tokens")
        limit = request.max_tokens or self.metering.default_max_tokens
        if caps is not None and caps.max_tokens is not None:
            limit = min(limit, caps.max_tokens)
        changed: dict[str, Any] = {key: limit}
        if meter.model != request.model:
            changed["model"] = meter.model
        if not tools or caps is None or (caps.tool_allowlist is None and not caps.tool_denylist):
            return changed, tools
        names = [_tool_name(t) for t in tools]
        keep = allowed_tools([n for n in names if n], caps)
        return changed, [t for t, n in zip(tools, names, strict=True) if n is None or n in keep]


# -- settling after the call ------------------------------------------------------------------


def settle(meter: Meter, request: Request, message: Any) -> None:
    """Charge what the answer says it used; give back a hold LangChain's cache answered."""
    if from_cache(message):
        quietly(lambda: meter.release("served from LangChain's cache"), meter)
        return
    meter.settle(message_usage(request, message))


async def asettle(meter: Meter, request: Request, message: Any) -> None:
    """`settle` without blocking the event loop."""
    if from_cache(message):
        await aquietly(meter.arelease("served from LangChain's cache"), meter)
        return
    await meter.asettle(message_usage(request, message))


def failed(meter: Meter, reached: bool) -> None:
    """After an error: charge the estimate when the call may have reached the provider,
    otherwise give the hold back."""
    if reached:
        meter.settle(None)
    else:
        quietly(lambda: meter.release("provider error"), meter)


async def afailed(meter: Meter, reached: bool) -> None:
    """`failed` without blocking the event loop."""
    if reached:
        await meter.asettle(None)
    else:
        await aquietly(meter.arelease("provider error"), meter)


def quietly(settle: Callable[[], object], held: Meter | al.Reservation) -> None:
    """Settling happens after the call: a store failure there is logged (the guard's retries
    and sinks have the spend), never raised into the caller's result or error."""
    try:
        settle()
    except al.AllotmentError as error:
        log.error("could not settle %s: %s", _id(held), error)


async def aquietly(settle: Awaitable[object], held: Meter | al.Reservation) -> None:
    """`quietly`, for an awaitable settlement."""
    try:
        await settle
    except al.AllotmentError as error:
        log.error("could not settle %s: %s", _id(held), error)


def _id(held: Meter | al.Reservation) -> str:
    return held.reservation.id if isinstance(held, Meter) else held.id


def _usd(price: Any) -> al.Amount:
    if isinstance(price, al.Amount):
        if price.unit is not al.Unit.USD_MICROCENTS:
            raise al.InvalidRequest(f"tool_prices: {price!r} is not in dollars")
        return price
    if isinstance(price, (int, float, str, Decimal)) and not isinstance(price, bool):
        return al.usd(price)
    raise al.InvalidRequest(f"tool_prices: {price!r} is not a price in dollars")


def _tool_name(tool: Any) -> str | None:
    if isinstance(tool, BaseTool):
        return tool.name
    if not isinstance(tool, dict):
        return getattr(tool, "name", None)
    function = tool.get("function")
    name = function.get("name") if isinstance(function, dict) else tool.get("name")
    return name if isinstance(name, str) else None
