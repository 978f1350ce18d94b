"""What every adapter does, written once: find the subject, estimate, reserve (or deny before
any request leaves), apply caps, and settle — commit the real usage, or the estimate when a
call reached the provider but its usage never arrived, or release when it never got there.

Adapters only translate their framework's request and response shapes; they talk to the
guard, never to a store.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import allotment as al
from allotment.adapter import (
    LEVELS,
    ElasticTerms,
    ModelPrice,
    Pricer,
    TokenUsage,
    Unit,
    Units,
    acommit_units,
    areserve_units,
    check_int,
    commit_units,
    current_fields,
    input_tokens,
    reserve_units,
    trusted_amounts,
)

log = logging.getLogger("allotment")

USD, TOKENS = Unit.USD_MICROCENTS, Unit.TOKENS
PER_TOKEN = (TOKENS, 1_000_000)  # one TOKENS unit per output token, per million
DEFAULT_MAX_TOKENS = 4_096
DEFAULT_FLOOR = 256
OnDeny = Callable[[al.Denied], Any]


def resolve_subject(wrapper: Mapping[str, Any], call: Mapping[str, Any] | None = None
                    ) -> al.Subject:
    """Wrapper arguments, then `al.scope(...)` in force, then per-call metadata: each later
    source overrides the earlier ones, level by level; dimensions merge."""
    merged: dict[str, Any] = {"dimensions": {}}
    for source in (wrapper, current_fields(), call or {}):
        for key, value in source.items():
            if value is None:
                continue
            if key == "dimensions":
                merged["dimensions"].update(value)
            elif key in LEVELS:
                merged[key] = value
            else:
                merged["dimensions"][key] = value
    if not merged.get("tenant"):
        raise al.InvalidRequest("no tenant: give tenant= to the wrapper or handler, open an "
                                "al.scope(tenant=...), or pass it in the call's metadata")
    return _subject(merged)


class Subjects:
    """A wrapper's own subject fields, resolved call by call. With no scope open and no
    per-call fields — the usual case — the answer never changes, so it is worked out once."""

    __slots__ = ("_plain", "fields")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields
        self._plain: al.Subject | None = None

    def resolve(self, call: Mapping[str, Any] | None = None) -> al.Subject:
        """The subject of one call (`resolve_subject`), worked out once when it cannot vary."""
        if call or current_fields() != _NO_SCOPE:
            return resolve_subject(self.fields, call)
        if self._plain is None:
            self._plain = resolve_subject(self.fields)
        return self._plain


_NO_SCOPE: dict[str, Any] = {"dimensions": {}}
_SUBJECTS: dict[tuple[Any, ...], al.Subject] = {}


def _subject(fields: dict[str, Any]) -> al.Subject:
    """Validated subjects, remembered: the same fields make the same (immutable) subject.
    Only text fields make a valid subject, so equal keys mean equal fields."""
    try:
        key = tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
                           for k, v in fields.items()))
        subject = _SUBJECTS.get(key)
    except TypeError:  # unhashable or unorderable values: let validation say what is wrong
        return al.Subject(**fields)
    if subject is None:
        if len(_SUBJECTS) > 10_000:
            _SUBJECTS.clear()
        subject = _SUBJECTS[key] = al.Subject(**fields)
    return subject


@dataclass(slots=True)
class Meter:
    """One guarded call from reservation to settlement; settles exactly once. Held at
    `price`, the most the tier asked for can cost; charged at the tier the usage says served
    it (unsaid: the tier asked for, the standard price when none was)."""

    guard: al.Guard
    reservation: al.Reservation
    provider: str
    model: str
    price: ModelPrice
    pricer: Pricer
    tier: str | None = None
    usage: TokenUsage | None = None
    settled: bool = False
    result: Any = field(default=None)
    keeps_model: bool = False
    """The call runs at its own model: the degrade rule's could not take it (see `start`)."""

    @property
    def caps(self) -> al.Caps | None:
        """What the budget lets the call do (None: no limit beyond the hold)."""
        caps = self.reservation.caps
        if self.keeps_model and caps is not None and caps.model is not None:
            caps = replace(caps, model=None)
            return None if caps == _NO_CAPS else caps
        return caps

    def commit(self, usage: TokenUsage | None = None) -> None:
        """Charge what was used; with no usage known, the estimate (never free)."""
        if not self.settled:
            self.settled = True
            usage = usage or self.usage
            if usage is None:
                self.result = self.reservation.commit(self._estimate())
            else:
                self.result = commit_units(self.reservation, self.units(usage), usage)

    async def acommit(self, usage: TokenUsage | None = None) -> None:
        """`commit` without blocking the event loop."""
        if not self.settled:
            self.settled = True
            usage = usage or self.usage
            if usage is None:
                self.result = await self.reservation.acommit(self._estimate())
            else:
                self.result = await acommit_units(self.reservation, self.units(usage), usage)

    def settle(self, usage: TokenUsage | None) -> None:
        """Settle after the provider answered: a commit refused under REJECT falls back to
        the estimate (the call happened); a store failure is left to the guard, which retries
        and sends unrecorded spend to the sinks — the caller keeps its response."""
        try:
            self.commit(usage)
        except al.BudgetExceeded:
            self.settled = False
            self.commit(None)
        except al.AllotmentError as error:
            log.error("could not commit %s: %s", self.reservation.id, error)

    async def asettle(self, usage: TokenUsage | None) -> None:
        """`settle` without blocking the event loop."""
        try:
            await self.acommit(usage)
        except al.BudgetExceeded:
            self.settled = False
            await self.acommit(None)
        except al.AllotmentError as error:
            log.error("could not commit %s: %s", self.reservation.id, error)

    def _estimate(self) -> tuple[al.Amount, ...]:
        log.warning("no usage reported for %s: committing the estimate", self.reservation.id)
        return self.reservation.estimate

    def actual(self, usage: TokenUsage) -> list[al.Amount]:
        """The real cost in dollars (at the model's price) and in tokens."""
        return list(trusted_amounts(self.units(usage)))

    def units(self, usage: TokenUsage) -> Units:
        """`actual(usage)` as the guard's integer units."""
        tenant = self.reservation.info.subject.tenant
        price = self.pricer.price_of(self.provider, self.model, tenant,
                                     usage.service_tier or self.tier)
        return ((USD, price.cost_microcents(usage)),
                (TOKENS, check_int(usage.input_tokens + usage.output_tokens, "tokens")))

    def release(self, reason: str) -> None:
        """Give the hold back: the call never reached the provider."""
        if not self.settled:
            self.settled = True
            self.result = self.reservation.release(reason)

    async def arelease(self, reason: str) -> None:
        """`release` without blocking the event loop."""
        if not self.settled:
            self.settled = True
            self.result = await self.reservation.arelease(reason)


