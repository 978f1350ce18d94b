"""Adapters that turn a framework's call into reserve → call → commit | release.

Each lives in its own module (LangChain's in a package) and imports its framework only when
imported itself. They share `_metering` (reserve, caps, settle), `_sdk` (the OpenAI and
Anthropic clients' one choke point) and `_usage` (what a provider says a call used), and reach
the core through `allotment` and `allotment.adapter` only.

`prometheus` and `opentelemetry` are no adapters: they watch a guard's calls through its
public observer hook (`Guard.add_observer`) for metrics and spans.
"""
