"""Run a Flask app factory under gunicorn with clicktrail's production settings."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

from gunicorn.app.base import BaseApplication


def _child_exit(server, worker) -> None:
    # A dead worker's counters stay in the sum; its live gauges must not.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _post_fork(server, worker) -> None:
    # The app, built once in the master (preload), lives as long as the worker: moving it out of
    # the collector's reach keeps every later collection from walking it again, and keeps the
    # shared pages shared (a collection writes to every object it visits).
    gc.freeze()


class GunicornApp(BaseApplication):
    def __init__(self, factory_path: str, options: dict) -> None:
        self.factory_path = factory_path
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        module, _, name = self.factory_path.partition(":")
        factory = getattr(__import__(module, fromlist=[name]), name)
        return factory()


def production_options(bind: str, workers: int, threads: int) -> dict:
    return {
        "bind": bind,
        "workers": workers,
        # Threads hide the Redis round trip and keep idle keep-alive connections cheap.
        "worker_class": "gthread",
        "threads": threads,
        "keepalive": 5,
        "timeout": 30,
        "graceful_timeout": 10,
        # The app is built once in the master and forked: workers start fast and share its pages.
        "preload_app": True,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "child_exit": _child_exit,
        "post_fork": _post_fork,
        "proc_name": "clicktrail",
    }


def prepare_metrics_dir(data_dir: str, name: str) -> None:
    """Give this server's workers a fresh folder for their shared Prometheus samples.

    Must run before prometheus_client is imported: it picks its storage at import time.
    """
    folder = Path(data_dir).resolve() / "metrics" / f"{name}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def run(factory_path: str, bind: str, workers: int, threads: int, data_dir: str, name: str) -> None:
    prepare_metrics_dir(data_dir, name)
    GunicornApp(factory_path, production_options(bind, workers, threads)).run()
