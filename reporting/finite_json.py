"""The API's JSON: finite numbers only.

``NaN`` and ``Infinity`` are not JSON; Python's encoder writes them anyway, and most clients
then fail on the whole answer. Endpoints report a sum too large for a double as null (see
docs/attribution.md); this encoder is the last guard: any non-finite float that still reaches
it is written as null, and logged, since it means a sum was not checked.
"""

from __future__ import annotations

import logging
import math

from flask.json.provider import DefaultJSONProvider

log = logging.getLogger("clicktrail.api")


def finite_or_none(value: float | int | None) -> float | int | None:
    """``value``, or None when it is NaN or infinite."""
    return value if value is None or math.isfinite(value) else None


def _replace_non_finite(obj):
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _replace_non_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_replace_non_finite(v) for v in obj]
    return obj


class FiniteJSONProvider(DefaultJSONProvider):
    def dumps(self, obj, **kwargs) -> str:
        kwargs["allow_nan"] = False
        try:
            return super().dumps(obj, **kwargs)
        except ValueError:  # "Out of range float values are not JSON compliant"
            log.warning("a non-finite number reached the JSON encoder; written as null")
            return super().dumps(_replace_non_finite(obj), **kwargs)
