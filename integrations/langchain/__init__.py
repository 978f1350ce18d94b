"""LangChain: per-tenant budgets for chat models, LLMs, tools and `create_agent` agents.

A LangChain callback can stop a call (raising in the start hook stops it before any HTTP
request) but cannot change it, so there are three pieces:

* `BudgetCallbackHandler` — put it first in `config={"callbacks": [...]}` (or on the model).
  It reserves in the chat-model/LLM start hook, raises `al.Denied` before anything is sent,
  and commits the usage LangChain reports when the call ends (the provider's raw usage when
  `usage_metadata` is missing; the estimate when a call that reached the provider reported
  nothing, e.g. a stream the caller broke off). A call that failed before the provider
  answered is released. Tool calls are reserved and committed too, at `tool_prices=` (free by
  default, so a calls quota on "tool.*" still counts them). It is a sync handler with
  `raise_error=True`, so it stops `invoke`, `stream`, `ainvoke` and `astream` alike;
  `AsyncBudgetCallbackHandler` is its twin for async code (an async handler cannot stop a
  sync call: LangChain drops its exceptions there). It can refuse a call but not shrink it:
  a call it lets through runs as sent, whatever caps the budget asked for.
* `BudgetMiddleware` — for `create_agent`. Reserves each model call, applies the caps
  (`max_tokens`, set from policy when the caller gave none so the estimate is a real bound;
  a cheaper model; fewer tools) and commits the response's usage; tool calls likewise. When
  the budget says no, the run ends normally with an AIMessage that says why
  (`exit_behavior="end"`, as LangChain's own call-limit middleware does): the program gets a
  result, the user an explanation. A refused tool call is answered with an error ToolMessage
  (so the conversation stays valid) and the run ends at the next model call. With
  `exit_behavior="error"` both raise `al.Denied` instead. List it last among middleware, so
  that each attempt of a retry or fallback middleware is reserved on its own.
* `capped(model, guard, ...)` — the same for a chat model in a plain chain: a Runnable that
  reserves, binds the caps (`.bind(max_tokens=..., model=...)`), calls and commits.

Calls metered by the middleware or `capped()` are marked, so a handler attached as well stays
out of them: nothing is held twice.

The pieces live in `callbacks`, `capped` and `middleware`; `usage` reads LangChain's models,
messages and usage reports.

The subject comes from the piece's own arguments (tenant=, workflow=, ...), then
`al.scope(...)`, then the run's metadata — `config={"metadata": {"tenant": "acme", "run":
"r-1"}}`, which LangChain hands down to nested chains, tools and LangGraph nodes — and, for
the middleware, the agent's `context=`. So one handler serves every tenant.

Which metadata keys are read, exactly: the level names (tenant, workspace, app, workflow,
agent, toolset), the dimensions named in `dimension_keys` (by default `DIMENSION_KEYS`: run,
user, session; a mapping renames, e.g. `{"thread_id": "session"}`), and a `"dimensions"` dict
of any others. Nothing else: LangChain's metadata carries many keys of its own, and the
pieces do not read the store per call to learn which budget templates are in force. So a
template on another dimension (`per="customer"`) needs `dimension_keys=[*DIMENSION_KEYS,
"customer"]` or `metadata={"dimensions": {"customer": ...}}`; declare it `required=True` and
a call whose metadata lacks it is denied DIMENSION_REQUIRED instead of being checked without
it. Each piece's `metadata_keys` lists the keys it reads, and it logs them (INFO) when made.
"""

from .._keys import DIMENSION_KEYS
from .callbacks import AsyncBudgetCallbackHandler, BudgetCallbackHandler
from .capped import CappedChatModel, capped
from .middleware import BudgetMiddleware

__all__ = ["DIMENSION_KEYS", "AsyncBudgetCallbackHandler", "BudgetCallbackHandler",
           "BudgetMiddleware", "CappedChatModel", "capped"]
