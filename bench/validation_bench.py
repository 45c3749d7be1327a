#!/usr/bin/env python3
"""What checking every field costs: CPU per event of the collector's validation, its scrub of
personal data at the door (pixel/scrub.py, where the tree has it) and the sink's row building, for
one source tree or two side by side.

The events are the sink bench's realistic mix (``sink_bench.raw_requests``: 80 % pixel batches,
20 % Events API rows). Each tree runs in its own process (so each imports its own code), the
trees alternate round by round, and what is reported is process CPU time, which a busy machine
disturbs less than wall time. No Redis or ClickHouse is needed.

    python bench/validation_bench.py                              # this checkout
    python bench/validation_bench.py --compare OLD_DIR            # OLD_DIR vs this checkout, alternating
    git archive 55fff9b | tar -x -C /tmp/old && python bench/validation_bench.py --compare /tmp/old

Results: docs/performance.md, "Validation cost".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Runs inside the measured tree's process: parse every request, then build every record's row.
_MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from sink_bench import raw_requests  # benchlib puts the tree named by --code first on sys.path
from pixel.events import parse_events
from sink.rows import RowBuilder

requests = raw_requests(int(sys.argv[4]), seed=7)
events = sum(len(raws) for _, raws, _ in requests)
start = time.process_time()
parsed = []
for advertiser, raws, ctx in requests:
    records, rejections = parse_events(raws, ctx)
    assert not rejections, rejections[:3]
    parsed.append((advertiser, records))
validate_s = time.process_time() - start
try:  # the collector's scrub at the door (pixel/scrub.py), in trees that have it
    from pixel.scrub import scrub_record
except ImportError:
    scrub_record = None
start = time.process_time()
if scrub_record is not None:
    for _, records in parsed:
        for record in records:
            scrub_record(record, True)
scrub_s = time.process_time() - start
builder = RowBuilder(True, 20000)
import orjson
entries = [(b"1-%d" % i, {b"a": a.encode(), b"n": str(len(r)).encode(), b"d": orjson.dumps(r)})
           for i, (a, r) in enumerate(parsed)]
start = time.process_time()
for entry_id, fields in entries:
    builder.rows(entry_id, fields)
build_s = time.process_time() - start
print(json.dumps({"events": events, "validate_us": validate_s / events * 1e6, "scrub_us": scrub_s / events * 1e6,
                  "build_us": build_s / events * 1e6}))
"""


def measure(tree: Path, events: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, "--code", str(tree), str(HERE), str(events)],
                         check=True, capture_output=True, text=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per round [100000]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per tree, alternating [3]")
    parser.add_argument("--compare", metavar="OLD_DIR", help="another source tree to measure beside this one")
    args = parser.parse_args(argv)
    trees = ([("old", Path(args.compare).resolve())] if args.compare else []) + [("this", ROOT)]
    results: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, tree in trees:
            results[name].append(measure(tree, args.events))
    print("| tree | validation µs/event (median) | scrub at the door µs/event (median) | row building µs/event"
          " (median) | rounds |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        v = statistics.median(r["validate_us"] for r in runs)
        s = statistics.median(r.get("scrub_us", 0.0) for r in runs)
        b = statistics.median(r["build_us"] for r in runs)
        print(f"| {name} | {v:.1f} | {s:.1f} | {b:.1f} | {len(runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
