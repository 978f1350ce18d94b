"""Adapters reach the core through `allotment` and `allotment.adapter` only (no core module,
no private attribute of a core object), and the SDKs through their public modules only, so a
change inside either never reaches into them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTEGRATIONS = ROOT / "integrations"
CORE = {p.stem for p in (ROOT / "core").iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__", "adapter"}
"""The core's modules and packages an adapter may not import (`allotment.adapter` it may)."""
SDKS = {"openai", "anthropic"}


def module_name(path: Path) -> str:
    """`integrations/langchain/usage.py` is `allotment.integrations.langchain.usage`."""
    parts = path.relative_to(INTEGRATIONS).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("allotment", "integrations", *parts))


def imported(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every module a source imports, relative imports resolved; `from m import n` yields
    `m.n` too, since `n` may be a module."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    for name in imported(source, module, is_package):
        root, *rest = name.split(".")
        if root == "allotment" and rest and rest[0] in CORE:
            found.append(f"core module {name}")
        elif root in SDKS and any(part.startswith("_") for part in rest):
            found.append(f"private SDK module {name}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def core_private_names() -> set[str]:
    """The private methods and attributes the core defines (`_reserve_units`, `_store`...),
    whether by `def`, by assigning an attribute, or by naming one in a class body (the twins
    of a call are assigned: `_reserve_units, _areserve_units = flow_twins(...)`)."""
    names = set()
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and _private(node.attr)):
                names.add(node.attr)
            elif (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
                  and _private(node.id)):
                names.add(node.id)
    return names


CORE_PRIVATE = core_private_names()


def private_uses(source: str) -> list[str]:
    """`x._name` where `_name` is private to a core class (an object's own `self._name`, and
    the private names of frameworks the core does not use, are its own business)."""
    return [ast.unparse(node) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr in CORE_PRIVATE
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def adapter_modules() -> list[Path]:
    return sorted(INTEGRATIONS.rglob("*.py"))


def test_every_adapter_module_is_checked() -> None:
    names = {module_name(p) for p in adapter_modules()}
    assert {"allotment.integrations.openai", "allotment.integrations.anthropic",
            "allotment.integrations.langchain.callbacks",
            "allotment.integrations.llamaindex"} <= names


@pytest.mark.parametrize("path", adapter_modules(),
                         ids=lambda p: str(p.relative_to(INTEGRATIONS)))
def test_adapters_import_only_the_adapter_surface(path: Path) -> None:
    found = violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, f"{path.relative_to(ROOT)} imports {', '.join(found)}"


@pytest.mark.parametrize("path", adapter_modules(),
                         ids=lambda p: str(p.relative_to(INTEGRATIONS)))
def test_adapters_use_no_private_attribute_of_the_core(path: Path) -> None:
    found = private_uses(path.read_text())
    assert not found, f"{path.relative_to(ROOT)} uses {', '.join(found)}"


def test_the_check_catches_private_core_attributes() -> None:
    assert private_uses("guard._reserve_units(s, a, u, None, None)")
    assert private_uses("meter.reservation._commit_units(actual)")
    assert not private_uses("self._calls.pop(run_id)")


@pytest.mark.parametrize("source", [
    "from allotment.pricing import TokenUsage",
    "import allotment.scopes",
    "from allotment import estimation",
    "from allotment.stores.operations import ElasticTerms",
    "from ... import pricing",
    "from ...validation import MAX_AMOUNT",
    "from openai._models import BaseModel",
    "from anthropic import _types",
    "import openai._streaming",
])
def test_the_check_catches_reaching_past_the_surface(source: str) -> None:
    assert violations(source, "allotment.integrations.langchain.usage")


@pytest.mark.parametrize("source", [
    "import allotment as al",
    "from allotment import Guard, Subject",
    "from allotment.adapter import TokenUsage",
    "from allotment.integrations._usage import openai_usage",
    "from .._metering import Meter",
    "from . import usage",
    "from openai.types import CompletionUsage",
])
def test_the_check_lets_the_surface_through(source: str) -> None:
    assert not violations(source, "allotment.integrations.langchain.usage")
