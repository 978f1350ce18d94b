"""LlamaIndex, guarded: a callback handler that reserves before each LLM and embedding call
and commits what the call used.

    from llama_index.core.callbacks import CallbackManager
    from allotment.integrations.llamaindex import BudgetHandler

    handler = BudgetHandler(guard, tenant="acme")
    llm = OpenAI(model="gpt-4o-mini", callback_manager=CallbackManager([handler]))
    # or for everything: Settings.callback_manager = CallbackManager([handler])

LlamaIndex's instrumentation handlers swallow exceptions, so enforcement uses the legacy
callback events (`CBEventType.LLM` and `EMBEDDING`), which fire before the request is sent:
a denial raises `al.Denied` out of `chat`/`complete`/`stream_chat`/`get_text_embedding`/...
and nothing is sent. The end event commits the usage the response reports (`raw.usage`, or
`additional_kwargs` prompt/completion tokens); embeddings are counted from their chunks with
LlamaIndex's tokenizer. A call that failed is released; a stream its consumer walked away
from (or that was cancelled) is charged the estimate, since it reached the provider.

Subject: the handler's arguments, then `al.scope(...)`, then LlamaIndex's
`instrument_tags({...})` in force, each later source overriding the earlier ones.

Which tags are read, exactly — the keys LangChain's pieces read from metadata, each also as
`<key>_id` (`run_id`, `tenant_id`): the level names (tenant, workspace, app, workflow, agent,
toolset), the dimensions named in `dimension_keys` (by default `DIMENSION_KEYS`: run, user,
session; a mapping renames, e.g. `{"thread": "session"}`), and a `"dimensions"` dict of any
others. Nothing else: tags are free-form, and the handler does not read the store per call
to learn which budget templates are in force. So a template on another dimension
(`per="customer"`) needs

    handler = BudgetHandler(guard, dimension_keys=[*DIMENSION_KEYS, "customer"])
    with instrument_tags({"tenant": "initech", "customer": "c-9"}): ...
    # or, with any handler: instrument_tags({"tenant": "initech",
    #                                        "dimensions": {"customer": "c-9"}})

Declare it `required=True` and a call whose tags lack it is denied DIMENSION_REQUIRED before
anything is sent, instead of being checked without it. `metadata_keys` lists the keys the
handler reads, and it logs them (INFO) when made.

A callback cannot change a request, so the handler denies but cannot cap: when the budget
answers with caps (a degrade rule's max_tokens or model, a tool deny list), the call goes on
uncapped and a warning is logged (once per handler, then at debug level). To cap, hand
LlamaIndex's OpenAI LLM a guarded client:

    llm = OpenAI(model="gpt-4o-mini",
                 openai_client=wrap_openai(openai.OpenAI(), guard, tenant="acme"),
                 async_openai_client=wrap_openai(openai.AsyncOpenAI(), guard, tenant="acme"))

The guarded client then reserves, caps the outgoing body and commits; the handler sees that
the call's client is guarded and stands aside (each call is charged once), passing the
`instrument_tags` subject fields on to the client as per-call `x-allotment-*` headers.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import allotment as al
from allotment.adapter import Pricer, TokenUsage, input_tokens, text_tokens, tier_of

from ._keys import DIMENSION_KEYS, DIMENSIONS, SubjectKeys
from ._metering import DEFAULT_MAX_TOKENS, Meter, Metering, Request, resolve_subject
from ._sdk import SUBJECT_HEADER, is_guarded
from ._usage import count, provider_usage

if TYPE_CHECKING:
    _CallbackHandler = object
else:
    try:
        from llama_index.core.callbacks.base_handler import (
            BaseCallbackHandler as _CallbackHandler,
        )
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("allotment.integrations.llamaindex needs llama-index-core: "
                          "pip install 'allotment[llamaindex]'") from error

__all__ = ["DEFAULT_EMBEDDING_TOKENS", "DIMENSION_KEYS", "BudgetHandler"]

log = logging.getLogger("allotment")

LLM, EMBEDDING = "llm", "embedding"  # CBEventType values (a str enum)
MESSAGES, PROMPT, KWARGS, SERIALIZED = ("messages", "formatted_prompt", "additional_kwargs",
                                        "serialized")  # EventPayload values (a str enum)
RESPONSE, COMPLETION, CHUNKS, EXCEPTION = "response", "completion", "chunks", "exception"

DEFAULT_EMBEDDING_TOKENS = 8_192
"""What one embedding event holds before it runs: LlamaIndex names the model at the start of
an embedding event but not the texts, so the hold is an allowance (one maximal input); the
commit charges the tokens counted from the texts."""

TAG_ALIAS = "_id"
"""Each key is also read as `<key>_id` (`run_id`, `user_id`, `tenant_id`): the names tags
usually carry; the plain key wins when both are set."""

PROVIDERS = (("azure", "azure"), ("anthropic", "anthropic"), ("bedrock", "aws"),
             ("vertex", "google"), ("gemini", "google"), ("google", "google"),
             ("mistral", "mistral"), ("groq", "groq"), ("deepseek", "deepseek"),
             ("cohere", "cohere"), ("openai", "openai"))
"""Provider ids for genai-prices, from the model class's `class_name()`, first match wins."""

