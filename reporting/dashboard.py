"""The advertiser dashboard: ``GET /dashboard`` (the page) and ``GET /dashboard/<name>`` (its assets).

A static single page (static/dashboard/: index.html, app.js, app.css) that signs in with a
``reports`` token and reads everything through the API's own JSON endpoints, so this blueprint
holds no data and needs no token: it only serves files.

The files are read once, at import, with their gzip forms and content hashes. The page is
served with ``Cache-Control: no-cache`` (revalidated by ETag, so a new deployment shows at
once) and names its assets with ``?v=<content hash>``; an asset asked for with its current
hash is cached for a year (``immutable``), otherwise revalidated. Every response carries a
Content-Security-Policy that allows only the dashboard's own origin ('self'): no inline
script or style, no other host, no framing.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import re
from dataclasses import dataclass

from flask import Blueprint, Response, abort, request

from clicktrail.assets import static_dir

bp = Blueprint("dashboard", __name__)

ROOT = static_dir() / "dashboard"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
PAGE_CACHE = "no-cache"
LONG_CACHE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    body_gz: bytes | None
    version: str  # short content hash, also the ETag
    content_type: str


def _asset(body: bytes, suffix: str) -> Asset:
    version = hashlib.sha256(body).hexdigest()[:16]
    content_type = TYPES.get(suffix) or mimetypes.guess_type("x" + suffix)[0] or "application/octet-stream"
    compressible = content_type.startswith(("text/", "image/svg"))
    gz = gzip.compress(body, compresslevel=9, mtime=0) if compressible and len(body) > 512 else None
    return Asset(body, gz, version, content_type)


def _load() -> tuple[Asset, dict[str, Asset]]:
    assets: dict[str, Asset] = {}
    for path in sorted(ROOT.rglob("*")):
        if path.is_file() and path.name != "index.html" and not path.name.startswith("."):
            assets[path.relative_to(ROOT).as_posix()] = _asset(path.read_bytes(), path.suffix)
    html = (ROOT / "index.html").read_text("utf-8")

    def versioned(match: re.Match) -> str:
        name = match.group(2)
        if name not in assets:
            raise RuntimeError(f"static/dashboard/index.html names {name!r}, not a file in static/dashboard/")
        return f'{match.group(1)}"/dashboard/{name}?v={assets[name].version}"'

    html = re.sub(r'((?:src|href)=)"/dashboard/([^"?#]+)"', versioned, html)
    return _asset(html.encode("utf-8"), ".html"), assets


PAGE, ASSETS = _load()


def _send(asset: Asset, cache_control: str) -> Response:
    headers = {
        "Cache-Control": cache_control,
        "ETag": f'"{asset.version}"',
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    if asset.body_gz is not None:
        headers["Vary"] = "Accept-Encoding"
    if request.if_none_match.contains(asset.version):
        return Response(status=304, headers=headers)
    body = asset.body
    if asset.body_gz is not None and request.accept_encodings.quality("gzip") > 0:
        body = asset.body_gz
        headers["Content-Encoding"] = "gzip"
    return Response(body, status=200, headers=headers, content_type=asset.content_type)


@bp.get("/dashboard")
def page() -> Response:
    return _send(PAGE, PAGE_CACHE)


@bp.get("/dashboard/<path:name>")
def asset(name: str) -> Response:
    found = ASSETS.get(name)  # only files found at import: no path is ever joined from the URL
    if found is None:
        abort(404)
    fresh = request.args.get("v") == found.version
    return _send(found, LONG_CACHE if fresh else REVALIDATE)
