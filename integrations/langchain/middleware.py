"""`BudgetMiddleware` for `create_agent`: middleware wraps each model and tool call, so unlike a
callback it can cap the call and end the run with an answer instead of an exception."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.utils.function_calling import convert_to_openai_tool

import allotment as al
from allotment.adapter import Pricer

from .._keys import DIMENSION_KEYS
from .._metering import DEFAULT_FLOOR, DEFAULT_MAX_TOKENS, Meter, Request
from ._budget import (
    INTERRUPTED,
    Budget,
    afailed,
    aquietly,
    asettle,
    failed,
    quietly,
    settle,
)
from ._claims import claiming
from .usage import ai_message, model_params, requested_tier, thinking

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

__all__ = ["BudgetMiddleware"]


# Unparameterised: langchain 1.0-1.2 take two type parameters, 1.3 and later three.
class BudgetMiddleware(AgentMiddleware):
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
        self._budget = Budget(guard, tool_prices=tool_prices, pricer=pricer,
                              default_max_tokens=default_max_tokens, floor=floor,
                              ttl_ms=ttl_ms, dimension_keys=dimension_keys, subject=subject)

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """The metadata keys the subject is read from (levels, `dimension_keys`, and a
        "dimensions" dict); a dimension named nowhere here never reaches the subject."""
        return self._budget.metadata_keys

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Reserve, call under the caps, commit the usage; a denial ends the run."""
        refused = _refused(request.messages)
        if refused is not None:
            return refused
        described = self._describe(request)
        try:
            meter = self._budget.metering.start(described)
        except al.Denied as denied:
            return self._stop(denied)
        with claiming("model"):
            try:
                response = handler(self._capped(request, meter, described))
            except BaseException as error:
                failed(meter, isinstance(error, INTERRUPTED))
                raise
        settle(meter, described, ai_message(response))
        return response

    async def awrap_model_call(self, request: Any,
                               handler: Callable[[Any], Awaitable[Any]]) -> Any:
        """`wrap_model_call` without blocking the event loop."""
        refused = _refused(request.messages)
        if refused is not None:
            return refused
        described = self._describe(request)
        try:
            meter = await self._budget.metering.astart(described)
        except al.Denied as denied:
            return self._stop(denied)
        with claiming("model"):
            try:
                response = await handler(self._capped(request, meter, described))
            except BaseException as error:
                await afailed(meter, isinstance(error, INTERRUPTED))
                raise
        await asettle(meter, described, ai_message(response))
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Reserve the tool call at its price and charge it if it ran; a denial answers the
        call with an error."""
        subject, action, price = self._tool(request)
        try:
            held = self._budget.guard.reserve(subject, action, price,
                                              ttl_ms=self._budget.metering.ttl_ms)
        except al.Denied as denied:
            return self._refuse(request, denied)
        with claiming("tool"):
            try:
                result = handler(request)
            except BaseException:
                quietly(lambda: held.release("tool error"), held)
                raise
        if _tool_failed(result):
            quietly(lambda: held.release("tool error"), held)
        else:
            quietly(lambda: held.commit(held.estimate), held)
        return result

    async def awrap_tool_call(self, request: Any,
                              handler: Callable[[Any], Awaitable[Any]]) -> Any:
        """`wrap_tool_call` without blocking the event loop."""
        subject, action, price = self._tool(request)
        try:
            held = await self._budget.guard.areserve(subject, action, price,
                                                     ttl_ms=self._budget.metering.ttl_ms)
        except al.Denied as denied:
            return self._refuse(request, denied)
        with claiming("tool"):
            try:
                result = await handler(request)
            except BaseException:
                await aquietly(held.arelease("tool error"), held)
                raise
        if _tool_failed(result):
            await aquietly(held.arelease("tool error"), held)
        else:
            await aquietly(held.acommit(held.estimate), held)
        return result

    def _subject(self, runtime: Any, config: Any = None) -> al.Subject:
        if config is None:
            config = var_child_runnable_config.get()
        metadata = (config or {}).get("metadata")
        return self._budget.subject_of(metadata, getattr(runtime, "context", None))

    def _describe(self, request: Any) -> Request:
        settings = dict(request.model_settings)
        provider, model, max_tokens = model_params(request.model, settings)
        messages = list(request.messages)
        system = _system_message(request)
        if system is not None:
            messages.insert(0, system)
        tools = [t if isinstance(t, dict) else convert_to_openai_tool(t) for t in request.tools]
        return self._budget.chat(self._subject(request.runtime), provider, model, messages,
                                 max_tokens, tools, thinking(request.model, settings),
                                 requested_tier(request.model, settings))

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


def _system_message(request: Any) -> BaseMessage | None:
    """The request's system message: `system_message` from langchain 1.1, a `system_prompt`
    string before."""
    if hasattr(request, "system_message"):
        message: BaseMessage | None = request.system_message
        return message
    prompt = request.system_prompt
    return None if prompt is None else SystemMessage(prompt)


def _tool_failed(result: Any) -> bool:
    return isinstance(result, ToolMessage) and result.status == "error"


def _denial(denied: al.Denied) -> dict[str, Any]:
    decision = denied.decision
    return {"denied": decision.reason, "scope": decision.scope, "message": str(denied)}
