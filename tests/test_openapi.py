"""The OpenAPI file documents exactly the routes each server serves."""

import re
from pathlib import Path

import pytest
import yaml

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def documented(app_name: str) -> set[tuple[str, str]]:
    spec = yaml.safe_load(SPEC.read_text())
    out = set()
    for path, ops in spec["paths"].items():
        apps = ops.get("x-clicktrail-app", "collector")
        if app_name not in (apps if isinstance(apps, list) else [apps]):
            continue
        out |= {(path, method.upper()) for method in ops if method not in ("parameters", "x-clicktrail-app")}
    return out


def served(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD"}:
            if method == "OPTIONS" and not rule.endpoint.endswith("preflight"):
                continue
            out.add((path, method))
    return out


@pytest.mark.parametrize("name", ["collector", "api"])
def test_every_route_is_documented_and_every_documented_path_exists(name, app, api_client):
    flask_app = app if name == "collector" else api_client.application
    assert served(flask_app) == documented(name)


def test_the_file_is_valid_openapi():
    from openapi_spec_validator import validate

    validate(yaml.safe_load(SPEC.read_text()))  # raises, naming the path, on any violation
