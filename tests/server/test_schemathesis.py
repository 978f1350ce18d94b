"""Schemathesis over the runtime plane: requests generated from `cycles-protocol-v0.yaml`,
valid and invalid ones, against a live uvicorn on a real store. Every answer is checked for
a server error, against the response schema, status codes, content type and headers the
spec gives it; invalid requests must be refused, requests without the key too, undeclared
methods answered 405 with `Allow`; and a valid request (within the rules the README lists
where allotment is stricter than the protocol) must never be refused as malformed.

Bounded (`max_examples`) and derandomized, so a run is quick and repeatable; set
ALLOTMENT_SCHEMATHESIS_EXAMPLES for a longer run.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

import allotment as al
from allotment.clock import system_ms
from allotment.server.governance import CATEGORIES, CYCLES_EVENT_TYPES

from support.openapi import spec
from support.served import serving

UNITS = ("USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS")
EXAMPLES = int(os.environ.get("ALLOTMENT_SCHEMATHESIS_EXAMPLES", "25"))
REQUESTS = ("DecisionRequest", "ReservationCreateRequest", "CommitRequest", "ReleaseRequest",
            "EventCreateRequest", "ReservationExtendRequest")
STANDARD = ("tenant", "workspace", "app", "workflow", "agent", "toolset")


def _retarget(node: Any, names: dict[str, str]) -> Any:
    """`node` with its references to `names`' keys pointed at their values."""
    if isinstance(node, dict):
        ref = node.get("$ref", "").removeprefix("#/components/schemas/")
        if ref in names:
            return {**node, "$ref": f"#/components/schemas/{names[ref]}"}
        return {key: _retarget(value, names) for key, value in node.items()}
    if isinstance(node, list):
        return [_retarget(value, names) for value in node]
    return node


def _tenant_events() -> dict[str, Any]:
    """The governance spec's listTenantEvents (v0.1.25): its parameters, and its answers
    with the Event schema (closed) written out."""
    text, moment = {"type": "string"}, {"type": "string", "format": "date-time"}
    event = {"type": "object", "additionalProperties": False,
             "required": ["event_id", "event_type", "category", "timestamp", "tenant_id",
                          "source"],
             "properties": {
                 "event_id": text, "event_type": {"enum": sorted(CYCLES_EVENT_TYPES)},
                 "category": {"enum": sorted(CATEGORIES)}, "timestamp": moment,
                 "tenant_id": text, "scope": text, "source": text,
                 "actor": {"type": "object", "additionalProperties": False, "properties": {
                     "type": {"enum": ["admin", "api_key", "admin_on_behalf_of", "system",
                                       "scheduler"]},
                     "key_id": text, "source_ip": text}},
                 "data": {"type": "object"}, "correlation_id": text, "request_id": text,
                 "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}}
    listed = {"type": "object", "required": ["events", "has_more"], "properties": {
        "events": {"type": "array", "items": event}, "next_cursor": text,
        "has_more": {"type": "boolean"}}}
    error = {"content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/ErrorResponse"}}}}
    query = [("event_type", {"enum": sorted(CYCLES_EVENT_TYPES)}),
             ("category", {"enum": sorted(CATEGORIES)}), ("scope", text),
             ("correlation_id", text), ("from", moment), ("to", moment), ("cursor", text),
             ("limit", {"type": "integer", "minimum": 1, "maximum": 100})]
    return {"operationId": "listTenantEvents", "security": [{"ApiKeyAuth": []}],
            "parameters": [{"name": name, "in": "query", "schema": schema}
                           for name, schema in query],
            "responses": {"200": {"description": "events", "content": {
                "application/json": {"schema": listed}}},
                **{code: {"description": code, **error} for code in ("400", "401", "403",
                                                                     "500")}}}


def _as_served() -> dict[str, Any]:
    """The spec with what its text says beyond its schemas, and, on the request side only
    (responses are checked against the spec as it is), the rules where the server is
    stricter than the protocol, each listed in the README:
    - a blank query parameter of the reservation list is unset (the protocol says of its
      time windows that a blank one "MUST NOT 400", though their schema is a date-time;
      the server reads all of the list's parameters, and `limit` on balances, so);
    - the six standard subject values match the protocol's own portable pattern (servers
      "MAY reject" others), dimension keys `[a-z0-9_.-]`, dimension values printable ASCII;
    - action kinds are allotment's `<category>.<operation>` (or one word), names and tags
      1-256 and 1-64 printable characters;
    - idempotency keys are 1-256 of `A-Z a-z 0-9 _ . : @ -`; amounts at most 2^53-1.
    And the governance spec's `GET /v1/events` (listTenantEvents) on the runtime file's
    `/v1/events`, whose only operation there is the POST: the server serves both."""
    amended = copy.deepcopy(spec())
    amended["paths"]["/v1/events"]["get"] = _tenant_events()
    for parameter in [*amended["paths"]["/v1/reservations"]["get"]["parameters"],
                      amended["components"]["parameters"]["Limit"]]:
        if "schema" in parameter and parameter.get("in") == "query":
            parameter["schema"] = {"anyOf": [parameter["schema"], {"const": ""}]}
    schemas = amended["components"]["schemas"]
    names = {name: f"Served{name}" for name in ("Subject", "Action", "Amount", "IdempotencyKey")}
    for name, served in names.items():
        schemas[served] = copy.deepcopy(schemas[name])
    for name in REQUESTS:
        schemas[name] = _retarget(schemas[name], names)
    subject = schemas["ServedSubject"]["properties"]
    for level in STANDARD:
        subject[level]["pattern"] = "^[a-zA-Z0-9_.-]+$"
    subject["dimensions"]["propertyNames"] = {"pattern": "^[a-z0-9_.-]{1,128}$"}
    subject["dimensions"]["additionalProperties"]["pattern"] = "^[!-~]{1,128}$"
    action = schemas["ServedAction"]["properties"]
    action["kind"]["pattern"] = r"^[a-z0-9_]{1,32}(\.[a-z0-9_]{1,32}){0,3}$"
    action["name"]["pattern"] = "^[ -~]{1,256}$"
    action["tags"]["items"]["pattern"] = "^[ -~]{1,64}$"
    schemas["ServedAmount"]["properties"]["amount"]["maximum"] = 2**53 - 1
    schemas["ServedIdempotencyKey"]["pattern"] = "^[A-Za-z0-9_.:@-]{1,256}$"
    return amended


