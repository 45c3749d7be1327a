"""The one exception tree of clicktrail.

    ClicktrailError
    ├── ConfigError            bad setting or environment variable
    ├── ServiceError           a server we need is missing or fails
    │   ├── BufferUnavailable  Redis unreachable, slow or over its length guard  (503)
    │   └── StorageError       ClickHouse unreachable or failing
    ├── RegistryError          bad pixel, advertiser or token input (CLI)
    └── RequestError           an HTTP request we refuse; carries status, code, field
        ├── BadRequest         400 malformed body or field
        ├── Unauthorized       401 missing or unknown token
        ├── Forbidden          403 token scope, token advertiser, domain not registered
        ├── NotFound           404 unknown pixel
        └── PayloadTooLarge    413 body or inflated body over the limit

Request errors render as ``{"error": {"code", "field", "message"}}`` (the Events API wraps
the same facts in TikTok's ``{code, message, request_id, data}``).

One row of a batch that breaks a rule (an event, an imported click, a cost) is not an error of
this tree: the parsers raise ``pixel.events.InvalidField`` and keep it as that row's
``Rejection``, reported beside the rows accepted.
"""

from __future__ import annotations


class ClicktrailError(Exception):
    """Base of every error clicktrail raises on purpose."""


class ConfigError(ClicktrailError):
    """A setting is missing or malformed."""


class RegistryError(ClicktrailError):
    """A pixel, advertiser, domain or token given to the registry is not acceptable."""


class ServiceError(ClicktrailError):
    """A server clicktrail depends on is missing or failing."""


class StorageError(ServiceError):
    """ClickHouse is unreachable or refused a statement."""


class LeaseLost(ServiceError):
    """Another worker took over the lease this one needed to go on (it stalled past the lease)."""


class RequestError(ClicktrailError):
    """An HTTP request clicktrail refuses, with what a client needs to fix it."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class BadRequest(RequestError):
    status = 400
    code = "bad_request"


class Unauthorized(RequestError):
    status = 401
    code = "unauthorized"


class Forbidden(RequestError):
    status = 403
    code = "forbidden"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class BufferUnavailable(ServiceError, RequestError):
    """The Redis buffer cannot take events now; the client should retry later."""

    status = 503
    code = "unavailable"


_HTTP_CODES = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}


def http_error_dict(status: int, description: str, max_body_bytes: int) -> dict:
    """Werkzeug's own refusals (413 past the body limit, 404, 405) in clicktrail's error shape."""
    message = f"body is larger than {max_body_bytes} bytes" if status == 413 else description
    return {"error": {"code": _HTTP_CODES.get(status, "http_error"), "message": message}}
