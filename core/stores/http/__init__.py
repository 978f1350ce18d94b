"""The remote store: a server speaking the Cycles wire (allotment's own, or another Cycles
server) holds the state; `Guard.from_url("https://...", api_key=...)` builds a guard on it."""

from .store import HttpStore

__all__ = ["HttpStore"]
