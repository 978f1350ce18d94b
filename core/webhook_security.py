"""Where webhooks may go: the store-wide configuration (`WebhookSecurity`), its defaults,
and the two checks made with it. A subscription's URL is checked when it is made or changed
(its scheme, the allowed patterns); where it resolves is checked on every send (the blocked
ranges), so a name that later resolves somewhere else is caught then (DNS rebinding)."""

from __future__ import annotations

import functools
import ipaddress
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidRequest
from .stores.hooks import WebhookSecurity
from .validation import shown

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_BLOCKED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
    "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8")
"""Every range that is not the public internet (IANA's special-purpose registries: private,
loopback, link-local, shared, documentation, benchmarking, multicast, reserved), and the
IPv6 ranges that embed an IPv4 address (NAT64, 6to4), which could reach a private one: a
superset of the spec's default, so the default reaches public addresses only."""
DEFAULT = WebhookSecurity(DEFAULT_BLOCKED)
"""What applies until an operator sets a configuration: http:// is allowed (a receiver on
a private network in development; production sets `allow_http=False`)."""
MAX_RANGES, MAX_PATTERNS, MAX_PATTERN = 256, 100, 2_048


def security_of(found: WebhookSecurity | None) -> WebhookSecurity:
    """The configuration in force: the one set, or the defaults."""
    return DEFAULT if found is None else found


def check_security(blocked_cidr_ranges: Any = DEFAULT_BLOCKED, allowed_url_patterns: Any = (),
                   allow_http: Any = True) -> WebhookSecurity:
    """A whole configuration, every part checked (ranges written in their canonical form)."""
    ranges = _strings(blocked_cidr_ranges, "blocked_cidr_ranges", MAX_RANGES)
    canonical = []
    for i, text in enumerate(ranges):
        try:
            canonical.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise InvalidRequest(f"blocked_cidr_ranges[{i}]: {shown(text)} is not a CIDR "
                                 "range (e.g. '10.0.0.0/8' or 'fc00::/7')") from None
    patterns = _strings(allowed_url_patterns, "allowed_url_patterns", MAX_PATTERNS)
    for i, pattern in enumerate(patterns):
        if not _pattern_ok(pattern):
            raise InvalidRequest(f"allowed_url_patterns[{i}]: expected an http(s) URL glob "
                                 f"of at most {MAX_PATTERN} printable characters with a host "
                                 "and no user or fragment (e.g. 'https://*.example.com/*')")
    if not isinstance(allow_http, bool):
        raise InvalidRequest(f"allow_http: expected True or False, got {shown(allow_http)}")
    return WebhookSecurity(tuple(dict.fromkeys(canonical)), tuple(patterns), allow_http)


def _strings(values: Any, field: str, most: int) -> list[str]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise InvalidRequest(f"{field}: expected a list of strings, got {shown(values)}")
    if len(values) > most:
        raise InvalidRequest(f"{field}: {len(values)} entries; at most {most}")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidRequest(f"{field}[{i}]: expected a string, got {shown(value)}")
    return list(values)


def check_destination(url: str, security: WebhookSecurity) -> None:
    """A subscription's URL as the configuration allows it (checked when made or changed;
    existing subscriptions are not checked again, as the Cycles spec says)."""
    if urlsplit(url).scheme == "http" and not security.allow_http:
        raise InvalidRequest(f"url: {shown(url)} is http://; this server's webhook security "
                             "configuration allows https:// only")
    patterns = security.allowed_url_patterns
    if patterns and not any(_matches(url, pattern) for pattern in patterns):
        raise InvalidRequest(f"url: {shown(url)} matches none of the allowed URL patterns: "
                             + ", ".join(patterns))


def _pattern_ok(pattern: str) -> bool:
    if not 0 < len(pattern) <= MAX_PATTERN or not pattern.isprintable() or " " in pattern:
        return False
    try:
        parts = urlsplit(pattern)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and "@" not in parts.netloc and not parts.fragment)


def _matches(url: str, pattern: str) -> bool:
    """A URL against one allowed pattern, part by part: the scheme, the host (a `*` there
    matches within the host only, so no text in another host's path, query, fragment or
    user part can satisfy it), the port, then the path with its query."""
    got, want = urlsplit(url), urlsplit(pattern)
    if got.scheme != want.scheme or got.port != want.port:
        return False
    if not fnmatchcase(got.hostname or "", want.hostname or ""):
        return False
    return fnmatchcase(_path(got.path, got.query), _path(want.path, want.query))


def _path(path: str, query: str) -> str:
    return (path or "/") + (f"?{query}" if query else "")


@functools.lru_cache(maxsize=8)
def blocked_networks(ranges: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The blocked ranges as networks (a configuration is read on every dispatcher round)."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in ranges)


def blocking(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
             blocked: tuple[IPNetwork, ...]) -> IPNetwork | None:
    """The blocked range an address is in, if any."""
    return next((net for net in blocked if address.version == net.version
                 and address in net), None)
