"""The Lua scripts clicktrail runs inside Redis, kept as ``.lua`` files in ``clicktrail/lua/``.

A script may share a piece of Lua with others (the domain-suffix rule) by a line
``--! include NAME.lua``, replaced by that file's text: Redis runs each script on its own, with no
way to load another. Each file is read once per process; a wheel ships the folder as package data.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "lua"
_INCLUDE = re.compile(r"^--! include ([a-z_]+\.lua)$", re.MULTILINE)


@functools.cache
def source(name: str) -> str:
    """The text of script ``name`` (``clicktrail/lua/NAME.lua``), its includes written in."""
    text = (LUA_DIR / f"{name}.lua").read_text("utf-8")
    return _INCLUDE.sub(lambda m: source(m.group(1).removesuffix(".lua")), text)
