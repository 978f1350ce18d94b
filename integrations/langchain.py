"""LangChain: per-tenant budgets for chat models, LLMs, tools and `create_agent` agents.

A LangChain callback can stop a call (raising in the start hook stops it before any HTTP
request) but cannot change it, so there are three pieces:

* `BudgetCallbackHandler` — put it first in `config={"callbacks": [...]}` (or on the model).
  It reserves in the chat-model/LLM start hook, raises `al.Denied` before anything is sent,
  and commits the usage LangChain reports when the call ends (the provider's raw usage when
  `usage_metadata` is missing; the estimate when a call that reached the provider reported
  nothing, e.g. a stream the caller broke off). A call that failed before the provider
  answered is released. Tool calls are reserved and committed too, at `tool_prices=` (free by
  default, so a calls quota on "tool.*" still counts them). It is a sync handler with
  `raise_error=True`, so it stops `invoke`, `stream`, `ainvoke` and `astream` alike;
  `AsyncBudgetCallbackHandler` is its twin for async code (an async handler cannot stop a
  sync call: LangChain drops its exceptions there). It can refuse a call but not shrink it:
  a call it lets through runs as sent, whatever caps the budget asked for.
* `BudgetMiddleware` — for `create_agent`. Reserves each model call, applies the caps
  (`max_tokens`, set from policy when the caller gave none so the estimate is a real bound;
  a cheaper model; fewer tools) and commits the response's usage; tool calls likewise. When
  the budget says no, the run ends normally with an AIMessage that says why
  (`exit_behavior="end"`, as LangChain's own call-limit middleware does): the program gets a
  result, the user an explanation. A refused tool call is answered with an error ToolMessage
  (so the conversation stays valid) and the run ends at the next model call. With
  `exit_behavior="error"` both raise `al.Denied` instead. List it last among middleware, so
  that each attempt of a retry or fallback middleware is reserved on its own.
* `capped(model, guard, ...)` — the same for a chat model in a plain chain: a Runnable that
  reserves, binds the caps (`.bind(max_tokens=..., model=...)`), calls and commits.

Calls metered by the middleware or `capped()` are marked, so a handler attached as well stays
out of them: nothing is held twice.

The subject comes from the piece's own arguments (tenant=, workflow=, ...), then
`al.scope(...)`, then the run's metadata — `config={"metadata": {"tenant": "acme", "run":
"r-1"}}`, which LangChain hands down to nested chains, tools and LangGraph nodes — and, for
the middleware, the agent's `context=`. Level names are read from these, plus the dimensions
named in `dimension_keys` (run, user, session) and a `"dimensions"` dict. So one handler
serves every tenant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, ensure_config
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

import allotment as al
from allotment.estimation import input_tokens
from allotment.pricing import Pricer, TokenUsage
from allotment.scopes import LEVELS

from ._metering import (
    DEFAULT_FLOOR,
    DEFAULT_MAX_TOKENS,
    Meter,
    Metering,
    Request,
    allowed_tools,
    resolve_subject,
)
from .anthropic import THINKING_PROMPT, TOOL_PROMPT

if TYPE_CHECKING:
    from langchain.agents.middleware import AgentMiddleware
else:
    try:
        from langchain.agents.middleware import AgentMiddleware
    except ImportError:  # langchain-core alone: the handler and capped() still work

        class AgentMiddleware:
            def __class_getitem__(cls, item: Any) -> type:
                return cls

            def __init__(self) -> None:
                raise ImportError("BudgetMiddleware needs the `langchain` package "
                                  "(create_agent): pip install langchain")

__all__ = ["AsyncBudgetCallbackHandler", "BudgetCallbackHandler", "BudgetMiddleware",
           "CappedChatModel", "capped"]

log = logging.getLogger("allotment")

METERED = "allotment_reservation"
"""Run metadata set by `capped()` on the call it meters (the reservation id)."""
DIMENSION_KEYS = ("run", "user", "session")
MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
TOOL_KEYS = ("tools", "tool_choice", "parallel_tool_calls")
PROVIDERS = {"google_genai": "google", "google_vertexai": "google", "amazon_bedrock": "aws",
             "bedrock": "aws", "bedrock_converse": "aws", "mistralai": "mistral",
             "xai": "x-ai", "azure_openai": "azure"}
"""LangSmith's `ls_provider` names where genai-prices spells them otherwise."""
INTERRUPTED = (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt)
"""Ways a call can stop after its request left: it may have been charged, so it is."""


