"""The `runcycles` client's own live-server suite, run unmodified against `allotment serve`.

The suite ships in the client's source distribution (`tests/integration/test_live_server.py`)
for the version the dev extra pins; it is fetched from the package index with pip on first
use, kept beside the environment, and unpacked afresh for each run. It is pointed at a
server the way its upstream workflow does: `CYCLES_BASE_URL`, `CYCLES_API_KEY` and
`CYCLES_TENANT`, with the tenant, its key and its budget provisioned through the admin plane.
It skips itself when `CYCLES_BASE_URL` is unset, so the run must show every test passed
and none skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from allotment.clock import system_ms

from support.serve_script import allotment_serve
from support.stores import make_store

CLIENT = "runcycles"
SDISTS = Path(sys.prefix) / "sdists"
"""Downloaded source distributions, kept with the environment they were fetched for."""
ADMIN = "suite-admin-key"
TENANT = "integration-test"
USD = "USD_MICROCENTS"
SUITE = "tests/integration"
EXPECTED = {"test_health_check", "test_reservation_lifecycle", "test_reserve_and_release",
            "test_decide_endpoint", "test_balance_query"}
"""The tests of the pinned version's live suite: a change of pin shows up here."""


def sdist(name: str, release: str) -> Path:
    """The package's source distribution from the index, downloaded once."""
    archive = SDISTS / f"{name}-{release}.tar.gz"
    if not archive.exists():
        SDISTS.mkdir(parents=True, exist_ok=True)
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "--dest", str(SDISTS), f"{name}=={release}"],
            capture_output=True, text=True, timeout=300)
        assert fetched.returncode == 0, fetched.stderr
    assert archive.exists(), f"pip gave no {archive.name}: {sorted(SDISTS.iterdir())}"
    return archive


def unpacked(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # every current patch release has it
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # the index's own archive of the pinned version
    (root,) = into.iterdir()
    return root


def provision(url: str) -> str:
    """The tenant, a runtime key and a budget, made through the admin plane as the upstream
    workflow makes them; returns the key's secret."""
    admin = {"X-Admin-API-Key": ADMIN}
    with httpx.Client(base_url=url, headers=admin, timeout=10) as client:
        tenant = client.post("/v1/admin/tenants",
                             json={"tenant_id": TENANT, "name": "Integration test"})
        assert tenant.status_code == 201, tenant.text
        key = client.post("/v1/admin/api-keys", json={
            "tenant_id": TENANT, "name": "live-suite",
            "permissions": ["reservations:create", "reservations:commit",
                            "reservations:release", "reservations:extend",
                            "reservations:list", "balances:read"]})
        assert key.status_code == 201, key.text
        budget = client.post("/v1/admin/budgets", json={
            "tenant_id": TENANT, "scope": f"tenant:{TENANT}", "unit": USD,
            "allocated": {"unit": USD, "amount": 100_000_000}})
        assert budget.status_code == 201, budget.text
        return str(key.json()["key_secret"])


def spent(url: str) -> tuple[int, int]:
    """The tenant's spent and reserved, from the admin plane."""
    looked = httpx.get(f"{url}/v1/admin/budgets/lookup",
                       params={"scope": f"tenant:{TENANT}", "unit": USD, "tenant_id": TENANT},
                       headers={"X-Admin-API-Key": ADMIN})
    assert looked.status_code == 200, looked.text
    return looked.json()["spent"]["amount"], looked.json()["reserved"]["amount"]


def run_suite(root: Path, url: str, secret: str, report: Path) -> subprocess.CompletedProcess[str]:
    """The suite as its own project runs it: pytest in its source tree, its own config.
    The plugins installed here for our own tests are not loaded (the suite uses none; they
    would only slow its start)."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("PYTEST_", "CYCLES_"))}
    env.update(CYCLES_BASE_URL=url, CYCLES_API_KEY=secret, CYCLES_TENANT=TENANT,
               PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", SUITE,
         f"--junitxml={report}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)


def outcomes(report: Path) -> dict[str, str]:
    """Each test case of a JUnit report and how it ended."""
    cases = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        ended = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        cases[case.attrib["name"]] = ended[0] if ended else "passed"
    return cases


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_clients_live_suite_passes_unmodified(store: str, tmp_path: Path) -> None:
    root = unpacked(sdist(CLIENT, version(CLIENT)), tmp_path / "src")
    assert (root / SUITE / "test_live_server.py").is_file()
    url_of_store = None
    if store == "redis":
        made = make_store("redis", system_ms)  # a fresh, empty database
        url_of_store = made.url
        made.close()
    with allotment_serve(admin_key=ADMIN, store=url_of_store) as (url, _):
        secret = provision(url)
        report = tmp_path / "report.xml"
        ran = run_suite(root, url, secret, report)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert outcomes(report) == dict.fromkeys(EXPECTED, "passed"), ran.stdout
        # reserve 10,000 and commit 8,000; reserve 5,000 and release it
        assert spent(url) == (8_000, 0)
