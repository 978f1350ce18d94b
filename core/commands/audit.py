"""`allotment audit TENANT`: the tenant's audit log, and the answer to "why was my agent
stopped?": each denial with the scope that refused, its reason and the figures (what was
asked, the limit, what remained, when it frees up)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import click

from ..amounts import Unit
from ..clock import moment_ms
from ..events import AuditRecord, AuditType
from ..scopes import tenant_name
from ..server.records import audit_from_json, audit_json, iso_ms
from ._output import amount, emit_json
from ._target import USAGE, Failure, Target, handled, opened, target_options

_AGO = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DENIALS = (AuditType.DENIED, AuditType.OBSERVED_DENIED)


def since_ms(text: str | None, now_s: float, option: str = "--since") -> int | None:
    """`--since`, `--until`: an age (`30m`, `2h`, `7d` ago), an ISO-8601 time with its zone,
    or epoch ms."""
    if text is None:
        return None
    ago = _AGO.match(text)
    if ago:
        return int((now_s - int(ago.group(1)) * _SECONDS[ago.group(2)]) * 1000)
    at = moment_ms(text)
    if at is None:
        raise Failure(f"{option} {text!r}: give an age (30m, 2h, 7d), an ISO-8601 time with "
                      "its zone (2026-12-01T00:00:00Z) or epoch milliseconds", USAGE)
    return at


def record_json(r: AuditRecord) -> dict[str, Any]:
    """A record for scripts: every field, amounts as exact integers (the server's shape),
    and for a denial the sentence that says why."""
    view = audit_json(r)
    if r.type in DENIALS:
        view["why"] = why(r)
    return view


def why(r: AuditRecord) -> str:
    """One sentence: who was stopped, by which scope, for what reason, with the figures."""
    d = r.detail
    who = []
    if r.subject is not None:
        for level in ("agent", "workflow"):
            value = getattr(r.subject, level)
            if value:
                who.append(f"{level} {value}")
                break
        who += [f"{k} {v}" for k, v in sorted(r.subject.dimensions.items())]
    refusing = r.scopes[0] if r.scopes else f"tenant:{r.tenant}"
    verb = "would have been stopped" if r.type == AuditType.OBSERVED_DENIED else "stopped"
    text = f"{', '.join(who) or 'call'} {verb} by {refusing} ({r.reason})"
    if "unit" in d and "requested" in d:
        unit = Unit(d["unit"])
        if "quota" in d:
            window = f" per {d['window']}" if d.get("window") else ""
            text += (f": {d['quota']} quota of {d.get('limit')}{window}, "
                     f"{d.get('remaining')} left")
        else:
            period = f" {d['period']}" if d.get("period") else ""
            text += (f": asked {amount(unit, d['requested'])} of{period} budget "
                     f"{amount(unit, d['limit'])}, {amount(unit, d['remaining'])} left")
    elif "quota" in d:
        window = f" per {d['window']}" if d.get("window") else ""
        text += f": {d['quota']} quota of {d.get('limit')}{window}, {d.get('remaining')} left"
    if d.get("missing"):
        text += f": missing {', '.join(map(str, d['missing']))}"
    if d.get("retry_after_ms") is not None:
        text += f"; frees up in {int(d['retry_after_ms']) / 1000:g}s"
    if r.action:
        text += f"; action {r.action}"
    return text


def _line(r: AuditRecord) -> str:
    scope = r.scopes[0] if r.scopes else "-"
    head = f"{iso_ms(r.at_ms)}  {r.type:<28} {scope}"
    if r.type in DENIALS:
        return f"{head}\n    why: {why(r)}"
    extra = []
    if r.reason:
        extra.append(f"reason {r.reason!r}")
    if r.actor:
        extra.append(f"by {r.actor}")
    if r.charged:
        extra.append("charged " + ", ".join(amount(a.unit, a.amount) for a in r.charged))
    d = r.detail
    if "threshold" in d:  # a budget notification on record
        extra.append(f"{d['threshold']:.0%} of {amount(Unit(d['unit']), d['allocated'])}")
    if "debt_incurred" in d:
        extra.append(f"debt +{amount(Unit(d['unit']), d['debt_incurred'])}")
    if "webhook_id" in d:  # a subscription made, changed or removed
        extra += [f"webhook {d['webhook_id']}",
                  *(["to " + d["destination"]] if "destination" in d else []),
                  *(["paused" if not d["enabled"] else "active"] if "enabled" in d else []),
                  *(["secret rotated"] if d.get("secret_rotated") else [])]
    return head + (f"  ({'; '.join(extra)})" if extra else "")


def _matches(r: AuditRecord, run: str | None) -> bool:
    return run is None or (r.subject is not None and r.subject.dimensions.get("run") == run)


@click.command(help="The tenant's audit log, oldest first. A denial shows why: the scope that "
                    "refused, the reason and the figures. --denials shows only those; "
                    "--follow keeps printing new records until interrupted.")
@click.argument("tenant")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only records of this type (repeat); e.g. reservation.denied, budget.set.")
@click.option("--denials", is_flag=True, help="Only denials (and shadow mode's would-be ones).")
@click.option("--run", default=None, help="Only records of this run id.")
@click.option("--since", default=None, help="From: an age (30m, 2h, 7d), an ISO-8601 time or "
                                             "epoch ms.")
@click.option("--until", default=None, help="Until (included): an age, an ISO-8601 time or "
                                             "epoch ms; not with --follow.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="The newest this many records.")
@click.option("--follow", is_flag=True, help="Keep printing new records as they come.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 3600),
              help="With --follow: seconds between reads.")
@click.option("--follow-for", "follow_for", default=None, type=click.FloatRange(0, None),
              help="With --follow: stop after this many seconds (default: until Ctrl-C).")
@target_options
@handled
def audit(tenant: str, types: tuple[str, ...], denials: bool, run: str | None,
          since: str | None, until: str | None, limit: int, follow: bool, interval: float,
          follow_for: float | None, store: str | None, server: str | None, key: str | None,
          as_json: bool) -> None:
    name = tenant_name(tenant, "TENANT")
    kinds = list(types) + (list(DENIALS) if denials else [])
    now = time.time()
    start, end = since_ms(since, now), since_ms(until, now, "--until")
    if follow and end is not None:
        raise Failure("--until: a log followed has no end; leave out --until or --follow",
                      USAGE)
    with opened(store, server, key, as_json) as target:
        read = reader(target, name, kinds or None)
        records = [r for r in read(start, limit, end) if _matches(r, run)]
        if not follow:
            if as_json:
                emit_json({"tenant": name, "records": [record_json(r) for r in records]})
            elif records:
                for r in records:
                    click.echo(_line(r))
            else:
                click.echo(f"no audit records for tenant {name}")
            return
        _follow(read, records, run, interval, follow_for, as_json)


Reader = Callable[[int | None, int, int | None], list[AuditRecord]]
"""(since, limit, until) -> the records: from the store, or from the server's audit route."""


def reader(target: Target, name: str, kinds: list[str] | None) -> Reader:
    """How this target reads the tenant's records."""
    guard, server = target.guard, target.server
    if guard is not None:
        return lambda since, limit, until: list(guard.audit(
            name, since=since, until=until, types=kinds, limit=limit))
    assert server is not None

    def over_http(since: int | None, limit: int, until: int | None) -> list[AuditRecord]:
        params: dict[str, Any] = {"tenant": name, "limit": limit, "type": kinds or []}
        for field, value in (("since", since), ("until", until)):
            if value is not None:
                params[field] = value
        answer = server.call("GET", "/v1/audit", params=params)
        return [audit_from_json(r) for r in answer["records"]]

    return over_http


def _follow(read: Reader, first: list[AuditRecord], run: str | None, interval: float,
            follow_for: float | None, as_json: bool) -> None:
    """Print each record once as it comes (JSON: one object per line), until interrupted."""
    last_seq, last_ms = 0, None
    deadline = None if follow_for is None else time.monotonic() + follow_for
    batch = first
    try:
        while True:
            for r in batch:
                if r.seq <= last_seq:
                    continue
                last_seq, last_ms = r.seq, r.at_ms
                if _matches(r, run):
                    click.echo(_jsonl(r) if as_json else _line(r))
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(interval)
            batch = read(last_ms, 10_000, None)
    except KeyboardInterrupt:
        return


def _jsonl(r: AuditRecord) -> str:
    import json

    return json.dumps(record_json(r), default=str)
