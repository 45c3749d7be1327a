"""What the benchmarks share: which source tree to measure, and how to name it in a report.

Imported before any project module, so that ``--code DIR`` (an exported commit) is what the
benchmark imports and runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _code_dir(argv: list[str]) -> Path:
    """The source tree to run: --code DIR (e.g. `git archive HEAD | tar -x -C DIR`), else this checkout."""
    for i, arg in enumerate(argv):
        if arg == "--code" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if arg.startswith("--code="):
            return Path(arg.split("=", 1)[1]).resolve()
    return ROOT


CODE = _code_dir(sys.argv)
sys.path.insert(0, str(CODE))


def code_state() -> str:
    """What code was measured: the tree given with --code, or this checkout's commit and uncommitted files."""
    if CODE != ROOT:
        return str(CODE)
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--",
                "clicktrail",
                "collector",
                "pixel",
                "sink",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return str(ROOT)
    changed = [line[3:] for line in dirty if line.strip()]
    return f"{ROOT} at {head}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")
