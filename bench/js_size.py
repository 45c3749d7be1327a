#!/usr/bin/env python3
"""Print the size of the browser files as shipped: minified, and minified + gzip (level 9).

Budgets: stub <= 700 B gzip, SDK <= 5120 B gzip. Exit status 1 when one is over.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

JS_DIR = Path(__file__).resolve().parent.parent / "static" / "js"
BUDGETS = {"stub.min.js": 700, "ct.min.js": 5120}


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def main() -> int:
    over = False
    for name, budget in BUDGETS.items():
        data = (JS_DIR / name).read_bytes()
        gz = gzip_size(data)
        over |= gz > budget
        print(
            f"{name:12} {len(data):6} B min  {gz:5} B gzip  (budget {budget} B gzip){'  OVER' if gz > budget else ''}"
        )
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
