"""Liveness, readiness and metrics."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from collector.context import services
from collector.metrics import render

bp = Blueprint("health", __name__)


@bp.route("/healthz")
def healthz():
    """The process answers: it is alive."""
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    """Ready when Redis answers: events can be accepted."""
    try:
        services().redis.ping()
    except redis.RedisError as exc:
        response = jsonify(status="unavailable", redis=str(exc))
        response.status_code = 503
        return response
    return jsonify(status="ok", redis="ok")


@bp.route("/metrics")
def metrics():
    return Response(render(services().stream_metrics), mimetype="text/plain; version=0.0.4; charset=utf-8")


@bp.route("/robots.txt")
def robots():
    return Response("User-agent: *\nDisallow: /\n", mimetype="text/plain")
