#!/usr/bin/env python3
"""The baseline for bench/collector_bench.py: a bare Flask app that answers 204 to every request.

It reads the request body (so the HTTP work matches the collector's) and does nothing else: no
parsing, no Redis, no metrics. It runs under exactly the collector's gunicorn settings
(``clicktrail.serve.run`` with ``production_options``: gthread workers, preload, same
keep-alive), so the collector/bare ratio measures what clicktrail itself costs per request.

Run by the bench; alone: ``python bench/bare_app.py --bind 127.0.0.1:8090 --workers 2``.
"""

from __future__ import annotations

import argparse
import os
import sys

from flask import Flask, Response, request


def create_app() -> Flask:
    app = Flask(__name__, static_folder=None)

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def answer(path: str) -> Response:
        request.get_data(cache=False)
        return Response(status=204)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:8090")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--data-dir", default=os.environ.get("CLICKTRAIL_DATA_DIR", "var"))
    args = parser.parse_args(argv)
    from clicktrail import serve

    # This file's folder is sys.path[0] when run as a script, so gunicorn can import the factory.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    serve.run("bare_app:create_app", args.bind, args.workers, args.threads, args.data_dir, "bare")


if __name__ == "__main__":
    main()
