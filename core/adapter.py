"""What framework adapters may use of the core, and nothing else.

An adapter (OpenAI, Anthropic, LangChain, LlamaIndex, or one you write) turns a framework's
call into reserve → call → commit | release. On every model call it holds values it built
and checked itself: a `Subject`, an `Action`, integer units in unit order. The entry points
here take them as they are instead of checking them again; the store receives the very
operations the public `Guard` methods send. Everything else an adapter needs (prices, token
counts, the scope context) is re-exported here, so adapters import `allotment` and this module
only, and a change inside the core never reaches into them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .amounts import Unit, Units, trusted_amounts
from .context import current_fields
from .estimation import input_tokens, text_tokens
from .models import Action, CommitResult
from .pricing import ModelPrice, Pricer, TokenUsage, tier_of
from .scopes import LEVELS, Subject
from .stores.operations import ElasticTerms
from .validation import check_int

if TYPE_CHECKING:
    from .guard import Guard
    from .reservation import Reservation


def reserve_units(guard: Guard, subject: Subject, action: Action, units: Units,
                  elastic: ElasticTerms | None = None,
                  ttl_ms: int | None = None) -> Reservation:
    """`guard.reserve(subject, action, estimate, ttl_ms=...)` for checked integer units and,
    for an elastic estimate, its terms (per-million rates in unit order, max_tokens, floor)."""
    return guard._reserve_units(subject, action, units, elastic, ttl_ms)


async def areserve_units(guard: Guard, subject: Subject, action: Action,
                         units: Units, elastic: ElasticTerms | None = None,
                         ttl_ms: int | None = None) -> Reservation:
    """The async twin of `reserve_units`."""
    return await guard._areserve_units(subject, action, units, elastic, ttl_ms)


def commit_units(reservation: Reservation, actual: Units,
                 usage: TokenUsage | None = None) -> CommitResult:
    """`reservation.commit(actual, usage=usage)` for checked integer units in unit order;
    `usage`, the provider's token counts, goes to the usage export."""
    return reservation._commit_units(actual, usage)


async def acommit_units(reservation: Reservation, actual: Units,
                        usage: TokenUsage | None = None) -> CommitResult:
    """The async twin of `commit_units`."""
    return await reservation._acommit_units(actual, usage)


__all__ = [
    "LEVELS",
    "ElasticTerms",
    "ModelPrice",
    "Pricer",
    "TokenUsage",
    "Unit",
    "Units",
    "acommit_units",
    "areserve_units",
    "check_int",
    "commit_units",
    "current_fields",
    "input_tokens",
    "reserve_units",
    "text_tokens",
    "tier_of",
    "trusted_amounts",
]
