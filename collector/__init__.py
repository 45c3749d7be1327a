"""The collector: the HTTP front door for browser, image and server events."""

from collector.app import create_app

__all__ = ["create_app"]
