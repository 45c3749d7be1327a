"""What the benchmarks share: which source tree to measure, and how to name it in a report.

Imported before any project module, so that ``--code DIR`` (an exported commit) is what the
benchmark imports and runs.
"""

from __future__ import annotations

import os
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

#: The ClickHouse server the benches create their own databases in.
CH_BASE = os.environ.get("BENCH_CLICKHOUSE_URL", "clickhouse://127.0.0.1:9000/default")


def redis_url(db: int) -> str:
    """BENCH_REDIS_URL, else the bench's own database of the local Redis."""
    return os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{db}")


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


def _proc_times() -> dict[int, tuple[int, float, float]]:
    """Every live process: pid -> (parent pid, user seconds, system seconds), read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # it ended while we looked
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        found[int(entry)] = (int(fields[1]), int(fields[11]) / tick, int(fields[12]) / tick)
    return found


def cpu_seconds(pid: int, scope: str = "children") -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` alone ("self"), with its direct children ("children": a
    gunicorn master and its workers), or with every live descendant ("tree")."""
    procs = _proc_times()
    if scope == "self":
        pids = [pid]
    elif scope == "children":
        pids = [pid] + [p for p, (parent, _, _) in procs.items() if parent == pid]
    else:
        pids, todo = [], [pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            todo.extend(c for c, (parent, _, _) in procs.items() if parent == p)
    user = sum(procs[p][1] for p in pids if p in procs)
    return user, sum(procs[p][2] for p in pids if p in procs)


def bench_env(db: str, redis: str) -> dict:
    """The environment of the processes a bench starts: its own ClickHouse and Redis databases."""
    from clicktrail import clickhouse

    return dict(os.environ, CLICKTRAIL_REDIS_URL=redis,
                CLICKTRAIL_CLICKHOUSE_URL=clickhouse.with_database(CH_BASE, db), CLICKTRAIL_DATA_DIR=str(ROOT / "var"))


def fresh_databases(db: str, redis: str, advertiser: str) -> tuple:
    """Drop and re-create the bench's ClickHouse database, empty its Redis database, register a pixel.

    Returns a ClickHouse client on the database, the Redis client, the pixel id and ``bench_env``.
    """
    from clicktrail import clickhouse, redis_client, schema
    from pixel import registry

    base = clickhouse.connect(CH_BASE)
    base.execute(f"DROP DATABASE IF EXISTS {db}")
    schema.migrate(base, db)
    r = redis_client.patient(redis)
    r.flushdb()
    pixel_id = registry.create_pixel(r, advertiser, ["bench.example"])
    return clickhouse.connect(clickhouse.with_database(CH_BASE, db)), r, pixel_id, bench_env(db, redis)
