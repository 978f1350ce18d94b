"""A capped tenant's calls through the callback handler: the caps it cannot apply are
warned about once, then logged at debug level (not one warning per call)."""

from __future__ import annotations

import logging

import pytest
from langchain_openai import ChatOpenAI

import allotment as al
from allotment.integrations.langchain import BudgetCallbackHandler

from support.cassettes import replay

ACME = "tenant:acme"


def test_unapplied_caps_are_warned_about_once_per_handler(
        guard: al.Guard, caplog: pytest.LogCaptureFixture) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, max_tokens=100)])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    handler = BudgetCallbackHandler(guard, tenant="acme")
    with caplog.at_level(logging.DEBUG, logger="allotment"):
        for _ in range(3):
            with replay("openai_chat.yaml"):
                ChatOpenAI(model="gpt-4o", api_key="sk-test").invoke(
                    "Hello!", config={"callbacks": [handler]})
    unapplied = [r.levelno for r in caplog.records if "cannot be applied" in r.getMessage()]
    assert unapplied == [logging.WARNING, logging.DEBUG, logging.DEBUG]
