"""The README's code and the example scripts run as shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest

import allotment as al

from support.redis_server import redis_server
from support.served import serving

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_blocks_run_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as written: against a real redis-server where a block names localhost:6379, and
    the SDKs against the simulated provider on a loopback port. The server quickstart's
    blocks need a running server: tests/server/test_quickstart.py runs them."""
    readme = re.sub(r"<!-- server-quickstart.*?<!-- /server-quickstart -->", "",
                    (ROOT / "README.md").read_text(), flags=re.S)
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 4
    namespace: dict[str, object] = {
        "call_the_model": lambda: {"usage": 1}, "cost_of": lambda response: "0.01"}
    sys.path.insert(0, str(ROOT / "examples"))
    from simulated_provider import serve

    central = al.Guard()  # the server the remote guard's block talks to
    central.set_budget("tenant:acme", usd=10)
    central.set_budget("tenant:acme", tokens=100_000, period="day")
    monkeypatch.setenv("ALLOTMENT_API_KEY", central.create_key("acme").secret)
    with redis_server() as (url, _), serve() as provider, serving(central) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", provider + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", provider)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-simulated")
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-simulated")
        for block in blocks:
            code = block.replace("redis://localhost:6379", url).replace(
                "http://localhost:7878", server)
            exec(compile(code, "README.md", "exec"), namespace)
        guard = namespace["guard"]
        assert isinstance(guard, al.Guard)
        assert guard.balances("tenant:acme")[0].allocated == al.usd(2000).amount
        guard.close()
        assert central.balances("tenant:acme", include_children=False)[0].spent > 0


@pytest.mark.parametrize(("script", "expected"), [
    ("openai_wrapper.py", ["stopped: tenant:acme/workflow:support-chat/session:s-1: "
                           "BUDGET_EXCEEDED", "refused: tenant:acme: MODEL_NOT_ALLOWED"]),
    ("anthropic_wrapper.py", ["streamed usage:", "now capped: Caps(max_tokens=300"]),
    ("per_run_budgets.py", ["run-7a3f: stopped after 48 steps", "run-8b4c: stopped after 48",
                            "remaining $1,496.064"]),
    ("tiers.py", ["from session 22 on, answers are capped at max_tokens=512",
                  "spend kept $49.40", "newco: tenant:newco: MODEL_NOT_ALLOWED"]),
    ("shadow_mode.py", ["enforce mode would have denied 4174 calls",
                        "a daily budget that would have denied nothing: $112.49"]),
    ("langchain_callback.py", ["stopped: tenant:globex/workflow:research/run:r-1: "
                               "BUDGET_EXCEEDED",
                               "capped: max_tokens 64",
                               "agent: Stopped before another model call"]),
    ("enterprise_reallocation.py", ["marketing: tenant:bigco/workspace:marketing: "
                                    "BUDGET_EXCEEDED", "marketing: resumed",
                                    "another tenant's budget: transfer: both budgets must "
                                    "belong to one tenant"]),
])
def test_examples_run_offline(script: str, expected: list[str]) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    out = subprocess.run([sys.executable, script], cwd=ROOT / "examples", env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    for text in expected:
        assert text in out


@pytest.mark.parametrize(("args", "expected"), [
    ([], ["tenants that completed every job: 49 of 49",
          "t00 first stopped at tenant:t00/workflow:ingest/run:reprocess-",
          "then for good at tenant:t00 (BUDGET_EXCEEDED)"]),
    (["--no-enforcement"], ["tenants that completed every job: 0 of 49"]),
])
def test_runaway_tenant_demo(args: list[str], expected: list[str]) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "runaway_tenant.py"), *args],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    for text in expected:
        assert text in out
    # one money format throughout, to the cent
    assert re.findall(r"\$[\d,]+\.\d+", out) == re.findall(r"\$[\d,]+\.\d\d\b", out)


def test_runaway_tenant_demo_on_redis_with_a_chart(tmp_path: Path) -> None:
    chart = tmp_path / "spend.png"
    with redis_server() as (url, _):
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "runaway_tenant.py"), "--redis", url,
             "--plot", str(chart)], capture_output=True, text=True, check=True,
            timeout=300).stdout
    assert "tenants that completed every job: 49 of 49" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_runaway_tenant_demo_through_the_server(store: str) -> None:
    """`allotment serve` started by the example; ten tenants' agents at once over HTTP with
    the runcycles client; only the runaway tenant is stopped, and every ledger read back over
    the wire equals what its client was told."""
    command = [sys.executable, str(ROOT / "examples" / "runaway_over_http.py")]
    with redis_server() if store == "redis" else nullcontext((None, None)) as (url, _):
        if url is not None:
            command += ["--store", f"{url}/0"]
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             timeout=300).stdout
    assert "stopped: t00\n" in out
    assert re.search(r"^t00 .*stopped: BUDGET_EXCEEDED on pass \d+$", out, re.M)
    assert "tenants that completed every job: 9 of 9" in out
    assert "every ledger equals what its tenant's client was told: yes" in out
    assert re.findall(r"\$[\d,]+\.\d+", out) == re.findall(r"\$[\d,]+\.\d\d\b", out)
