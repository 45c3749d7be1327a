#!/usr/bin/env python3
"""Build the minified browser files: static/js/{stub,ct}.js -> static/js/{stub,ct}.min.js.

The minifier is rjsmin (PyPI package `rjsmin`, `pip install rjsmin`): it strips comments and
whitespace and keeps every line break JavaScript's semicolon insertion could depend on. It does
not rename anything, so the sources keep their repeated internal names short. The .min.js files
are committed; the collector serves them and never needs Node.js or rjsmin at run time.

    python bench/build_js.py           # rewrite the .min.js files
    python bench/build_js.py --check   # exit 1 if a .min.js file is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "static" / "js"
SOURCES = ("stub.js", "ct.js")


def minify(source: str) -> str:
    import rjsmin

    return rjsmin.jsmin(source, keep_bang_comments=False).strip() + "\n"


def targets() -> list[tuple[Path, Path]]:
    return [(JS_DIR / name, JS_DIR / name.replace(".js", ".min.js")) for name in SOURCES]


def stale() -> list[Path]:
    """The .min.js files whose content differs from a fresh build."""
    out = []
    for src, dst in targets():
        want = minify(src.read_text(encoding="utf-8"))
        if not dst.exists() or dst.read_text(encoding="utf-8") != want:
            out.append(dst)
    return out


def build() -> None:
    for src, dst in targets():
        dst.write_text(minify(src.read_text(encoding="utf-8")), encoding="utf-8", newline="\n")
        print(f"{dst.relative_to(ROOT)}: {dst.stat().st_size} bytes")


def main(argv: list[str]) -> int:
    if "--check" in argv:
        old = stale()
        for path in old:
            print(f"out of date: {path.relative_to(ROOT)} (run python bench/build_js.py)")
        return 1 if old else 0
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
