"""JSON replies built with orjson: Flask's jsonify goes through the standard library encoder,
several times slower for the collector's small bodies."""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

import orjson
from flask import Response

JSON = "application/json"


def json_reply(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype=JSON)


class Reply(NamedTuple):
    """A finished answer, independent of Flask: the browser endpoint's fast path sends it as it is."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]

    @classmethod
    def json(cls, body: object, status: int = 200) -> Reply:
        return cls(status, orjson.dumps(body), [("Content-Type", JSON)])

    def to_response(self) -> Response:
        response = Response(self.body, status=self.status)
        for name, value in self.headers:
            if name == "Content-Type":  # replaces Flask's default text/html
                response.headers[name] = value
            else:
                response.headers.add(name, value)
        return response

    def wsgi_status(self) -> str:
        return STATUS_LINES[self.status]


STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
