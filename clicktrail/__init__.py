"""clicktrail: a self-hosted pixel and conversion-tracking backend."""

__version__ = "0.1.0"
