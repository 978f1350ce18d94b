"""The input estimate counts the same however it is computed: remembered texts and the
stack-based walk give exactly what the plain recursive definition gives."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from allotment import estimation
from allotment.estimation import IMAGE_KEYS, SKIPPED_KEYS, input_tokens, text_tokens

WORDS = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
REGULAR = re.compile(r"[A-Z]?[a-z]+|[A-Z]{1,4}|[0-9]{1,3}")


def reference_text(text: str) -> int:
    total = 0
    for piece in WORDS.findall(text):
        if REGULAR.fullmatch(piece):
            total += 1 + len(piece) // 5
        else:
            total += len(piece) if piece[0].isalnum() else 1
    return total


def reference_walk(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str):
        return reference_text(value), 0, 0
    if isinstance(value, dict):
        total, messages, images = 0, int("role" in value), 0
        for key, item in value.items():
            if key in SKIPPED_KEYS:
                continue
            if (key in IMAGE_KEYS and not isinstance(item, str)) or key == "image_url":
                images += 1
                continue
            t, m, i = reference_walk(item)
            total, messages, images = total + t + 1, messages + m, images + i
        return total, messages, images
    if isinstance(value, (list, tuple)):
        total = messages = images = 0
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                total += 1
                continue
            t, m, i = reference_walk(item)
            total, messages, images = total + t, messages + m, images + i
        return total, messages, images
    return 0, 0, 0


TEXT = st.text(alphabet=st.sampled_from("aZq09 \t\n.,-_/éü中😀\u00a0") | st.characters(),
               max_size=60)
KEYS = st.sampled_from(["role", "content", "text", "name", "model", "image_url", "source",
                        "input", "tools", "type", "args"]) | st.text(max_size=5)
BODIES = st.recursive(
    TEXT | st.integers(0, 10**6) | st.booleans() | st.none() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_text_counts_match_the_definition_first_time_and_remembered(text: str) -> None:
    estimation._counted.pop(text, None)
    assert text_tokens(text) == reference_text(text)
    assert text_tokens(text) == reference_text(text)


@settings(max_examples=400, deadline=None)
@given(BODIES)
def test_the_walk_matches_the_recursive_definition(body: Any) -> None:
    assert estimation._walk(body) == reference_walk(body)


def test_remembered_texts_stay_within_their_bound() -> None:
    long = "word " * (estimation.COUNTED_CHARS // 5 + 1)
    assert text_tokens(long) == reference_text(long)
    assert long not in estimation._counted
    assert estimation._counted_chars <= estimation.COUNTED_CHARS


def test_a_request_body_counts_messages_tools_and_images() -> None:
    body = {"model": "m", "max_tokens": 5, "tools": [{"name": "t"}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "the cat"},
                {"type": "image_url", "image_url": {"url": "https://x"}}]}]}
    tokens, messages, images = reference_walk(body)
    assert (messages, images) == (1, 1)
    assert input_tokens(body, 7) == (tokens + messages * estimation.PER_MESSAGE
                                     + images * estimation.PER_IMAGE + estimation.PER_TOOL
                                     + estimation.PER_REQUEST + 7)
