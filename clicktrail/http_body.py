"""Reading a request body, for both apps: the size limit (sized or chunked), gzip, JSON.

The collector and the API app both read bodies this way, so that a body refused by one is
refused by the other with the same error.
"""

from __future__ import annotations

import zlib

import orjson
from flask import Request

from clicktrail.errors import BadRequest, PayloadTooLarge

_GZIP_MAGIC = b"\x1f\x8b"
#: No client sends more than one or two gzip members; thousands of empty ones are only a way to
#: spend the collector's CPU.
MAX_GZIP_MEMBERS = 16
_READ_CHUNK = 65536


def _inflate(data: bytes, limit: int) -> bytes:
    """Gunzip every member of a body, at most ``limit`` bytes in all.

    A small body that inflates to gigabytes is refused, not expanded; a body of several gzip
    members (RFC 1952 allows it; ``gzip.decompress`` reads them all) is inflated whole, never cut
    after the first; a truncated stream or trailing bytes that are not gzip are refused.
    """
    out: list[bytes] = []
    total = 0
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(data, limit - total + 1)
        except zlib.error:
            raise BadRequest("body is not valid gzip", field="body", code="bad_gzip") from None
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"body inflates past {limit} bytes", field="body", code="inflated_too_large")
        if not inflater.eof:
            raise BadRequest("body is truncated gzip", field="body", code="bad_gzip")
        out.append(chunk)
        data = inflater.unused_data
        if not data:
            return b"".join(out)
        if data[:2] != _GZIP_MAGIC:
            raise BadRequest("body has bytes after its gzip stream", field="body", code="bad_gzip")
    raise BadRequest(f"body has more than {MAX_GZIP_MEMBERS} gzip members", field="body", code="bad_gzip")


def read_body(environ: dict, limit: int) -> bytes:
    """The request body off the WSGI input, refused past ``limit`` bytes whether sized or chunked.

    Werkzeug's own reading of a chunked body stops at the limit without saying so (a body cut
    short, then refused as malformed JSON); here a chunked body is read to one byte past the
    limit, so one too long is a 413 like a sized one.
    """
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        if not (length.isascii() and length.isdigit()):
            raise BadRequest("Content-Length must be a number", field="Content-Length")
        if int(length) > limit:
            raise PayloadTooLarge(f"body is larger than {limit} bytes")
        return stream.read(int(length)) if int(length) else b""
    if not environ.get("wsgi.input_terminated"):  # no length and not chunked: there is no body
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is larger than {limit} bytes")
        chunks.append(chunk)


def read_json(request: Request, max_inflated: int) -> object:
    """Return the parsed JSON body, gunzipped when sent with ``Content-Encoding: gzip``.

    The body is limited to the app's ``MAX_CONTENT_LENGTH`` on the wire, chunked or not.
    """
    limit = request.max_content_length
    body = request.get_data(cache=False) if limit is None else read_body(request.environ, limit)
    return decode_json(body, request.headers.get("Content-Encoding") or "", max_inflated)


def decode_json(data: bytes, content_encoding: str, max_inflated: int) -> object:
    """Parse a body as read off the wire: gunzip it if it is gzip, refuse what is not JSON."""
    encoding = content_encoding.lower()
    # sendBeacon cannot set headers, so gzip is also recognised by its magic bytes.
    if encoding == "gzip" or data[:2] == _GZIP_MAGIC:
        data = _inflate(data, max_inflated)
    elif encoding not in ("", "identity"):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; use gzip", field="Content-Encoding")
    if not data:
        raise BadRequest("body is empty; send a JSON object", field="body", code="empty_body")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", field="body", code="malformed_json") from None
