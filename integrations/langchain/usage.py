"""LangChain's shapes read into what the meter takes: a chat model's provider, model and
output bound, messages as the estimator counts them, and the usage a call reports.

LangChain normalises usage into `usage_metadata` (input includes cached tokens, output
includes reasoning), read here; integrations that report only the provider's own usage
(`token_usage` or `usage` in `llm_output` or `response_metadata`) are read by the shared
provider code. The tier a call was served at is the response's `service_tier` (in
`response_metadata` or `llm_output`), else the usage's own (Anthropic's), else what
langchain-openai marks in `usage_metadata` (a `flex` or `priority` input detail).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata, add_usage

from allotment.adapter import TokenUsage, input_tokens, tier_of

from .._metering import Request
from .._usage import count, provider_usage

MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MARKED_TIERS = ("flex", "priority")
"""The tiers langchain-openai marks in `usage_metadata` by an input detail of that name."""
PROVIDERS = {"google_genai": "google", "google_vertexai": "google", "amazon_bedrock": "aws",
             "bedrock": "aws", "bedrock_converse": "aws", "mistralai": "mistral",
             "xai": "x-ai", "azure_openai": "azure"}
"""LangSmith's `ls_provider` names where genai-prices spells them otherwise."""

# -- the model and its settings ------------------------------------------------------------


def provider_name(ls_provider: Any, class_name: str) -> str:
    """genai-prices' name for the provider: LangSmith's, or the class name's (ChatOpenAI)."""
    if isinstance(ls_provider, str) and ls_provider:
        return PROVIDERS.get(ls_provider, ls_provider)
    name = class_name.removeprefix("Chat").lower()
    return PROVIDERS.get(name, name or "unknown")


def positive(value: Any) -> int | None:
    """A positive whole number, or None: what counts as a given output bound."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def max_tokens(params: Mapping[str, Any]) -> int | None:
    """The output bound in a call's parameters, whichever name the integration uses."""
    for key in MAX_TOKEN_KEYS:
        value = positive(params.get(key))
        if value is not None:
            return value
    return None


def model_params(chat: Any, settings: Mapping[str, Any]) -> tuple[str, str, int | None]:
    """Provider, model and max_tokens of a chat model called with `settings`, as LangSmith
    would trace them."""
    try:
        ls: Mapping[str, Any] = chat._get_ls_params(**settings)
    except Exception:  # a model without LangSmith parameters: read the fields
        ls = {}
    model = (settings.get("model") or settings.get("model_name") or ls.get("ls_model_name")
             or getattr(chat, "model_name", None) or getattr(chat, "model", None) or "unknown")
    return (provider_name(ls.get("ls_provider"), type(chat).__name__), str(model),
            max_tokens(settings) or _own_max_tokens(chat))


def _own_max_tokens(chat: Any) -> int | None:
    """The model's own max_tokens, unless it is just the model's maximum output (ChatAnthropic
    fills that in from its profile): holding 128k tokens per call pins a budget for nothing,
    so that counts as none given, and the default bound applies."""
    own = positive(getattr(chat, "max_tokens", None))
    profile = getattr(chat, "profile", None)
    if own is not None and isinstance(profile, Mapping) and own == profile.get(
            "max_output_tokens"):
        return None
    return own


def requested_tier(chat: Any, settings: Mapping[str, Any]) -> str | None:
    """The service tier a call asks for (ChatOpenAI's `service_tier`), None when it names
    none."""
    return tier_of(settings.get("service_tier") or getattr(chat, "service_tier", None))


def thinking(chat: Any, settings: Mapping[str, Any]) -> Any:
    """The call's thinking settings: Anthropic then adds a system prompt of its own."""
    return settings.get("thinking") or getattr(chat, "thinking", None)


# -- messages --------------------------------------------------------------------------------


def as_messages(value: Any) -> list[BaseMessage]:
    """A chat model's input (a string, messages, or what converts to them) as messages."""
    if isinstance(value, str):
        return [HumanMessage(value)]
    return convert_to_messages(value)


def estimator_messages(messages: list[BaseMessage] | list[str]) -> Any:
    """Messages as the estimator reads them (their text, roles and tool calls)."""
    if messages and isinstance(messages[0], str):
        return [{"role": "user", "content": text} for text in messages]
    try:
        return convert_to_openai_messages(messages)
    except Exception:  # an unusual content block: its raw content still bounds the count
        return [getattr(m, "content", m) for m in messages]


