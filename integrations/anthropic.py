"""Anthropic and AsyncAnthropic, guarded: `wrap_anthropic(Anthropic(), guard, tenant="acme")`.

Covers messages.create (streams included) and messages.stream(...) (which does not go
through create) through the client's one `request()` choke point, retries inside. Anthropic
counts cache reads and writes apart from `input_tokens`; they are added back and priced at
their own rates. Stream usage in `message_delta` is cumulative: it overwrites, never adds.
"""

from __future__ import annotations

from typing import Any

import allotment as al
from allotment.pricing import Pricer, TokenUsage

from ._metering import DEFAULT_FLOOR, DEFAULT_MAX_TOKENS, Metering, OnDeny, Request, allowed_tools
from ._sdk import guarded_copy

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
    provider = "anthropic"

    def describe(self, path: str, body: dict[str, Any], subject: al.Subject,
                 default_max_tokens: int) -> Request | None:
        model = body.get("model")
        if not path.startswith("/v1/messages") or "count_tokens" in path or not isinstance(
                model, str):
            return None
        if not isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = default_max_tokens
        return Request(subject, "llm.completion", self.provider, model, body,
                       body["max_tokens"], hidden_prompt_tokens(body))

    def apply_caps(self, path: str, body: dict[str, Any], caps: al.Caps) -> None:
        if caps.max_tokens is not None:
            body["max_tokens"] = min(body["max_tokens"], caps.max_tokens)
            thinking = body.get("thinking")
            if isinstance(thinking, dict) and thinking.get("budget_tokens", 0) >= caps.max_tokens:
                body.pop("thinking")  # a thinking budget must stay below max_tokens
        if caps.model is not None:
            body["model"] = caps.model
        tools = body.get("tools")
        if isinstance(tools, list) and (caps.tool_allowlist is not None or caps.tool_denylist):
            names = [t.get("name") if isinstance(t, dict) else None for t in tools]
            keep = allowed_tools([n for n in names if n], caps)
            body["tools"] = [t for t, n in zip(tools, names, strict=True) if n is None or n in keep]
            if not body["tools"]:
                del body["tools"]
                body.pop("tool_choice", None)

    def usage(self, response: Any) -> TokenUsage | None:
        usage = getattr(response, "usage", None)
        return None if usage is None else _usage(_fields(usage))

    def stream_usage(self, path: str) -> _StreamUsage:
        return _StreamUsage()


def hidden_prompt_tokens(body: dict[str, Any]) -> int:
    """What Anthropic adds to the prompt the request does not show: tool use and thinking
    system prompts."""
    return (TOOL_PROMPT if body.get("tools") else 0) + (
        THINKING_PROMPT if body.get("thinking") else 0)


class _StreamUsage:
    """message_start carries input and cache counts; each message_delta carries cumulative
    counts (older servers: output only). Later values overwrite earlier ones."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.usage: TokenUsage | None = None

    def see(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.counts.update(_fields(event.message.usage))
        elif kind == "message_delta" and getattr(event, "usage", None) is not None:
            self.counts.update(_fields(event.usage))
        else:
            return
        self.usage = _usage(self.counts)


def _fields(usage: Any) -> dict[str, int]:
    names = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
             "cache_read_input_tokens")
    found = {n: getattr(usage, n, None) for n in names}
    return {n: v for n, v in found.items() if isinstance(v, int)}


def _usage(counts: dict[str, int]) -> TokenUsage:
    cache_write = counts.get("cache_creation_input_tokens", 0)
    cache_read = counts.get("cache_read_input_tokens", 0)
    return TokenUsage.counted(
        input_tokens=counts.get("input_tokens", 0) + cache_write + cache_read,
        output_tokens=counts.get("output_tokens", 0),
        cache_read_tokens=cache_read, cache_write_tokens=cache_write)
