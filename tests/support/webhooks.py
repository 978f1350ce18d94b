"""A webhook receiver for the tests: a real HTTP server on loopback that checks every
signature with its own implementation of the spec: Standard Webhooks, or the Cycles
dispatcher's `X-Cycles-Signature`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.server
import json
import threading
import time
from typing import Any

TOLERANCE_S = 300  # the spec's suggested window for webhook-timestamp


def verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The receiver's check, written from the Standard Webhooks spec: the key is the base64
    after `whsec_`; the signed content is `id.timestamp.body`; the header holds one or more
    space-separated `v1,<base64 HMAC-SHA256>`; the timestamp must be recent."""
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > TOLERANCE_S:
        raise ValueError("timestamp outside the tolerance")
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = base64.b64encode(hmac.new(key, msg_id.encode() + b"." + stamp.encode() + b"."
                                         + body, hashlib.sha256).digest()).decode()
    for signature in headers["webhook-signature"].split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise ValueError("no signature matches")


def verify_cycles(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The Cycles receiver's check: `sha256=` and the hex HMAC-SHA256 of the raw body,
    keyed with the secret's UTF-8 bytes."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(headers["x-cycles-signature"], expected):
        raise ValueError("no signature matches")


class Receiver:
    """An HTTP server on loopback: answers 500 to the first `fail` requests, then 204; keeps
    every accepted event by id (a signature that does not verify gets a 401)."""

    def __init__(self, fail: int = 0) -> None:
        self.secrets: list[str] = []
        self.fail = fail
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        self.requests = 0
        self.bad_signatures = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                code = receiver.handle(headers, body)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        self.lock = threading.Lock()

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests += 1
            cycles = "x-cycles-signature" in headers
            for secret in self.secrets:
                try:
                    (verify_cycles if cycles else verify)(secret, headers, body)
                    break
                except (ValueError, IndexError, binascii.Error):
                    continue
            else:
                self.bad_signatures += 1
                return 401
            if self.fail > 0:
                self.fail -= 1
                return 500
            msg_id = headers["x-cycles-event-id" if cycles else "webhook-id"]
            self.accepted.append((msg_id, json.loads(body)))
            return 204

    @property
    def ids(self) -> list[str]:
        return [msg_id for msg_id, _ in self.accepted]

    def types(self) -> list[str]:
        return [document["type"] for _, document in self.accepted]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
