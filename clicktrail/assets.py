"""Where the browser files live: the pixel SDK and its loader stub (js/), the dashboard (dashboard/).

They are kept in the repository's top-level ``static/`` folder, beside the packages, and a wheel
ships that same folder as package data of ``clicktrail`` (``clicktrail/static/``; see
pyproject.toml), so an installed system finds them without the source tree.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def static_dir() -> Path:
    installed = _HERE / "static"  # only in an installed wheel
    return installed if installed.is_dir() else _HERE.parent / "static"  # a source checkout
