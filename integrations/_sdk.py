"""One choke point for the OpenAI and Anthropic SDKs: their shared client base runs every
endpoint — create, parse, the stream helpers, with_raw_response — through `request()`, once
per logical call with the SDK's retries inside. A guarded client is a copy of the user's client
whose class overrides `request()`; nothing global is patched and `isinstance` still holds.

A provider module describes its endpoints with a `Shape`; this module does the rest.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any, Protocol

from pydantic import BaseModel

import allotment as al
from allotment.adapter import TokenUsage

from ._metering import Meter, Metering, Request, Subjects

log = logging.getLogger("allotment")
SUBJECT_HEADER = "x-allotment-"
"""Per-call subject fields travel as `extra_headers={"x-allotment-run": "r1"}`; the guarded
client takes them off the request before it is sent."""


class StreamUsage(Protocol):
    """A stream's usage, gathered from its events as the caller reads them."""

    usage: TokenUsage | None

    def see(self, event: Any) -> None:
        """Take note of one event."""


class Shape(Protocol):
    """What one provider's requests and responses look like."""

    provider: str

    def describe(self, path: str, body: dict[str, Any], subject: al.Subject,
                 default_max_tokens: int) -> Request | None:
        """The call to meter (None: not a metered endpoint). May set a missing max_tokens on
        `body` so the estimate's bound is real, and ask streams to report usage."""

    def apply_caps(self, path: str, body: dict[str, Any], caps: al.Caps) -> None:
        """Change `body` so the call runs under the caps."""

    def usage(self, response: Any) -> TokenUsage | None:
        """What a whole response says it used (None: nothing said)."""

    def stream_usage(self, path: str) -> StreamUsage:
        """A fresh gatherer for one stream's usage."""


class Guarding:
    """What a guarded client meters its calls with."""

    __slots__ = ("metering", "shape", "subjects")

    def __init__(self, metering: Metering, subject: dict[str, Any], shape: Shape) -> None:
        self.metering = metering
        self.subjects = Subjects(subject)
        self.shape = shape


def guarded_copy(client: Any, metering: Metering, subject: dict[str, Any], shape: Shape) -> Any:
    """A copy of `client` whose calls are reserved, capped and committed."""
    guarded = client.copy()
    guarded.__class__ = _guarded_class(type(client), asynchronous=_is_async(client))
    guarded._allotment = Guarding(metering, subject, shape)
    return guarded


_classes: dict[tuple[type, bool], type] = {}


def is_guarded(client: Any) -> bool:
    """Whether `client` is a guarded copy, which meters (and caps) its calls itself."""
    return hasattr(client, "_allotment")


