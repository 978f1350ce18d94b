"""What a provider says a call used, read in one place for every adapter: OpenAI's usage (chat
completions, Responses, embeddings, and their streams) and Anthropic's (messages and their
streams, cache reads and writes), from the SDK's objects or the same payload as a dict (as
LangChain and LlamaIndex pass it on), as a `TokenUsage` — with the service tier the call was
served at, which prices it: Anthropic reports it in the usage, OpenAI beside it (the response's
`service_tier`, which the caller passes on).

`TokenUsage` counts cached tokens inside input and reasoning (thinking) tokens inside output.
OpenAI counts that way already; Anthropic counts cache reads and writes apart from
`input_tokens`, so they are added back. A payload holding no token count reads as None, so
the caller charges its estimate rather than nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from allotment.adapter import TokenUsage, tier_of

ANTHROPIC_COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                    "cache_read_input_tokens")
ANTHROPIC_DETAILS = "output_tokens_details"  # thinking_tokens, inside output_tokens
RESPONSES_DONE = frozenset({"response.completed", "response.incomplete", "response.failed"})
"""The Responses stream events whose `response` carries the usage."""

_Field = Callable[[str], Any]


def openai_usage(usage: object, service_tier: object = None) -> TokenUsage | None:
    """OpenAI's usage: chat and embeddings name the counts prompt/completion, Responses
    input/output; cache reads and writes sit in the input details, reasoning in the output's.
    `service_tier` is the response's own (its usage does not say)."""
    field = _reader(usage)
    prompt = _reported(field("prompt_tokens"))
    if prompt is None:
        prompt = _reported(field("input_tokens"))
    output = _reported(field("completion_tokens"))
    if output is None:
        output = _reported(field("output_tokens"))
    if prompt is None and output is None:
        return None
    inputs = _reader(field("prompt_tokens_details") or field("input_tokens_details"))
    outputs = _reader(field("completion_tokens_details") or field("output_tokens_details"))
    return TokenUsage.counted(
        input_tokens=prompt or 0, output_tokens=output or 0,
        cache_read_tokens=count(inputs("cached_tokens")),
        cache_write_tokens=count(inputs("cache_write_tokens")),
        reasoning_tokens=count(outputs("reasoning_tokens")),
        service_tier=tier_of(field("service_tier")) or tier_of(service_tier))


def anthropic_usage(usage: object, service_tier: object = None) -> TokenUsage | None:
    """Anthropic's usage: cache reads and writes are counted apart from `input_tokens` and
    priced at their own rates; thinking is inside `output_tokens` (its share in the output
    details); its own `service_tier` says how it was served (else the one given)."""
    field = _reader(usage)
    prompt, output = _reported(field("input_tokens")), _reported(field("output_tokens"))
    if prompt is None and output is None:
        return None
    read = count(field("cache_read_input_tokens"))
    write = count(field("cache_creation_input_tokens"))
    return TokenUsage.counted(
        input_tokens=(prompt or 0) + read + write, output_tokens=output or 0,
        cache_read_tokens=read, cache_write_tokens=write,
        reasoning_tokens=count(_reader(field(ANTHROPIC_DETAILS))("thinking_tokens")),
        service_tier=tier_of(field("service_tier")) or tier_of(service_tier))


def provider_usage(usage: object, service_tier: object = None) -> TokenUsage | None:
    """Either provider's usage, for adapters that are not told which one answered. Anthropic's
    is the one with cache counts and no chat counts (OpenAI-compatible proxies add Anthropic's
    cache names to chat usage); without cache counts the two read alike. A tier in the usage
    wins over `service_tier`, the response's."""
    field = _reader(usage)
    if (_reported(field("prompt_tokens")) is None
            and _reported(field("completion_tokens")) is None
            and (count(field("cache_read_input_tokens"))
                 or count(field("cache_creation_input_tokens")))):
        return anthropic_usage(usage, service_tier)
    return openai_usage(usage, service_tier)


class OpenAIStreamUsage:
    """Chat streams end in a choice-less chunk carrying usage; Responses streams in a
    terminal event whose response carries it. Either says the tier it was served at beside
    the usage."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: TokenUsage | None = None

    def see(self, event: Any) -> None:
        """Keep the usage an event reports, if it reports any."""
        if getattr(event, "type", None) in RESPONSES_DONE:
            event = event.response
        usage = getattr(event, "usage", None)
        if usage is not None:
            self.usage = openai_usage(usage, getattr(event, "service_tier", None)) or self.usage


class AnthropicStreamUsage:
    """message_start carries input and cache counts; each message_delta carries cumulative
    counts (older servers: output only). Later values overwrite earlier ones, never add."""

    __slots__ = ("_counts", "usage")

    def __init__(self) -> None:
        self._counts: dict[str, Any] = {}
        self.usage: TokenUsage | None = None

    def see(self, event: Any) -> None:
        """Merge the counts an event reports, if it reports any."""
        kind = getattr(event, "type", None)
        if kind == "message_start":
            usage = event.message.usage
        elif kind == "message_delta":
            usage = getattr(event, "usage", None)
        else:
            return
        if usage is None:
            return
        field = _reader(usage)
        for name in ANTHROPIC_COUNTS:
            value = _reported(field(name))
            if value is not None:
                self._counts[name] = value
        details = field(ANTHROPIC_DETAILS)
        if details is not None:
            self._counts[ANTHROPIC_DETAILS] = details
        tier = tier_of(field("service_tier"))
        if tier is not None:
            self._counts["service_tier"] = tier
        self.usage = anthropic_usage(self._counts)


def count(value: object) -> int:
    """A token count as reported, or 0 for anything that is not one (missing, None, a
    negative number, a bool)."""
    return _reported(value) or 0


def _reported(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _reader(payload: object) -> _Field:
    """Fields of an SDK object or of its dict alike (None reads as empty)."""
    if payload is None:
        return _nothing
    if isinstance(payload, Mapping):
        return payload.get
    return lambda name: getattr(payload, name, None)


def _nothing(name: str) -> None:
    return None
