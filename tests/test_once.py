"""`claim_once` / `finish_once`: what makes a call of several steps (a bulk action) idempotent.
The first caller of a key runs the call and keeps its answer; a retry of the same request
replays it, another request under the key is refused, a run in progress makes others wait;
claims lapse after their ttl (both stores, sync and async, on the store's clock)."""

from __future__ import annotations

import pytest

import allotment as al
from allotment.models import OnceClaim

REQUEST = {"filter": {"status": "ACTIVE"}, "action": "SUSPEND", "idempotency_key": "k-1"}


def test_the_first_run_answers_every_retry(guard: al.Guard) -> None:
    claim = guard.claim_once("tenants-bulk", "k-1", REQUEST)
    assert claim.owner is not None and claim.answer is None
    assert guard.finish_once(claim, '{"total_matched":2}') is True
    again = guard.claim_once("tenants-bulk", "k-1", dict(reversed(REQUEST.items())))
    assert (again.owner, again.answer) == (None, '{"total_matched":2}')
    assert guard.claim_once("budgets-bulk", "k-1", REQUEST).owner is not None  # its own keys


def test_another_request_under_the_key_is_a_mismatch(guard: al.Guard) -> None:
    guard.claim_once("tenants-bulk", "k-1", REQUEST)
    with pytest.raises(al.IdempotencyMismatch, match="k-1"):
        guard.claim_once("tenants-bulk", "k-1", {**REQUEST, "action": "CLOSE"})


def test_a_run_in_progress_holds_the_key(guard: al.Guard) -> None:
    first = guard.claim_once("tenants-bulk", "k-1", REQUEST)
    waiting = guard.claim_once("tenants-bulk", "k-1", REQUEST, wait_s=0)
    assert (waiting.owner, waiting.answer) == (None, None)
    with pytest.raises(al.InvalidRequest, match="claim"):  # not the holder's: nothing kept
        guard.finish_once(waiting, "{}")
    assert guard.finish_once(first, "{}") is True
    assert guard.finish_once(first, '{"again": 1}') is False  # kept once
    assert guard.claim_once("tenants-bulk", "k-1", REQUEST).answer == "{}"


def test_a_refused_run_lets_the_key_go(guard: al.Guard) -> None:
    claim = guard.claim_once("tenants-bulk", "k-1", REQUEST)
    assert guard.finish_once(claim, None) is True
    retry = guard.claim_once("tenants-bulk", "k-1", {**REQUEST, "action": "CLOSE"})
    assert retry.owner is not None and retry.owner != claim.owner


def test_claims_and_answers_lapse_after_their_ttl(guard: al.Guard,
                                                  clock: al.ManualClock) -> None:
    stalled = guard.claim_once("tenants-bulk", "k-1", REQUEST, ttl_s=60)
    clock.advance(60_000)  # its run never finished: the key is free again
    taken = guard.claim_once("tenants-bulk", "k-1", REQUEST, ttl_s=60)
    assert taken.owner is not None and taken.owner != stalled.owner
    assert guard.finish_once(stalled, "{}") is False  # the lapsed run keeps nothing
    assert guard.finish_once(taken, '{"done": true}', ttl_s=30) is True
    clock.advance(29_999)
    assert guard.claim_once("tenants-bulk", "k-1", REQUEST).answer == '{"done": true}'
    clock.advance(1)
    assert guard.claim_once("tenants-bulk", "k-1", REQUEST).owner is not None


@pytest.mark.parametrize(("args", "kwargs", "wrong"), [
    (("Tenants Bulk", "k-1", REQUEST), {}, "call"),
    (("tenants-bulk", "k 1", REQUEST), {}, "idempotency_key"),
    (("tenants-bulk", "k-1", {"x": {1, 2}}), {}, "request"),
    (("tenants-bulk", "k-1", {"x": float("nan")}), {}, "request"),
    (("tenants-bulk", "k-1", REQUEST), {"ttl_s": 0}, "ttl_s"),
    (("tenants-bulk", "k-1", REQUEST), {"wait_s": -1}, "wait_s"),
    (("tenants-bulk", "k-1", REQUEST), {"wait_s": True}, "wait_s"),
])
def test_bad_claims_are_refused_and_hold_nothing(guard: al.Guard, args: tuple[object, ...],
                                                 kwargs: dict[str, object], wrong: str) -> None:
    with pytest.raises(al.InvalidRequest, match=wrong):
        guard.claim_once(*args, **kwargs)
    assert guard.claim_once("tenants-bulk", "k-1", REQUEST).owner is not None


def test_bad_finishes_are_refused(guard: al.Guard) -> None:
    claim = guard.claim_once("tenants-bulk", "k-1", REQUEST)
    for bad, wrong in ((OnceClaim(claim.key, None, None), "claim"), ("k-1", "claim")):
        with pytest.raises(al.InvalidRequest, match=wrong):
            guard.finish_once(bad, "{}")  # type: ignore[arg-type]
    with pytest.raises(al.InvalidRequest, match="answer"):
        guard.finish_once(claim, "")
    assert guard.finish_once(claim, "{}") is True