schema = schemathesis.openapi.from_dict(_as_served()).exclude(tag="Evidence")
"""The runtime plane: reservations, decisions, events, balances (the evidence routes are
not served)."""


def _nulls(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_nulls(v) for v in value.values())
    return isinstance(value, list) and any(_nulls(v) for v in value)


def invalid_requests_are_refused(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' negative-data check, but for bodies holding a JSON `null`: the server
    reads an explicit `null` as an absent optional field, as the reference server does."""
    if _nulls(case.body):
        return None
    return negative_data_rejection(ctx, response, case)


def valid_requests_are_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """A valid body is never refused as malformed. Refusals that depend on state (budget,
    reservation, unit) are other codes; a JSON number with a zero fraction where an integer
    is due (which JSON Schema calls an integer) is refused by design: money is integers."""
    if case.method != "POST" or case.meta is None \
            or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    answer = response.json()
    if answer.get("error") != "INVALID_REQUEST" \
            or "expected a JSON integer" in answer.get("message", ""):
        return None
    raise AssertionError(f"a valid request was refused: {answer['message']}")


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance, response_headers_conformance, allow_header_conformance,
          ignored_auth, missing_required_header, unsupported_method,
          invalid_requests_are_refused, valid_requests_are_accepted]


@dataclass
class Live:
    """The server, and the guard behind it to provision tenants."""

    url: str
    guard: al.Guard
    client: httpx.Client
    made: int = 0

    def tenant(self) -> tuple[str, str]:
        """A fresh funded tenant and its runtime key's secret: each case starts from
        budgets no earlier case has spent."""
        self.made += 1
        tenant = f"t{self.made}"
        for unit in UNITS:
            self.guard.set_budget(f"tenant:{tenant}", amount=2**53 - 1, unit=al.Unit[unit])
        key = self.guard.create_key(tenant, permissions=[
            "reservations:create", "reservations:commit", "reservations:release",
            "reservations:extend", "reservations:list", "balances:read", "events:read"])
        return tenant, key.secret

    def reservation(self, secret: str) -> str:
        """A live reservation, for the routes that act on one."""
        made = self.client.post(self.url + "/v1/reservations", json={
            "idempotency_key": uuid.uuid4().hex, "subject": {"workspace": "w"},
            "action": {"kind": "llm.completion", "name": "m"},
            "estimate": {"unit": "USD_MICROCENTS", "amount": 1_000}},
            headers={"X-Cycles-API-Key": secret})
        assert made.status_code == 200, made.text
        return str(made.json()["reservation_id"])


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    store = al.MemoryStore(system_ms)
    guard = al.Guard(store)
    with serving(guard) as url, httpx.Client(timeout=10) as client:
        yield Live(url, guard, client)
    store.close()


def _aimed(case: Any, live: Live) -> dict[str, str]:
    """A fresh tenant for the case, and its key's header. Most valid requests would name
    some other tenant or a made-up reservation, and stop at the walls; point their subject
    at the tenant and their path at a live reservation of it, so the checks reach the
    ledger's answers too; send the tenant's key alone; and make an `X-Idempotency-Key`
    header say what the body says (the spec requires it). Invalid parts are left as
    generated."""
    tenant, secret = live.tenant()
    meta, body = case.meta, case.body
    valid_body = not meta.is_negative_at(ParameterLocation.BODY) and isinstance(body, dict)
    if valid_body and isinstance(body.get("subject"), dict) \
            and isinstance(body["subject"].get("tenant"), str):
        body["subject"]["tenant"] = tenant
    if not meta.is_negative_at(ParameterLocation.PATH) \
            and "reservation_id" in (case.path_parameters or {}):
        case.path_parameters["reservation_id"] = live.reservation(secret)
    headers = case.headers or {}
    if not meta.is_negative_at(ParameterLocation.HEADER):
        # a made-up admin key is 401 (test_protocol_edges.py pins the admin key's answers)
        headers.pop("X-Admin-API-Key", None)
    if valid_body and not meta.is_negative_at(ParameterLocation.HEADER) \
            and "X-Idempotency-Key" in headers and isinstance(body.get("idempotency_key"), str):
        headers["X-Idempotency-Key"] = body["idempotency_key"]
    return {"X-Cycles-API-Key": secret}


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_runtime_plane_conforms(case: Any, live: Live) -> None:
    key = _aimed(case, live)
    case.call_and_validate(base_url=live.url, headers=key, checks=CHECKS)
