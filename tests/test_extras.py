"""The extras' ranges cannot drift from what is tested: each lower bound in pyproject.toml is the
release tests/constraints/lowest.txt pins (so `make test-lowest` runs the oldest release a user
may install), and no range is capped without a known break."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(r) for r in requirements]
            for name, requirements in project["optional-dependencies"].items()
            if name != "dev"}


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / "tests" / "constraints" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[name.strip().lower()] = Version(version)
    return found


def test_every_lower_bound_is_the_release_the_lowest_environment_pins() -> None:
    pinned = pins()
    for extra, requirements in extras().items():
        for requirement in requirements:
            (lower,) = [s.version for s in requirement.specifier if s.operator == ">="]
            assert pinned.get(requirement.name) == Version(lower), (
                f"[{extra}] {requirement}: tests/constraints/lowest.txt must pin "
                f"{requirement.name}=={lower}, the lowest release the extra admits")


def test_no_extra_caps_a_release_without_a_known_break() -> None:
    for extra, requirements in extras().items():
        for requirement in requirements:
            assert all(s.operator == ">=" for s in requirement.specifier), (
                f"[{extra}] {requirement}: an upper bound needs a known break (say which)")