def _is_async(client: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(type(client).request)


def _guarded_class(base: type, asynchronous: bool) -> type:
    """A direct subclass of the client's class (so its instances can take its place) whose
    request() meters every call and whose copies stay guarded."""
    cls = _classes.get((base, asynchronous))
    if cls is not None:
        return cls

    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        new = base.copy(self, *args, **kwargs)  # type: ignore[attr-defined]
        new._allotment = self._allotment
        return new

    def request(self: Any, cast_to: Any, options: Any, *, stream: bool = False,
                stream_cls: Any = None) -> Any:
        return _request(self, base, cast_to, options, stream, stream_cls)

    async def arequest(self: Any, cast_to: Any, options: Any, *, stream: bool = False,
                       stream_cls: Any = None) -> Any:
        return await _arequest(self, base, cast_to, options, stream, stream_cls)

    namespace = {"copy": copy, "with_options": copy,
                 "request": arequest if asynchronous else request}
    # The SDKs name themselves in the User-Agent header after the class: keep the provider
    # seeing the client it would see unwrapped; the qualified name still says it is guarded.
    cls = _classes[(base, asynchronous)] = type(base.__name__, (base,), namespace)
    cls.__qualname__ = f"Guarded{base.__qualname__}"
    return cls


def _begin(guarding: Guarding, options: Any) -> Request | None:
    body = options.json_data
    call = _take_subject_headers(options)
    if not isinstance(body, dict):
        return None
    described: Request | None = guarding.shape.describe(
        options.url, body, guarding.subjects.resolve(call),
        guarding.metering.default_max_tokens)
    return described


def _request(client: Any, base: type, cast_to: Any, options: Any, stream: bool,
             stream_cls: Any) -> Any:
    guarding: Guarding = client._allotment
    metering, shape = guarding.metering, guarding.shape
    described = _begin(guarding, options)
    if described is None:
        return base.request(client, cast_to, options, stream=stream,  # type: ignore[attr-defined]
                            stream_cls=stream_cls)
    try:
        meter = metering.start(described)
    except al.Denied as denied:
        if metering.on_deny is None:
            raise
        return metering.on_deny(denied)
    caps = meter.caps
    if caps is not None:
        shape.apply_caps(options.url, options.json_data, caps)
    try:
        result = base.request(client, cast_to, options, stream=stream,  # type: ignore[attr-defined]
                              stream_cls=stream_cls)
    except BaseException:
        meter.release("provider error")  # no answer came back: nothing to charge
        raise
    return _settle(result, meter, shape, options.url)


async def _arequest(client: Any, base: type, cast_to: Any, options: Any, stream: bool,
                    stream_cls: Any) -> Any:
    guarding: Guarding = client._allotment
    metering, shape = guarding.metering, guarding.shape
    described = _begin(guarding, options)
    if described is None:
        return await base.request(client, cast_to, options,  # type: ignore[attr-defined]
                                  stream=stream, stream_cls=stream_cls)
    try:
        meter = await metering.astart(described)
    except al.Denied as denied:
        if metering.on_deny is None:
            raise
        return metering.on_deny(denied)
    caps = meter.caps
    if caps is not None:
        shape.apply_caps(options.url, options.json_data, caps)
    try:
        result = await base.request(client, cast_to, options,  # type: ignore[attr-defined]
                                    stream=stream, stream_cls=stream_cls)
    except BaseException:
        await meter.arelease("provider error")
        raise
    return await _asettle(result, meter, shape, options.url)


def _take_subject_headers(options: Any) -> dict[str, str] | None:
    headers = options.headers
    if not headers or not isinstance(headers, dict):
        return None
    call = {}
    for name in [h for h in headers if h.lower().startswith(SUBJECT_HEADER)]:
        value = headers.pop(name)
        call[name[len(SUBJECT_HEADER):].lower()] = value
    return call


def _settle(result: Any, meter: Meter, shape: Shape, path: str) -> Any:
    if isinstance(result, BaseModel):  # a parsed response, told apart without probing it
        meter.settle(shape.usage(result))
        return result
    parsed = result.parse() if _is_raw(result) else result  # parse() is cached by the SDK
    if hasattr(parsed, "_iterator"):
        _observe(parsed, meter, shape.stream_usage(path))
        return result
    meter.settle(shape.usage(parsed))
    return result


async def _asettle(result: Any, meter: Meter, shape: Shape, path: str) -> Any:
    if isinstance(result, BaseModel):
        await meter.asettle(shape.usage(result))
        return result
    parsed = (await result.parse()) if _is_raw(result) and _is_awaitable_parse(result) else (
        result.parse() if _is_raw(result) else result)
    if hasattr(parsed, "_iterator"):
        _aobserve(parsed, meter, shape.stream_usage(path))
        return result
    await meter.asettle(shape.usage(parsed))
    return result


def _is_raw(result: Any) -> bool:
    return hasattr(result, "parse") and hasattr(result, "http_response")


def _is_awaitable_parse(result: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(result.parse)


def _observe(stream: Any, meter: Meter, seen: StreamUsage) -> None:
    """Meter a stream in place: the caller keeps the SDK's own Stream object. Whatever way it
    ends — consumed, closed early, broken, or dropped unread — the usage seen (or else the
    estimate) is committed once."""
    original: Iterator[Any] = stream._iterator

    def observed() -> Generator[Any, None, None]:
        try:
            for event in original:
                seen.see(event)
                yield event
        finally:
            meter.settle(seen.usage)

    generator = observed()
    stream._iterator = generator
    close = stream.close

    def closed() -> None:  # closing early settles now, not when the stream is collected
        close()
        generator.close()

    stream.close = closed
    weakref.finalize(stream, _commit_unless_settled, meter)


def _aobserve(stream: Any, meter: Meter, seen: StreamUsage) -> None:
    original: AsyncIterator[Any] = stream._iterator

    async def observed() -> AsyncGenerator[Any, None]:
        try:
            async for event in original:
                seen.see(event)
                yield event
        finally:
            await meter.asettle(seen.usage)

    generator = observed()
    stream._iterator = generator
    close = stream.close

    async def closed() -> None:
        await close()
        await generator.aclose()

    stream.close = closed
    weakref.finalize(stream, _commit_unless_settled, meter)


def _commit_unless_settled(meter: Meter) -> None:
    if not meter.settled:
        try:
            meter.settle(None)
        except Exception:  # at interpreter exit the store may be gone
            log.exception("could not settle %s", meter.reservation.id)
