"""Helpers shared by the test suites: stores to test against (`stores`), a real redis-server
(`redis_server`), recorded provider traffic (`cassettes`) and budget trees for races
(`layouts`). Tests import from here; fixtures live in the conftest files."""

from __future__ import annotations

import allotment as al

LLM = al.Action("llm.completion", "openai:gpt-4o")
"""The action most tests reserve for."""