_FRAME_DEPTH = 12
_MAX_PENDING = 10_000


@dataclass(slots=True)
class _Pending:
    meter: Meter
    prompt: int  # the estimated input tokens, for a response that reports none


class BudgetHandler(_CallbackHandler):
    """Reserve before, and settle after, every LLM and embedding call LlamaIndex makes.

    `subject` holds Subject fields (tenant=, workflow=, ...; other keywords are dimensions).
    `provider` names the price table's provider when the model class does not say it.
    A call without max_tokens (on the LLM or in the call) is held for `default_max_tokens`
    of output; an embedding event for `embedding_tokens` of input. `token_counter(text)`
    counts embedded texts (default: LlamaIndex's `Settings.tokenizer`). `dimension_keys`
    names the `instrument_tags` keys read as dimensions (as LangChain's pieces read metadata):
    a list, or a mapping from tag key to dimension; `metadata_keys` lists every key read.
    """

    def __init__(self, guard: al.Guard, *, pricer: Pricer | None = None,
                 provider: str | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 embedding_tokens: int = DEFAULT_EMBEDDING_TOKENS,
                 token_counter: Callable[[str], int] | None = None,
                 dimension_keys: Iterable[str] | Mapping[str, str] = DIMENSION_KEYS,
                 ttl_ms: int | None = None, **subject: Any) -> None:
        event_types = _framework("llama_index.core.callbacks.schema", "CBEventType")
        # a hold the budget cannot fit is refused whole: a callback cannot shrink the call
        self.metering = Metering(guard, pricer=pricer, default_max_tokens=default_max_tokens,
                                 floor=None, ttl_ms=ttl_ms)
        self.provider = provider
        self.embedding_tokens = embedding_tokens
        self.token_counter = token_counter
        self.keys = SubjectKeys(dimension_keys, alias=TAG_ALIAS)
        self.subject = subject
        ignored = [e for e in event_types if e.value not in (LLM, EMBEDDING)]
        self.event_starts_to_ignore = tuple(ignored)
        self.event_ends_to_ignore = tuple(ignored)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._warned_uncapped = False
        log.info("LlamaIndex budgets read the subject from instrument_tags keys %s",
                 ", ".join(self.metadata_keys))

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """Every `instrument_tags` key the subject is read from: the levels, the dimension
        keys, each also as `<key>_id`, and "dimensions" (a dict of any others). A dimension
        named nowhere here never reaches the subject."""
        return self.keys.names

    # -- the callback interface ------------------------------------------------------------

    def on_event_start(self, event_type: Any, payload: dict[str, Any] | None = None,
                       event_id: str = "", parent_id: str = "", **kwargs: Any) -> str:
        """Reserve, or raise `al.Denied` (nothing is sent)."""
        if event_type not in (LLM, EMBEDDING):
            return event_id
        payload = payload or {}
        tags = self._tags()
        model, asynchronous = _caller()
        if _delegates(model):
            return event_id  # a wrapper LLM: the LLM it calls fires its own event
        if _guarded_below(model, asynchronous):
            _pass_on(payload.get(KWARGS), tags)
            return event_id
        request = self._describe(event_type, payload, resolve_subject(self.subject, tags))
        meter = self.metering.reserve(request)  # no model switch: the call keeps its model
        if meter.caps is not None:  # once as a warning, then at debug level: a capped
            level = logging.DEBUG if self._warned_uncapped else logging.WARNING  # tenant
            self._warned_uncapped = True  # would otherwise log every call
            log.log(level, "%s: caps %s cannot be applied by a callback handler (the call "
                    "goes on uncapped); hand the LLM a wrap_openai client to cap it (further "
                    "ones are logged at debug level)", meter.reservation.id, meter.caps)
        with self._lock:
            if len(self._pending) >= _MAX_PENDING:  # events that never ended: holds expire
                self._pending.pop(next(iter(self._pending)))
            self._pending[event_id] = _Pending(meter, _prompt_of(request))
        return event_id

    def on_event_end(self, event_type: Any, payload: dict[str, Any] | None = None,
                     event_id: str = "", **kwargs: Any) -> None:
        """Commit the usage reported (or counted, or else the estimate); release a failure."""
        with self._lock:
            pending = self._pending.pop(event_id, None)
        if pending is None:
            return
        payload = payload or {}
        response = payload.get(RESPONSE, payload.get(COMPLETION))
        error = payload.get(EXCEPTION)
        if response is None and error is not None:
            if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
                pending.meter.settle(None)  # a stream left early: it reached the provider
            else:
                _release(pending.meter)
            return
        if event_type == EMBEDDING:
            pending.meter.settle(self._embedded(payload.get(CHUNKS)))
            return
        usage = _response_usage(response)
        if usage is not None and usage.input_tokens == 0 and pending.prompt:
            usage = usage.model_copy(update={"input_tokens": pending.prompt})
        pending.meter.settle(usage)

    def start_trace(self, trace_id: str | None = None) -> None:
        """Nothing to do: budgets follow calls, not traces."""

    def end_trace(self, trace_id: str | None = None,
                  trace_map: dict[str, list[str]] | None = None) -> None:
        """Nothing to do: budgets follow calls, not traces."""

    # -- reading LlamaIndex's payloads -----------------------------------------------------

    def _tags(self) -> dict[str, Any]:
        """The subject fields in the `instrument_tags` in force. A named tag that holds no
        text or number is someone else's (observability tags are free-form) and left alone;
        the "dimensions" dict is ours, so what it holds must be an id."""
        tags = _framework("llama_index.core.instrumentation.dispatcher",
                          "active_instrument_tags").get()
        found = self.keys.read(tags, _tag_value)
        for name, value in list(found[DIMENSIONS].items()):
            text = _tag_value(value)
            if text is None:
                raise al.InvalidRequest(f'instrument_tags "{DIMENSIONS}"[{name!r}]: expected '
                                        f"a string id, got {value!r}")
            found[DIMENSIONS][name] = text
        return found

    def _describe(self, event_type: Any, payload: dict[str, Any],
                  subject: al.Subject) -> Request:
        serialized = payload.get(SERIALIZED) or {}
        model = serialized.get("model") or serialized.get("model_name")
        if not isinstance(model, str) or not model:
            raise al.InvalidRequest(f"no model name in the {event_type} event's payload")
        provider = self.provider or _provider(serialized.get("class_name"))
        if event_type == EMBEDDING:
            return Request(subject, "llm.embedding", provider, model, None, None,
                           overhead=self.embedding_tokens)
        call = payload.get(KWARGS)
        if not isinstance(call, dict):
            call = {}
        body: dict[str, Any] = {"messages": _messages(payload.get(MESSAGES)),
                                "prompt": payload.get(PROMPT), "tools": call.get("tools")}
        if serialized.get("class_name") == "openai_llm" and "stream_options" not in call:
            # LlamaIndex's OpenAI LLM sends these only with stream=True: a stream then ends
            # in a usage chunk instead of being charged the estimate
            call["stream_options"] = {"include_usage": True}
        return Request(subject, "llm.completion", provider, model, body,
                       _max_tokens(call, serialized, self.metering.default_max_tokens),
                       service_tier=_tier(call, serialized))

    def _embedded(self, chunks: Any) -> TokenUsage | None:
        if not isinstance(chunks, list) or not chunks:
            return None
        texts = [c if isinstance(c, str) else str(c) for c in chunks]
        try:
            count = self.token_counter or _llamaindex_tokens
            total = sum(count(t) for t in texts)
        except Exception:  # no tokenizer at hand: the offline upper bound
            log.warning("could not count embedded tokens; counting them offline")
            total = sum(text_tokens(t) for t in texts)
        return TokenUsage(input_tokens=total)


