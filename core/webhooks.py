"""Sending webhooks: Standard Webhooks signatures, the destination check, and the
dispatcher that drains the store's outbox (`pip install allotment[webhooks]` for httpx).

The dispatcher claims due deliveries under a lease (several processes may run one on the
same Redis store: a claimed delivery is theirs until the lease runs out), POSTs each one
signed, and records the attempt: delivered, a retry after an exponential backoff (capped),
or given up after `max_attempts`. Delivery is at least once; receivers deduplicate by the
`webhook-id` header, which is the event's stable id.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import InvalidRequest
from .events import Notification
from .stores.hooks import (
    CYCLES,
    GLOBAL,
    SYSTEM,
    ClaimDeliveries,
    Claimed,
    FinishDelivery,
    GetWebhook,
    GetWebhookSecurity,
    Webhook,
    WebhookEvent,
    WebhookSecurity,
    event_id,
    notification_data,
    owner_of,
)
from .validation import check_int
from .webhook_security import IPNetwork, blocked_networks, blocking, security_of

log = logging.getLogger("allotment.webhooks")


class DestinationRefused(Exception):
    """The URL resolves into a blocked range (see `webhook_security`), and no allowed
    network holds the address."""


# -- Standard Webhooks --------------------------------------------------------------------------

def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` and base64 of HMAC-SHA256, keyed with the
    secret's bytes, over `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


_SENT = {"content-type": "application/json", "user-agent": "allotment-webhooks"}
"""The headers of every delivery, whatever its format."""


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one signed delivery."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body), **_SENT}


def cycles_headers(secret: str, event_id: str, event_type: str, body: bytes
                   ) -> dict[str, str]:
    """The headers of one delivery in the Cycles format: `X-Cycles-Signature` is `sha256=`
    and the hex HMAC-SHA256 of the body, keyed with the secret's own bytes."""
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Cycles-Signature": f"sha256={signature}", "X-Cycles-Event-Id": event_id,
            "X-Cycles-Event-Type": event_type, **_SENT}


def cycles_body(claimed: Claimed) -> bytes:
    """The Cycles spec's Event: id, type, category, time, tenant, `source` allotment, the
    notification's figures as `data`, and its scope when it has one."""
    event = claimed.event
    at = datetime.fromtimestamp(event.at_ms / 1000, timezone.utc)
    document = {"event_id": event.id, "event_type": event.type,
                "category": event.type.partition(".")[0],
                "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "tenant_id": event.tenant, "source": "allotment",
                "data": notification_data(event.notification)}
    if event.notification.scope:
        document["scope"] = event.notification.scope
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def body_of(claimed: Claimed) -> bytes:
    """The JSON body: `type`, `timestamp` (the event's, ISO 8601 UTC) and `data`. The same
    bytes on every attempt."""
    event = claimed.event
    at = datetime.fromtimestamp(event.at_ms / 1000, timezone.utc)
    document = {"type": event.type, "timestamp": at.isoformat().replace("+00:00", "Z"),
                "data": {"event_id": event.id, **notification_data(event.notification)}}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


# -- where a webhook may go ------------------------------------------------------------------

