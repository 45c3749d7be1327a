"""TikTok's own base code, as the npm package ``tiktok-pixel`` ships it, with one change: the SDK's URL.

The package is installed from the npm registry by the test set-up (into test-artifacts/, never into
the repository). Its base code points at analytics.tiktok.com; the tests swap that address for the
collector's ``/s/ct.js`` (matching the host and path, not one exact text) and drive it in Debian's
Chromium against a real gunicorn collector and sink. Every check is on what ClickHouse stored
(and, for the package, on what the attributor credited to the ad click).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pixel import registry
from tests.browser import PERSON_USER_AGENT, PageServer, page_html, wait_for
from tests.conftest import ARTIFACTS, query_dicts
from tests.servers import env_for

pytestmark = pytest.mark.browser

PACKAGE = "tiktok-pixel"
VERSION = "2.0.3"
#: TikTok's SDK address in any base code: https://analytics.tiktok.com/<path>/events.js
TIKTOK_SDK = re.compile(r"https://analytics\.tiktok\.com/[\w/.-]*events\.js")


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiktok_pixel() -> Path:
    """The installed package's folder (npm install, cached under test-artifacts/npm)."""
    npm = shutil.which("npm")
    assert npm, "npm is missing: run scripts/bootstrap --test (it installs Debian's nodejs and npm)"
    prefix = ARTIFACTS / "npm"
    folder = prefix / "node_modules" / PACKAGE
    manifest = folder / "package.json"
    if not (manifest.exists() and f'"version": "{VERSION}"' in manifest.read_text(encoding="utf-8")):
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                        "--no-save", f"{PACKAGE}@{VERSION}"], check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
    assert f'"version": "{VERSION}"' in manifest.read_text(encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def site():
    server = PageServer()
    yield server
    server.close()


@pytest.fixture
def page(browser, site):
    site.reset()
    ctx = browser.new_context(user_agent=PERSON_USER_AGENT)  # a person's visit, attributed
    yield ctx.new_page()
    ctx.close()
    site.reset()


@pytest.fixture
def stack(r, ch, spawn):
    base = spawn.collector(workers=2)
    spawn.sink()
    return base


# ---- helpers -------------------------------------------------------------------------------------


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_our_url(code: str, collector: str) -> str:
    """The code with TikTok's SDK address (every occurrence, there is one) swapped for ours."""
    swapped, n = TIKTOK_SDK.subn(collector + "/s/ct.js", code)
    assert n == 1, f"expected TikTok's SDK address once in the base code, found it {n} times"
    return swapped


def base_code(package: Path) -> str:
    """The base code the package ships: its loadLibrary function, as written in the ES module."""
    source = (package / "dist" / "tiktok-pixel.esm.js").read_text(encoding="utf-8")
    found = re.search(r"^var loadLibrary = function loadLibrary\(.*?^\};$", source, re.M | re.S)
    assert found, "tiktok-pixel's ES module has no loadLibrary function"
    code = found.group(0)
    assert "ttq.load = function" in code and "TiktokAnalyticsObject" in code
    return code


def wait_rows(ch, db: str, where: str, n: int, timeout: float = 20.0) -> list[dict]:
    found: list[dict] = []

    def enough():
        nonlocal found
        found = query_dicts(ch, f"SELECT * FROM {db}.events_unique WHERE {where} ORDER BY event_ms, event")
        return len(found) >= n

    try:
        wait_for(enough, timeout, what=f"{n} rows where {where}")
    except AssertionError:
        raise AssertionError(f"expected {n} rows where {where}, found {len(found)}: {found}") from None
    return found


# ---- the base code, run by hand with every kind of call queued before the SDK loads ---------------


def test_tiktok_base_code_with_only_the_url_changed_sends_every_queued_call(
        stack, r, ch, ch_database, site, page, tiktok_pixel):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    other = registry.create_pixel(r, "adv-1", ["localhost"])
    email, phone = "Jane.Doe@Example.com", "+1 650 555 1212"
    code = with_our_url(base_code(tiktok_pixel), stack)
    # The package's base code names its global after the 2nd argument: "tk" here, so the SDK must
    # find it from the script URL's lib= and window.TiktokAnalyticsObject, not assume "ttq".
    script = f"""<script>
var warn = function () {{}}, initialized = false, debug = false;  // the module's own state
{code}
loadLibrary(window, 'tk', '{pixel}', {{email: '{email}', phone_number: '{phone}'}}, {{debug: false}});
tk.load('{other}');
tk.instance('{other}').track('AddToWishlist', {{content_id: 'sku-9'}});
tk.track('Search', 'running shoes');
tk.alias('user-1');
tk.group('team-1');
tk.instances();
tk.track('CompletePayment', {{value: 42.5, currency: 'EUR', order_id: 'A-1001'}});
window.queuedAt = Date.now();
while (Date.now() < window.queuedAt + 30) {{}}  // the SDK loads later, surely at another time
</script>"""
    site.add("/shop", page_html("Shop", script, "<p>A shop that pasted TikTok's base code.</p>"))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site.url("/shop"))
    page.wait_for_function("() => window.tk && window.tk.version")
    loaded_at = max(page.evaluate("tk._t").values())
    assert loaded_at <= page.evaluate("window.queuedAt")

    # What a page sees: the SDK took over "tk" (no "ttq"), with every method of the base code.
    methods = page.evaluate("() => ['page', 'track', 'identify', 'instances', 'debug', 'on', 'off', 'once',"
                            " 'ready', 'alias', 'group', 'enableCookie', 'disableCookie', 'holdConsent',"
                            " 'revokeConsent', 'grantConsent', 'instance', 'load']"
                            ".filter(m => typeof tk[m] != 'function')")
    assert methods == []
    assert page.evaluate("typeof window.ttq") == "undefined"
    assert page.evaluate("tk.instances().length") == 2
    scripts = page.evaluate("[...document.scripts].map(s => s.src).filter(Boolean)")
    assert f"{stack}/s/ct.js?sdkid={pixel}&lib=tk" in scripts

    rows = wait_rows(ch, ch_database, f"pixel_id = '{pixel}'", 3)
    by_event = {row["event"]: row for row in rows}
    assert sorted(by_event) == ["CompletePayment", "PageView", "Search"], rows
    for row in rows:
        # advanced matching from the package's identify(), hashed in the browser
        assert row["email_sha256"] == sha256("jane.doe@example.com")
        assert row["phone_sha256"] == sha256("+16505551212")
        assert row["source"] == "browser" and row["url"] == site.url("/shop")
        # queued calls keep the time they were made (TikTok's stub records only the load time)
        assert row["client_ms"] == loaded_at
    assert by_event["Search"]["search_query"] == "running shoes"
    paid = by_event["CompletePayment"]
    assert paid["value"] == 42.5 and paid["currency"] == "EUR" and paid["order_id"] == "A-1001"

    # the second pixel: its PageView (global) and the call queued on its instance only
    others = wait_rows(ch, ch_database, f"pixel_id = '{other}'", 4)
    assert sorted(row["event"] for row in others) == ["AddToWishlist", "CompletePayment", "PageView", "Search"]
    assert errors == []

    # After the takeover, calls on the instance array the page kept still reach the collector.
    page.evaluate(f"tk.instance('{other}').track('Contact'); tk.track('Lead')")
    assert len(wait_rows(ch, ch_database, f"pixel_id = '{other}' AND event IN ('Contact', 'Lead')", 2)) == 2
    assert len(wait_rows(ch, ch_database, f"pixel_id = '{pixel}' AND event = 'Lead'", 1)) == 1
    assert query_dicts(ch, f"SELECT count() AS n FROM {ch_database}.events_unique"
                           f" WHERE pixel_id = '{pixel}' AND event = 'Contact'") == [{"n": 0}]


