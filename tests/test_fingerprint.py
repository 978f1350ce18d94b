"""An idempotency key's payload fingerprint is the SHA-256 of the stdlib's canonical JSON
(sorted keys, no spaces, ASCII only), whichever encoder wrote it: fingerprints stored before
orjson was used, or by a process without it, still match."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import pytest

import allotment as al
from allotment import arguments

USD = al.Unit.USD_MICROCENTS


def _stdlib(payload: tuple[Any, ...]) -> str:
    """The fingerprint as the stdlib alone writes it."""
    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if hasattr(value, "value"):
            return value.value
        return value if value is None or isinstance(value, (int, str)) else repr(value)

    text = json.dumps(plain(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


PAYLOADS = [
    ("reserve", al.Subject(tenant="acme", workspace="prod", dimensions={"b": "x", "a": "y"}),
     al.Action("llm.completion", "openai:gpt-4o", tags=("t", "u")), ((USD, 5_000_000),),
     None, 60_000, 5_000, None),
    ("reserve", al.Subject(tenant="acme"), al.Action("llm.completion", "modèle 😀"),
     ((USD, 10**20),), None, 1_000, 0, None),  # non-ASCII text; a number past 64 bits
    ("release", "done\n\t\x00\x7f\"\\/"),  # control characters, DEL, escapes
    ("commit", ((USD, 3_100_000), (al.Unit.TOKENS, 12))),
    ("fund", "tenant:acme", USD, Decimal("1.50"), True, False, -1, [1, [2, "3"]]),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p[0])
def test_a_fingerprint_is_the_stdlib_canonical_json(payload: tuple[Any, ...]) -> None:
    assert arguments.fingerprint(payload) == _stdlib(payload)


def test_without_orjson_the_stdlib_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arguments, "_orjson", None)
    for payload in PAYLOADS:
        assert arguments.fingerprint(payload) == _stdlib(payload)


def test_a_replay_with_other_text_is_a_mismatch() -> None:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=1)
    tenant = guard.tenant("acme")
    held = tenant.reserve(al.Subject(tenant="acme"), al.Action("llm.completion", "modèle"),
                          al.Amount(USD, 1_000), idempotency_key="k")
    again = tenant.reserve(al.Subject(tenant="acme"), al.Action("llm.completion", "modèle"),
                           al.Amount(USD, 1_000), idempotency_key="k")
    assert again.id == held.id
    with pytest.raises(al.IdempotencyMismatch):
        tenant.reserve(al.Subject(tenant="acme"), al.Action("llm.completion", "modele"),
                       al.Amount(USD, 1_000), idempotency_key="k")


def test_a_subject_read_before_has_the_same_fingerprint() -> None:
    """A subject's derived values, cached on it once read, are no part of its fingerprint."""
    def fresh() -> tuple[Any, ...]:
        return ("reserve", al.Subject(tenant="acme", workspace="prod", dimensions={"a": "b"}),
                al.Action("llm.completion", "openai:gpt-4o", tags=("t",)))

    unread, read = fresh(), fresh()
    read[1].scopes(), read[1].scope_path, read[1].dimension_items, read[1].levels()
    assert arguments.fingerprint(read) == arguments.fingerprint(unread) == _stdlib(unread)
