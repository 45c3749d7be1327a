"""The browser endpoint's fast path: ``POST /e/<pixel_id>`` answered in front of Flask.

Pixel batches are nearly all of the collector's traffic, and for them Flask's per-request
machinery (request context, URL matching, hooks, the Response object) costs as much CPU as
the validation and the Redis write together: a bare Flask view answering 204 does half the
requests per second of a bare WSGI function under the same gunicorn (docs/performance.md).
So this WSGI middleware recognises the one hot request shape and hands it straight to
``browser.accept_batch``, the same function the Flask view calls; everything else, and every
unusual variant of the hot request (a chunked body, a body over the limit), goes to Flask
untouched, so there is one behaviour, written once.
"""

from __future__ import annotations

import logging
import time

from werkzeug.exceptions import InternalServerError

from clicktrail.errors import http_error_dict
from collector.browser import accept_batch
from collector.context import Services
from collector.intake import incoming_from_environ
from collector.metrics import observe_request
from collector.replies import Reply

log = logging.getLogger("clicktrail.collector")

#: Flask's name for the view this path stands in for, so /metrics reads the same either way.
ENDPOINT = "browser.browser_events"
_PREFIX = "/e/"


class BrowserFastPath:
    """WSGI middleware: answer plain pixel batches itself, pass everything else to ``wrapped``."""

    def __init__(self, wrapped, svc: Services, max_body_bytes: int) -> None:
        self.wrapped = wrapped
        self.svc = svc
        self.max_body = max_body_bytes

    def __call__(self, environ: dict, start_response):
        length = self._hot_length(environ)
        if length is None:
            return self.wrapped(environ, start_response)
        started = time.perf_counter()
        # The WSGI "decoding dance": PATH_INFO holds the raw bytes as latin-1, as Flask expects.
        pixel_id = environ["PATH_INFO"][len(_PREFIX):].encode("latin-1").decode("utf-8", "replace")
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            reply = accept_batch(self.svc, pixel_id, incoming_from_environ(environ, body))
        except Exception:  # a bug must answer as Flask would (a JSON 500), and be logged
            log.exception("browser batch failed for pixel %r", pixel_id)
            reply = Reply.json(http_error_dict(500, InternalServerError.description, self.max_body), 500)
        observe_request(ENDPOINT, reply.status, time.perf_counter() - started)
        start_response(reply.wsgi_status(), [*reply.headers, ("Content-Length", str(len(reply.body)))])
        return [reply.body]

    def _hot_length(self, environ: dict) -> int | None:
        """The body length of a request this path serves, or None to leave it to Flask."""
        if environ.get("REQUEST_METHOD") != "POST":
            return None
        path = environ.get("PATH_INFO", "")
        # /e/<pixel_id>: one non-empty segment after the prefix, as Flask's route matches it.
        if not path.startswith(_PREFIX) or len(path) == len(_PREFIX) or "/" in path[len(_PREFIX):]:
            return None
        if environ.get("SCRIPT_NAME"):  # mounted under a prefix: let Flask's routing decide
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not (length.isascii() and length.isdigit()) or int(length) > self.max_body:  # chunked, or a 413
            return None
        return int(length)