class Estimate(NamedTuple):
    """A call's estimate as the guard takes it from an adapter."""

    price: ModelPrice
    units: Units
    elastic: ElasticTerms | None


@dataclass(slots=True)
class Request:
    """A model call as the guard sees it, whatever framework made it."""

    subject: al.Subject
    kind: str  # "llm.completion" | "llm.embedding"
    provider: str
    model: str
    payload: Any  # what the input tokens are counted from
    max_tokens: int | None  # None for calls without output tokens (embeddings)
    overhead: int = 0
    service_tier: str | None = None  # as the request names it; None: the provider picks


class Metering:
    """Shared settings of an adapter: the guard, prices, and what to do on a denial."""

    def __init__(self, guard: al.Guard, *, pricer: Pricer | None = None,
                 on_deny: OnDeny | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 floor: int | None = DEFAULT_FLOOR, ttl_ms: int | None = None) -> None:
        """`floor=None`: an output hold never shrinks, for hooks that cannot shrink the call
        they let through (a hold the budget cannot fit is refused whole)."""
        if not isinstance(guard, al.Guard):
            raise al.InvalidRequest(f"guard: expected an al.Guard, got {guard!r}")
        self.guard = guard
        self.pricer = pricer or Pricer()
        self.on_deny = on_deny
        # checked here: the guard's adapter entry points take them as they are
        self.default_max_tokens = check_int(default_max_tokens, "default_max_tokens", 1)
        self.floor = None if floor is None else check_int(floor, "floor", 0)
        self.ttl_ms = ttl_ms

    def estimate(self, request: Request) -> Estimate:
        """USD and TOKENS upper bounds: input counted offline, output up to max_tokens (an
        elastic hold, at the output price per million tokens, that may shrink to a floor), at
        the highest price the service tier asked for can be billed at."""
        price = self.pricer.hold_price(request.provider, request.model, request.subject.tenant,
                                       request.service_tier)
        prompt = check_int(input_tokens(request.payload, request.overhead), "input tokens")
        fixed = ((USD, price.input_microcents(prompt)), (TOKENS, prompt))
        if request.max_tokens is None:
            return Estimate(price, fixed, None)
        max_tokens = check_int(request.max_tokens, "max_tokens", 1)
        floor = max_tokens if self.floor is None else min(self.floor, max_tokens)
        return Estimate(price, fixed, ElasticTerms(((USD, price.output_rate.amount), PER_TOKEN),
                                                   max_tokens, floor))

    def start(self, request: Request) -> Meter:
        """Reserve, or raise `Denied` before anything is sent. When a degrade rule switches
        the model, the hold is made again at the new model's price. A degrade never denies
        a call that was allowed: when the new model has no price for the call's provider,
        or its hold does not fit, the call keeps its own model (and the log says why)."""
        meter = self._reserve(request)
        switched = self._switched(request, meter)
        if switched is None:
            return meter
        meter.release("model switched by a degrade rule")
        try:
            return self._reserve(switched)
        except al.Denied as denied:
            return _kept(self._reserve(request), switched.model, denied.decision.reason)

    async def astart(self, request: Request) -> Meter:
        """`start` without blocking the event loop."""
        meter = await self._areserve(request)
        switched = self._switched(request, meter)
        if switched is None:
            return meter
        await meter.arelease("model switched by a degrade rule")
        try:
            return await self._areserve(switched)
        except al.Denied as denied:
            return _kept(await self._areserve(request), switched.model, denied.decision.reason)

    def reserve(self, request: Request) -> Meter:
        """Reserve for exactly this request (no model switch: for hooks that cannot change
        the call), or raise `Denied`."""
        return self._reserve(request)

    async def areserve(self, request: Request) -> Meter:
        """`reserve` without blocking the event loop."""
        return await self._areserve(request)

    def _reserve(self, request: Request) -> Meter:
        price, units, elastic = self.estimate(request)
        reservation = reserve_units(self.guard, request.subject, _action(request), units,
                                    elastic, self.ttl_ms)
        return self._meter(request, reservation, price)

    async def _areserve(self, request: Request) -> Meter:
        price, units, elastic = self.estimate(request)
        reservation = await areserve_units(self.guard, request.subject, _action(request),
                                           units, elastic, self.ttl_ms)
        return self._meter(request, reservation, price)

    def _meter(self, request: Request, reservation: al.Reservation, price: ModelPrice) -> Meter:
        return Meter(self.guard, reservation, request.provider, request.model, price,
                     self.pricer, request.service_tier)

    def _switched(self, request: Request, meter: Meter) -> Request | None:
        """The request at the model a degrade rule names, if it names another one that the
        call's provider prices (a rule stored before rules were checked may not)."""
        caps = meter.reservation.decision.caps
        model = caps.model if caps is not None else None
        if model is None or model == request.model:
            return None
        try:
            self.pricer.hold_price(request.provider, model, request.subject.tenant,
                                   request.service_tier)
        except al.Denied as denied:
            _kept(meter, model, denied.decision.reason)
            return None
        return replace(request, model=model)


