"""The Redis scripts: each file compiles in Redis, and the domain-suffix rule's Lua copy answers
as pixel/registry.py's host_allowed does, on the real Redis, for generated hosts and domains."""

from __future__ import annotations

import hashlib

import orjson
import pytest
import redis
from hypothesis import given, settings as hsettings, strategies as st

from clicktrail import redis_client, scripting
from pixel.registry import host_allowed
from tests.conftest import REDIS_URL

# The rule as the scripts use it (its first matching domain, or nil), called on its own.
_RULE = scripting.source("host_allowed") + "\nreturn host_allowed(ARGV[1], cjson.decode(ARGV[2]))\n"

# Few letters, so that generated hosts and domains often share suffixes; a dot, to make labels;
# non-ASCII letters, as Lua compares bytes where Python compares characters.
_HOSTS = st.text(alphabet="ab.-é€", max_size=14)


@pytest.fixture(scope="module")
def rule():
    client = redis_client.patient(REDIS_URL)
    yield client.register_script(_RULE)
    client.close()


def _lua(rule, host: str, domains: list[str]) -> str | None:
    found = rule(keys=[], args=[host, orjson.dumps(domains)])
    return None if found is None else found.decode()


@st.composite
def host_and_domains(draw):
    host = draw(_HOSTS)
    # Its own suffixes (some on a label boundary, some not), and unrelated names.
    suffixes = st.integers(0, len(host)).map(lambda start: host[start:])
    domains = draw(st.lists(st.one_of(suffixes, _HOSTS, st.text(max_size=8)), max_size=5))
    return host, domains


@hsettings(max_examples=400, deadline=None)
@given(case=host_and_domains())
def test_the_lua_rule_answers_as_the_python_rule(rule, case):
    host, domains = case
    matched = _lua(rule, host, domains)
    assert (matched is not None) == host_allowed(host, domains)
    if matched is not None:  # the scripts keep the domain that matched (the site's cookie domain)
        assert matched == next(d for d in domains if host_allowed(host, [d]))


@pytest.mark.parametrize("host, domains, expected", [
    ("shop.example", ["shop.example"], "shop.example"),
    ("www.shop.example", ["other.example", "shop.example"], "shop.example"),
    ("evilshop.example", ["shop.example"], None),  # a suffix, but not on a label boundary
    ("shop.example", ["www.shop.example"], None),
    ("shop.example", [], None),
    ("bücher.example", ["xn--bcher-kva.example", "bücher.example"], "bücher.example"),
])
def test_the_lua_rule_on_known_cases(rule, host, domains, expected):
    assert _lua(rule, host, domains) == expected
    assert host_allowed(host, domains) == (expected is not None)


@pytest.mark.parametrize("path", sorted(scripting.LUA_DIR.glob("*.lua")), ids=lambda p: p.name)
def test_every_script_compiles_in_redis(path):
    client = redis_client.patient(REDIS_URL)
    try:
        text = scripting.source(path.stem)
        assert "--! include" not in text  # every include was written in
        assert client.script_load(text) == hashlib.sha1(text.encode()).hexdigest()  # SCRIPT LOAD compiles it
    except redis.ResponseError as exc:
        pytest.fail(f"{path.name} does not compile: {exc}")
    finally:
        client.close()
