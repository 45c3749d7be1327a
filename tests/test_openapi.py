"""The OpenAPI file documents exactly the routes the collector serves."""

import re
from pathlib import Path

import yaml

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def test_every_route_is_documented_and_every_documented_path_exists(app):
    spec = yaml.safe_load(SPEC.read_text())
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops
                  if method != "parameters"}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD"}:
            if method == "OPTIONS" and not rule.endpoint.endswith("preflight"):
                continue
            served.add((path, method))
    assert served == documented