_NO_CAPS = al.Caps()
_WARNED: set[tuple[str, str, str | None]] = set()


def _kept(meter: Meter, target: str, reason: str | None) -> Meter:
    """Run the call at its own model instead of the degrade target, and say why (a warning
    the first time for each model, target and reason; debug level after that)."""
    meter.keeps_model = True
    key = (f"{meter.provider}:{meter.model}", target, reason)
    level = logging.DEBUG if key in _WARNED else logging.WARNING
    if len(_WARNED) < 1_000:
        _WARNED.add(key)
    log.log(level, "%s: a degrade rule names %s for %s, refused with %s; the call keeps its "
            "model", meter.reservation.id, target, key[0], reason)
    return meter


def _action(request: Request) -> al.Action:
    """Actions are immutable and few (one per kind and model), so each is built once."""
    key = (request.kind, request.provider, request.model)
    action = _ACTIONS.get(key)
    if action is None:
        if len(_ACTIONS) > 10_000:
            _ACTIONS.clear()
        action = _ACTIONS[key] = al.Action(request.kind, f"{request.provider}:{request.model}")
    return action


_ACTIONS: dict[tuple[str, str, str], al.Action] = {}


def allowed_tools(names: list[str], caps: al.Caps | None) -> set[str]:
    """The tool names the caps let a model be offered (globs in allow and deny lists)."""
    if caps is None:
        return set(names)
    keep = set(names)
    if caps.tool_allowlist is not None:
        keep = {n for n in keep if any(fnmatch.fnmatchcase(n, p) for p in caps.tool_allowlist)}
    if caps.tool_denylist:
        keep = {n for n in keep if not any(fnmatch.fnmatchcase(n, p) for p in caps.tool_denylist)}
    return keep


def cap_tools(body: dict[str, Any], caps: al.Caps) -> None:
    """Take the tools the caps do not allow off an SDK request body (and `tool_choice` with
    the last of them); a tool is named as OpenAI's chat (`function.name`), Responses and
    Anthropic's (`name`) name it."""
    tools = body.get("tools")
    if not isinstance(tools, list) or (caps.tool_allowlist is None and not caps.tool_denylist):
        return
    names = [_tool_name(t) for t in tools]
    keep = allowed_tools([n for n in names if n], caps)
    body["tools"] = [t for t, n in zip(tools, names, strict=True) if n is None or n in keep]
    if not body["tools"]:
        del body["tools"]
        body.pop("tool_choice", None)


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    if isinstance(function, dict):
        return function.get("name")
    return tool.get("name")