@dataclass(slots=True)
class _Claim:
    kind: str  # "model" | "tool"
    used: bool = False


_claim: ContextVar[_Claim | None] = ContextVar("allotment_langchain_claim", default=None)
"""Set by the middleware around the call it meters: the first start of that kind under it
is that call, which the handler then leaves alone (a tool's own model calls are not)."""


def _claimed(kind: str, metadata: Mapping[str, Any] | None) -> bool:
    if kind == "model" and metadata and metadata.get(METERED):
        return True
    claim = _claim.get()
    if claim is None or claim.used or claim.kind != kind:
        return False
    claim.used = True
    return True


class _Budget:
    """What the pieces share: settings, the subject, and LangChain's shapes turned into a
    metered `Request` and a `TokenUsage`."""

    def __init__(self, guard: al.Guard, *, tool_prices: Mapping[str, Any] | None,
                 pricer: Pricer | None, default_max_tokens: int, floor: int,
                 ttl_ms: int | None, dimension_keys: Iterable[str] | Mapping[str, str],
                 subject: dict[str, Any]) -> None:
        self.metering = Metering(guard, pricer=pricer, default_max_tokens=default_max_tokens,
                                 floor=floor, ttl_ms=ttl_ms)
        self.tool_prices = {name: _usd(price) for name, price in (tool_prices or {}).items()}
        self.dimension_keys = (dict(dimension_keys) if isinstance(dimension_keys, Mapping)
                               else {key: key for key in dimension_keys})
        self.subject = subject

    @property
    def guard(self) -> al.Guard:
        return self.metering.guard

    def subject_of(self, *sources: Any) -> al.Subject:
        """Arguments ← al.scope ← each source in turn (metadata, agent context)."""
        call: dict[str, Any] = {"dimensions": {}}
        for source in sources:
            if source is None:
                continue
            for level in LEVELS:
                value = _get(source, level)
                if value is not None:
                    call[level] = value
            for key, dimension in self.dimension_keys.items():
                value = _get(source, key)
                if value is not None:
                    call["dimensions"][dimension] = value
            extra = _get(source, "dimensions")
            if isinstance(extra, Mapping):
                call["dimensions"].update(extra)
        return resolve_subject(self.subject, call)

    def chat(self, subject: al.Subject, provider: str, model: str,
             messages: list[BaseMessage] | list[str], max_tokens: int | None,
             tools: Any = None, thinking: Any = None) -> Request:
        payload: dict[str, Any] = {"messages": _openai_messages(messages)}
        if tools:
            payload["tools"] = tools
        overhead = 0
        if provider == "anthropic":  # the system prompts Anthropic adds
            overhead = (TOOL_PROMPT if tools else 0) + (THINKING_PROMPT if thinking else 0)
        return Request(subject, "llm.completion", provider, model, payload,
                       max_tokens or self.metering.default_max_tokens, overhead)

    def hold(self, request: Request) -> Meter:
        """Reserve at the model asked for (a callback cannot switch it), or raise Denied."""
        meter = self.metering.reserve(request)
        _unapplied(meter, request)
        return meter

    async def ahold(self, request: Request) -> Meter:
        meter = await self.metering.areserve(request)
        _unapplied(meter, request)
        return meter

    def tool(self, name: str) -> tuple[al.Action, al.Amount]:
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

    def used(self, request: Request, usage: Mapping[str, Any] | None,
             raw: Mapping[str, Any] | None) -> TokenUsage | None:
        """LangChain's usage_metadata, else the provider's raw usage. Where a report leaves
        input at 0 (older Anthropic streams), the input estimate stands in."""
        found = (_from_metadata(usage) if usage
                 else _from_raw(raw, request.provider) if raw else None)
        if found is not None and found.input_tokens == 0:
            found = TokenUsage(**{**found.model_dump(),
                                  "input_tokens": input_tokens(request.payload, request.overhead)})
        return found


# -- the callback handlers ----------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    meter: Meter
    request: Request
    answered: bool = False  # a token arrived: the provider is answering


