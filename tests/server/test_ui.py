"""The operator's dashboard at `/ui`, in a real Chromium (Debian's `chromium`, or the binary
`ALLOTMENT_CHROMIUM` names) driven by Playwright, against a real server on each store: what
it shows is what the API answers, written as the library writes amounts; a transfer made in
it moves exactly what was typed; a tenant key sees its own tenant only; markup in the data
stays text."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

import allotment as al
from allotment.clock import system_ms

from support.served import ADMIN_KEY, serving
from support.stores import STORE_KINDS, make_store

GPT = al.Action("llm.completion", "openai:gpt-4o")
HOSTILE = '<img src=x onerror="window.pwned=1">Acme'
WORKSPACES = {"engineering": 5_000, "marketing": 3_000, "support": 2_000}


def chromium() -> str:
    path = os.environ.get("ALLOTMENT_CHROMIUM") or shutil.which("chromium")
    assert path, ("the browser tests need Chromium: apt-get install chromium (or set "
                  "ALLOTMENT_CHROMIUM to a Chromium binary)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium())
        yield launched
        launched.close()


class Site:
    def __init__(self, guard: al.Guard, url: str, page: Page) -> None:
        self.guard, self.url, self.page = guard, url, page
        self.failures: list[str] = []
        page.on("pageerror", lambda error: self.failures.append(str(error)))

    def sign_in(self, key: str) -> None:
        self.page.goto(self.url + "/ui")
        self.page.fill("#key", key)
        self.page.click("#sign-in button")

    def rows(self, table: str) -> list[list[str]]:
        self.page.wait_for_selector(f"#{table} tbody tr")
        return [[cell.strip() for cell in row] for row in self.page.eval_on_selector_all(
            f"#{table} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")]

    def text(self, selector: str) -> str:
        return (self.page.text_content(selector) or "").strip()


@pytest.fixture(params=STORE_KINDS)
def site(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Site]:
    """The enterprise of the seed on a server: acme's $10,000 over three workspaces,
    marketing spent out and refused once; a rival tenant beside it."""
    store = make_store(request.param, al.ManualClock(system_ms()))
    guard = al.Guard(store)
    guard.register_tenant("acme", HOSTILE)
    guard.set_budget("tenant:acme", usd=10_000, period="month")
    for workspace, usd in WORKSPACES.items():
        guard.set_budget(f"tenant:acme/workspace:{workspace}", usd=usd)
    guard.set_budget("tenant:rival", usd=7)
    marketing = al.Subject(tenant="acme", workspace="marketing")
    guard.reserve(marketing, GPT, al.usd(2_999)).commit(al.usd("2999.5"))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(marketing, GPT, al.usd(5))
    context = browser.new_context()
    with serving(guard) as url:
        made = Site(guard, url, context.new_page())
        yield made
        assert made.failures == []  # no script error on any page
    context.close()
    store.close()


def usd(amount: int) -> str:
    return al.format_amount(al.Unit.USD_MICROCENTS, amount)


def test_the_page_runs_only_its_own_script_and_talks_only_to_its_server() -> None:
    guard = al.Guard()
    with serving(guard) as url:
        page = httpx.get(url + "/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
        assert '<script src="/ui/ui.js" defer></script>' in page.text
        assert "<script>" not in page.text and "style=" not in page.text
        script = httpx.get(url + "/ui/ui.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in script.text  # data reaches the page as text only
        assert httpx.get(url + "/ui/").text == page.text
        missing = httpx.get(url + "/ui/secrets.js")
        assert (missing.status_code, missing.json()["error"]) == (404, "NOT_FOUND")
    with serving(guard, ui=False) as url:
        assert httpx.get(url + "/ui").status_code == 404


def test_the_admin_sees_what_the_api_says_and_moves_budget(site: Site) -> None:
    page, guard = site.page, site.guard
    site.sign_in("not-the-admin-key")
    page.wait_for_selector("#error:not(:empty)")
    assert site.text("#error") == "invalid admin API key"
    assert page.is_visible("#sign-in") and not page.is_visible("#tabs")

    site.sign_in(ADMIN_KEY)
    page.wait_for_selector("#overview:not([hidden])")
    assert site.text("#who") == "Admin key: every tenant"
    assert page.input_value("#key") == ""  # the key is not left in the form
    assert site.text("[data-card=Tenants] b") == "2" and not page.is_visible("#sign-in")
    assert site.text("[data-card=Budgets] b") == str(len(WORKSPACES) + 2)
    ((_, tenant, scope, reason),) = site.rows("denials")
    assert (tenant, scope, reason) == ("acme", "tenant:acme/workspace:marketing",
                                       "BUDGET_EXCEEDED")

    page.click("nav button[data-view=tenants]")
    listed = site.rows("tenant-list")
    assert [row[:3] for row in listed] == [["acme", HOSTILE, "ACTIVE"],
                                           ["rival", "rival", "ACTIVE"]]
    assert page.evaluate("window.pwned") is None  # the name was text, not markup
    assert page.locator("#tenant-list img").count() == 0

    page.click("#tenant-list tbody tr:first-child button")
    page.wait_for_selector("#tenant:not([hidden])")
    assert by_scope(site) == expected(guard)
    page.select_option("#transfer-from", "tenant:acme/workspace:engineering|USD_MICROCENTS")
    page.select_option("#transfer-to", "tenant:acme/workspace:marketing|USD_MICROCENTS")
    page.fill("#transfer-amount", "500.25")
    page.click("#transfer button")
    page.wait_for_selector("#transfer-result:not(:empty)")
    assert site.text("#transfer-result") == ("Moved $500.25 from tenant:acme/workspace:"
                                             "engineering to tenant:acme/workspace:marketing.")
    allocated = {b.scope: b.allocated for b in guard.balances("tenant:acme")}
    assert allocated["tenant:acme/workspace:engineering"] == al.usd("4499.75").amount
    assert allocated["tenant:acme/workspace:marketing"] == al.usd("3500.25").amount
    assert by_scope(site) == expected(guard)  # the table shows the new figures
    newest = site.rows("audit")[0]
    assert newest[1:] == ["budget.transferred", "tenant:acme/workspace:marketing",
                          "by admin-key"]
    page.fill("#transfer-amount", "1.000000001")  # finer than a microcent: refused here
    page.click("#transfer button")
    page.wait_for_selector("#error:not(:empty)")
    assert site.text("#error") == ("Amount: dollars, e.g. 500 or 12.50 (at most "
                                   "$90,071,992.54740991).")
    assert {b.scope: b.allocated for b in guard.balances("tenant:acme")} == allocated

    page.click("nav button[data-view=events]")
    shown = site.rows("event-list")
    events = httpx.get(site.url + "/v1/admin/events?limit=50",
                       headers={"X-Admin-API-Key": ADMIN_KEY}).json()["events"]
    assert [row[2] for row in shown] == [event["event_type"] for event in events]

    page.reload()  # the key stays for the tab's session
    page.wait_for_selector("#overview:not([hidden])")
    page.click("#sign-out")
    assert page.is_visible("#sign-in") and page.evaluate(
        "sessionStorage.getItem('allotment.key')") is None
    page.reload()
    assert page.is_visible("#sign-in") and not page.is_visible("#overview")


def test_a_tenant_key_sees_and_moves_its_own_tenants_budget_only(site: Site) -> None:
    page, guard = site.page, site.guard
    admin = guard.create_key("acme", permissions=["budgets:read", "budgets:write"])
    site.sign_in(admin.secret)
    page.wait_for_selector("#tenant:not([hidden])")
    assert site.text("#who") == "Tenant key: acme only"
    assert not page.is_visible("#tabs")
    assert by_scope(site) == expected(guard)
    assert "rival" not in (page.text_content("body") or "")
    page.select_option("#transfer-from", "tenant:acme/workspace:engineering|USD_MICROCENTS")
    page.select_option("#transfer-to", "tenant:acme/workspace:marketing|USD_MICROCENTS")
    page.fill("#transfer-amount", "500")
    page.dblclick("#transfer button")  # twice: one key for the transfer as filled in
    page.wait_for_selector("#transfer-result:not(:empty)")
    spent = {b.scope: (b.allocated, b.spent) for b in guard.balances("tenant:acme")}
    assert spent["tenant:acme/workspace:marketing"] == (al.usd(3_500).amount,
                                                        al.usd("2999.5").amount)
    assert spent["tenant:acme/workspace:support"] == (al.usd(2_000).amount, 0)
    assert site.rows("audit")[0][3] == f"by key:{admin.key.key_id}"

    runtime = guard.create_key("acme")  # the runtime plane's permissions only
    page.click("#sign-out")
    site.sign_in(runtime.secret)
    page.wait_for_selector("#tenant:not([hidden])")
    assert site.rows("budgets") == [["This key may not read budgets."]]
    assert site.rows("audit") == [["This key may not read the audit log."]]
    assert not page.is_visible("#transfer")


def test_amounts_are_written_as_the_library_writes_them(site: Site) -> None:
    site.page.goto(site.url + "/ui")
    for microcents in (0, 1, -1, 10, 3_100_000, 31_000_000, 5_000_000_000, 299_950_000_000,
                       -250_000_000, 123_456_789_012_345, 2**53 - 1):
        shown = site.page.evaluate(f"dollars({microcents})")
        assert shown == usd(microcents), microcents
    for typed, unit, units in (("12.5", "USD_MICROCENTS", al.usd("12.5").amount),
                               ("$0.00000001", "USD_MICROCENTS", 1),
                               ("1,250.50", "USD_MICROCENTS", al.usd("1250.5").amount),
                               ("90071992.54740991", "USD_MICROCENTS", 2**53 - 1),
                               ("90071992.54740992", "USD_MICROCENTS", None),  # not exact
                               ("1000", "TOKENS", 1_000), ("1.5", "TOKENS", None),
                               ("-3", "USD_MICROCENTS", None), ("1e3", "TOKENS", None)):
        assert site.page.evaluate(f"toUnits({typed!r}, {unit!r})") == units, typed
    for unit in (al.Unit.TOKENS, al.Unit.CREDITS, al.Unit.USD_MICROCENTS):
        shown = site.page.evaluate(f"amount({{unit: {unit.value!r}, amount: 1234567}})")
        assert shown == al.format_amount(unit, 1_234_567)
    for fraction in (0.5, 0.8, 0.125, 0.375, 0.9, 0.995, 1.0, 0.045):  # as the CLI writes
        assert site.page.evaluate(f"percent({fraction})") == f"{fraction:.0%}", fraction


def by_scope(site: Site) -> dict[str, list[str]]:
    """The budgets table: scope -> allocated, spent, reserved, remaining, debt."""
    return {row[0]: row[2:7] for row in site.rows("budgets")}


def expected(guard: al.Guard) -> dict[str, list[str]]:
    return {b.scope: [usd(b.allocated), usd(b.spent), usd(b.reserved), usd(b.remaining),
                      usd(b.debt)] for b in guard.balances("tenant:acme")}