def first_message(result: Any) -> Any:
    """The message of an LLMResult's first generation (None for a plain LLM's text)."""
    for generations in getattr(result, "generations", None) or ():
        for generation in generations:
            return getattr(generation, "message", None)
    return None


def ai_message(response: Any) -> Any:
    """The AIMessage of a middleware handler's answer (ModelResponse, AIMessage, or an
    ExtendedModelResponse)."""
    response = getattr(response, "model_response", response)
    messages = getattr(response, "result", [response])
    return next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)


# -- usage -----------------------------------------------------------------------------------


def from_cache(message: Any) -> bool:
    """LangChain's own cache answered: no provider call, nothing to charge."""
    usage = getattr(message, "usage_metadata", None)
    return isinstance(usage, Mapping) and usage.get("total_cost") == 0


def message_usage(request: Request, message: Any) -> TokenUsage | None:
    """What an AIMessage says its call used."""
    metadata = _response_metadata(message)
    return reported(request, getattr(message, "usage_metadata", None), _raw_usage(metadata),
                    metadata.get("service_tier"))


def result_usage(request: Request, result: Any) -> TokenUsage | None:
    """What an LLMResult says its call used (the provider's usage may sit in `llm_output`)."""
    message = first_message(result)
    raw = getattr(result, "llm_output", None) or {}
    metadata = _response_metadata(message)
    return reported(request, getattr(message, "usage_metadata", None),
                    _raw_usage(raw) or _raw_usage(metadata),
                    raw.get("service_tier") or metadata.get("service_tier"))


def add_chunk(usage: UsageMetadata | None, chunk: Any) -> UsageMetadata | None:
    """A stream's usage so far, with a chunk's added (LangChain splits it over chunks)."""
    found = getattr(chunk, "usage_metadata", None)
    return add_usage(usage, found) if found else usage


def reported(request: Request, usage: Mapping[str, Any] | None,
             raw: Mapping[str, Any] | None, service_tier: Any = None) -> TokenUsage | None:
    """LangChain's usage_metadata, else the provider's raw usage, served at `service_tier`
    (the response's). Where a report leaves input at 0 (older Anthropic streams), the input
    estimate stands in."""
    found = (_from_metadata(usage, service_tier, raw) if usage
             else provider_usage(raw, service_tier) if raw else None)
    if found is not None and found.input_tokens == 0:
        found = TokenUsage(**{**found.model_dump(),
                              "input_tokens": input_tokens(request.payload, request.overhead)})
    return found


def _from_metadata(usage: Mapping[str, Any], service_tier: Any,
                   raw: Mapping[str, Any] | None) -> TokenUsage:
    inputs, outputs = usage.get("input_token_details"), usage.get("output_token_details")
    tier = (tier_of(service_tier) or tier_of((raw or {}).get("service_tier"))
            or _marked_tier(inputs))
    return TokenUsage(input_tokens=count(usage.get("input_tokens")),
                      output_tokens=count(usage.get("output_tokens")),
                      cache_read_tokens=_detail(inputs, "cache_read"),
                      cache_write_tokens=_detail(inputs, "cache_creation"),
                      reasoning_tokens=_detail(outputs, "reasoning"), service_tier=tier)


def _marked_tier(details: Any) -> str | None:
    if not isinstance(details, Mapping):
        return None
    return next((tier for tier in MARKED_TIERS if tier in details), None)


def _detail(details: Any, name: str) -> int:
    """A usage detail; service tiers prefix the keys (`flex_cache_read`)."""
    if not isinstance(details, Mapping):
        return 0
    return sum(count(v) for k, v in details.items() if k == name or k.endswith("_" + name))


def _response_metadata(message: Any) -> Mapping[str, Any]:
    metadata = getattr(message, "response_metadata", None)
    return metadata if isinstance(metadata, Mapping) else {}


def _raw_usage(source: Mapping[str, Any]) -> Mapping[str, Any] | None:
    usage = source.get("token_usage") or source.get("usage")
    return usage if isinstance(usage, Mapping) else None
