"""The README's server quickstart runs as written: each `allotment serve` line of its first
block starts a real server (memory://, and Redis with four workers), the `curl` block
provisions and reserves against it in bash, and the `runcycles` block runs after it with the
variables the curl block exported. Only the port (and the Redis URL) are the test's own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.redis_server import free_port, redis_server

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


def quickstart() -> tuple[str, str, str]:
    """The start block, the curl block and the runcycles block of the README's quickstart."""
    text = (ROOT / "README.md").read_text()
    region = re.search(r"<!-- server-quickstart.*?-->(.*?)<!-- /server-quickstart -->", text,
                       re.S)
    assert region is not None, "the README's server quickstart markers are missing"
    blocks = re.findall(r"```(sh|python)\n(.*?)```", region.group(1), re.S)
    assert [kind for kind, _ in blocks] == ["sh", "sh", "python"]
    return blocks[0][1], blocks[1][1], blocks[2][1]


def serve_line(start: str, store: str) -> str:
    """The block's command line for `store`, without its comment."""
    lines = [line.split("#", 1)[0].strip() for line in start.splitlines()
             if "allotment serve" in line]
    picked = [line for line in lines if ("--store redis://" in line) == (store == "redis")]
    assert len(picked) == 1, lines
    return picked[0]


def environment(home: Path) -> dict[str, str]:
    """This environment's scripts first on PATH; HOME a scratch directory (the runcycles
    client keeps a commit journal there)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CYCLES_", "ALLOTMENT_"))}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "HOME": str(home)}


@contextmanager
def started(line: str, port: int, env: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen(["bash", "-c", f"{line} --port {port}"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/actuator/health/readiness")
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the quickstart's server did not start"
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def answers(out: str) -> list[Any]:
    """The JSON bodies curl printed back to back, then the lines after them."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(out) and out[at] == "{":
        body, at = decoder.raw_decode(out, at)
        found.append(body)
    return [*found, *out[at:].split("\n")]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_readme_server_quickstart_runs_as_written(store: str, tmp_path: Path) -> None:
    start, curl, python = quickstart()
    port = free_port()
    env = environment(tmp_path)
    line = serve_line(start, store)
    with ExitStack() as stack:
        if store == "redis":
            url, _ = stack.enter_context(redis_server())
            line = line.replace("redis://localhost:6379", url)
        with started(line, port, env):
            script = (curl.replace("localhost:7878", f"127.0.0.1:{port}")
                      + f"\n{sys.executable} - <<'PYTHON'\n{python}PYTHON\n")
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            tenant, budget, committed, balances, printed, *rest = answers(done.stdout)
    assert (tenant["tenant_id"], tenant["name"]) == ("acme", "Acme Corp")
    assert budget["allocated"] == {"unit": "USD_MICROCENTS", "amount": 1_000_000_000}
    assert committed["status"] == "COMMITTED"
    assert committed["charged"] == {"unit": "USD_MICROCENTS", "amount": 3_100_000}
    assert balances["balances"][0]["spent"]["amount"] == 3_100_000
    assert printed == "acme has spent 9,300,000 microcents" and rest == [""]
