"""`capped()`: a chat model under its caps, for plain chains. A callback cannot change the call
it lets through; a Runnable in the model's place can: it reserves, binds the caps
(`.bind(max_tokens=..., model=...)`), calls and commits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, ensure_config

import allotment as al
from allotment.adapter import Pricer

from .._keys import DIMENSION_KEYS
from .._metering import DEFAULT_FLOOR, DEFAULT_MAX_TOKENS, Meter, Request
from ._budget import INTERRUPTED, Budget, afailed, asettle, failed, settle
from ._claims import METERED
from .usage import add_chunk, as_messages, model_params, reported, requested_tier, thinking

__all__ = ["CappedChatModel", "capped"]

TOOL_KEYS = ("tools", "tool_choice", "parallel_tool_calls")


def capped(model: Runnable[Any, Any], guard: al.Guard, *,
           on_deny: Callable[[al.Denied], Any] | None = None, pricer: Pricer | None = None,
           default_max_tokens: int = DEFAULT_MAX_TOKENS, floor: int = DEFAULT_FLOOR,
           ttl_ms: int | None = None,
           dimension_keys: Iterable[str] | Mapping[str, str] = DIMENSION_KEYS,
           **subject: Any) -> CappedChatModel:
    """`model` (a chat model, or one with `.bind(...)`/`.bind_tools(...)` applied) guarded
    and capped: each call is reserved, sent with `max_tokens` (and the model and tools) the
    reservation allows, and committed from its usage. A denial raises `al.Denied` before
    anything is sent — or returns what `on_deny(denied)` returns. Use it in place of the
    model: `prompt | capped(ChatOpenAI(...), guard, tenant="acme") | parser`."""
    return CappedChatModel(model, Budget(
        guard, tool_prices=None, pricer=pricer, default_max_tokens=default_max_tokens,
        floor=floor, ttl_ms=ttl_ms, dimension_keys=dimension_keys, subject=subject), on_deny)


class CappedChatModel(Runnable[Any, Any]):
    """What `capped()` returns, so a chain runs each call under its caps. invoke, stream and
    their async twins are metered; batch and abatch go through them."""

    def __init__(self, model: Runnable[Any, Any], budget: Budget,
                 on_deny: Callable[[al.Denied], Any] | None = None) -> None:
        self.model = model
        self.chat, self.bound = _unwrap(model)
        self._budget = budget
        self.on_deny = on_deny

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """The metadata keys the subject is read from (levels, `dimension_keys`, and a
        "dimensions" dict); a dimension named nowhere here never reaches the subject."""
        return self._budget.metadata_keys

    def bind_tools(self, tools: Any, **kwargs: Any) -> CappedChatModel:
        """The model with tools bound, still capped (the caps may take some tools off)."""
        bound = self.chat.bind_tools(tools, **kwargs)
        if self.bound:
            bound = bound.bind(**self.bound)
        return CappedChatModel(bound, self._budget, self.on_deny)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Reserve, call under the caps, commit the usage; a denial sends nothing."""
        request, settings, config = self._request(input, config, kwargs)
        try:
            meter = self._budget.metering.start(request)
        except al.Denied as denied:
            if self.on_deny is None:
                raise
            return self.on_deny(denied)
        runnable, config = self._capped(meter, request, settings, kwargs, config)
        try:
            message = runnable.invoke(input, config)
        except BaseException as error:
            failed(meter, isinstance(error, INTERRUPTED))
            raise
        settle(meter, request, message)
        return message

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any) -> Any:
        """`invoke` without blocking the event loop."""
        request, settings, config = self._request(input, config, kwargs)
        try:
            meter = await self._budget.metering.astart(request)
        except al.Denied as denied:
            if self.on_deny is None:
                raise
            return self.on_deny(denied)
        runnable, config = self._capped(meter, request, settings, kwargs, config)
        try:
            message = await runnable.ainvoke(input, config)
        except BaseException as error:
            await afailed(meter, isinstance(error, INTERRUPTED))
            raise
        await asettle(meter, request, message)
        return message

    def stream(self, input: Any, config: RunnableConfig | None = None,
               **kwargs: Any | None) -> Iterator[Any]:
        """`invoke`, streamed: the usage the chunks carry is committed however the stream
        ends (a stream broken off after its first chunk is charged)."""
        request, settings, config = self._request(input, config, kwargs)
        try:
            meter = self._budget.metering.start(request)
        except al.Denied as denied:
            if self.on_deny is None:
                raise
            yield self.on_deny(denied)
            return
        runnable, config = self._capped(meter, request, settings, kwargs, config, True)
        usage: UsageMetadata | None = None
        seen = False
        try:
            for chunk in runnable.stream(input, config):
                seen = True
                usage = add_chunk(usage, chunk)
                yield chunk
        except BaseException as error:  # GeneratorExit too: the caller broke off
            if seen or isinstance(error, INTERRUPTED):
                meter.settle(reported(request, usage, None))
            else:
                failed(meter, False)
            raise
        meter.settle(reported(request, usage, None))

    async def astream(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any | None) -> AsyncIterator[Any]:
        """`stream` without blocking the event loop."""
        request, settings, config = self._request(input, config, kwargs)
        try:
            meter = await self._budget.metering.astart(request)
        except al.Denied as denied:
            if self.on_deny is None:
                raise
            yield self.on_deny(denied)
            return
        runnable, config = self._capped(meter, request, settings, kwargs, config, True)
        usage: UsageMetadata | None = None
        seen = False
        try:
            async for chunk in runnable.astream(input, config):
                seen = True
                usage = add_chunk(usage, chunk)
                yield chunk
        except BaseException as error:
            if seen or isinstance(error, INTERRUPTED):
                await meter.asettle(reported(request, usage, None))
            else:
                await afailed(meter, False)
            raise
        await meter.asettle(reported(request, usage, None))

    def _request(self, input: Any, config: RunnableConfig | None, kwargs: dict[str, Any]
                 ) -> tuple[Request, dict[str, Any], RunnableConfig]:
        config = ensure_config(config)
        settings = {**self.bound, **kwargs}
        provider, model, max_tokens = model_params(self.chat, settings)
        subject = self._budget.subject_of(config.get("metadata"))
        request = self._budget.chat(subject, provider, model, as_messages(input), max_tokens,
                                    settings.get("tools"), thinking(self.chat, settings),
                                    requested_tier(self.chat, settings))
        return request, settings, config

    def _capped(self, meter: Meter, request: Request, settings: dict[str, Any],
                kwargs: dict[str, Any], config: RunnableConfig, streaming: bool = False
                ) -> tuple[Runnable[Any, Any], RunnableConfig]:
        changed, tools = self._budget.caps(meter, request, settings, settings.get("tools"))
        if streaming and getattr(self.chat, "stream_usage", True) is not True:
            changed["stream_usage"] = True  # ChatOpenAI with its own client: ask for usage
        config = {**config, "metadata": {**config.get("metadata", {}),
                                         METERED: meter.reservation.id}}
        if tools is None or len(tools) == len(settings.get("tools") or ()):
            return self.model.bind(**{**kwargs, **changed}), config
        if tools:
            return self.model.bind(**{**kwargs, **changed, "tools": tools}), config
        rest = {k: v for k, v in settings.items() if k not in TOOL_KEYS}
        return self.chat.bind(**{**rest, **changed}), config  # no tool left to offer


def _unwrap(model: Runnable[Any, Any]) -> tuple[BaseChatModel, dict[str, Any]]:
    """The chat model under `.bind(...)` layers, and the keywords they add."""
    bound: dict[str, Any] = {}
    while isinstance(model, RunnableBinding):
        bound = {**model.kwargs, **bound}
        model = model.bound
    if not isinstance(model, BaseChatModel):
        raise al.InvalidRequest(f"capped(): expected a chat model, got {type(model).__name__}")
    return model, bound