class _Handling:
    """State and translation shared by the sync handler and its async twin; calls are keyed
    by run_id, so batches, nested chains and LangGraph runs each settle their own."""

    raise_error = True  # what lets a start hook stop the call
    run_inline = True  # ahead of other handlers on the async path, in order

    def __init__(self, guard: al.Guard, *, tool_prices: Mapping[str, Any] | None = None,
                 pricer: Pricer | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 floor: int = DEFAULT_FLOOR, ttl_ms: int | None = None,
                 dimension_keys: Iterable[str] | Mapping[str, str] = DIMENSION_KEYS,
                 **subject: Any) -> None:
        """`subject` holds Subject fields (tenant=, workflow=, ...; other keywords are
        dimensions); `tool_prices` maps tool names to dollars (`al.usd("0.01")` or "0.01")."""
        self._budget = _Budget(guard, tool_prices=tool_prices, pricer=pricer,
                               default_max_tokens=default_max_tokens, floor=floor,
                               ttl_ms=ttl_ms, dimension_keys=dimension_keys, subject=subject)
        self._calls: dict[UUID, _Call] = {}
        self._tools: dict[UUID, al.Reservation] = {}

    @property
    def ignore_chain(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    def _model_request(self, serialized: dict[str, Any] | None,
                       messages: list[BaseMessage] | list[str],
                       metadata: dict[str, Any] | None, kwargs: dict[str, Any]
                       ) -> Request | None:
        if _claimed("model", metadata):
            return None
        params = kwargs.get("invocation_params") or {}
        meta = metadata or {}
        class_name = ((serialized or {}).get("id") or [""])[-1]
        provider = _provider(meta.get("ls_provider"), str(class_name))
        model = (params.get("model") or params.get("model_name") or meta.get("ls_model_name")
                 or "unknown")
        max_tokens = _max_tokens(params) or _positive(meta.get("ls_max_tokens"))
        return self._budget.chat(self._budget.subject_of(metadata), provider, str(model),
                                 messages, max_tokens, params.get("tools"), params.get("thinking"))

    def _tool_request(self, serialized: dict[str, Any] | None, metadata: dict[str, Any] | None,
                      kwargs: dict[str, Any]) -> tuple[al.Subject, al.Action, al.Amount] | None:
        if _claimed("tool", metadata):
            return None
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        return (self._budget.subject_of(metadata), *self._budget.tool(str(name)))

    def _answered(self, run_id: UUID) -> None:
        call = self._calls.get(run_id)
        if call is not None:
            call.answered = True

    def _ended(self, call: _Call, response: Any) -> TokenUsage | None:
        message = _first_message(response)
        raw = getattr(response, "llm_output", None) or {}
        return self._budget.used(call.request, getattr(message, "usage_metadata", None),
                                 _raw_usage(raw) or _raw_usage(_response_metadata(message)))


class BudgetCallbackHandler(_Handling, BaseCallbackHandler):
    """Refuses a model or tool call its tenant's budget cannot cover, before it is sent, and
    charges what it used. `BudgetCallbackHandler(guard, tenant="acme")`, or no tenant here
    and `config={"metadata": {"tenant": ...}}` per run."""

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]],
                            *, run_id: UUID, parent_run_id: UUID | None = None,
                            tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        request = self._model_request(serialized, [m for ms in messages for m in ms], metadata,
                                      kwargs)
        if request is not None:
            self._calls[run_id] = _Call(self._budget.hold(request), request)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        request = self._model_request(serialized, prompts, metadata, kwargs)
        if request is not None:
            self._calls[run_id] = _Call(self._budget.hold(request), request)

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID,
                         parent_run_id: UUID | None = None, tags: list[str] | None = None,
                         **kwargs: Any) -> None:
        self._answered(run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
                   tags: list[str] | None = None, **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        if _from_cache(_first_message(response)):
            _quietly(lambda: call.meter.release("served from LangChain's cache"), call.meter)
        else:
            call.meter.settle(self._ended(call, response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        response = kwargs.get("response")
        if _reached(error, response, call.answered):
            call.meter.settle(self._ended(call, response))
        else:
            _quietly(lambda: call.meter.release("provider error"), call.meter)

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, tags: list[str] | None = None,
                      metadata: dict[str, Any] | None = None,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        held = self._tool_request(serialized, metadata, kwargs)
        if held is not None:
            self._tools[run_id] = self._budget.guard.reserve(
                *held, ttl_ms=self._budget.metering.ttl_ms)

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                    **kwargs: Any) -> None:
        held = self._tools.pop(run_id, None)
        if held is not None:
            _quietly(lambda: held.commit(held.estimate), held)

    def on_tool_error(self, error: BaseException, *, run_id: UUID,
                      parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        held = self._tools.pop(run_id, None)
        if held is not None:
            _quietly(lambda: held.release("tool error"), held)


class AsyncBudgetCallbackHandler(_Handling, AsyncCallbackHandler):
    """`BudgetCallbackHandler` for async-only code, talking to the store without blocking
    the event loop. In a sync `invoke` it still meters but cannot stop the call (LangChain
    drops an async handler's exceptions there): use the sync handler for sync code."""

    async def on_chat_model_start(self, serialized: dict[str, Any],
                                  messages: list[list[BaseMessage]], *, run_id: UUID,
                                  parent_run_id: UUID | None = None,
                                  tags: list[str] | None = None,
                                  metadata: dict[str, Any] | None = None,
                                  **kwargs: Any) -> None:
        request = self._model_request(serialized, [m for ms in messages for m in ms], metadata,
                                      kwargs)
        if request is not None:
            self._calls[run_id] = _Call(await self._budget.ahold(request), request)

    async def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *,
                           run_id: UUID, parent_run_id: UUID | None = None,
                           tags: list[str] | None = None,
                           metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        request = self._model_request(serialized, prompts, metadata, kwargs)
        if request is not None:
            self._calls[run_id] = _Call(await self._budget.ahold(request), request)

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID,
                               parent_run_id: UUID | None = None,
                               tags: list[str] | None = None, **kwargs: Any) -> None:
        self._answered(run_id)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID,
                         parent_run_id: UUID | None = None, tags: list[str] | None = None,
                         **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        if _from_cache(_first_message(response)):
            await _aquietly(call.meter.arelease("served from LangChain's cache"), call.meter)
        else:
            await call.meter.asettle(self._ended(call, response))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID,
                           parent_run_id: UUID | None = None, tags: list[str] | None = None,
                           **kwargs: Any) -> None:
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        response = kwargs.get("response")
        if _reached(error, response, call.answered):
            await call.meter.asettle(self._ended(call, response))
        else:
            await _aquietly(call.meter.arelease("provider error"), call.meter)

    async def on_tool_start(self, serialized: dict[str, Any], input_str: str, *,
                            run_id: UUID, parent_run_id: UUID | None = None,
                            tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None,
                            inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        held = self._tool_request(serialized, metadata, kwargs)
        if held is not None:
            self._tools[run_id] = await self._budget.guard.areserve(
                *held, ttl_ms=self._budget.metering.ttl_ms)

    async def on_tool_end(self, output: Any, *, run_id: UUID,
                          parent_run_id: UUID | None = None, tags: list[str] | None = None,
                          **kwargs: Any) -> None:
        held = self._tools.pop(run_id, None)
        if held is not None:
            await _aquietly(held.acommit(held.estimate), held)

    async def on_tool_error(self, error: BaseException, *, run_id: UUID,
                            parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            **kwargs: Any) -> None:
        held = self._tools.pop(run_id, None)
        if held is not None:
            await _aquietly(held.arelease("tool error"), held)


# -- capped(): a chat model under its caps, for plain chains -------------------------------


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
    return CappedChatModel(model, _Budget(
        guard, tool_prices=None, pricer=pricer, default_max_tokens=default_max_tokens,
        floor=floor, ttl_ms=ttl_ms, dimension_keys=dimension_keys, subject=subject), on_deny)


class CappedChatModel(Runnable[Any, Any]):
    """What `capped()` returns. invoke, stream and their async twins are metered; batch and
    abatch go through them."""

    def __init__(self, model: Runnable[Any, Any], budget: _Budget,
                 on_deny: Callable[[al.Denied], Any] | None = None) -> None:
        self.model = model
        self.chat, self.bound = _unwrap(model)
        self._budget = budget
        self.on_deny = on_deny

    def bind_tools(self, tools: Any, **kwargs: Any) -> CappedChatModel:
        bound = self.chat.bind_tools(tools, **kwargs)
        if self.bound:
            bound = bound.bind(**self.bound)
        return CappedChatModel(bound, self._budget, self.on_deny)

    def _request(self, input: Any, config: RunnableConfig | None, kwargs: dict[str, Any]
                 ) -> tuple[Request, dict[str, Any], RunnableConfig]:
        config = ensure_config(config)
        settings = {**self.bound, **kwargs}
        provider, model, max_tokens = _model_params(self.chat, settings)
        subject = self._budget.subject_of(config.get("metadata"))
        request = self._budget.chat(subject, provider, model, _messages(input), max_tokens,
                                    settings.get("tools"), _thinking(self.chat, settings))
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

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
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
            _failed(meter, isinstance(error, INTERRUPTED))
            raise
        _settle(self._budget, meter, request, message)
        return message

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any) -> Any:
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
            await _afailed(meter, isinstance(error, INTERRUPTED))
            raise
        await _asettle(self._budget, meter, request, message)
        return message

    def stream(self, input: Any, config: RunnableConfig | None = None,
               **kwargs: Any | None) -> Iterator[Any]:
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
                usage = _add(usage, chunk)
                yield chunk
        except BaseException as error:  # GeneratorExit too: the caller broke off
            if seen or isinstance(error, INTERRUPTED):
                meter.settle(self._budget.used(request, usage, None))
            else:
                _failed(meter, False)
            raise
        meter.settle(self._budget.used(request, usage, None))

    async def astream(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any | None) -> AsyncIterator[Any]:
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
                usage = _add(usage, chunk)
                yield chunk
        except BaseException as error:
            if seen or isinstance(error, INTERRUPTED):
                await meter.asettle(self._budget.used(request, usage, None))
            else:
                await _afailed(meter, False)
            raise
        await meter.asettle(self._budget.used(request, usage, None))


# -- the agent middleware -----------------------------------------------------------------


class BudgetMiddleware(AgentMiddleware[Any, Any, Any]):
    """Budgets inside `create_agent(model, tools, middleware=[BudgetMiddleware(guard)])`:
    every model call reserved and capped, every tool call reserved, a denial ending the run
    with an explanation (or raising, with `exit_behavior="error"`)."""

    def __init__(self, guard: al.Guard, *, exit_behavior: Literal["end", "error"] = "end",
                 tool_prices: Mapping[str, Any] | None = None, pricer: Pricer | None = None,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS, floor: int = DEFAULT_FLOOR,
                 ttl_ms: int | None = None,
                 dimension_keys: Iterable[str] | Mapping[str, str] = DIMENSION_KEYS,
                 **subject: Any) -> None:
        super().__init__()
        if exit_behavior not in ("end", "error"):
            raise al.InvalidRequest(f"exit_behavior: {exit_behavior!r} is not 'end' or 'error'")
        self.exit_behavior = exit_behavior
        self._budget = _Budget(guard, tool_prices=tool_prices, pricer=pricer,
                               default_max_tokens=default_max_tokens, floor=floor,
                               ttl_ms=ttl_ms, dimension_keys=dimension_keys, subject=subject)

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        refused = _refused(request.messages)
        if refused is not None:
            return refused
        described = self._describe(request)
        try:
            meter = self._budget.metering.start(described)
        except al.Denied as denied:
            return self._stop(denied)
        token = _claim.set(_Claim("model"))
        try:
            response = handler(self._capped(request, meter, described))
        except BaseException as error:
            _failed(meter, isinstance(error, INTERRUPTED))
            raise
        finally:
            _claim.reset(token)
        _settle(self._budget, meter, described, _ai_message(response))
        return response

    async def awrap_model_call(self, request: Any,
                               handler: Callable[[Any], Awaitable[Any]]) -> Any:
        refused = _refused(request.messages)
        if refused is not None:
            return refused
        described = self._describe(request)
        try:
            meter = await self._budget.metering.astart(described)
        except al.Denied as denied:
            return self._stop(denied)
        token = _claim.set(_Claim("model"))
        try:
            response = await handler(self._capped(request, meter, described))
        except BaseException as error:
            await _afailed(meter, isinstance(error, INTERRUPTED))
            raise
        finally:
            _claim.reset(token)
        await _asettle(self._budget, meter, described, _ai_message(response))
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        subject, action, price = self._tool(request)
        try:
            held = self._budget.guard.reserve(subject, action, price,
                                              ttl_ms=self._budget.metering.ttl_ms)
        except al.Denied as denied:
            return self._refuse(request, denied)
        token = _claim.set(_Claim("tool"))
        try:
            result = handler(request)
        except BaseException:
            _quietly(lambda: held.release("tool error"), held)
            raise
        finally:
            _claim.reset(token)
        if _tool_failed(result):
            _quietly(lambda: held.release("tool error"), held)
        else:
            _quietly(lambda: held.commit(held.estimate), held)
        return result

    async def awrap_tool_call(self, request: Any,
                              handler: Callable[[Any], Awaitable[Any]]) -> Any:
        subject, action, price = self._tool(request)
        try:
            held = await self._budget.guard.areserve(subject, action, price,
                                                     ttl_ms=self._budget.metering.ttl_ms)
        except al.Denied as denied:
            return self._refuse(request, denied)
        token = _claim.set(_Claim("tool"))
        try:
            result = await handler(request)
        except BaseException:
            await _aquietly(held.arelease("tool error"), held)
            raise
        finally:
            _claim.reset(token)
        if _tool_failed(result):
            await _aquietly(held.arelease("tool error"), held)
        else:
            await _aquietly(held.acommit(held.estimate), held)
        return result

    def _subject(self, runtime: Any, config: Any = None) -> al.Subject:
        if config is None:
            config = var_child_runnable_config.get()
        metadata = (config or {}).get("metadata")
        return self._budget.subject_of(metadata, getattr(runtime, "context", None))

    def _describe(self, request: Any) -> Request:
        settings = dict(request.model_settings)
        provider, model, max_tokens = _model_params(request.model, settings)
        messages = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        tools = [t if isinstance(t, dict) else convert_to_openai_tool(t) for t in request.tools]
        return self._budget.chat(self._subject(request.runtime), provider, model, messages,
                                 max_tokens, tools, _thinking(request.model, settings))

    def _capped(self, request: Any, meter: Meter, described: Request) -> Any:
        settings = dict(request.model_settings)
        changed, tools = self._budget.caps(meter, described, settings, list(request.tools))
        return request.override(model_settings={**settings, **changed}, tools=tools or [])

    def _tool(self, request: Any) -> tuple[al.Subject, al.Action, al.Amount]:
        runtime = request.runtime
        subject = self._subject(runtime, getattr(runtime, "config", None))
        return (subject, *self._budget.tool(str(request.tool_call["name"])))

    def _stop(self, denied: al.Denied) -> AIMessage:
        if self.exit_behavior == "error":
            raise denied
        return AIMessage(content=f"Stopped before another model call: {denied}",
                         response_metadata={"allotment": _denial(denied)})

    def _refuse(self, request: Any, denied: al.Denied) -> ToolMessage:
        """The refusal answers the tool call (the conversation stays valid for the next
        turn); the run then ends at the next model call, which `_refused` stops."""
        if self.exit_behavior == "error":
            raise denied
        call = request.tool_call
        return ToolMessage(content=f"Not run: {denied}",
                           tool_call_id=call["id"], name=call["name"], status="error",
                           response_metadata={"allotment": _denial(denied)})


# -- helpers ------------------------------------------------------------------------------

_FREE = al.usd(0)


def _usd(price: Any) -> al.Amount:
    if isinstance(price, al.Amount):
        if price.unit is not al.Unit.USD_MICROCENTS:
            raise al.InvalidRequest(f"tool_prices: {price!r} is not in dollars")
        return price
    if isinstance(price, (int, float, str, Decimal)) and not isinstance(price, bool):
        return al.usd(price)
    raise al.InvalidRequest(f"tool_prices: {price!r} is not a price in dollars")


def _get(source: Any, key: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def _unapplied(meter: Meter, request: Request) -> None:
    """A callback cannot shrink the call it lets through: say so when the caps would have."""
    caps = meter.caps
    if caps is None:
        return
    tools = request.payload.get("tools") if isinstance(request.payload, dict) else None
    if ((caps.max_tokens is not None and caps.max_tokens < (request.max_tokens or 0))
            or caps.model not in (None, request.model)
            or (tools and (caps.tool_allowlist is not None or caps.tool_denylist))):
        log.warning("%s: %s cannot be applied by a callback; the call runs as sent "
                    "(BudgetMiddleware and capped() apply caps)", meter.reservation.id, caps)


def _provider(ls_provider: Any, class_name: str) -> str:
    """genai-prices' name for the provider: LangSmith's, or the class name's (ChatOpenAI)."""
    if isinstance(ls_provider, str) and ls_provider:
        return PROVIDERS.get(ls_provider, ls_provider)
    name = class_name.removeprefix("Chat").lower()
    return PROVIDERS.get(name, name or "unknown")


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _max_tokens(params: Mapping[str, Any]) -> int | None:
    for key in MAX_TOKEN_KEYS:
        value = _positive(params.get(key))
        if value is not None:
            return value
    return None


def _model_params(chat: Any, settings: Mapping[str, Any]) -> tuple[str, str, int | None]:
    """Provider, model and max_tokens of a chat model called with `settings`, as LangSmith
    would trace them."""
    try:
        ls: Mapping[str, Any] = chat._get_ls_params(**settings)
    except Exception:  # a model without LangSmith parameters: read the fields
        ls = {}
    model = (settings.get("model") or settings.get("model_name") or ls.get("ls_model_name")
             or getattr(chat, "model_name", None) or getattr(chat, "model", None) or "unknown")
    return (_provider(ls.get("ls_provider"), type(chat).__name__), str(model),
            _max_tokens(settings) or _own_max_tokens(chat))


def _own_max_tokens(chat: Any) -> int | None:
    """The model's own max_tokens, unless it is just the model's maximum output (ChatAnthropic
    fills that in from its profile): holding 128k tokens per call pins a budget for nothing,
    so that counts as none given, and the default bound applies."""
    own = _positive(getattr(chat, "max_tokens", None))
    profile = getattr(chat, "profile", None)
    if own is not None and isinstance(profile, Mapping) and own == profile.get(
            "max_output_tokens"):
        return None
    return own


def _thinking(chat: Any, settings: Mapping[str, Any]) -> Any:
    return settings.get("thinking") or getattr(chat, "thinking", None)


def _unwrap(model: Runnable[Any, Any]) -> tuple[BaseChatModel, dict[str, Any]]:
    """The chat model under `.bind(...)` layers, and the keywords they add."""
    bound: dict[str, Any] = {}
    while isinstance(model, RunnableBinding):
        bound = {**model.kwargs, **bound}
        model = model.bound
    if not isinstance(model, BaseChatModel):
        raise al.InvalidRequest(f"capped(): expected a chat model, got {type(model).__name__}")
    return model, bound


def _messages(value: Any) -> list[BaseMessage]:
    if isinstance(value, str):
        return [HumanMessage(value)]
    return convert_to_messages(value)


def _openai_messages(messages: list[BaseMessage] | list[str]) -> Any:
    """Messages as the estimator reads them (their text, roles and tool calls)."""
    if messages and isinstance(messages[0], str):
        return [{"role": "user", "content": text} for text in messages]
    try:
        return convert_to_openai_messages(messages)
    except Exception:  # an unusual content block: its raw content still bounds the count
        return [getattr(m, "content", m) for m in messages]


def _tool_name(tool: Any) -> str | None:
    if isinstance(tool, BaseTool):
        return tool.name
    if not isinstance(tool, dict):
        return getattr(tool, "name", None)
    function = tool.get("function")
    name = function.get("name") if isinstance(function, dict) else tool.get("name")
    return name if isinstance(name, str) else None


def _first_message(response: Any) -> Any:
    for generations in getattr(response, "generations", None) or ():
        for generation in generations:
            return getattr(generation, "message", None)
    return None


def _ai_message(response: Any) -> Any:
    """The AIMessage of a middleware handler's answer (ModelResponse, AIMessage, or an
    ExtendedModelResponse)."""
    response = getattr(response, "model_response", response)
    messages = getattr(response, "result", [response])
    return next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)


def _response_metadata(message: Any) -> Mapping[str, Any]:
    metadata = getattr(message, "response_metadata", None)
    return metadata if isinstance(metadata, Mapping) else {}


def _raw_usage(source: Mapping[str, Any]) -> Mapping[str, Any] | None:
    usage = source.get("token_usage") or source.get("usage")
    return usage if isinstance(usage, Mapping) else None


def _from_cache(message: Any) -> bool:
    """LangChain's own cache answered: no provider call, nothing to charge."""
    usage = getattr(message, "usage_metadata", None)
    return isinstance(usage, Mapping) and usage.get("total_cost") == 0


def _count(value: Any) -> int:
    return _positive(value) or 0


def _detail(details: Any, name: str) -> int:
    """A usage detail; service tiers prefix the keys (`flex_cache_read`)."""
    if not isinstance(details, Mapping):
        return 0
    return sum(_count(v) for k, v in details.items() if k == name or k.endswith("_" + name))


def _from_metadata(usage: Mapping[str, Any]) -> TokenUsage:
    """LangChain's usage_metadata: input includes cached tokens, output includes reasoning."""
    inputs, outputs = usage.get("input_token_details"), usage.get("output_token_details")
    return TokenUsage(input_tokens=_count(usage.get("input_tokens")),
                      output_tokens=_count(usage.get("output_tokens")),
                      cache_read_tokens=_detail(inputs, "cache_read"),
                      cache_write_tokens=_detail(inputs, "cache_creation"),
                      reasoning_tokens=_detail(outputs, "reasoning"))


def _from_raw(usage: Mapping[str, Any], provider: str) -> TokenUsage:
    """The provider's own usage dict (OpenAI chat or Responses, or Anthropic's, which counts
    cache tokens apart from input)."""
    def sub(key: str) -> Mapping[str, Any]:
        value = usage.get(key)
        return value if isinstance(value, Mapping) else {}

    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return TokenUsage(input_tokens=_count(usage.get("prompt_tokens")),
                          output_tokens=_count(usage.get("completion_tokens")),
                          cache_read_tokens=_count(sub("prompt_tokens_details").get(
                              "cached_tokens")),
                          cache_write_tokens=_count(sub("prompt_tokens_details").get(
                              "cache_write_tokens")),
                          reasoning_tokens=_count(sub("completion_tokens_details").get(
                              "reasoning_tokens")))
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    if provider == "anthropic" or read or write:
        return TokenUsage(input_tokens=_count(usage.get("input_tokens")) + read + write,
                          output_tokens=_count(usage.get("output_tokens")),
                          cache_read_tokens=read, cache_write_tokens=write)
    return TokenUsage(input_tokens=_count(usage.get("input_tokens")),
                      output_tokens=_count(usage.get("output_tokens")),
                      cache_read_tokens=_count(sub("input_tokens_details").get("cached_tokens")),
                      reasoning_tokens=_count(sub("output_tokens_details").get(
                          "reasoning_tokens")))


def _add(usage: UsageMetadata | None, chunk: Any) -> UsageMetadata | None:
    found = getattr(chunk, "usage_metadata", None)
    return add_usage(usage, found) if found else usage


def _reached(error: BaseException, response: Any, answered: bool) -> bool:
    """Whether a failed call may have been charged: it was answering (tokens arrived, or a
    partial stream came back) or it was interrupted after the request left."""
    if answered or isinstance(error, INTERRUPTED):
        return True
    return any(isinstance(g, (ChatGenerationChunk, GenerationChunk))
               for gs in getattr(response, "generations", None) or () for g in gs)


def _refused(messages: list[BaseMessage]) -> AIMessage | None:
    """The closing message when the last tool step had a call refused by the budget."""
    for message in reversed(messages):
        if not isinstance(message, ToolMessage):
            return None
        denial = message.response_metadata.get("allotment")
        if denial:
            return AIMessage(content=f"Stopped after a refused tool call: {denial['message']}",
                             response_metadata={"allotment": denial})
    return None


def _tool_failed(result: Any) -> bool:
    return isinstance(result, ToolMessage) and result.status == "error"


def _denial(denied: al.Denied) -> dict[str, Any]:
    decision = denied.decision
    return {"denied": decision.reason, "scope": decision.scope, "message": str(denied)}


def _settle(budget: _Budget, meter: Meter, request: Request, message: Any) -> None:
    if _from_cache(message):
        _quietly(lambda: meter.release("served from LangChain's cache"), meter)
        return
    meter.settle(budget.used(request, getattr(message, "usage_metadata", None),
                               _raw_usage(_response_metadata(message))))


async def _asettle(budget: _Budget, meter: Meter, request: Request, message: Any) -> None:
    if _from_cache(message):
        await _aquietly(meter.arelease("served from LangChain's cache"), meter)
        return
    await meter.asettle(budget.used(request, getattr(message, "usage_metadata", None),
                                      _raw_usage(_response_metadata(message))))


def _failed(meter: Meter, reached: bool) -> None:
    """After an error: charge the estimate when the call may have reached the provider,
    otherwise give the hold back."""
    if reached:
        meter.settle(None)
    else:
        _quietly(lambda: meter.release("provider error"), meter)


async def _afailed(meter: Meter, reached: bool) -> None:
    if reached:
        await meter.asettle(None)
    else:
        await _aquietly(meter.arelease("provider error"), meter)


def _quietly(settle: Callable[[], object], held: Meter | al.Reservation) -> None:
    """Settling happens after the call: a store failure there is logged (the guard's retries
    and sinks have the spend), never raised into the caller's result or error."""
    try:
        settle()
    except al.AllotmentError as error:
        log.error("could not settle %s: %s", _id(held), error)


async def _aquietly(settle: Awaitable[object], held: Meter | al.Reservation) -> None:
    try:
        await settle
    except al.AllotmentError as error:
        log.error("could not settle %s: %s", _id(held), error)


def _id(held: Meter | al.Reservation) -> str:
    return held.reservation.id if isinstance(held, Meter) else held.id
