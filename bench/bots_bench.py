#!/usr/bin/env python3
"""What deciding whether a click is a bot's costs the click redirect (pixel/bots.py).

The collector asks ``pixel.bots.is_bot`` once per click: a user agent a worker has not seen costs
ua-parser's device parse (its crawler list), a seen one a cache lookup. Prints both, per call,
for ``--n`` user agents that differ in their version (as a site's visitors' do), and for the
listed markers alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEMPLATE = ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.{}.{} "
            "Mobile Safari/537.36")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    from pixel import bots

    print(f"import pixel.bots (ua-parser's regexes): {(time.perf_counter() - started) * 1000:.0f} ms")
    agents = [TEMPLATE.format(100 + i % 30, i // 30, i) for i in range(args.n)]
    bots.is_bot("curl/8.5.0", "redirect")  # the first parse compiles what ua-parser compiles lazily
    for label in ("unseen (ua-parser + markers)", "seen (cache)"):
        started = time.perf_counter()
        for agent in agents:
            bots.is_bot(agent, "redirect")
        print(f"{label:32} {(time.perf_counter() - started) / args.n * 1e6:9.2f} us per click")
    started = time.perf_counter()
    for agent in agents:
        bots.marker(agent)
    print(f"{'markers alone (one regex)':32} {(time.perf_counter() - started) / args.n * 1e6:9.2f} us per click")


if __name__ == "__main__":
    main()
