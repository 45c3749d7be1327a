"""`pip install .` gives a working system: the wheel holds the browser files and declares every library.

The wheel is built by pip from a copy of the project (as a user would from a checkout), installed
into a scratch folder with `pip install --target`, and the collector and the API run from that
folder alone, as real gunicorn processes, with the working directory elsewhere so the repository
cannot be imported by accident.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from clicktrail import clickhouse, services
from tests.http import call
from tests.servers import env_for, wait_http

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("clicktrail", "collector", "sink", "pixel", "attribution", "reporting")
STATIC_FILES = sorted(p.relative_to(ROOT / "static").as_posix()
                      for p in (ROOT / "static").rglob("*") if p.is_file() and not p.name.startswith("."))
MIGRATION_FILES = sorted(p.name for p in (ROOT / "clicktrail/migrations").glob("*.sql"))
LUA_FILES = sorted(p.name for p in (ROOT / "clicktrail/lua").glob("*.lua"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in (*PRODUCT, "static"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
                   cwd=source, check=True, timeout=300)
    (built,) = out.glob("clicktrail-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    return target


def test_the_wheel_holds_every_browser_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"clicktrail/static/js/ct.min.js", "clicktrail/static/js/stub.min.js",
            "clicktrail/static/dashboard/index.html"} <= names
    assert {f"clicktrail/static/{name}" for name in STATIC_FILES} <= names
    with zipfile.ZipFile(wheel) as archive:
        for name in STATIC_FILES:
            assert archive.read(f"clicktrail/static/{name}") == (ROOT / "static" / name).read_bytes(), name


def test_the_wheel_holds_every_migration(wheel):
    assert len(MIGRATION_FILES) >= 7  # the glob sees the migrations at all
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(n.removeprefix("clicktrail/migrations/") for n in archive.namelist()
                         if n.startswith("clicktrail/migrations/"))
        assert shipped == MIGRATION_FILES
        for name in MIGRATION_FILES:
            assert archive.read(f"clicktrail/migrations/{name}") == (ROOT / "clicktrail/migrations" / name).read_bytes()


def test_the_wheel_holds_every_redis_script(wheel):
    assert {"append_events.lua", "host_allowed.lua", "lease_take.lua"} <= set(LUA_FILES)  # the glob sees them
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(n.removeprefix("clicktrail/lua/") for n in archive.namelist()
                         if n.startswith("clicktrail/lua/"))
        assert shipped == LUA_FILES
        for name in LUA_FILES:
            assert archive.read(f"clicktrail/lua/{name}") == (ROOT / "clicktrail/lua" / name).read_bytes()


def test_the_install_alone_creates_the_schema(installed, settings, ch, tmp_path):
    db = f"ct_wheel_{secrets.token_hex(4)}"
    url = clickhouse.with_database(settings.clickhouse.url, db)
    try:
        done = subprocess.run([sys.executable, "-m", "clicktrail.cli", "migrate"], cwd=tmp_path, timeout=120,
                              env={**env_for(settings, CLICKHOUSE_URL=url), "PYTHONPATH": str(installed)},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{len(MIGRATION_FILES)}\n" and f"applied {len(MIGRATION_FILES)}: " in done.stderr
        tables = {name for (name,) in ch.execute(f"SHOW TABLES FROM {db}")}
        assert {"events", "touchpoints", "credits", "credit_input", "costs"} <= tables
    finally:
        ch.execute(f"DROP DATABASE IF EXISTS {db}")


def _third_party_imports() -> dict[str, str]:
    """Top-level modules the product packages import that are neither standard nor ours: {module: file}."""
    found = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PRODUCT and top != "__future__":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_imported_library_is_a_declared_dependency():
    declared = {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"click", "flask", "redis", "clickhouse_driver"} <= set(imports)  # the scan sees imports at all
    missing = {module: where for module, where in imports.items()
               if not {d.lower().replace("_", "-") for d in providers.get(module, [module])} & declared}
    assert missing == {}, f"imported but not in [project] dependencies: {missing}"


def _serve(installed: Path, command: str, settings, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = services.free_port()
    env = env_for(settings, DATA_DIR=str(cwd / "var"))
    env["PYTHONPATH"] = str(installed)  # the install only: not the repository, not the test's path
    proc = subprocess.Popen([sys.executable, "-m", "clicktrail.cli", command, "--bind", f"127.0.0.1:{port}",
                             "--workers", "1"], env=env, cwd=cwd, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def test_the_collector_and_the_api_run_from_the_install_alone(installed, settings, r, tmp_path):
    where = subprocess.run([sys.executable, "-c", "import clicktrail, collector, attribution, reporting; "
                            "print(clicktrail.__file__, collector.__file__, attribution.__file__, "
                            "reporting.__file__)"],
                           env={**env_for(settings), "PYTHONPATH": str(installed)}, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert all(path.startswith(str(installed)) for path in where.stdout.split()), where.stdout
    collector, collector_url = _serve(installed, "collector", settings, tmp_path)
    api, api_url = _serve(installed, "api", settings, tmp_path)
    try:
        wait_http(collector_url + "/healthz", timeout=60)
        wait_http(api_url + "/healthz", timeout=60)
        sdk = call("GET", collector_url + "/s/ct.js")
        assert sdk.status == 200
        assert sdk.body == (installed / "clicktrail/static/js/ct.min.js").read_bytes()
        assert sdk.body == (ROOT / "static/js/ct.min.js").read_bytes()
        page = call("GET", api_url + "/dashboard")
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b"<title>" in page.body and re.search(rb'src="/dashboard/app\.js\?v=[0-9a-f]+"', page.body)
        script = call("GET", api_url + "/dashboard/app.js")
        assert script.status == 200 and script.body == (ROOT / "static/dashboard/app.js").read_bytes()
    finally:
        for proc in (collector, api):
            proc.terminate()
            proc.wait(timeout=30)
