"""The Cycles request bodies with allotment's optional `allotment` field (see
`allotment.extensions`). The Cycles models in `wire` stay as the protocol defines them; a
server with extensions switched off parses with those alone, so the field is refused there as
any unknown field is."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from .. import extensions as x
from . import wire
from .errors import bad_request


class ReserveBody(wire.ReserveBody):
    allotment: x.EstimateExt | None = None


class DecideBody(wire.DecideBody):
    allotment: x.EstimateExt | None = None


class CommitBody(wire.CommitBody):
    allotment: x.ActualExt | None = None


class EventBody(wire.EventBody):
    allotment: x.ActualExt | None = None


class ReleaseBody(wire.ReleaseBody):
    allotment: x.AnswerExt | None = None


class ExtendBody(wire.ExtendBody):
    allotment: x.AnswerExt | None = None


EXTENDED: dict[type[Any], type[Any]] = {
    wire.ReserveBody: ReserveBody, wire.DecideBody: DecideBody,
    wire.CommitBody: CommitBody, wire.EventBody: EventBody,
    wire.ReleaseBody: ReleaseBody, wire.ExtendBody: ExtendBody}
"""Each Cycles body model and its extended twin."""


def ext(body: Any) -> Any:
    """The body's extension, or None when the request used none."""
    return getattr(body, x.FIELD, None)


def asked(request: Request) -> bool:
    """Whether a read asked for the whole result (`X-Allotment-Extensions: 1`)."""
    value = request.headers.get(x.HEADER)
    if value is None:
        return False
    if value.strip() != "1":
        raise bad_request(f"{x.HEADER}: {value!r} is not 1, the one version of the "
                          "extensions this server speaks")
    return True
