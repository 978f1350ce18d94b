"""The one reader of provider usage: the SDKs' usage objects and the same payloads as dicts
(as LangChain and LlamaIndex pass them on) read alike, in the convention prices use."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from anthropic.types import MessageDeltaUsage
from anthropic.types import Usage as AnthropicUsage
from openai.types import CompletionUsage
from openai.types.create_embedding_response import Usage as EmbeddingUsage
from openai.types.responses import ResponseUsage

from allotment.adapter import TokenUsage
from allotment.integrations._usage import (
    AnthropicStreamUsage,
    OpenAIStreamUsage,
    anthropic_usage,
    openai_usage,
    provider_usage,
)

CHAT = CompletionUsage.model_validate({
    "prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160,
    "prompt_tokens_details": {"cached_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 30}})
RESPONSES = ResponseUsage.model_validate({
    "input_tokens": 50, "output_tokens": 20, "total_tokens": 70,
    "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 4},
    "output_tokens_details": {"reasoning_tokens": 5}})
EMBEDDINGS = EmbeddingUsage(prompt_tokens=8, total_tokens=8)
ANTHROPIC = AnthropicUsage.model_validate({
    "input_tokens": 14, "output_tokens": 300, "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 1_000, "output_tokens_details": {"thinking_tokens": 250}})


@pytest.mark.parametrize("usage, expected", [
    (CHAT, TokenUsage(input_tokens=120, output_tokens=40, cache_read_tokens=100,
                      reasoning_tokens=30)),
    (RESPONSES, TokenUsage(input_tokens=50, output_tokens=20, cache_read_tokens=10,
                           cache_write_tokens=4, reasoning_tokens=5)),
    (EMBEDDINGS, TokenUsage(input_tokens=8)),
])
def test_openai_usage_objects_and_their_dicts(usage: Any, expected: TokenUsage) -> None:
    assert openai_usage(usage) == openai_usage(usage.model_dump()) == expected
    assert provider_usage(usage) == provider_usage(usage.model_dump()) == expected


def test_anthropic_cache_tokens_are_added_back_and_thinking_kept() -> None:
    expected = TokenUsage(input_tokens=1_114, output_tokens=300, cache_read_tokens=100,
                          cache_write_tokens=1_000, reasoning_tokens=250)
    assert anthropic_usage(ANTHROPIC) == anthropic_usage(ANTHROPIC.model_dump()) == expected
    assert provider_usage(ANTHROPIC) == provider_usage(ANTHROPIC.model_dump()) == expected


def test_chat_counts_win_over_cache_names_a_proxy_adds() -> None:
    """OpenAI-compatible proxies add Anthropic's cache names to chat usage, whose
    prompt_tokens already include the cached tokens."""
    proxied = {"prompt_tokens": 120, "completion_tokens": 40, "cache_read_input_tokens": 100,
               "prompt_tokens_details": {"cached_tokens": 100}}
    assert provider_usage(proxied) == TokenUsage(input_tokens=120, output_tokens=40,
                                                 cache_read_tokens=100)


@pytest.mark.parametrize("usage", [None, {}, {"total_tokens": 9}, SimpleNamespace(),
                                   {"input_tokens": -1, "output_tokens": True}])
def test_a_payload_without_a_token_count_reads_as_none(usage: Any) -> None:
    """The caller then charges its estimate, never nothing."""
    assert openai_usage(usage) is None
    assert anthropic_usage(usage) is None
    assert provider_usage(usage) is None


def test_anthropic_stream_counts_overwrite_never_add() -> None:
    seen = AnthropicStreamUsage()
    start = AnthropicUsage(input_tokens=14, output_tokens=1, cache_read_input_tokens=100)
    seen.see(SimpleNamespace(type="message_start", message=SimpleNamespace(usage=start)))
    for output in (10, 300):  # cumulative, as the API sends them
        seen.see(SimpleNamespace(type="message_delta", usage=MessageDeltaUsage.model_validate(
            {"output_tokens": output, "output_tokens_details": {"thinking_tokens": 250}})))
    seen.see(SimpleNamespace(type="message_stop"))
    assert seen.usage == TokenUsage(input_tokens=114, output_tokens=300, cache_read_tokens=100,
                                    reasoning_tokens=250)


def test_the_served_tier_is_read_beside_or_inside_the_usage() -> None:
    """OpenAI says it beside the usage (the response's `service_tier`), Anthropic inside."""
    assert openai_usage(CHAT, "flex") == openai_usage(CHAT.model_dump(), "flex") == TokenUsage(
        input_tokens=120, output_tokens=40, cache_read_tokens=100, reasoning_tokens=30,
        service_tier="flex")
    inside = anthropic_usage({**ANTHROPIC.model_dump(), "service_tier": "batch"})
    assert inside is not None and inside.service_tier == "batch"
    assert provider_usage({**ANTHROPIC.model_dump(), "service_tier": "batch"},
                          "priority") == inside  # the usage's own tier wins
    beside = provider_usage(RESPONSES.model_dump(), "priority")
    assert beside is not None and beside.service_tier == "priority"


@pytest.mark.parametrize("tier", ["", "x" * 10_000, 7, ["flex"], {"flex": 1}])
def test_a_broken_tier_reads_as_none_never_fails_the_commit(tier: Any) -> None:
    assert openai_usage(CHAT, tier) == openai_usage(CHAT)
    assert anthropic_usage({"input_tokens": 1, "service_tier": tier}) == TokenUsage(
        input_tokens=1)


def test_streams_keep_the_tier_they_were_served_at() -> None:
    seen = OpenAIStreamUsage()
    chat = SimpleNamespace(service_tier="priority", usage=None)
    seen.see(chat)
    seen.see(SimpleNamespace(service_tier="priority", usage=CHAT))
    assert seen.usage is not None and seen.usage.service_tier == "priority"
    responses = OpenAIStreamUsage()
    for kind, tier, usage in (("response.created", "auto", None),
                              ("response.completed", "flex", RESPONSES)):
        responses.see(SimpleNamespace(type=kind, response=SimpleNamespace(
            service_tier=tier, usage=usage)))
    assert responses.usage is not None and responses.usage.service_tier == "flex"
    anthropic = AnthropicStreamUsage()
    start = AnthropicUsage(input_tokens=14, output_tokens=1, service_tier="priority")
    anthropic.see(SimpleNamespace(type="message_start", message=SimpleNamespace(usage=start)))
    anthropic.see(SimpleNamespace(type="message_delta", usage=MessageDeltaUsage(
        output_tokens=30)))
    assert anthropic.usage == TokenUsage(input_tokens=14, output_tokens=30,
                                         service_tier="priority")