def _caller() -> tuple[Any, bool]:
    """The LLM or embedding model whose event is being fired, and whether the call is async.

    LlamaIndex's callback payload does not carry the model object, so it is found in the
    frames of the method that fired the event (`_self` in `llm_chat_callback` and
    `llm_completion_callback`, `self` in the embedding methods)."""
    kinds = (_framework("llama_index.core.base.llms.base", "BaseLLM"),
             _framework("llama_index.core.base.embeddings.base", "BaseEmbedding"))
    frame = inspect.currentframe()
    try:
        for _ in range(_FRAME_DEPTH):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            for name in ("_self", "self"):
                if name not in frame.f_code.co_varnames:
                    continue
                candidate = frame.f_locals.get(name)
                if isinstance(candidate, kinds):
                    flags = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
                    return candidate, bool(frame.f_code.co_flags & flags)
    finally:
        del frame
    return None, False


def _release(meter: Meter) -> None:
    """A failed call is released; a store failure here must not hide the call's own error."""
    try:
        meter.release("provider error")
    except al.AllotmentError as error:
        log.error("could not release %s: %s", meter.reservation.id, error)


def _delegates(model: Any) -> bool:
    """A wrapper such as StructuredLLM, whose calls go through another LLM's own events."""
    if model is None:
        return False
    inner = getattr(model, "llm", None)
    return isinstance(inner, _framework("llama_index.core.base.llms.base", "BaseLLM")) and (
        inner is not model)


