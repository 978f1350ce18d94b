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
    total = 0
    for piece in WORDS.findall(text):
        if REGULAR.fullmatch(piece):
            total += 1 + len(piece) // 5
        elif piece[0].isalnum():
            total += len(piece)
        else:
            total += 1
    return total


def _walk(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str):
        return text_tokens(value), 0, 0
    if isinstance(value, dict):
        total, messages, images = 0, int("role" in value), 0
        for key, item in value.items():
            if key in SKIPPED_KEYS:
                continue
            if (key in IMAGE_KEYS and not isinstance(item, str)) or key == "image_url":
                images += 1
                continue
            t, m, i = _walk(item)
            total, messages, images = total + t + 1, messages + m, images + i
        return total, messages, images
    if isinstance(value, (list, tuple)):
        total = messages = images = 0
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                total += 1  # a pre-tokenised input: one token each
                continue
            t, m, i = _walk(item)
            total, messages, images = total + t, messages + m, images + i
        return total, messages, images
    return 0, 0, 0
