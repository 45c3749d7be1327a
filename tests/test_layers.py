"""The import graph follows the data: a later stage may import an earlier one, never the reverse.

Every product module is read with ``ast`` (nothing is imported), and each of its imports,
function-level ones included (a lazy import is a dependency all the same), becomes an arrow
between modules. The stages, earliest first, are ``LAYERS`` below; README.md ("Code layout")
draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("clicktrail", "pixel", "collector", "sink", "attribution", "reporting")

#: Stages, earliest first; a module belongs to the stage of its longest matching name prefix, so a
#: new module in clicktrail/ is in the base (importing nothing later) unless it is listed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Settings, errors, Redis key names, clients and generic helpers: importable by every stage.
    ("base", ("clicktrail",)),
    # The domain: events, ids, hashing, the pixel registry, click URLs, touchpoints, the click cache.
    ("domain", ("pixel",)),
    # The ClickHouse tables the domain's records are stored in, and the helpers both writers share.
    ("tables", ("clicktrail.schema", "clicktrail.inserts", "clicktrail.cluster")),
    ("collector", ("collector",)),
    ("sink", ("sink",)),
    # The engine: matching, models, the attributor.
    ("attribution", ("attribution",)),
    # The read side: the API app, reports, the feed, diagnostics, explanations, the dashboard.
    ("reporting", ("reporting",)),
    # Entry points that start every part: the CLI, ``clicktrail up``, gunicorn, nginx, local servers.
    ("entry", ("clicktrail.cli", "clicktrail.supervisor", "clicktrail.serve", "clicktrail.proxy",
               "clicktrail.services", "clicktrail.redis_cluster")),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def module_files() -> dict[str, Path]:
    """Every product module by dotted name ("collector.app"; a package by its own name)."""
    out = {}
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str:
    best, length = "", -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = name, len(prefix)
    return best


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The product module an imported name lives in: itself, or its nearest enclosing package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            # "from pixel import registry" imports the module pixel.registry; "from pixel.ids import
            # token_hash" falls back to pixel.ids. (A package's __init__, which every import of one
            # of its modules runs first, is not an arrow: it would make each package a circle.)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _target(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: imports_of(m, path, modules) for m, path in modules.items()}


def test_the_graph_sees_real_imports():
    # Guards the reader itself: a parser that found nothing would pass every other test.
    graph = import_graph()
    assert "collector.buffer" in graph["collector.app"]
    assert "pixel.hashing" in graph["pixel.events"]
    assert "clicktrail.errors" in graph["pixel.registry"]  # "from clicktrail.errors import RegistryError"


def test_every_product_module_has_a_stage():
    assert {m: layer_of(m) for m in module_files() if not layer_of(m)} == {}
    assert set(PRODUCT) <= set(module_files()), "a product package is missing its __init__.py"


def test_no_import_goes_to_a_later_stage():
    backwards = sorted(
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if RANK[layer_of(target)] > RANK[layer_of(module)]
    )
    assert not backwards, "\n".join(backwards)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_module_imports_itself_through_others():
    # The circle this guards against: blueprints importing the app factory that imports them.
    cycles = _cycles(import_graph())
    assert not cycles, "\n".join(" <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
