"""The HTML snippet a site pastes into <head>, and the minified SDK the collector serves.

The JavaScript lives in static/js/: stub.js, and the SDK's modules in src/, which
bench/build_js.py assembles into ct.js; it writes the minified .min.js files next to them. All are
committed, so nothing here needs Node.js or a minifier.
"""

from __future__ import annotations

import hashlib
import html
import re
from functools import cache
from urllib.parse import urlsplit

from clicktrail.assets import static_dir

JS_DIR = static_dir() / "js"

PIXEL_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@cache
def _read(name: str) -> bytes:
    return (JS_DIR / name).read_bytes()


def sdk_source() -> bytes:
    """The minified SDK (static/js/ct.min.js), as served at /s/ct.js."""
    return _read("ct.min.js")


def stub_source() -> str:
    """The minified loader stub (static/js/stub.min.js) that the snippet inlines."""
    return _read("stub.min.js").decode("utf-8").strip()


#: Short content hash of the minified SDK, for the versioned URL /s/<SDK_VERSION>/ct.js.
SDK_VERSION = hashlib.sha256(sdk_source()).hexdigest()[:12]


def validate_pixel_id(pixel_id: str) -> str:
    if not isinstance(pixel_id, str) or not PIXEL_ID_RE.fullmatch(pixel_id):
        raise ValueError(
            f"invalid pixel id {pixel_id!r}: use 1 to 64 characters, each a letter, a digit, '_' or '-'"
        )
    return pixel_id


def _collector_base(collector_url: str) -> str:
    if not isinstance(collector_url, str):
        raise ValueError(f"invalid collector URL {collector_url!r}: expected a string")
    url = collector_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"invalid collector URL {collector_url!r}: expected an absolute http(s) URL "
            "without query or fragment, e.g. https://t.example.com"
        )
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValueError(
            f"invalid collector URL {collector_url!r}: contains whitespace or control characters"
        )
    return url


def _js_string(value: str) -> str:
    """A single-quoted JavaScript string literal that is also safe inside an HTML <script>.

    Only letters, digits and a few URL punctuation characters stay as they are; everything
    else (quotes, backslash, <, >, &, line separators, ...) becomes a \\uXXXX escape, so the
    literal can neither end the string nor close the script element.
    """
    out = []
    for ch in value:
        if ch.isascii() and (ch.isalnum() or ch in ":/.-_~%?=+,;@!$*()[]#"):
            out.append(ch)
        else:
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(ch))
    return "'" + "".join(out) + "'"


def _utf16_units(ch: str) -> list[int]:
    data = ch.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def build_snippet(pixel_id: str, collector_url: str) -> str:
    """HTML to paste into <head>: the inlined stub, load + page, and a <noscript> image."""
    pixel_id = validate_pixel_id(pixel_id)
    base = _collector_base(collector_url)
    stub = stub_source()
    # The stub is ours, but make sure a rebuild can never close the script element early.
    if re.search(r"</script|<!--", stub, re.IGNORECASE):
        raise RuntimeError("static/js/stub.min.js must not contain '</script' or '<!--'")
    img = html.escape(f"{base}/e/{pixel_id}.gif?ev=PageView&noscript=1", quote=True)
    return (
        "<script>\n"
        f"{stub}\n"
        f"ttq.load({_js_string(pixel_id)}, {{collector: {_js_string(base)}}});\n"
        "ttq.page();\n"
        "</script>\n"
        f'<noscript><img height="1" width="1" style="display:none" src="{img}"/></noscript>\n'
    )
