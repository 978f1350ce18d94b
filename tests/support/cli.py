"""Running the operators' CLI through its real click command, on each store kind.

memory: the embedded store lives in one process and `memory://` is empty in each new one,
so a flow of several commands runs in this process on one guard handed to the command
(`obj={"guard": ...}`, as an embedding application would). redis: every command opens the
store from its URL (`--store redis://...`), exactly as an operator's shell would, and the
test drives traffic through a guard of its own on the same database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from click.testing import CliRunner, Result

import allotment as al
from allotment.cli import command

PLANS = "examples/plans.yaml"


@dataclass
class Cli:
    """Runs `allotment ...` on one store; `guard` is the test's own handle on that store."""

    guard: al.Guard
    url: str | None
    extra: list[str] = field(default_factory=list)

    def run(self, *args: str, code: int = 0) -> Result:
        """Invoke the command; assert its exit code and that no traceback escaped."""
        obj: dict[str, Any] = {} if self.url or self.extra else {"guard": self.guard}
        store = ["--store", self.url] if self.url and not self.extra else []
        result = CliRunner().invoke(command(), [*args, *store, *self.extra], obj=obj,
                                    catch_exceptions=False)
        assert "Traceback" not in result.output, result.output
        assert result.exit_code == code, (result.exit_code, result.output)
        return result
