"""The webhook calls: subscriptions (global or per tenant), the delivery log and replay.

Pure builders with sync/async twins; a tenant handle offers the same calls for its own
tenant only (see `tenant.py`). Delivery itself is `allotment.webhooks.Dispatcher`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from . import arguments as arg
from .calls import Flow, Runner, flow_twins, followed_twins, twins
from .errors import InvalidRequest
from .events import check_type
from .scopes import tenant_name
from .stores import hooks
from .validation import MAX_LIST, check_int, check_list, shown
from .webhook_security import DEFAULT_BLOCKED, check_destination, check_security, security_of

MAX_URL = 2_048


def check_url(url: object) -> str:
    """An absolute http(s) URL with a host; where it resolves is checked when sending."""
    if (not isinstance(url, str) or not url or len(url) > MAX_URL or not url.isascii()
            or not url.isprintable() or " " in url):
        raise InvalidRequest(f"url: expected an http(s) URL of at most {MAX_URL} printable "
                             f"ASCII characters, got {shown(url)}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError as error:
        raise InvalidRequest(f"url: {shown(url)} cannot be read as a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"url: {shown(url)} is not an absolute http:// or https:// URL "
                             "(e.g. 'https://hooks.example.com/allotment')")
    return url


def check_events(events: Any, every: frozenset[str] = hooks.WEBHOOK_TYPES
                 ) -> tuple[str, ...]:
    """Event types to send (sorted, once each); "*" is `every` type (that a webhook can
    carry, or its format)."""
    if isinstance(events, str):
        events = [events]
    if events is None or not isinstance(events, (list, tuple, set, frozenset)) or not events:
        raise InvalidRequest("events: give at least one event type, e.g. "
                             "['budget.exhausted'] (or '*' for all)")
    if "*" in events:
        return tuple(sorted(every))
    kinds = check_list(list(events), "events", MAX_LIST,
                       lambda kind, field: check_type(kind, field, hooks.WEBHOOK_TYPES),
                       "['budget.exhausted']")
    return tuple(sorted(set(kinds)))


def check_secret(secret: object, format: str = hooks.STANDARD) -> str:
    """A supplied secret: `whsec_` and base64 of 24 to 64 bytes (Standard Webhooks); for
    the Cycles format any text of 16 to 256 characters (its bytes are the key)."""
    if format == hooks.CYCLES:  # never repeated in the error: it is a secret
        # (a lone surrogate, which Redis could not store, is not printable either)
        if not isinstance(secret, str) or not 16 <= len(secret) <= 256 \
                or not secret.isprintable():
            raise InvalidRequest("secret: give 16 to 256 characters, all printable (or leave it "
                                 "out to have one generated)")
        return secret
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise InvalidRequest("secret: expected 'whsec_' followed by base64 (or leave it out "
                             "to have one generated)")
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("secret: the part after 'whsec_' is not valid base64") from None
    if not 24 <= len(raw) <= 64:
        raise InvalidRequest(f"secret: {len(raw)} bytes; give 24 to 64 random bytes")
    return secret


def _kinds(events: Any, format: str) -> tuple[str, ...]:
    """The event types a subscription in `format` may be sent ("*": every one it can)."""
    kinds = check_events(events, hooks.CYCLES_TYPES if format == hooks.CYCLES
                         else hooks.WEBHOOK_TYPES)
    if format == hooks.CYCLES and not set(kinds) <= hooks.CYCLES_TYPES:
        raise InvalidRequest("events: " + ", ".join(sorted(set(kinds) - hooks.CYCLES_TYPES))
                             + " have no Cycles event type; the Cycles format sends only "
                             + ", ".join(sorted(hooks.CYCLES_TYPES)))
    return kinds


def _owner(tenant: str | None) -> str:
    return hooks.GLOBAL if tenant is None else tenant_name(tenant)


def _enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"enabled: expected True or False, got {shown(value)}")
    return value


def subscribe_webhook_op(url: str, *, events: Any, tenant: str | None = None,
                         secret: str | None = None, enabled: bool = True,
                         format: str = hooks.STANDARD, actor: str | None = None,
                         reason: str | None = None) -> hooks.SubscribeWebhook:
    """Send `events` (types of `NotificationType`, or "*") to `url`: for every tenant
    (`tenant=None`) or one; signed per Standard Webhooks, or with `format="cycles"` as the
    Cycles dispatcher signs (see `hooks.CYCLES`; then only the Cycles event types). The
    answer carries the signing secret (generated unless given); it is shown this once.
    `actor` and `reason` go on the record of a tenant's own subscription."""
    if format not in (hooks.STANDARD, hooks.CYCLES):
        raise InvalidRequest(f"format: {shown(format)} is not 'standard' or 'cycles'")
    return hooks.SubscribeWebhook(
        tenant=_owner(tenant), webhook_id=hooks.new_webhook_id(
            None if tenant is None else tenant_name(tenant)),
        url=check_url(url), events=_kinds(events, format),
        secret=hooks.new_secret() if secret is None else check_secret(secret, format),
        enabled=_enabled(enabled), format=format, **arg.signed(actor, reason))


