"""OpenAI and AsyncOpenAI, guarded: `wrap_openai(OpenAI(), guard, tenant="acme")`.

Covers chat.completions.create (streams included: `stream_options.include_usage` is added)
and .parse, responses.create / .parse / .stream, embeddings.create, and with_raw_response —
all through the client's one `request()` choke point. A call is held at its `service_tier`'s
price (none named, or `auto`: the highest the project could serve it at) and charged at the
tier the response says served it. Per-call subject fields ride as
`extra_headers={"x-allotment-run": "r1"}` and are taken off before the request is sent.
"""

from __future__ import annotations

from typing import Any

import allotment as al
from allotment.adapter import Pricer, TokenUsage, tier_of

from ._metering import DEFAULT_FLOOR, DEFAULT_MAX_TOKENS, Metering, OnDeny, Request, cap_tools
from ._sdk import guarded_copy
from ._usage import OpenAIStreamUsage, openai_usage

__all__ = ["OpenAIShape", "wrap_openai"]

CHAT, RESPONSES, EMBEDDINGS = "/chat/completions", "/responses", "/embeddings"


def wrap_openai(client: Any, guard: al.Guard, *, pricer: Pricer | None = None,
                on_deny: OnDeny | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                floor: int = DEFAULT_FLOOR, ttl_ms: int | None = None,
                **subject: Any) -> Any:
    """A guarded copy of an `openai.OpenAI` or `openai.AsyncOpenAI` client.

    `subject` holds Subject fields (tenant=, workflow=, ...; other keywords are dimensions).
    A call without max tokens gets `default_max_tokens`, so the estimate is a real bound; a
    reservation may shrink it to what the budget holds (down to `floor`). A denial raises
    `al.Denied` before any request is sent — or returns what `on_deny(denied)` returns.
    """
    metering = Metering(guard, pricer=pricer, on_deny=on_deny,
                        default_max_tokens=default_max_tokens, floor=floor, ttl_ms=ttl_ms)
    return guarded_copy(client, metering, subject, OpenAIShape())


class OpenAIShape:
    """What OpenAI's requests and responses look like, so the shared guarded client can meter
    and cap them."""

    provider = "openai"

    def describe(self, path: str, body: dict[str, Any], subject: al.Subject,
                 default_max_tokens: int) -> Request | None:
        """The call to meter; sets a missing output bound and asks chat streams for usage."""
        model = body.get("model")
        if not isinstance(model, str):
            return None
        if path == EMBEDDINGS:
            return Request(subject, "llm.embedding", self.provider, model,
                           {"input": body.get("input")}, None)
        if path not in (CHAT, RESPONSES):
            return None
        field = _max_field(path, body)
        if not isinstance(body.get(field), int):
            body[field] = default_max_tokens
        if path == CHAT and body.get("stream"):
            options = body.get("stream_options") or {}
            body["stream_options"] = {**options, "include_usage": True}
        return Request(subject, "llm.completion", self.provider, model, body, body[field],
                       service_tier=tier_of(body.get("service_tier")))

    def apply_caps(self, path: str, body: dict[str, Any], caps: al.Caps) -> None:
        """Send the call as the caps allow: fewer output tokens, another model, fewer tools."""
        if path == EMBEDDINGS:
            return
        if caps.max_tokens is not None:
            field = _max_field(path, body)
            body[field] = min(body.get(field) or caps.max_tokens, caps.max_tokens)
        if caps.model is not None:
            body["model"] = caps.model
        cap_tools(body, caps)

    def usage(self, response: Any) -> TokenUsage | None:
        """What a whole (not streamed) response says it used, and the tier that served it."""
        return openai_usage(getattr(response, "usage", None),
                            getattr(response, "service_tier", None))

    def stream_usage(self, path: str) -> OpenAIStreamUsage:
        """What gathers a stream's usage from its events as they pass."""
        return OpenAIStreamUsage()


def _max_field(path: str, body: dict[str, Any]) -> str:
    if path == RESPONSES:
        return "max_output_tokens"
    return "max_tokens" if "max_tokens" in body else "max_completion_tokens"
