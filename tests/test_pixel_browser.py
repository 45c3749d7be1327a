"""The pixel in a real browser: Debian's Chromium (Playwright) on pages of another origin, talking to
a real gunicorn collector, with a real sink process storing into ClickHouse.

Pages come from a threaded http.server reached as http://localhost:<port>; the collector listens on
http://127.0.0.1:<port>; the pixels are registered for the site domain ``localhost``. Every check
is made on what lands in ClickHouse (``events_unique``), on the browser's cookies and storage, or
on the requests the page sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import time
import urllib.request

import pytest

from clicktrail import services
from pixel import registry
from tests import servers
from tests.browser import EVENT_LOG, PageServer, RequestLog, launch, page_html, snippet, wait_for
from tests.conftest import ARTIFACTS, query_dicts

pytestmark = pytest.mark.browser


# ---- fixtures ------------------------------------------------------------------------------------


# `playwright` and `browser` (Debian's Chromium) are fixtures of tests/conftest.py.


@pytest.fixture(scope="module")
def site():
    server = PageServer()
    yield server
    server.close()


@pytest.fixture
def pages(site):
    site.reset()
    yield site
    site.reset()


@pytest.fixture
def context(browser):
    ctx = browser.new_context()
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture
def stack(r, ch, spawn):
    """A real collector (gunicorn, 2 workers) and a real sink; returns the collector's base URL.

    Asks for ``r`` and ``ch`` before ``spawn`` so the processes are stopped before Redis is flushed."""
    base = spawn.collector(workers=2)
    spawn.sink()
    return base


# ---- helpers -------------------------------------------------------------------------------------


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rows(ch, db: str, where: str = "1", columns: str = "*", order: str = "event_ms, event") -> list[dict]:
    return query_dicts(ch, f"SELECT {columns} FROM {db}.events_unique WHERE {where} ORDER BY {order}")


def wait_rows(ch, db: str, where: str, n: int, timeout: float = 20.0, columns: str = "*") -> list[dict]:
    """Poll until ``events_unique`` holds at least ``n`` rows matching ``where``; return them."""
    found: list[dict] = []

    def enough():
        nonlocal found
        found = rows(ch, db, where, columns)
        return len(found) >= n

    try:
        wait_for(enough, timeout, what=f"{n} rows where {where}")
    except AssertionError:
        raise AssertionError(f"expected {n} rows where {where} in ClickHouse, found {len(found)}: {found}") \
            from None
    return found


def wait_sdk(page) -> None:
    """Wait until the SDK has replaced the stub (ttq.version is set)."""
    page.wait_for_function("() => window.ttq && window.ttq.version")


def settle(page) -> None:
    """Let the page run its pending timers (the SDK flushes on a 0 ms timer) and its fetches start."""
    page.evaluate("() => new Promise(r => setTimeout(() => setTimeout(r, 50), 0))")


def post_event(base: str, pixel_id: str, event: str, origin: str) -> None:
    """Send one event straight to the collector (a marker, not from the page under test)."""
    now = int(time.time() * 1000)
    body = {"sent_at": now, "events": [{"event": event, "event_id": secrets.token_hex(16), "timestamp": now,
                                        "page": {"url": origin + "/marker"}}]}
    req = urllib.request.Request(f"{base}/e/{pixel_id}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": origin})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def local_queue(page) -> list:
    return page.evaluate("() => JSON.parse(localStorage.getItem('_ct_q') || '[]')")


def cookie_map(context, name: str) -> dict[str, str]:
    """domain -> value of the cookies called ``name``."""
    return {c["domain"]: c["value"] for c in context.cookies() if c["name"] == name}


# ---- 1. ttclid from the landing URL ----------------------------------------------------------------


def test_ttclid_from_landing_url_is_kept_in_a_cookie_and_attributed_later(
    stack, r, ch, ch_database, pages, context, page
):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    head = snippet(pixel, stack)
    pages.add("/landing", page_html(
        "Spring sale", snippet(pixel, stack, before=EVENT_LOG),
        "<p>Landing page of an ad click. Events the pixel sent:</p><ul id=ct-log></ul><p id=stored></p>"))
    pages.add("/thanks", page_html("Thank you", head + "<script>ttq.track('CompletePayment', "
                                   "{value: 42.5, currency: 'EUR', order_id: 'A-1001'});</script>",
                                   "<p>Order A-1001 is confirmed.</p>"))
    click = "E.C.P." + secrets.token_urlsafe(24)

    page.goto(pages.url(f"/landing?utm_source=tiktok&ttclid={click}"))
    cookie = wait_for(lambda: cookie_map(context, "ttclid"), 10, what="the ttclid cookie")
    assert cookie == {"localhost": click}
    ttp = cookie_map(context, "_ttp")["localhost"]
    (landing,) = wait_rows(ch, ch_database, "event = 'PageView' AND url_path = '/landing'", 1)
    assert landing["click_id"] == click and landing["utm_source"] == "tiktok" and landing["browser_id"] == ttp
    shown = page.inner_text("#ct-log")
    assert shown.startswith(f"PageView to pixel {pixel}, event_id {landing['event_id'][:8]}"), shown
    page.evaluate(
        "text => document.getElementById('stored').textContent = text",
        f"Stored in ClickHouse: {landing['event']} {landing['event_id'][:8]}..., click_id "
        f"{landing['click_id'][:14]}..., browser_id {landing['browser_id']}, source {landing['source']}",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "pixel-page.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A later page, reached without the click id in its URL nor in a referrer.
    page.goto(pages.url("/thanks"))
    assert "ttclid" not in page.url and page.evaluate("document.referrer") == ""
    (paid,) = wait_rows(ch, ch_database, "event = 'CompletePayment'", 1)
    assert paid["pixel_id"] == pixel and paid["source"] == "browser"
    assert paid["click_id"] == click
    assert paid["url"] == pages.url("/thanks") and paid["referrer"] == ""
    assert paid["value"] == 42.5 and paid["currency"] == "EUR" and paid["order_id"] == "A-1001"
    assert paid["browser_id"] == ttp


# ---- 2. advanced matching: hashed in the browser -------------------------------------------------


def test_identify_hashes_email_and_phone_in_the_browser(stack, r, ch, ch_database, pages, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    email, phone = "  Jane.Doe+Shop@Example.COM ", "+1 (650) 555-1212"
    pages.add("/signup", page_html("Sign up", snippet(pixel, stack), "<p>Welcome.</p>"))
    log = RequestLog(page)
    page.goto(pages.url("/signup"))
    wait_sdk(page)
    page.evaluate("([email, phone]) => { ttq.identify({email, phone_number: phone});"
                  " ttq.track('CompleteRegistration'); }", [email, phone])

    (row,) = wait_rows(ch, ch_database, "event = 'CompleteRegistration'", 1)
    settle(page)  # Playwright delivers the page's request events during its own calls
    assert row["email_sha256"] == sha256("jane.doe+shop@example.com")
    assert row["phone_sha256"] == sha256("+16505551212")
    assert row["external_id_sha256"] == ""

    sent = [body for _, method, url, body in log.events() if method == "POST"]
    assert sent, "the page sent no events"
    wire = [e for body in sent for e in json.loads(body)["events"] if e["event"] == "CompleteRegistration"]
    assert wire and wire[0]["user"] == {"email": sha256("jane.doe+shop@example.com"),
                                        "phone": sha256("+16505551212")}
    raw_values = [email.strip(), "jane.doe", "example.com", "example%2ecom", "jane.doe%2bshop",
                  "jane.doe+shop", phone, "555-1212", "6505551212", "%2b1"]
    bodies = log.bodies()
    assert len(bodies) == len(sent)
    for _, method, url, body in log.items:
        for raw in raw_values:
            assert raw.lower() not in (body or "").lower(), f"raw {raw!r} in a request body: {body}"
            assert raw.lower() not in url.lower(), f"raw {raw!r} in a request URL: {url}"


# Around SHA-256's padding edges (55/56 and 119/120 bytes fill one or two blocks), several UTF-8
# widths, and long input: what a page's fallback must hash exactly as Web Crypto would.
PLAIN_HTTP_IDS = ["a", "x" * 55, "y" * 56, "z" * 63, "w" * 64, "v" * 65, "é" * 28, "€" * 40,
                  "\U0001f600" * 30, "u" * 119, "t" * 120, "user-" + "0123456789" * 100, "Ünïcødé 用户 42"]


def test_identify_hashes_on_a_plain_http_page_without_web_crypto(playwright, stack, r, ch, ch_database, pages):
    # Outside a secure context (plain http on a real host name) browsers hide crypto.subtle: the
    # README's own local set-up is such a page, and advanced matching must still work there.
    pixel = registry.create_pixel(r, "adv-1", ["shop.test"])
    email, phone = " Jane.Doe@Example.COM", "+44 20 7946 0958"
    pages.add("/plain", page_html("Plain http", snippet(pixel, stack)))
    b = launch(playwright, "--host-resolver-rules=MAP *.shop.test 127.0.0.1")
    try:
        page = b.new_context().new_page()
        log = RequestLog(page)
        page.goto(pages.url("/plain", host="www.shop.test"))
        wait_sdk(page)
        assert page.evaluate("() => [isSecureContext, typeof crypto.subtle]") == [False, "undefined"]
        page.evaluate("""([email, phone, ids]) => {
            ttq.identify({email, phone_number: phone}); ttq.track('CompleteRegistration');
            ids.forEach((id, i) => { ttq.identify({external_id: id}); ttq.track('ViewContent', {}, {event_id: 'h' + i}); });
        }""", [email, phone, PLAIN_HTTP_IDS])
        (signup,) = wait_rows(ch, ch_database, "event = 'CompleteRegistration'", 1)
        assert signup["email_sha256"] == sha256("jane.doe@example.com")
        assert signup["phone_sha256"] == sha256("+442079460958")
        got = wait_rows(ch, ch_database, "event = 'ViewContent'", len(PLAIN_HTTP_IDS))
        stored = {g["event_id"]: g["external_id_sha256"] for g in got}
        assert stored == {f"h{i}": sha256(v) for i, v in enumerate(PLAIN_HTTP_IDS)}
        settle(page)
        for _, method, url, body in log.items:  # and nothing raw left the page
            for raw in ("jane.doe", "7946", PLAIN_HTTP_IDS[-1]):
                assert raw.lower() not in (body or "").lower() and raw.lower() not in url.lower()
    finally:
        b.close()


# ---- 3. track, then navigate away at once ----------------------------------------------------------


def test_event_tracked_right_before_navigating_away_arrives(stack, r, ch, ch_database, pages, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    pages.add("/product", page_html(
        "Sneaker", snippet(pixel, stack),
        "<button id=buy onclick=\"ttq.track('AddToCart', {value: 80, currency: 'USD'});"
        " location.href = '/elsewhere'\">Add to cart</button>"))
    pages.add("/elsewhere", page_html("Elsewhere (no pixel here)"))
    page.goto(pages.url("/product"))
    wait_sdk(page)
    wait_rows(ch, ch_database, "event = 'PageView'", 1)
    # A slow network: the event's request is still on its way when the page is gone. Held here
    # until the next page has loaded, then let through unchanged; only a request that outlives
    # its page (fetch keepalive, sendBeacon) still exists by then.
    held = []
    page.route(f"**/e/{pixel}", lambda route: held.append(route))
    with page.expect_navigation():
        page.click("#buy")
    assert page.url == pages.url("/elsewhere")
    # Chromium sometimes issues a keepalive request from the page being torn down after the page's
    # interception is gone: it then goes straight to the collector, and if that attempt fails the
    # SDK keeps the event in its localStorage queue, sent from the next page with the pixel. Either
    # way the event must arrive, once.
    def arrived():
        return held or rows(ch, ch_database, "event = 'AddToCart'")

    try:
        wait_for(arrived, 10, what="the event's request", pump=page)
    except AssertionError:
        queued = page.evaluate("() => Object.keys(localStorage).map(k => k + '=' + localStorage[k]).join(' ')")
        page.goto(pages.url("/product"))  # the next page with the pixel drains the queue
        wait_sdk(page)
        wait_for(arrived, 20, what=f"the event, from the queue ({queued[:300]!r})", pump=page)
    for route in held:
        route.continue_()
    (row,) = wait_rows(ch, ch_database, "event = 'AddToCart'", 1)
    assert row["pixel_id"] == pixel and row["url"] == pages.url("/product") and row["value"] == 80.0


def test_events_pending_when_the_page_is_hidden_go_by_beacon(stack, r, ch, ch_database, pages, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    pages.add("/cart", page_html("Cart", snippet(pixel, stack)))
    page.goto(pages.url("/cart"))
    wait_sdk(page)
    wait_rows(ch, ch_database, "event = 'PageView'", 1)
    kinds = []
    page.on("request", lambda req: kinds.append(req.resource_type) if f"/e/{pixel}" in req.url else None)
    # Tracked and hidden in the same tick: the batch has not gone out by fetch yet, so the
    # page-hide handler must send it, and only sendBeacon survives a page that is going away.
    page.evaluate("() => { ttq.track('InitiateCheckout', {value: 12}); "
                  "window.dispatchEvent(new PageTransitionEvent('pagehide', {persisted: false})); }")
    (row,) = wait_rows(ch, ch_database, "event = 'InitiateCheckout'", 1)
    assert row["value"] == 12.0
    assert kinds == ["ping"]  # Chromium reports sendBeacon requests as "ping"


# ---- 4. collector down: queued in localStorage, sent once it is back ----------------------------


def test_events_queue_while_the_collector_is_down_and_arrive_exactly_once(
    r, ch, spawn, ch_database, pages, page
):
    port = services.free_port()
    base = f"http://127.0.0.1:{port}"
    first = spawn.start("collector", "--bind", f"127.0.0.1:{port}", "--workers", "2")
    servers.wait_http(base + "/healthz")
    spawn.sink()
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    pages.add("/shop", page_html("Shop", snippet(pixel, base) + (
        "<script>window.tracked = [];"
        " ttq.on('track', (id, e) => e.event != 'PageView' && tracked.push(e.event_id));</script>")))
    page.goto(pages.url("/shop"))
    wait_sdk(page)
    wait_rows(ch, ch_database, "event = 'PageView'", 1)

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    names = ["ViewContent", "AddToCart", "InitiateCheckout", "AddPaymentInfo", "PlaceAnOrder"]
    for name in names:
        page.evaluate("name => ttq.track(name, {content_id: 'sku-1'})", name)
    tracked = page.evaluate("() => tracked")
    assert len(tracked) == len(names) == len(set(tracked))
    queued = wait_for(lambda: len(local_queue(page)) == len(names) and local_queue(page), 10,
                      what="the events in localStorage _ct_q")
    assert sorted(x["e"]["event_id"] for x in queued) == sorted(tracked)
    assert {x["u"] for x in queued} == {f"{base}/e/{pixel}"}
    assert rows(ch, ch_database, "event != 'PageView'") == []

    spawn.start("collector", "--bind", f"127.0.0.1:{port}", "--workers", "2")
    servers.wait_http(base + "/healthz")
    page.reload()
    got = wait_rows(ch, ch_database, "event != 'PageView'", len(names))
    wait_for(lambda: local_queue(page) == [], 10, what="an empty _ct_q after the retry")
    counts = query_dicts(ch, f"SELECT event_id, count() AS n FROM {ch_database}.events_unique "
                             "WHERE event != 'PageView' GROUP BY event_id")
    assert {c["event_id"]: c["n"] for c in counts} == {eid: 1 for eid in tracked}
    assert [g["event"] for g in sorted(got, key=lambda g: tracked.index(g["event_id"]))] == names
    assert sorted(g["event_id"] for g in got) == sorted(tracked)


# ---- 5. consent ----------------------------------------------------------------------------------


def test_consent_hold_grant_and_revoke(stack, r, ch, ch_database, pages, context, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    pages.add("/consent", page_html("Cookie banner", snippet(pixel, stack, before="ttq.holdConsent();")))
    log = RequestLog(page)
    click = "E.C.P." + secrets.token_urlsafe(16)
    page.goto(pages.url(f"/consent?ttclid={click}"))
    wait_sdk(page)
    held = page.evaluate("() => { const t = Date.now(); ttq.track('ViewContent', {content_id: 'sku-9'});"
                         " return [t, Date.now()]; }")
    page.wait_for_timeout(500)  # the banner is up; time passes before the visitor decides
    settle(page)
    assert log.events() == [], "events were sent while consent was held"
    assert context.cookies() == [], "a cookie was written while consent was held"
    assert local_queue(page) == []

    grant_ms = page.evaluate("() => { const t = Date.now(); ttq.grantConsent(); return t; }")
    got = wait_rows(ch, ch_database, "1", 2)
    assert sorted(g["event"] for g in got) == ["PageView", "ViewContent"]
    for g in got:
        assert g["event_ms"] < grant_ms, f"{g['event']} stored with its send time, not its own"
        assert g["click_id"] == click
    (view,) = [g for g in got if g["event"] == "ViewContent"]
    assert held[0] <= view["client_ms"] <= held[1]
    wait_for(lambda: cookie_map(context, "_ttp") and cookie_map(context, "ttclid"), 5,
             what="the cookies, once consent is granted")
    assert cookie_map(context, "ttclid") == {"localhost": click}

    # Hold again, track, then revoke: the held event is dropped, the cookies go, nothing more is sent.
    page.evaluate("() => { ttq.holdConsent(); ttq.track('AddToCart', {value: 5}); }")
    settle(page)
    revoked = time.monotonic()
    page.evaluate("() => { ttq.revokeConsent(); ttq.track('Purchase', {value: 9}); ttq.page(); }")
    settle(page)
    page.wait_for_timeout(300)
    assert cookie_map(context, "_ttp") == {} and cookie_map(context, "ttclid") == {}
    assert page.evaluate("document.cookie") == ""
    assert local_queue(page) == []
    assert log.events(since=revoked) == [], "events were sent after revokeConsent"
    # A marker sent after the page went quiet: once it is stored, anything the page sent would be too.
    post_event(stack, pixel, "Marker", pages.url("").rstrip("/"))
    wait_rows(ch, ch_database, "event = 'Marker'", 1)
    assert sorted(g["event"] for g in rows(ch, ch_database)) == ["Marker", "PageView", "ViewContent"]


# ---- 6. two pixels on one page -------------------------------------------------------------------


def test_two_pixels_plain_track_reaches_both_instance_track_only_one(stack, r, ch, ch_database, pages, page):
    a = registry.create_pixel(r, "adv-1", ["localhost"])
    b = registry.create_pixel(r, "adv-2", ["localhost"])
    head = snippet(a, stack) + f"<script>ttq.load('{b}', {{collector: '{stack}'}});</script>"
    pages.add("/two", page_html("Two pixels", head))
    log = RequestLog(page)
    page.goto(pages.url("/two"))
    wait_sdk(page)
    page.evaluate("([a, b]) => { ttq.track('AddToCart', {value: 1});"
                  " ttq.instance(b).track('Lead', {value: 2}); ttq.instance(a).track('Contact'); }", [a, b])
    got = wait_rows(ch, ch_database, "event != 'PageView'", 4)
    settle(page)
    stored = rows(ch, ch_database, "event != 'PageView'")
    assert sorted((g["event"], g["pixel_id"], g["advertiser_id"]) for g in stored) == sorted(
        [("AddToCart", a, "adv-1"), ("AddToCart", b, "adv-2"), ("Contact", a, "adv-1"), ("Lead", b, "adv-2")])
    carts = [g for g in got if g["event"] == "AddToCart"]
    assert carts[0]["event_id"] == carts[1]["event_id"]  # one call, one event id, two pixels
    # The snippet's ttq.page() ran before the second pixel was loaded: the first pixel's only.
    assert [(g["pixel_id"]) for g in rows(ch, ch_database, "event = 'PageView'")] == [a]
    # And on the wire: one POST per pixel, each with its own events only.
    sent = {}
    for _, method, url, body in log.events():
        assert method == "POST" and body
        sent.setdefault(url.rsplit("/", 1)[1], []).extend(e["event"] for e in json.loads(body)["events"])
    assert sorted(sent[a]) == ["AddToCart", "Contact", "PageView"]
    assert sorted(sent[b]) == ["AddToCart", "Lead"]
    assert set(sent) == {a, b}


# ---- 7. single-page apps -------------------------------------------------------------------------


def test_spa_route_changes_give_one_page_view_each(stack, r, ch, ch_database, pages, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    pages.add("/app", page_html("SPA", snippet(pixel, stack, auto_spa="true")))
    log = RequestLog(page)
    page.goto(pages.url("/app"))
    wait_sdk(page)
    routes = ["/app/products", "/app/products/42", "/app/cart#summary", "/app/checkout?step=2"]
    for route in routes:
        page.evaluate("route => new Promise(r => { history.pushState({}, '', route); setTimeout(r, 10); })",
                      route)
    n = len(routes)
    wait_rows(ch, ch_database, "event = 'PageView'", n + 1)
    # A push to the URL we are on, and an in-page anchor: no new page.
    page.evaluate("() => new Promise(r => { history.pushState({}, '', location.href);"
                  " history.pushState({}, '', location.pathname + location.search + '#faq');"
                  " setTimeout(r, 10); })")
    settle(page)
    page.evaluate("() => ttq.track('Marker')")
    wait_rows(ch, ch_database, "event = 'Marker'", 1)
    # In the browser's order (client_ms): each route went in a POST of its own, and the skew
    # correction of event_ms (per request) can swap events a few ms apart.
    got = rows(ch, ch_database, "event = 'PageView'", order="client_ms")
    assert len(got) == n + 1
    assert [g["url"] for g in got] == [pages.url(p) for p in ["/app"] + routes]
    # Each route's referrer is the route before it (as a page, without its in-page anchor).
    assert [g["referrer"] for g in got[1:]] == [g["url"].split("#")[0] for g in got[:-1]]
    wire = [e for _, _, _, body in log.events() if body for e in json.loads(body)["events"]]
    # One PageView per route; a request retried on a slow, loaded machine repeats its event ids.
    assert len({e["event_id"] for e in wire if e["event"] == "PageView"}) == n + 1


# ---- 8. calls before the SDK loaded ----------------------------------------------------------------


def test_calls_made_before_the_sdk_loads_are_replayed_in_order(stack, r, ch, ch_database, pages, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    pages.add("/early", page_html("Early calls", snippet(pixel, stack)))
    held = []
    page.route("**/s/ct.js", lambda route: held.append(route))
    page.goto(pages.url("/early"), wait_until="domcontentloaded")
    wait_for(lambda: held, 10, what="the SDK request", pump=page)
    names = ["Search", "ViewContent", "AddToWishlist", "AddToCart", "InitiateCheckout"]
    spans = page.evaluate("""async ([names, pixel]) => {
        const spans = [];
        for (const name of names) {
            await new Promise(r => setTimeout(r, 15));
            if (ttq.version) throw new Error('the SDK loaded early');
            const before = Date.now();
            if (name == 'AddToWishlist') ttq.instance(pixel).track(name);
            else ttq.track(name, {query: name});
            spans.push([before, Date.now()]);
        }
        return spans;
    }""", [names, pixel])
    # Still the stub's queue: load, page, and the calls.
    assert page.evaluate("() => Array.isArray(ttq) && ttq.length") == len(names) + 2
    page.wait_for_timeout(300)  # a slow network: the SDK arrives well after the calls
    released = page.evaluate("Date.now()")
    held[0].continue_()
    wait_sdk(page)
    got = wait_rows(ch, ch_database, "1", len(names) + 1)
    assert [g["event"] for g in got] == ["PageView"] + names
    assert {g["pixel_id"] for g in got} == {pixel}
    tracked = [g for g in got if g["event"] != "PageView"]
    for g, (before, after) in zip(tracked, spans):
        assert before <= g["client_ms"] <= after, (g["event"], g["client_ms"], before, after)
        assert g["event_ms"] < released  # stored with its call time, not the time it was sent
    ms = [g["event_ms"] for g in tracked]
    assert ms == sorted(ms) and len(set(ms)) == len(ms)
    # Sent together: the gaps between the stored times are the gaps between the calls.
    client = [g["client_ms"] for g in tracked]
    assert [b - a for a, b in zip(ms, ms[1:])] == [b - a for a, b in zip(client, client[1:])]
    assert got[0]["event_ms"] < ms[0]  # the snippet's page() came first


# ---- 9. first-party collector: _ttp set by the server ------------------------------------------------


def test_first_party_collector_sets_ttp_cookie_for_the_site(playwright, stack, r, ch, ch_database, pages):
    pixel = registry.create_pixel(r, "adv-1", ["shop.test"])
    port = stack.rsplit(":", 1)[1]
    collector = f"http://t.shop.test:{port}"
    pages.add("/fp", page_html("First party", snippet(pixel, collector)))
    b = launch(playwright, "--host-resolver-rules=MAP *.shop.test 127.0.0.1")
    try:
        context = b.new_context()
        page = context.new_page()
        posts = []
        page.on("response", lambda res: res.request.method == "POST" and "/e/" in res.url
                and posts.append(res))
        page.goto(pages.url("/fp", host="www.shop.test"))
        wait_sdk(page)
        page.evaluate("() => ttq.track('ViewContent', {content_id: 'sku-1'})")
        got = wait_rows(ch, ch_database, "1", 2)
        wait_for(lambda: len(posts) >= 2, 5, what="the two POST responses", pump=page)
        assert [(p.url, p.status) for p in posts] == [(f"{collector}/e/{pixel}", 200)] * 2
        set_cookie = posts[0].header_value("set-cookie")
        assert set_cookie and set_cookie.startswith("_ttp=") and "Domain=shop.test" in set_cookie
        assert posts[1].header_value("set-cookie").split(";")[:2] == set_cookie.split(";")[:2]
        assert {g["browser_id"] for g in got} == {got[0]["browser_id"]} and got[0]["browser_id"]
        assert {g["url_host"] for g in got} == {"www.shop.test"}
        ttp = cookie_map(context, "_ttp")
        assert ttp.get(".shop.test") == got[0]["browser_id"], ttp
        assert set_cookie.startswith(f"_ttp={got[0]['browser_id']};")

        # Revoking consent clears the browser id the server set too, not only the script's own.
        page.evaluate("() => ttq.revokeConsent()")
        assert cookie_map(context, "_ttp") == {}, "revokeConsent left a _ttp cookie behind"
        assert page.evaluate("document.cookie") == ""
        context.close()
    finally:
        b.close()


# ---- 10. a good guest on the page: one global, no exceptions, debug output -------------------------


def test_sdk_defines_only_ttq_never_throws_and_debug_explains(stack, r, ch, ch_database, pages, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    probe = "<script>window.__before = Object.keys(window);</script>"
    pages.add("/guest", page_html("Guest", probe + snippet(pixel, stack, debug="true")))
    errors, console = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: console.append((msg.type, msg.text)))
    page.goto(pages.url("/guest"))
    wait_sdk(page)
    added = page.evaluate("() => Object.keys(window).filter(k => !window.__before.includes(k) && k != '__before')")
    assert added == ["ttq"]
    # Nonsense from the page must not surface as an exception in it.
    page.evaluate("""() => {
        ttq.track(null); ttq.track('Lead', 'not an object'); ttq.identify(42); ttq.identify({email: {}});
        ttq.instance(undefined).track('Lead'); ttq.load(); ttq.load({}); ttq.page(1, 2, 3);
        ttq.track('AddToCart', {value: 5, currency: 'USD', colour_of_box: 'red'});
    }""")
    (row,) = wait_rows(ch, ch_database, "event = 'AddToCart'", 1)
    assert json.loads(row["properties"])["colour_of_box"] == "red"  # unknown parameters are kept...
    assert errors == []
    # ...and debug mode says what it sends and warns about the parameter it does not know.
    assert any(kind == "warning" and "colour_of_box" in text for kind, text in console), console
    assert any("send" in text for kind, text in console if kind in ("log", "info", "debug")), console


def test_with_cookies_disabled_events_still_arrive_and_no_cookie_is_written(stack, r, ch, ch_database, pages,
                                                                          context, page):
    pixel = registry.create_pixel(r, "adv-1", ["localhost"])
    pages.add("/nocookie", page_html("No cookies", snippet(pixel, stack, before="ttq.disableCookie();")))
    click = "E.C.P." + secrets.token_urlsafe(16)
    page.goto(pages.url(f"/nocookie?ttclid={click}"))
    wait_sdk(page)
    page.evaluate("() => ttq.track('Lead', {value: 3})")
    got = wait_rows(ch, ch_database, "1", 2)
    assert sorted(g["event"] for g in got) == ["Lead", "PageView"]
    assert {g["click_id"] for g in got} == {click}  # the click id still travels with each event...
    assert len({g["browser_id"] for g in got}) == 1  # ...and one browser id for the page, kept in memory
    assert context.cookies() == []