def _destination(url: str) -> Flow[None]:
    """A subscription's URL, as the webhook security configuration allows one now."""
    check_destination(url, security_of((yield hooks.GetWebhookSecurity(hooks.GLOBAL))))


def within_security(op: hooks.SubscribeWebhook) -> Flow[hooks.Webhook]:
    """Make a subscription whose URL the webhook security configuration allows."""
    yield from _destination(op.url)
    made: hooks.Webhook = yield op
    return made


def webhooks_op(tenant: str | None = None) -> hooks.ListWebhooks:
    """The global subscriptions (`tenant=None`) or one tenant's own, secrets left out."""
    return hooks.ListWebhooks(tenant=_owner(tenant))


def remove_webhook_op(webhook_id: str, *, actor: str | None = None,
                      reason: str | None = None) -> hooks.RemoveWebhook:
    """Stop sending to a subscription; True if it existed. Its pending deliveries are
    dropped (logged as failed) when next due."""
    return hooks.RemoveWebhook(tenant=hooks.owner_of(webhook_id, "webhook_id"),
                               webhook_id=webhook_id, **arg.signed(actor, reason))


def enable_webhook_op(webhook_id: str, enabled: bool = True, *, actor: str | None = None,
                      reason: str | None = None) -> hooks.UpdateWebhook:
    """Pause (`enabled=False`) or resume a subscription: while paused no new events are
    kept for it and its pending deliveries wait."""
    who = arg.signed(actor, reason)
    return hooks.UpdateWebhook(tenant=hooks.owner_of(webhook_id, "webhook_id"),
                               webhook_id=webhook_id, enabled=_enabled(enabled),
                               actor=who["actor"], reason=who["reason"])


def update_webhook_flow(webhook_id: str, *, url: str | None = None, events: Any = None,
                        secret: str | None = None, enabled: bool | None = None,
                        actor: str | None = None, reason: str | None = None
                        ) -> Flow[hooks.Webhook]:
    """Change a subscription in place: its `url`, its `events` (replacing them), its
    signing `secret` (a rotation: deliveries from now on are signed with the new one, a
    retry of an older event too), or `enabled`; what is left None stays. Its id, format,
    delivery log and pending deliveries are kept. Answers the subscription without its
    secret."""
    owner = hooks.owner_of(webhook_id, "webhook_id")
    if url is None and events is None and secret is None and enabled is None:
        raise InvalidRequest("give at least one of url, events, secret or enabled to change")
    if url is not None:
        check_url(url)
    if events is not None:
        check_events(events)  # an unknown type is refused before the store is asked
    if secret is not None and not isinstance(secret, str):
        raise InvalidRequest("secret: expected a string")
    if enabled is not None:
        _enabled(enabled)
    who = arg.signed(actor, reason)
    return _updating(hooks.UpdateWebhook(tenant=owner, webhook_id=webhook_id, url=url,
                                         secret=secret, enabled=enabled, actor=who["actor"],
                                         reason=who["reason"]), events)


def _updating(op: hooks.UpdateWebhook, events: Any) -> Flow[hooks.Webhook]:
    """What depends on the subscription's format (which never changes) is checked against
    it first: the event types it can carry, how its secret is spelt; a new URL is checked
    against the webhook security configuration."""
    if op.url is not None:
        yield from _destination(op.url)
    if events is not None or op.secret is not None:
        found: hooks.Webhook = yield hooks.GetWebhook(tenant=op.tenant,
                                                      webhook_id=op.webhook_id)
        if events is not None:
            op.events = _kinds(events, found.format)
        if op.secret is not None:
            op.secret = check_secret(op.secret, found.format)
    changed: hooks.Webhook = yield op
    return changed


