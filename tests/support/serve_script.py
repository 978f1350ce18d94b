"""`allotment serve`, the console script, started as an operator starts it on a free loopback
port and stopped at the end of the block (SIGTERM, or SIGKILL for the crash tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .redis_server import free_port

SCRIPT = Path(sys.executable).parent / "allotment"


@contextmanager
def allotment_serve(*args: str, admin_key: str, store: str | None = None,
                    kill: bool = False) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The server with `args`, the admin key from ALLOTMENT_ADMIN_KEY and the store from
    ALLOTMENT_STORE (`store`, else the default); yields its URL and process once it answers
    readiness. Its stderr is a pipe the test may read (the access log is off, so it stays
    small)."""
    port = free_port()
    env = {**os.environ, "ALLOTMENT_ADMIN_KEY": admin_key}
    env.pop("ALLOTMENT_STORE", None)
    if store is not None:
        env["ALLOTMENT_STORE"] = store
    process = subprocess.Popen([str(SCRIPT), "serve", "--port", str(port), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(url + "/actuator/health/readiness").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "allotment serve did not start"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.send_signal(signal.SIGTERM)
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
