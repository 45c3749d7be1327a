"""The browser pixel without a browser or servers: snippet, escaping, size budgets, build freshness,
pixel id validation, and the Flask blueprint that serves the SDK (through Flask's test client)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import re
import shutil
from pathlib import Path

import pytest
from flask import Flask

from pixel import snippet
from pixel.snippet import SDK_VERSION, build_snippet, sdk_source, stub_source

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "static" / "js"
COLLECTOR = "https://t.shop.example"

STUB_BUDGET = 700  # bytes, minified + gzip
SDK_BUDGET = 5120  # 5 KB, everything included (issue 13)


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def decode_js_string(literal: str) -> str:
    """Value of a single-quoted JS literal as _js_string writes it (only \\uXXXX escapes)."""
    assert literal[0] == literal[-1] == "'"
    body = literal[1:-1]
    assert "'" not in body and "\\" not in re.sub(r"\\u[0-9a-f]{4}", "", body)
    return body.encode("ascii").decode("unicode_escape").encode("utf-16", "surrogatepass").decode("utf-16")


# ---- snippet -------------------------------------------------------------------------------------


def test_snippet_layout():
    html = build_snippet("CT_PIXEL-1", COLLECTOR + "/")
    assert html.startswith("<script>\n")
    assert stub_source() in html
    assert "ttq.load('CT_PIXEL-1', {collector: 'https://t.shop.example'});\nttq.page();\n</script>" in html
    assert (
        '<noscript><img height="1" width="1" style="display:none" '
        'src="https://t.shop.example/e/CT_PIXEL-1.gif?ev=PageView&amp;noscript=1"/></noscript>'
    ) in html
    # stub, then load, then page: in that order
    assert (
        html.index(stub_source())
        < html.index("ttq.load(")
        < html.index("ttq.page()")
        < html.index("<noscript>")
    )
    assert html.count("<script>") == 1 and html.count("</script>") == 1


def test_snippet_keeps_a_path_prefix_and_drops_trailing_slashes():
    html = build_snippet("P1", "http://127.0.0.1:8080/ct//")
    assert "{collector: 'http://127.0.0.1:8080/ct'}" in html
    assert 'src="http://127.0.0.1:8080/ct/e/P1.gif?ev=PageView&amp;noscript=1"' in html


def test_snippet_escapes_the_collector_url_for_js_and_html():
    nasty = "https://t.example/a'b\"c</script><!--\\x&y\U0001f600"
    html = build_snippet("P1", nasty)
    script = html[: html.index("</script>")]
    # nothing in the script can end the string or the element early
    assert "</script" not in script.lower() and "<!--" not in script
    literal = re.search(r"\{collector: ('[^']*')\}", script).group(1)
    assert decode_js_string(literal) == nasty
    for raw in ("'b", '"c', "<", ">", "&", "\\x", "\U0001f600"):
        assert raw not in literal
    # the <noscript> attribute is HTML-escaped
    noscript = html[html.index("<noscript>") :]
    assert 'src="https://t.example/a&#x27;b&quot;c&lt;/script&gt;&lt;!--\\x&amp;y' in noscript
    assert "</script>" not in noscript


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ftp://t.example",
        "t.example",
        "//t.example",
        "javascript:alert(1)",
        "https://",
        "https://t.example/?q=1",
        "https://t.example/#x",
        "https://t.ex ample",
        "https://t.example/a\nb",
        "https://t.exa\u2028mple/",
        None,
        42,
    ],
)
def test_snippet_rejects_bad_collector_urls(bad):
    with pytest.raises(ValueError, match="collector URL"):
        build_snippet("P1", bad)


# ---- pixel ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["A", "abc", "CT_1-x", "0", "x" * 64, "D4O1G3JC77U5DNA7G8BG"])
def test_valid_pixel_ids(good):
    assert f"ttq.load('{good}'," in build_snippet(good, COLLECTOR)


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 65, "a b", "a.b", "a/b", "a'b", "<script>", "pixel\n", "é", "ｐ", "a%20", None, 123, ["P1"]],
)
def test_invalid_pixel_ids_raise_a_clear_error(bad):
    with pytest.raises(
        ValueError, match=r"invalid pixel id .*1 to 64 characters.*letter, a digit, '_' or '-'"
    ):
        build_snippet(bad, COLLECTOR)


# ---- built files ---------------------------------------------------------------------------------


def test_size_budgets():
    stub = (JS / "stub.min.js").read_bytes()
    sdk = (JS / "ct.min.js").read_bytes()
    assert gz(stub) <= STUB_BUDGET, f"stub is {gz(stub)} B gzipped, budget {STUB_BUDGET}"
    assert gz(sdk) <= SDK_BUDGET, f"SDK is {gz(sdk)} B gzipped, budget {SDK_BUDGET}"
    # the snippet's inline script, as pasted, is within the stub budget too (plus the two calls)
    html = build_snippet("D4O1G3JC77U5DNA7G8BG", COLLECTOR)
    assert gz(html.encode()) <= STUB_BUDGET + 150


@pytest.fixture
def build_js():
    pytest.importorskip("rjsmin", reason="rjsmin builds the .min.js files (pip install rjsmin)")
    spec = importlib.util.spec_from_file_location("build_js", ROOT / "bench" / "build_js.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_built_files_are_up_to_date(build_js):
    # ct.js from the modules in static/js/src/, and each .min.js from its .js
    assert build_js.stale() == [], "run: python bench/build_js.py"
    sdk = (JS / "ct.js").read_text(encoding="utf-8")
    for name in build_js.MODULES:
        module = (JS / "src" / f"{name}.js").read_text(encoding="utf-8").strip()
        assert module in sdk, f"{name}.js is not in ct.js as written"


def test_an_edited_module_makes_the_built_sdk_stale(build_js, tmp_path):
    js = tmp_path / "js"
    shutil.copytree(JS, js)
    assert build_js.stale(js) == []
    events = js / "src" / "events.js"
    events.write_text(events.read_text(encoding="utf-8").replace("'bad event'", "'bad event name'"), encoding="utf-8")
    assert build_js.stale(js) == [js / "ct.js", js / "ct.min.js"]
    build_js.build(js)
    assert build_js.stale(js) == []
    assert "log('warn','bad event name',name)" in (js / "ct.min.js").read_text(encoding="utf-8")


def test_a_module_left_out_of_the_build_order_is_refused(build_js, tmp_path):
    js = tmp_path / "js"
    shutil.copytree(JS, js)
    (js / "src" / "extra.js").write_text("var x = 1;\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"list every module in MODULES"):
        build_js.stale(js)
    (js / "src" / "extra.js").unlink()
    (js / "src" / "spa.js").unlink()
    with pytest.raises(SystemExit, match=r"list every module in MODULES"):
        build_js.stale(js)


def test_the_modules_seams_cost_no_bytes_beyond_the_wrapper(build_js):
    # The build adds one function around the modules and nothing else to the minified SDK.
    sdk = (JS / "ct.min.js").read_text(encoding="utf-8")
    assert sdk.startswith("((w,d)=>{'use strict';var METHODS=") and sdk.endswith("})(window,document);\n")
    body = "".join(build_js.minify((JS / "src" / f"{name}.js").read_text(encoding="utf-8")).strip()
                   for name in build_js.MODULES)
    assert len(sdk) - len(body) == len("((w,d)=>{'use strict';})(window,document);\n")


def test_min_files_are_safe_to_inline_and_serve():
    stub = stub_source()
    assert not re.search(r"</script|<!--", stub, re.IGNORECASE)
    for name in ("stub.min.js", "ct.min.js"):
        text = (JS / name).read_text(encoding="utf-8")
        assert text.isascii(), f"{name} should be plain ASCII"
        assert "/*" not in text and "debugger" not in text


def test_stub_and_sdk_agree_on_the_method_list():
    def methods(source: str) -> list[str]:
        return re.search(r"'(load page track [a-zA-Z ]+)'\.split", source).group(1).split()

    stub_methods = methods((JS / "stub.js").read_text())
    assert stub_methods == methods((JS / "ct.js").read_text())
    for m in (
        "load",
        "page",
        "track",
        "identify",
        "instance",
        "instances",
        "alias",
        "group",
        "holdConsent",
        "grantConsent",
        "revokeConsent",
        "enableCookie",
        "disableCookie",
        "debug",
        "on",
        "off",
        "once",
        "ready",
    ):
        assert m in stub_methods


def test_stub_injects_the_sdk_from_the_collector():
    stub = stub_source()
    assert "'/s/ct.js'" in stub and "o.collector" in stub and "async=true" in stub


def test_sdk_source_and_version():
    data = sdk_source()
    assert data == (JS / "ct.min.js").read_bytes()
    assert re.fullmatch(r"[0-9a-f]{12}", SDK_VERSION)
    assert SDK_VERSION == hashlib.sha256(data).hexdigest()[:12]
    assert snippet.validate_pixel_id("abc") == "abc"


# ---- the blueprint -------------------------------------------------------------------------------


@pytest.fixture
def client():
    from collector.sdk import bp

    app = Flask("sdk-test")
    app.register_blueprint(bp)
    return app.test_client()


def test_latest_sdk_plain(client):
    r = client.get("/s/ct.js", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.data == sdk_source()
    assert r.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert r.headers["Cache-Control"] == "public, max-age=300"
    assert r.headers["ETag"] == f'"{SDK_VERSION}"'
    assert "Content-Encoding" not in r.headers
    assert "Accept-Encoding" in r.headers["Vary"]


def test_latest_sdk_gzip(client):
    r = client.get("/s/ct.js", headers={"Accept-Encoding": "br, gzip;q=0.8"})
    assert r.status_code == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(r.data) == sdk_source()
    assert int(r.headers["Content-Length"]) == len(r.data)
    r = client.get("/s/ct.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in r.headers and r.data == sdk_source()


@pytest.mark.parametrize("inm", [f'"{SDK_VERSION}"', f'W/"{SDK_VERSION}"', f'"other", "{SDK_VERSION}"', "*"])
def test_latest_sdk_not_modified(client, inm):
    r = client.get("/s/ct.js", headers={"If-None-Match": inm, "Accept-Encoding": "gzip"})
    assert r.status_code == 304
    assert r.data == b""
    assert r.headers["ETag"] == f'"{SDK_VERSION}"'
    assert r.headers["Cache-Control"] == "public, max-age=300"


def test_latest_sdk_changed_etag(client):
    r = client.get("/s/ct.js", headers={"If-None-Match": '"0123456789ab"'})
    assert r.status_code == 200 and r.data


def test_versioned_sdk(client):
    r = client.get(f"/s/{SDK_VERSION}/ct.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert r.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert gzip.decompress(r.data) == sdk_source()


@pytest.mark.parametrize("version", ["0123456789ab", "latest", SDK_VERSION.upper(), SDK_VERSION + "0"])
def test_versioned_sdk_other_version_is_404(client, version):
    assert client.get(f"/s/{version}/ct.js").status_code == 404


def test_head_request(client):
    r = client.head("/s/ct.js")
    assert r.status_code == 200 and r.headers["ETag"] == f'"{SDK_VERSION}"'
