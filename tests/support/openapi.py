"""Validate response bodies against the Cycles OpenAPI files: the schema of a route's
response for a status, looked up in `tests/server/data/cycles-protocol-v0.yaml` (the
runtime plane) or, with `source=GOVERNANCE`, the governance admin file beside it."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DATA = Path(__file__).resolve().parent.parent / "server" / "data"
SPEC = DATA / "cycles-protocol-v0.yaml"
GOVERNANCE = DATA / "cycles-governance-admin-v0.1.25.yaml"


@cache
def spec(source: Path = SPEC) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(source.read_text())
    return loaded


def _resolve(node: dict[str, Any], source: Path) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec(source)
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _template(path: str, source: Path) -> str:
    """The spec's path template that `path` (query string dropped) matches. A parameter
    may hold a `/` (allotment's webhook ids do), so the most literal template is tried
    first: fewer parameters, then the longer (`{id}/deliveries` before `{id}`)."""
    path = path.split("?", 1)[0]
    for template in sorted(spec(source)["paths"], key=lambda t: (t.count("{"), -len(t))):
        pattern = re.sub(r"\{[^/]+\}", r".+", template)
        if re.fullmatch(pattern, path):
            return str(template)
    raise AssertionError(f"{path} is not a path of the spec")


def response_schema(method: str, path: str, status: int,
                    source: Path = SPEC) -> dict[str, Any]:
    """The JSON schema the spec gives the body of `status` on `method path`."""
    operation = spec(source)["paths"][_template(path, source)][method.lower()]
    responses = operation["responses"]
    response = responses.get(str(status))
    if response is None:
        assert status >= 400, f"{method} {path}: the spec has no {status} response"
        return {"$ref": "#/components/schemas/ErrorResponse"}
    schema: dict[str, Any] = _resolve(response, source)["content"]["application/json"][
        "schema"]
    return schema


def validate(method: str, path: str, status: int, body: Any, source: Path = SPEC) -> None:
    """Raise if `body` is not what the spec allows for this response."""
    schema = {**response_schema(method, path, status, source),
              "components": spec(source)["components"]}
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(body)
    assert "null" not in _nulls(body), f"{method} {path} {status}: a null in {body}"


def conforms(schema: str, body: Any, source: Path = SPEC) -> None:
    """Raise if `body` is not an instance of the spec's `components/schemas/<schema>`."""
    jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": spec(source)["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(body)


def _nulls(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "".join(_nulls(v) for v in value.values())
    if isinstance(value, list):
        return "".join(_nulls(v) for v in value)
    return ""