def webhook_deliveries_op(*, event_id: str | None = None, webhook_id: str | None = None,
                          tenant: str | None = None, limit: int = 100
                          ) -> hooks.Deliveries:
    """The delivery log (attempts, status, last response or error), oldest event first:
    of one event, one subscription, one tenant, or all."""
    owner = _owner(tenant)
    if event_id is not None:
        owner = hooks.owner_of(event_id, "event_id")
    elif webhook_id is not None and tenant is None:
        owner = hooks.owner_of(webhook_id, "webhook_id")
    if tenant is not None and owner != tenant_name(tenant):
        raise InvalidRequest(f"event_id: {event_id!r} is not an event of tenant {tenant!r}")
    if webhook_id is not None:
        hooks.owner_of(webhook_id, "webhook_id")
    return hooks.Deliveries(tenant=owner, event_id=event_id, webhook_id=webhook_id,
                            limit=check_int(limit, "limit", 1, 100_000))


def replay_webhook_event_op(event_id: str, webhook_id: str | None = None
                            ) -> hooks.ReplayEvent:
    """Send an event again, now: to `webhook_id`, or to every subscription it went to.
    Returns how many deliveries were queued."""
    tenant = hooks.owner_of(event_id, "event_id")
    if webhook_id is not None and hooks.owner_of(webhook_id, "webhook_id") not in (
            hooks.GLOBAL, tenant):
        raise InvalidRequest(f"webhook_id: {webhook_id!r} belongs to another tenant than "
                             f"the event {event_id!r}")
    return hooks.ReplayEvent(tenant=tenant, event_id=event_id, webhook_id=webhook_id)


def webhook_security_op() -> hooks.GetWebhookSecurity:
    """Where webhooks may go (see `WebhookSecurity`): the configuration set, or the
    defaults (every range that is not public blocked, no URL patterns, http:// allowed)."""
    return hooks.GetWebhookSecurity(hooks.GLOBAL)


def _in_force(op: hooks.GetWebhookSecurity) -> Flow[hooks.WebhookSecurity]:
    found: hooks.WebhookSecurity | None = yield op
    return security_of(found)


def set_webhook_security_op(*, blocked_cidr_ranges: Any = DEFAULT_BLOCKED,
                            allowed_url_patterns: Any = (), allow_http: bool = True
                            ) -> hooks.SetWebhookSecurity:
    """Replace where webhooks may go, for every tenant and every process on the store: a
    destination resolving into a blocked range is refused on each send (unless the
    dispatcher's `allow` names it); subscriptions made or changed from now on must match
    one of the URL patterns (globs, when any are given) and be https:// unless
    `allow_http`. What is left out takes its default; existing subscriptions are not
    checked again."""
    return hooks.SetWebhookSecurity(hooks.GLOBAL, check_security(
        blocked_cidr_ranges, allowed_url_patterns, allow_http))


class WebhookCalls(Runner):
    """Webhook subscriptions, the delivery log and replay (see `allotment.webhooks` for the
    dispatcher that sends)."""

    subscribe_webhook, asubscribe_webhook = followed_twins(subscribe_webhook_op,
                                                           within_security)
    webhooks, awebhooks = twins(webhooks_op)
    remove_webhook, aremove_webhook = twins(remove_webhook_op)
    enable_webhook, aenable_webhook = twins(enable_webhook_op)

    def _update_webhook(self, webhook_id: str, *, url: str | None = None, events: Any = None,
                        secret: str | None = None, enabled: bool | None = None,
                        actor: str | None = None, reason: str | None = None
                        ) -> Flow[hooks.Webhook]:
        return update_webhook_flow(webhook_id, url=url, events=events, secret=secret,
                                   enabled=enabled, actor=actor, reason=reason)

    _update_webhook.__doc__ = update_webhook_flow.__doc__
    update_webhook, aupdate_webhook = flow_twins(_update_webhook)
    webhook_security, awebhook_security = followed_twins(webhook_security_op, _in_force)
    set_webhook_security, aset_webhook_security = twins(set_webhook_security_op)
    webhook_deliveries, awebhook_deliveries = twins(webhook_deliveries_op)
    replay_webhook_event, areplay_webhook_event = twins(replay_webhook_event_op)