# ---- the package itself, as its README shows ------------------------------------------------------


def test_tiktok_pixel_package_used_as_its_readme_shows(
        stack, settings, r, ch, ch_database, attributor, site, page, tiktok_pixel):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    module = with_our_url((tiktok_pixel / "dist" / "tiktok-pixel.esm.js").read_text(encoding="utf-8"), stack)
    site.add("/tiktok-pixel.esm.js", module)
    script = f"""<script type=module>
import TiktokPixel from '/tiktok-pixel.esm.js';
const advancedMatching = {{email: 'some@email.com', phone_number: '+44 20 7946 0958'}};
TiktokPixel.init('{pixel}', advancedMatching, {{debug: false}});
TiktokPixel.pageView();
TiktokPixel.track('CompletePayment', {{value: 19.99, currency: 'USD', content_id: 'sku-1',
                                      content_type: 'product'}}, {{event_id: 'order-77'}});
</script>"""
    site.add("/app", page_html("App", script, "<p>A React-style app using tiktok-pixel.</p>"))
    # The visitor comes from an ad: clicktrail's click redirect, then the app's page with ttclid.
    made = subprocess.run(
        [sys.executable, "-m", "clicktrail.cli", "click-url", "--advertiser", "adv-1", "--campaign", "cmp-1",
         "--adgroup", "grp-1", "--ad", "ad-1", "--landing", site.url("/app")],
        env=env_for(settings, PUBLIC_URL=stack), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    page.goto(made.stdout.strip())
    click = parse_qs(urlsplit(page.url).query)["ttclid"][0]
    page.wait_for_function("() => window.ttq && window.ttq.version")

    # init()'s own page() and the explicit pageView(): two PageViews, as TikTok's SDK sends them
    views = wait_rows(ch, ch_database, f"pixel_id = '{pixel}' AND event = 'PageView'", 2)
    (paid,) = wait_rows(ch, ch_database, f"pixel_id = '{pixel}' AND event = 'CompletePayment'", 1)
    for row in views + [paid]:
        assert row["email_sha256"] == sha256("some@email.com")
        assert row["phone_sha256"] == sha256("+442079460958")
        assert row["click_id"] == click
    assert paid["event_id"] == "order-77"
    assert paid["value"] == 19.99 and paid["currency"] == "USD"
    assert paid["content_ids"] == ["sku-1"] and paid["content_type"] == "product"

    # ...and the purchase is credited to the ad click that brought the visitor.
    def credited():
        attributor.settle()
        return query_dicts(ch, f"SELECT touch_id, credit, campaign_id FROM {ch_database}.credits FINAL"
                               " WHERE event_id = 'order-77' AND model = 'last_click'")

    assert wait_for(credited, 20, what="the purchase's credit") == [
        {"touch_id": click, "credit": 1.0, "campaign_id": "cmp-1"}]


# ---- a newer base code: consent methods and a partner option; an older one: no lib= -------------


def newer_base_code(package: Path) -> str:
    """The package's base code made like Ads Manager's current one (consent methods appended to its
    method list) and like loaders that pass no ``&lib=`` (the global's name is then only in
    window.TiktokAnalyticsObject): the same structure, other text."""
    code = base_code(package)
    code, n = re.subn(r"(ttq\.methods = \[[^\]]*)\]", r"\1, 'holdConsent', 'revokeConsent', 'grantConsent']", code)
    assert n == 1
    code, n = re.subn(r"\s*\+\s*'&lib='\s*\+\s*t\b", "", code)
    assert n == 1
    return code


def test_newer_base_code_consent_partner_and_non_object_parameters(
        stack, r, ch, ch_database, site, page, tiktok_pixel):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    code = with_our_url(newer_base_code(tiktok_pixel), stack)
    script = f"""<script>
var warn = function () {{}}, initialized = false, debug = false;
{code}
loadLibrary(window, 'tiktokq', '{pixel}', {{}}, {{debug: false}});
tiktokq.holdConsent();
tiktokq.debug(true);
tiktokq.track('ViewContent', 'sku-1');
tiktokq.track('Search', 42);
tiktokq.load('{pixel}', {{partner: 'Shopify'}});
</script>"""
    site.add("/consent", page_html("Consent", script, "<p>Waiting for the visitor's choice.</p>"))
    warnings: list[str] = []
    page.on("console", lambda m: m.type == "warning" and warnings.append(m.text))
    posts: list[str] = []
    page.on("request", lambda q: "/e/" in q.url and posts.append(q.url))
    page.goto(site.url("/consent"))
    page.wait_for_function("() => window.tiktokq && window.tiktokq.version")
    assert page.evaluate("window.TiktokAnalyticsObject") == "tiktokq"
    assert not any(src.find("lib=") >= 0 for src in page.evaluate("[...document.scripts].map(s => s.src)"))
    page.evaluate("() => new Promise(r => setTimeout(r, 300))")
    assert posts == []  # consent held: nothing leaves the page
    # ViewContent's string parameter is not silently dropped: debug mode says so
    assert any("bad params" in w and "sku-1" in w for w in warnings), warnings

    page.evaluate("tiktokq.grantConsent()")
    rows = wait_rows(ch, ch_database, f"pixel_id = '{pixel}'", 3)
    by_event = {row["event"]: row for row in rows}
    assert sorted(by_event) == ["PageView", "Search", "ViewContent"]
    assert by_event["Search"]["search_query"] == "42"
    assert by_event["ViewContent"]["properties"] == "{}" and by_event["ViewContent"]["content_ids"] == []


def test_our_snippet_keeps_ttq_beside_another_global_tiktok_named(stack, r, ch, ch_database, site, page):
    # TikTok's own pixel may run on the same page under its own name: our snippet's SDK (no sdkid=
    # in its URL) must take over our "ttq", not the global window.TiktokAnalyticsObject names.
    from tests.browser import snippet

    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    theirs = "<script>window.TiktokAnalyticsObject = 'tiktok'; window.tiktok = [];</script>"
    site.add("/both", page_html("Both", theirs + snippet(pixel, stack)))
    page.goto(site.url("/both"))
    page.wait_for_function("() => window.ttq && window.ttq.version")
    assert page.evaluate("window.tiktok.version === undefined && Array.isArray(window.tiktok)")
    assert [row["event"] for row in wait_rows(ch, ch_database, f"pixel_id = '{pixel}'", 1)] == ["PageView"]
