"""Input token estimates that work offline and err on the high side.

No tokenizer download is possible everywhere this runs, so input is bounded from the text
itself, splitting it the way BPE pre-tokenisers do: an ordinary word costs one token plus one
per five letters, a run that is not a word (ids, base64, mixed case and digits) one token per
character, since such text compresses badly, and each mark of punctuation or non-Latin
character one. Measured against real provider counts (see BENCHMARKS.md) this over-counts
ordinary prompts and stays above random-looking text. Images count a fixed allowance each;
providers add their own hidden prompts (`overhead`).
"""

from __future__ import annotations

import re
from typing import Any

WORDS = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
REGULAR = re.compile(r"[A-Z]?[a-z]+|[A-Z]{1,4}|[0-9]{1,3}")
PER_MESSAGE = 4
PER_REQUEST = 8
PER_IMAGE = 1_600
PER_TOOL = 20  # the provider's formatting of each tool definition
SKIPPED_KEYS = frozenset({"model", "stream", "stream_options", "max_tokens",
                          "max_completion_tokens", "max_output_tokens", "temperature", "top_p",
                          "n", "seed", "store", "metadata", "user", "service_tier",
                          "parallel_tool_calls", "tool_choice", "type", "role", "id",
                          "cache_control", "signature", "encoding_format", "dimensions"})
IMAGE_KEYS = frozenset({"image_url", "image", "source", "input_image", "file", "input_audio"})


def input_tokens(payload: Any, overhead: int = 0) -> int:
    """An upper bound on the input tokens of a request body (messages, system, tools...)."""
    tokens, messages, images = _walk(payload)
    tools = payload.get("tools") if isinstance(payload, dict) else None
    tool_count = len(tools) if isinstance(tools, list) else 0
    return (tokens + messages * PER_MESSAGE + images * PER_IMAGE + tool_count * PER_TOOL
            + PER_REQUEST + overhead)


def text_tokens(text: str) -> int:
    """Counted once per distinct text: a conversation resends its earlier messages (and its
    system prompt) on every turn, and counting is the costly part of an estimate."""
    known = _counted.get(text)
    if known is None:
        known = _count(text)
        _remember(text, known)
    return known


_counted: dict[str, int] = {}
_counted_chars = 0
COUNTED_CHARS = 2_000_000  # what the remembered texts may hold; forgotten all at once beyond


def _remember(text: str, count: int) -> None:
    global _counted_chars
    if _counted_chars + len(text) > COUNTED_CHARS:
        _counted.clear()
        _counted_chars = 0
        if len(text) > COUNTED_CHARS:
            return
    _counted[text] = count
    _counted_chars += len(text)


def _count(text: str) -> int:
    total = 0
    regular = REGULAR.fullmatch
    for piece in WORDS.findall(text):
        if regular(piece):
            total += 1 + len(piece) // 5
        elif piece[0].isalnum():
            total += len(piece)
        else:
            total += 1
    return total


def _walk(value: Any) -> tuple[int, int, int]:
    """Tokens, messages and images in a request body: one token per text's pieces, per key,
    and per pre-tokenised id. Walked with a stack, not recursion, as it runs on every call."""
    tokens = messages = images = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            tokens += _counted.get(item) or text_tokens(item)
        elif isinstance(item, dict):
            messages += "role" in item
            for key, child in item.items():
                if key in SKIPPED_KEYS:
                    continue
                if key == "image_url" or (key in IMAGE_KEYS and not isinstance(child, str)):
                    images += 1
                    continue
                tokens += 1
                if isinstance(child, str):  # the usual leaf, counted without a stack trip
                    tokens += _counted.get(child) or text_tokens(child)
                else:
                    stack.append(child)
        elif isinstance(item, (list, tuple)):
            for child in item:
                if isinstance(child, int) and not isinstance(child, bool):
                    tokens += 1  # a pre-tokenised input: one token each
                else:
                    stack.append(child)
    return tokens, messages, images