def allowed_networks(allow: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks a destination may resolve into besides the public internet, e.g.
    ["127.0.0.1/32"] for a receiver on loopback in tests, ["10.1.2.0/24"] for an internal
    service."""
    if isinstance(allow, str):
        allow = [allow]
    found = []
    for item in allow:
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise InvalidRequest(f"allow: {item!r} is not a network (e.g. '127.0.0.1/32' or "
                                 "'10.0.0.0/8')") from None
    return tuple(found)


def _blocked_by(ip: str, blocked: tuple[IPNetwork, ...], allow: tuple[IPNetwork, ...]
                ) -> IPNetwork | None:
    """The blocked range an address is in, unless an allowed network holds it."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if blocking(address, allow) is not None:
        return None
    return blocking(address, blocked)


def _pick(url: str, infos: list[Any], blocked: tuple[IPNetwork, ...],
          allow: tuple[IPNetwork, ...]) -> str:
    """The address to connect to: no address the host resolves to may be in a blocked
    range, unless allowed (a host with one private address among public ones is refused)."""
    ips = list(dict.fromkeys(info[4][0] for info in infos))
    if not ips:
        raise DestinationRefused(f"{url}: the host does not resolve")
    for ip in ips:
        found = _blocked_by(ip, blocked, allow)
        if found is not None:  # the address and range go to the operator's log only: the
            # delivery log and a test send's answer reach the subscription's tenant
            log.warning("webhook destination %s resolves to %s, in the blocked range %s",
                        url, ip, found)
            raise DestinationRefused(
                f"{url}: the host resolves to a {_kind(ip)} address in a blocked range (by "
                "default, every range that is not public); allow its network explicitly "
                "(Dispatcher(allow=...)) or change the webhook security configuration")
    return str(ips[0])


def _kind(ip: str) -> str:
    """What kind of address it is (for the message, which names no address)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    for kind in ("loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "public"


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def _pinned(url: str, ip: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL with the checked address in place of the host (no second lookup between the
    check and the connection), the Host header, and the TLS name to verify."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{ip}]" if ":" in ip else ip
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"host": parts.netloc.rpartition("@")[2]}, extensions


# -- the dispatcher ----------------------------------------------------------------------------

TEST_TYPE = "system.webhook_test"
"""The type of a test send's event (the Cycles spec's name for it, in either format)."""


@dataclass(frozen=True)
class WebhookTest:
    """What a test send gave: the probe event's id, whether the receiver took it (a 2xx),
    its status or why nothing was sent, and how long it took."""

    event_id: str
    delivered: bool
    status: int | None
    error: str | None
    elapsed_ms: int


@dataclass(frozen=True)
class Attempt:
    """What one try gave: delivered (a 2xx), or the status / error to log."""

    delivered: bool
    status: int | None
    error: str | None
    permanent: bool = False


class Dispatcher:
    """Drains the outbox of `guard`'s store: `run_once()` (or `await arun_once()`) sends
    what is due; `start()` does so in a background thread every `interval_s`, and
    `await run_forever()` in an asyncio task.

    `allow`: networks a destination may resolve into even inside a blocked range of the
    store's webhook security configuration (`Guard.set_webhook_security`; by default every
    range that is not public is blocked: private, loopback, link-local, reserved).
    `retention_s`: how long a finished delivery (and its event) stays in the log for
    `webhook_deliveries` and replay (7 days); each round drops what is older.
    """

    def __init__(self, guard: Any, *, allow: Iterable[str] = (), timeout_s: float = 10.0,
                 max_attempts: int = 8, backoff_s: float = 1.0, backoff_cap_s: float = 3600.0,
                 lease_ms: int = 30_000, batch: int = 100, interval_s: float = 1.0,
                 retention_s: int = 7 * 86_400) -> None:
        self._store = guard.store
        self.allow = allowed_networks(allow)
        self.timeout_s = timeout_s
        self.max_attempts = check_int(max_attempts, "max_attempts", 1, 100)
        if not 0 < backoff_s <= backoff_cap_s:
            raise InvalidRequest("backoff_s: must be above 0 and at most backoff_cap_s")
        self.backoff_s, self.backoff_cap_s = backoff_s, backoff_cap_s
        self.lease_ms = check_int(lease_ms, "lease_ms", 1_000, 3_600_000)
        self.batch = check_int(batch, "batch", 1, 10_000)
        self.interval_s = interval_s
        self.retention_ms = check_int(retention_s, "retention_s", 60, 366 * 86_400) * 1000
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def retry_in_ms(self, attempts: int) -> int:
        """The wait after the `attempts`-th failed try: doubling from `backoff_s`, capped."""
        return int(min(self.backoff_cap_s, self.backoff_s * 2 ** (attempts - 1)) * 1000)

    def _security(self) -> GetWebhookSecurity:
        return GetWebhookSecurity(tenant=GLOBAL)

    @staticmethod
    def _blocked(found: WebhookSecurity | None) -> tuple[IPNetwork, ...]:
        return blocked_networks(security_of(found).blocked_cidr_ranges)

    def _claim(self) -> ClaimDeliveries:
        return ClaimDeliveries(tenant=GLOBAL, limit=self.batch, lease_ms=self.lease_ms,
                               retention_ms=self.retention_ms)

    def _finish(self, claimed: Claimed, attempt: Attempt) -> FinishDelivery:
        made = claimed.attempts + 1
        retry = None if attempt.delivered or attempt.permanent or made >= self.max_attempts \
            else self.retry_in_ms(made)
        if not attempt.delivered:
            log.warning("webhook %s to %s failed (attempt %d): %s", claimed.event.id,
                        claimed.webhook.url, made, attempt.error or attempt.status)
        return FinishDelivery(tenant=claimed.event.tenant, event_id=claimed.event.id,
                              webhook_id=claimed.webhook.id, delivered=attempt.delivered,
                              retry_in_ms=retry, status_code=attempt.status,
                              error=attempt.error)

    def _request(self, claimed: Claimed, ip: str) -> tuple[str, bytes, dict[str, str],
                                                          dict[str, Any]]:
        secret = claimed.webhook.secret or ""
        url, host, extensions = _pinned(claimed.webhook.url, ip)
        if claimed.webhook.format == CYCLES:
            body = cycles_body(claimed)
            signed = cycles_headers(secret, claimed.event.id, claimed.event.type, body)
        else:
            body = body_of(claimed)
            signed = headers(secret, claimed.event.id, int(time.time()), body)
        return url, body, {**signed, **host}, extensions

    @staticmethod
    def _outcome(status: int) -> Attempt:
        if 200 <= status < 300:
            return Attempt(True, status, None)
        return Attempt(False, status, f"HTTP {status}")

    @staticmethod
    def _get(webhook_id: str) -> GetWebhook:
        return GetWebhook(tenant=owner_of(webhook_id, "webhook_id"), webhook_id=webhook_id)

    @staticmethod
    def _probe(webhook: Webhook) -> Claimed:
        """A `system.webhook_test` event for one subscription, kept nowhere: its deliveries'
        log, failure count and status stay as they were."""
        now, tenant = int(time.time() * 1000), webhook.tenant or SYSTEM
        note = Notification(TEST_TYPE, tenant, now, detail={"webhook_id": webhook.id})
        event = WebhookEvent(event_id(tenant, now, int.from_bytes(os.urandom(4), "big")),
                             TEST_TYPE, tenant, now, note)
        return Claimed(event, webhook, 0, now)

    @staticmethod
    def _tested(probe: Claimed, attempt: Attempt, started: float) -> WebhookTest:
        return WebhookTest(probe.event.id, attempt.delivered, attempt.status, attempt.error,
                           int((time.perf_counter() - started) * 1000))

    # -- sync ----------------------------------------------------------------------------------

    def test(self, webhook_id: str) -> WebhookTest:
        """Send a test event to one subscription now, signed as its deliveries are, by the
        same rules (where it may go, the timeout); nothing is logged or retried."""
        import httpx

        probe = self._probe(self._store.execute(self._get(webhook_id)))
        blocked = self._blocked(self._store.execute(self._security()))
        started = time.perf_counter()
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            return self._tested(probe, self._send(client, probe, blocked), started)

    def run_once(self) -> int:
        """Send every delivery due now (up to `batch`); returns how many were tried."""
        import httpx

        claimed = self._store.execute(self._claim())
        if not claimed:
            return 0
        blocked = self._blocked(self._store.execute(self._security()))
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            for one in claimed:
                self._store.execute(self._finish(one, self._send(client, one, blocked)))
        return len(claimed)

    def _send(self, client: Any, claimed: Claimed, blocked: tuple[IPNetwork, ...]
              ) -> Attempt:
        try:
            host, port = _target(claimed.webhook.url)
            ip = _pick(claimed.webhook.url,
                       socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), blocked,
                       self.allow)
        except DestinationRefused as refused:
            return Attempt(False, None, str(refused), permanent=True)
        except OSError as error:
            return Attempt(False, None, f"lookup failed: {error}")
        url, body, sent, extensions = self._request(claimed, ip)
        try:
            response = client.post(url, content=body, headers=sent, extensions=extensions)
        except Exception as error:  # any transport failure is one failed try
            return Attempt(False, None, f"{type(error).__name__}: {error}")
        return self._outcome(response.status_code)

    def start(self) -> None:
        """Send in a background thread every `interval_s` until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="allotment-webhooks",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (what it claimed and did not finish is sent again
        once its lease runs out)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                while self.run_once() >= self.batch and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("webhook dispatch failed; trying again")
            self._stop.wait(self.interval_s)

    # -- async ---------------------------------------------------------------------------------

    async def arun_once(self) -> int:
        """`run_once` on the event loop (the store's async client, httpx.AsyncClient)."""
        import httpx

        claimed = await self._store.aexecute(self._claim())
        if not claimed:
            return 0
        blocked = self._blocked(await self._store.aexecute(self._security()))
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            for one in claimed:
                await self._store.aexecute(self._finish(
                    one, await self._asend(client, one, blocked)))
        return len(claimed)

    async def atest(self, webhook_id: str) -> WebhookTest:
        """`test` on the event loop."""
        import httpx

        probe = self._probe(await self._store.aexecute(self._get(webhook_id)))
        blocked = self._blocked(await self._store.aexecute(self._security()))
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            return self._tested(probe, await self._asend(client, probe, blocked), started)

    async def _asend(self, client: Any, claimed: Claimed, blocked: tuple[IPNetwork, ...]
                     ) -> Attempt:
        try:
            host, port = _target(claimed.webhook.url)
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
            ip = _pick(claimed.webhook.url, infos, blocked, self.allow)
        except DestinationRefused as refused:
            return Attempt(False, None, str(refused), permanent=True)
        except OSError as error:
            return Attempt(False, None, f"lookup failed: {error}")
        url, body, sent, extensions = self._request(claimed, ip)
        try:
            response = await client.post(url, content=body, headers=sent, extensions=extensions)
        except Exception as error:
            return Attempt(False, None, f"{type(error).__name__}: {error}")
        return self._outcome(response.status_code)

    async def run_forever(self) -> None:
        """Send every `interval_s` until cancelled (run it as an asyncio task)."""
        while True:
            try:
                while await self.arun_once() >= self.batch:
                    pass
            except Exception:
                log.exception("webhook dispatch failed; trying again")
            await asyncio.sleep(self.interval_s)


__all__ = ["DestinationRefused", "Dispatcher", "WebhookTest", "allowed_networks", "body_of",
           "cycles_body", "cycles_headers", "headers", "sign"]
