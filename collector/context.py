"""Per-app services the views share, stored in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from clicktrail.config import Settings
from collector.buffer import EventBuffer
from collector.metrics import StreamCollector


@dataclass
class Services:
    settings: Settings
    buffer: EventBuffer
    redis: object
    stream_metrics: StreamCollector


def services() -> Services:
    return current_app.extensions["clicktrail"]
