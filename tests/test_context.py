"""`al.scope(...)` carries the subject through nested blocks, threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

import allotment as al

from support import LLM


def test_nested_scopes_override_levels_and_merge_dimensions() -> None:
    assert al.current_subject() is None
    with al.scope(tenant="acme", workflow="chat", user="u-1") as outer:
        assert outer == al.Subject(tenant="acme", workflow="chat", dimensions={"user": "u-1"})
        with al.scope(workflow="summarize", run="R-9") as inner:
            assert inner is not None
            assert (inner.workflow, inner.dimensions) == (
                "summarize", {"user": "u-1", "run": "R-9"})
        assert al.current_subject() == outer
    assert al.current_subject() is None


def test_a_scope_without_tenant_yields_none_until_one_is_set() -> None:
    with al.scope(workflow="batch") as partial:
        assert partial is None
        with al.scope(tenant="acme") as full:
            assert full is not None and full.workflow == "batch"


def test_bad_values_are_refused_on_entry() -> None:
    with pytest.raises(al.InvalidRequest, match="tenant"), al.scope(tenant="a b"):
        pass  # pragma: no cover - never entered
    with pytest.raises(al.InvalidRequest, match="run"), al.scope(workflow="x", run="a b"):
        pass  # pragma: no cover - never entered
    assert al.current_subject() is None


def test_guard_takes_the_subject_from_the_scope(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme/workflow:chat", usd=1, per="run")
    with al.scope(tenant="acme", workflow="chat", run="s-1"):
        r = guard.reserve(None, LLM, al.usd(1))
    assert r.balances[0].scope == "tenant:acme/workflow:chat/run:s-1"
    with pytest.raises(al.InvalidRequest, match=r"al\.scope"):
        guard.reserve(None, LLM, al.usd(1))


def test_threads_see_only_their_own_scope() -> None:
    seen: dict[str, str | None] = {}
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        with al.scope(tenant=name):
            barrier.wait()
            subject = al.current_subject()
            seen[name] = subject.tenant if subject else None

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {f"t{i}": f"t{i}" for i in range(4)}


def test_a_copied_context_carries_the_scope_into_a_thread() -> None:
    result: list[al.Subject | None] = []
    with al.scope(tenant="acme", run="r1"):
        ctx = contextvars.copy_context()
    thread = threading.Thread(target=lambda: result.append(ctx.run(al.current_subject)))
    thread.start()
    thread.join()
    assert result[0] == al.Subject(tenant="acme", dimensions={"run": "r1"})


def test_asyncio_tasks_keep_their_scopes_apart() -> None:
    async def task(name: str) -> str | None:
        with al.scope(tenant=name):
            await asyncio.sleep(0)
            subject = al.current_subject()
            return subject.tenant if subject else None

    async def main() -> list[str | None]:
        return list(await asyncio.gather(*(task(f"t{i}") for i in range(5))))

    assert asyncio.run(main()) == [f"t{i}" for i in range(5)]
