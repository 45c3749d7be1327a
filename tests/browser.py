"""Helpers for the browser tests: a static page server on another origin, Chromium, polling.

Pages are served by a small threaded http.server on 127.0.0.1 (reached as http://localhost:<port>,
or under any name the browser maps to 127.0.0.1), so the collector at http://127.0.0.1:<port> is
a different origin, as on a real site. Only Debian's Chromium is used; nothing is downloaded.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from clicktrail import services
from pixel.snippet import build_snippet

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: Headless Chromium calls itself HeadlessChrome, a bot's user agent (pixel/bots.py), whose clicks and
#: conversions are never attributed: a page standing for a person's visit presents a person's.
PERSON_USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/120.0.0.0 Safari/537.36")


def launch(playwright, *extra_args: str):
    """Debian's Chromium, headless, with the flags the test machines need (plus ``extra_args``)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(extra_args))


class PageServer:
    """Serves the HTML registered in ``pages`` (path -> html; the query string is ignored), and
    JavaScript for paths ending in .js or .mjs (so a page can import an ES module)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body = pages.get(urlsplit(self.path).path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = body.encode("utf-8")
                self.send_response(200)
                kind = "text/javascript" if self.path.split("?")[0].endswith((".js", ".mjs")) else "text/html"
                self.send_header("Content-Type", kind + "; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.port = services.free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="page-server", daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"

    def add(self, path: str, html: str) -> str:
        self.pages[path] = html
        return path

    def reset(self) -> None:
        self.pages.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def snippet(pixel_id: str, collector: str, *, before: str = "", **options) -> str:
    """The real snippet (pixel.snippet.build_snippet), optionally with more load options and
    commands run after the stub but before ``ttq.load`` (e.g. ``ttq.holdConsent();``)."""
    html = build_snippet(pixel_id, collector)
    load = "ttq.load("
    assert html.count(load) == 1
    if before:
        html = html.replace(load, before + "\n" + load)
    if options:
        extra = "".join(f", {key}: {value}" for key, value in options.items())
        head = f"{{collector: '{collector}'"
        assert html.count(head) == 1, "snippet layout changed"
        html = html.replace(head, head + extra)
    return html


#: Run right after the stub (``snippet(..., before=EVENT_LOG)``): lists each event the pixel sends
#: in the page's ``<ul id=ct-log>``, so a screenshot shows what happened.
EVENT_LOG = (
    "ttq.on('track', function (id, e) { var l = document.getElementById('ct-log');"
    " if (!l) return; var li = document.createElement('li');"
    " li.textContent = e.event + ' to pixel ' + id + ', event_id ' + e.event_id.slice(0, 8) + '\u2026'"
    " + (e.ttclid ? ', ttclid ' + e.ttclid.slice(0, 14) + '\u2026' : '');"
    " l.appendChild(li); });"
)


def page_html(title: str, head: str = "", body: str = "") -> str:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title>\n{head}\n"
        "<style>body{font:16px system-ui,sans-serif;margin:2em;max-width:40em}"
        "code{background:#eee;padding:0 .2em}#ct-log{font:14px ui-monospace,monospace}</style>\n"
        f"</head><body><h1>{title}</h1>\n{body}\n</body></html>\n"
    )


def wait_for(fn, timeout: float = 20.0, interval: float = 0.1, what: str = "condition", pump=None):
    """Poll ``fn`` until it returns something truthy; return that, or fail at the deadline.

    Playwright's sync API delivers page events (request, response, ...) only while one of its
    calls runs: with ``pump`` (a page) the wait between polls is ``pump.wait_for_timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        if pump is not None:
            pump.wait_for_timeout(interval * 1000)
        else:
            time.sleep(interval)


class RequestLog:
    """Every request a page makes: (monotonic time, method, url, post body)."""

    def __init__(self, page) -> None:
        self.items: list[tuple[float, str, str, str | None]] = []
        page.on("request", self._on)

    def _on(self, request) -> None:
        self.items.append((time.monotonic(), request.method, request.url, request.post_data))

    def events(self, since: float = 0.0) -> list[tuple[float, str, str, str | None]]:
        """Requests to the collector's event endpoints (POST /e/<id> and the image fallback)."""
        return [item for item in self.items if item[0] >= since and "/e/" in urlsplit(item[2]).path]

    def bodies(self) -> list[str]:
        return [item[3] for item in self.items if item[3]]
