"""A budget tree for race tests: its budgets, the subjects that spend on it, and which
ledgers each subject charges, worked out without asking the store."""

from __future__ import annotations

from dataclasses import dataclass

import allotment as al


@dataclass(frozen=True)
class Layout:
    """Plain budgets by scope, per-dimension templates (dimension, limit) by base scope, and
    the subjects that spend."""

    limits: dict[str, int]
    templates: dict[str, tuple[str, int]]
    subjects: tuple[al.Subject, ...]

    @property
    def tenants(self) -> list[str]:
        return sorted({s.tenant for s in self.subjects})

    def install(self, guard: al.Guard, unit: al.Unit, policy: str) -> None:
        for scope, limit in self.limits.items():
            guard.set_budget(scope, amount=limit, unit=unit, overage_policy=policy)
        for scope, (per, limit) in self.templates.items():
            guard.set_budget(scope, amount=limit, unit=unit, per=per, overage_policy=policy)

    def ledgers(self, subject: al.Subject) -> tuple[str, ...]:
        """The ledgers `subject` charges: its budgeted scopes, then its template ledgers."""
        derived = subject.scopes()
        found = [scope for scope in derived if scope in self.limits]
        for base, (per, _) in self.templates.items():
            if base in derived and per in subject.dimensions:
                found.append(f"{base}/{per}:{al.quote_value(subject.dimensions[per])}")
        return tuple(found)

    def limit_of(self, ledger_scope: str) -> int:
        if ledger_scope in self.limits:
            return self.limits[ledger_scope]
        return self.templates[ledger_scope.rsplit("/", 1)[0]][1]

    @staticmethod
    def merged(layouts: list[Layout]) -> Layout:
        limits: dict[str, int] = {}
        templates: dict[str, tuple[str, int]] = {}
        subjects: list[al.Subject] = []
        for layout in layouts:
            limits.update(layout.limits)
            templates.update(layout.templates)
            subjects += layout.subjects
        return Layout(limits, templates, tuple(subjects))
