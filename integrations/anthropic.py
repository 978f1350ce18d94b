"""Anthropic and AsyncAnthropic, guarded: `wrap_anthropic(Anthropic(), guard, tenant="acme")`.

Covers messages.create (streams included) and messages.stream(...) (which does not go
through create) through the client's one `request()` choke point, retries inside. Anthropic
counts cache reads and writes apart from `input_tokens`; they are added back and priced at
their own rates. Stream usage in `message_delta` is cumulative: it overwrites, never adds.
The usage's `service_tier` (standard, priority, batch) prices the call.
"""

from __future__ import annotations

from typing import Any

import allotment as al
from allotment.adapter import Pricer, TokenUsage, tier_of

from ._metering import DEFAULT_FLOOR, DEFAULT_MAX_TOKENS, Metering, OnDeny, Request, cap_tools
from ._sdk import guarded_copy
from ._usage import AnthropicStreamUsage, anthropic_usage

__all__ = ["AnthropicShape", "wrap_anthropic"]

TOOL_PROMPT = 600  # the tool-use system prompt Anthropic adds when tools are offered
THINKING_PROMPT = 50


def wrap_anthropic(client: Any, guard: al.Guard, *, pricer: Pricer | None = None,
                   on_deny: OnDeny | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                   floor: int = DEFAULT_FLOOR, ttl_ms: int | None = None,
                   **subject: Any) -> Any:
    """A guarded copy of an `anthropic.Anthropic` or `anthropic.AsyncAnthropic` client; the
    options mean what they mean for `wrap_openai`."""
    metering = Metering(guard, pricer=pricer, on_deny=on_deny,
                        default_max_tokens=default_max_tokens, floor=floor, ttl_ms=ttl_ms)
    return guarded_copy(client, metering, subject, AnthropicShape())


class AnthropicShape:
    """What Anthropic's requests and responses look like, so the shared guarded client can
    meter and cap them."""

    provider = "anthropic"

    def describe(self, path: str, body: dict[str, Any], subject: al.Subject,
                 default_max_tokens: int) -> Request | None:
        """The Messages call to meter (token counting is free); sets a missing max_tokens and
        counts the system prompts Anthropic adds."""
        model = body.get("model")
        if not path.startswith("/v1/messages") or "count_tokens" in path or not isinstance(
                model, str):
            return None
        if not isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = default_max_tokens
        return Request(subject, "llm.completion", self.provider, model, body,
                       body["max_tokens"], hidden_prompt_tokens(body),
                       tier_of(body.get("service_tier")))

    def apply_caps(self, path: str, body: dict[str, Any], caps: al.Caps) -> None:
        """Send the call as the caps allow: fewer output tokens (dropping a thinking budget
        that no longer fits), another model, fewer tools."""
        if caps.max_tokens is not None:
            body["max_tokens"] = min(body["max_tokens"], caps.max_tokens)
            thinking = body.get("thinking")
            if isinstance(thinking, dict) and thinking.get("budget_tokens", 0) >= caps.max_tokens:
                body.pop("thinking")  # a thinking budget must stay below max_tokens
        if caps.model is not None:
            body["model"] = caps.model
        cap_tools(body, caps)

    def usage(self, response: Any) -> TokenUsage | None:
        """What a whole (not streamed) response says it used."""
        return anthropic_usage(getattr(response, "usage", None))

    def stream_usage(self, path: str) -> AnthropicStreamUsage:
        """What gathers a stream's usage from its events as they pass."""
        return AnthropicStreamUsage()


def hidden_prompt_tokens(body: dict[str, Any]) -> int:
    """What Anthropic adds to the prompt the request does not show: tool use and thinking
    system prompts."""
    return (TOOL_PROMPT if body.get("tools") else 0) + (
        THINKING_PROMPT if body.get("thinking") else 0)
