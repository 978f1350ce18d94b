"""A real redis-server for the tests, started on a free loopback port (never a mock)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(*extra: str, port: int | None = None,
                 directory: Path | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run redis-server until the block ends; yields its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `apt-get install redis-server` "
                           "(.ci/run does this on a fresh machine)")
    port = port or free_port()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = directory or Path(scratch)
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--databases", "64", "--dir", str(workdir), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}"
        try:
            wait_ready(url)
            yield url, process
        finally:
            process.terminate()
            process.wait(timeout=10)


def wait_ready(url: str, timeout: float = 10.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
        finally:
            client.close()
