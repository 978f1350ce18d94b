"""The callback handlers: a start hook that raises stops the call before any HTTP request, so
they refuse what the budget cannot cover and charge what was used; they cannot change a call,
so caps are left to `capped()` and the middleware."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

import allotment as al
from allotment.adapter import Pricer, tier_of

from .._keys import DIMENSION_KEYS
from .._metering import DEFAULT_FLOOR, DEFAULT_MAX_TOKENS, Meter, Request
from ._budget import INTERRUPTED, Budget, aquietly, quietly
from ._claims import claimed
from .usage import first_message, from_cache, max_tokens, positive, provider_name, result_usage

__all__ = ["AsyncBudgetCallbackHandler", "BudgetCallbackHandler"]


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
        self._budget = Budget(guard, tool_prices=tool_prices, pricer=pricer,
                              default_max_tokens=default_max_tokens, floor=floor,
                              ttl_ms=ttl_ms, dimension_keys=dimension_keys, subject=subject)
        self._calls: dict[UUID, _Call] = {}
        self._tools: dict[UUID, al.Reservation] = {}

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """The metadata keys the subject is read from (levels, `dimension_keys`, and a
        "dimensions" dict); a dimension named nowhere here never reaches the subject."""
        return self._budget.metadata_keys

    @property
    def ignore_chain(self) -> bool:
        """Chains are not metered: only the model and tool calls inside them."""
        return True

    @property
    def ignore_retriever(self) -> bool:
        """Retrievers are not metered (their embedding calls are the provider's)."""
        return True

    @property
    def ignore_custom_event(self) -> bool:
        """Custom events carry nothing to meter."""
        return True

    def _model_request(self, serialized: dict[str, Any] | None,
                       messages: list[BaseMessage] | list[str],
                       metadata: dict[str, Any] | None, kwargs: dict[str, Any]
                       ) -> Request | None:
        if claimed("model", metadata):
            return None
        params = kwargs.get("invocation_params") or {}
        meta = metadata or {}
        class_name = ((serialized or {}).get("id") or [""])[-1]
        provider = provider_name(meta.get("ls_provider"), str(class_name))
        model = (params.get("model") or params.get("model_name") or meta.get("ls_model_name")
                 or "unknown")
        bound = max_tokens(params) or positive(meta.get("ls_max_tokens"))
        return self._budget.chat(self._budget.subject_of(metadata), provider, str(model),
                                 messages, bound, params.get("tools"), params.get("thinking"),
                                 tier_of(params.get("service_tier")))

    def _tool_request(self, serialized: dict[str, Any] | None, metadata: dict[str, Any] | None,
                      kwargs: dict[str, Any]) -> tuple[al.Subject, al.Action, al.Amount] | None:
        if claimed("tool", metadata):
            return None
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        return (self._budget.subject_of(metadata), *self._budget.tool(str(name)))

    def _answered(self, run_id: UUID) -> None:
        call = self._calls.get(run_id)
        if call is not None:
            call.answered = True


class BudgetCallbackHandler(_Handling, BaseCallbackHandler):
    """Refuses a model or tool call its tenant's budget cannot cover, before it is sent, and
    charges what it used. `BudgetCallbackHandler(guard, tenant="acme")`, or no tenant here
    and `config={"metadata": {"tenant": ...}}` per run."""

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]],
                            *, run_id: UUID, parent_run_id: UUID | None = None,
                            tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        """Reserve for the chat call, or raise `al.Denied` so that nothing is sent."""
        request = self._model_request(serialized, [m for ms in messages for m in ms], metadata,
                                      kwargs)
        if request is not None:
            self._calls[run_id] = _Call(self._budget.hold(request), request)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Reserve for the completion call, or raise `al.Denied` so that nothing is sent."""
        request = self._model_request(serialized, prompts, metadata, kwargs)
        if request is not None:
            self._calls[run_id] = _Call(self._budget.hold(request), request)

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID,
                         parent_run_id: UUID | None = None, tags: list[str] | None = None,
                         **kwargs: Any) -> None:
        """Note that the provider is answering: a call failing from here on is charged."""
        self._answered(run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None,
                   tags: list[str] | None = None, **kwargs: Any) -> None:
        """Commit the usage reported (or the estimate); release a cache hit."""
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        if from_cache(first_message(response)):
            quietly(lambda: call.meter.release("served from LangChain's cache"), call.meter)
        else:
            call.meter.settle(result_usage(call.request, response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID,
                     parent_run_id: UUID | None = None, tags: list[str] | None = None,
                     **kwargs: Any) -> None:
        """Charge a call that may have reached the provider; release one that did not."""
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        response = kwargs.get("response")
        if _reached(error, response, call.answered):
            call.meter.settle(result_usage(call.request, response))
        else:
            quietly(lambda: call.meter.release("provider error"), call.meter)

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, tags: list[str] | None = None,
                      metadata: dict[str, Any] | None = None,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Reserve the tool call at its price, or raise `al.Denied` so that it does not run."""
        held = self._tool_request(serialized, metadata, kwargs)
        if held is not None:
            self._tools[run_id] = self._budget.guard.reserve(
                *held, ttl_ms=self._budget.metering.ttl_ms)

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                    **kwargs: Any) -> None:
        """Charge the tool call's price."""
        held = self._tools.pop(run_id, None)
        if held is not None:
            quietly(lambda: held.commit(held.estimate), held)

    def on_tool_error(self, error: BaseException, *, run_id: UUID,
                      parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """A failed tool call costs nothing: its hold is released."""
        held = self._tools.pop(run_id, None)
        if held is not None:
            quietly(lambda: held.release("tool error"), held)


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
        """Reserve for the chat call, or raise `al.Denied` so that nothing is sent."""
        request = self._model_request(serialized, [m for ms in messages for m in ms], metadata,
                                      kwargs)
        if request is not None:
            self._calls[run_id] = _Call(await self._budget.ahold(request), request)

    async def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *,
                           run_id: UUID, parent_run_id: UUID | None = None,
                           tags: list[str] | None = None,
                           metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Reserve for the completion call, or raise `al.Denied` so that nothing is sent."""
        request = self._model_request(serialized, prompts, metadata, kwargs)
        if request is not None:
            self._calls[run_id] = _Call(await self._budget.ahold(request), request)

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID,
                               parent_run_id: UUID | None = None,
                               tags: list[str] | None = None, **kwargs: Any) -> None:
        """Note that the provider is answering: a call failing from here on is charged."""
        self._answered(run_id)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID,
                         parent_run_id: UUID | None = None, tags: list[str] | None = None,
                         **kwargs: Any) -> None:
        """Commit the usage reported (or the estimate); release a cache hit."""
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        if from_cache(first_message(response)):
            await aquietly(call.meter.arelease("served from LangChain's cache"), call.meter)
        else:
            await call.meter.asettle(result_usage(call.request, response))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID,
                           parent_run_id: UUID | None = None, tags: list[str] | None = None,
                           **kwargs: Any) -> None:
        """Charge a call that may have reached the provider; release one that did not."""
        call = self._calls.pop(run_id, None)
        if call is None:
            return
        response = kwargs.get("response")
        if _reached(error, response, call.answered):
            await call.meter.asettle(result_usage(call.request, response))
        else:
            await aquietly(call.meter.arelease("provider error"), call.meter)

    async def on_tool_start(self, serialized: dict[str, Any], input_str: str, *,
                            run_id: UUID, parent_run_id: UUID | None = None,
                            tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None,
                            inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Reserve the tool call at its price, or raise `al.Denied` so that it does not run."""
        held = self._tool_request(serialized, metadata, kwargs)
        if held is not None:
            self._tools[run_id] = await self._budget.guard.areserve(
                *held, ttl_ms=self._budget.metering.ttl_ms)

    async def on_tool_end(self, output: Any, *, run_id: UUID,
                          parent_run_id: UUID | None = None, tags: list[str] | None = None,
                          **kwargs: Any) -> None:
        """Charge the tool call's price."""
        held = self._tools.pop(run_id, None)
        if held is not None:
            await aquietly(held.acommit(held.estimate), held)

    async def on_tool_error(self, error: BaseException, *, run_id: UUID,
                            parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            **kwargs: Any) -> None:
        """A failed tool call costs nothing: its hold is released."""
        held = self._tools.pop(run_id, None)
        if held is not None:
            await aquietly(held.arelease("tool error"), held)


def _reached(error: BaseException, response: Any, answered: bool) -> bool:
    """Whether a failed call may have been charged: it was answering (tokens arrived, or a
    partial stream came back) or it was interrupted after the request left."""
    if answered or isinstance(error, INTERRUPTED):
        return True
    return any(isinstance(g, (ChatGenerationChunk, GenerationChunk))
               for gs in getattr(response, "generations", None) or () for g in gs)