def _guarded_below(model: Any, asynchronous: bool) -> bool:
    """Whether the call goes through a client made by wrap_openai/wrap_anthropic, which
    meters (and caps) it itself."""
    if model is None or getattr(model, "reuse_client", True) is False:
        return False  # without reuse_client LlamaIndex makes a fresh, unguarded client
    return is_guarded(getattr(model, "_aclient" if asynchronous else "_client", None))


def _tag_value(value: Any) -> str | None:
    """A tag as a subject field: text, or a whole number written out."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None


def _pass_on(call: Any, fields: dict[str, Any]) -> None:
    """Give a guarded client the instrument-tag subject as per-call headers (levels and
    dimensions alike: `x-allotment-customer`, which the client reads as a dimension)."""
    flat = {k: v for k, v in fields.items() if k != DIMENSIONS} | fields.get(DIMENSIONS, {})
    if not flat or not isinstance(call, dict):
        return
    headers = dict(call.get("extra_headers") or {})
    headers.update({f"{SUBJECT_HEADER}{k}": v for k, v in flat.items()})
    call["extra_headers"] = headers


def _provider(class_name: Any) -> str:
    name = str(class_name or "").lower()
    for marker, provider in PROVIDERS:
        if marker in name:
            return provider
    return name or "unknown"


def _messages(messages: Any) -> Any:
    """ChatMessages as dicts (role, text blocks, images, tool calls) for the estimate."""
    if not isinstance(messages, (list, tuple)):
        return None
    return [_plain(m) for m in messages]


def _plain(message: Any) -> Any:
    try:
        return message.model_dump() if hasattr(message, "model_dump") else message
    except Exception:  # a message pydantic cannot dump: its text still counts
        return {"role": str(getattr(message, "role", "user")), "content": str(message)}


def _max_tokens(call: Mapping[str, Any], serialized: Mapping[str, Any], default: int) -> int:
    """The output bound: the larger of the call's own and the LLM's max_tokens (`num_output`
    in its metadata; which one an integration sends varies), or else the default."""
    found = [value for value in (call.get("max_completion_tokens"), call.get("max_tokens"),
                                 serialized.get("max_tokens"), serialized.get("num_output"))
             if isinstance(value, int) and not isinstance(value, bool) and value > 0]
    return max(found, default=default)


def _tier(call: Mapping[str, Any], serialized: Mapping[str, Any]) -> str | None:
    """The service tier a call asks for: in the call's keywords or the LLM's
    `additional_kwargs` (which LlamaIndex's OpenAI LLM sends with every request)."""
    own = serialized.get("additional_kwargs")
    return tier_of(call.get("service_tier") or _get(own, "service_tier"))


def _prompt_of(request: Request) -> int:
    if request.kind != "llm.completion":
        return 0
    return input_tokens(request.payload, request.overhead)


def _llamaindex_tokens(text: str) -> int:
    return len(_framework("llama_index.core", "Settings").tokenizer(text))


def _framework(module: str, name: str) -> Any:
    """A LlamaIndex object, imported when first needed (the package may not be installed
    where allotment is type-checked)."""
    return getattr(importlib.import_module(module), name)


# -- usage, wherever the LLM integration put it --------------------------------------------


def _response_usage(response: Any) -> TokenUsage | None:
    """`raw.usage` (OpenAI objects, Anthropic's dict), `raw.usage_metadata`, then the
    response's `additional_kwargs` (prompt_tokens...) and its message's `usage` — the order
    LlamaIndex's own token counting uses — served at `raw.service_tier` (OpenAI's; Anthropic's
    is in its usage)."""
    if response is None:
        return None
    raw = getattr(response, "raw", None)
    message = getattr(response, "message", None)
    tier = _get(raw, "service_tier")
    for found in (_get(raw, "usage"), _get(raw, "usage_metadata"),
                  getattr(response, "additional_kwargs", None),
                  _get(getattr(message, "additional_kwargs", None), "usage")):
        usage = _parse_usage(found, tier)
        if usage is not None:
            return usage
    return None


def _parse_usage(usage: Any, service_tier: Any) -> TokenUsage | None:
    """Gemini's usage_metadata (which LlamaIndex passes on), else OpenAI's or Anthropic's."""
    if _get(usage, "prompt_token_count") is not None:
        return TokenUsage.counted(input_tokens=count(_get(usage, "prompt_token_count")),
                                  output_tokens=count(_get(usage, "candidates_token_count")),
                                  service_tier=tier_of(service_tier))
    return provider_usage(usage, service_tier)


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)
