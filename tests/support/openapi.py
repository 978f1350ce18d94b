"""Validate response bodies against the Cycles OpenAPI file: the schema of a route's
response for a status, looked up in `tests/server/data/cycles-protocol-v0.yaml`."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).resolve().parent.parent / "server" / "data" / "cycles-protocol-v0.yaml"


@cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _template(path: str) -> str:
    """The spec's path template that `path` (query string dropped) matches."""
    path = path.split("?", 1)[0]
    for template in spec()["paths"]:
        pattern = re.sub(r"\{[^/]+\}", r"[^/]+", template)
        if re.fullmatch(pattern, path):
            return str(template)
    raise AssertionError(f"{path} is not a path of the spec")


def response_schema(method: str, path: str, status: int) -> dict[str, Any]:
    """The JSON schema the spec gives the body of `status` on `method path`."""
    operation = spec()["paths"][_template(path)][method.lower()]
    responses = operation["responses"]
    response = responses.get(str(status))
    if response is None:
        assert status >= 400, f"{method} {path}: the spec has no {status} response"
        return {"$ref": "#/components/schemas/ErrorResponse"}
    schema: dict[str, Any] = _resolve(response)["content"]["application/json"]["schema"]
    return schema


def validate(method: str, path: str, status: int, body: Any) -> None:
    """Raise if `body` is not what the spec allows for this response."""
    schema = {**response_schema(method, path, status), "components": spec()["components"]}
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(body)
    assert "null" not in _nulls(body), f"{method} {path} {status}: a null in {body}"


def _nulls(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "".join(_nulls(v) for v in value.values())
    if isinstance(value, list):
        return "".join(_nulls(v) for v in value)
    return ""
