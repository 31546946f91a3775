"""The dependency direction of the project's packages, read from their imports.

core <- accounts <- conversations, workspace <- webhooks <- routines <- engine <- operations <-
ironclaw_site: a package imports only the ones on its left (webhooks and routines only need
conversations, and routines emits its event through webhooks). The plumbing (core) imports no
app, no app imports the operations app, conversations and workspace never import the engine (its
runner is found through the THREAD_RUNNER setting), and nothing imports the wiring. Every import
counts: module level, inside functions and under TYPE_CHECKING alike.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from django.conf import settings

ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "accounts": frozenset({"core"}),
    "conversations": frozenset({"core", "accounts"}),
    "workspace": frozenset({"core", "accounts"}),
    "webhooks": frozenset({"core", "accounts", "conversations"}),
    "routines": frozenset({"core", "accounts", "conversations", "webhooks"}),
    "engine": frozenset({"core", "accounts", "conversations", "workspace"}),
    "operations": frozenset(
        {"core", "accounts", "conversations", "workspace", "webhooks", "routines", "engine"}
    ),
    "ironclaw_site": frozenset(
        {
            "core",
            "accounts",
            "conversations",
            "workspace",
            "webhooks",
            "routines",
            "engine",
            "operations",
        }
    ),
}
# The SDK and the examples speak HTTP only: none of the server's packages.
SERVER_PACKAGES = frozenset(ALLOWED)
HTTP_ONLY = ("clients/python/src/ironclaw_client", "examples")


def imported_packages(source: Path, package: str) -> Iterator[tuple[str, int]]:
    """The top-level package of every import in ``source`` (relative ones are ``package``)."""
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield package, node.lineno
            elif node.module:
                yield node.module.split(".")[0], node.lineno


def package_imports(root: Path, packages: Mapping[str, object]) -> dict[str, dict[str, str]]:
    """For each package, the project packages it imports, each with one place that does."""
    graph: dict[str, dict[str, str]] = {}
    for package in packages:
        edges = graph.setdefault(package, {})
        for source in sorted((root / package).rglob("*.py")):
            if "migrations" in source.parts:
                continue
            for target, line in imported_packages(source, package):
                if target in packages and target != package:
                    edges.setdefault(target, f"{source.relative_to(root)}:{line}")
    return graph


def layering_violations(root: Path, allowed: Mapping[str, frozenset[str]]) -> list[str]:
    return [
        f"{where}: {package} imports {target}"
        for package, edges in package_imports(root, allowed).items()
        for target, where in edges.items()
        if target not in allowed[package]
    ]


def package_cycles(graph: Mapping[str, Mapping[str, str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, as the packages on it."""
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> None:
        if package in path:
            cycles.append([*path[path.index(package) :], package])
            return
        if package in done:
            return
        for target in graph.get(package, {}):
            visit(target, [*path, package])
        done.add(package)

    for package in graph:
        visit(package, [])
    return cycles


def test_each_package_imports_only_the_layers_below_it() -> None:
    violations = layering_violations(Path(settings.BASE_DIR), ALLOWED)

    assert violations == []


def test_no_import_cycle_between_packages() -> None:
    graph = package_imports(Path(settings.BASE_DIR), ALLOWED)

    assert package_cycles(graph) == []
    assert "core" in graph["operations"]  # the scan saw real imports


def test_the_client_and_examples_import_no_server_package() -> None:
    root = Path(settings.BASE_DIR)
    found = [
        f"{source.relative_to(root)}:{line} imports {target}"
        for folder in HTTP_ONLY
        for source in (root / folder).rglob("*.py")
        for target, line in imported_packages(source, "")
        if target in SERVER_PACKAGES
    ]

    assert found == []


def test_a_violation_and_a_cycle_are_reported(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "errors.py").write_text("import django\n")
    (tmp_path / "conversations").mkdir()
    # A function-level import is an import too.
    (tmp_path / "conversations" / "services.py").write_text(
        "def spawn():\n    from engine.runner import run\n"
    )
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "runner.py").write_text("from conversations import services\n")
    allowed = {
        "core": frozenset[str](),
        "conversations": frozenset({"core"}),
        "engine": frozenset({"core", "conversations"}),
    }

    violations = layering_violations(tmp_path, allowed)
    cycles = package_cycles(package_imports(tmp_path, allowed))

    assert violations == ["conversations/services.py:2: conversations imports engine"]
    assert cycles == [["conversations", "engine", "conversations"]]


MAX_MODULE_LINES = 500
# Tests and migrations may run long; everything else, benchmarks and the client included, splits.
SIZE_EXEMPT_PARTS = frozenset({"tests", "migrations", ".venv", "var", "site"})
# Written by a generator from the API's schema: its length follows the API's, not a person's.
GENERATED = frozenset({"clients/python/src/ironclaw_client/models.py"})


def test_no_module_is_over_500_lines() -> None:
    root = Path(settings.BASE_DIR)
    long_modules = {
        str(source.relative_to(root)): lines
        for source in root.rglob("*.py")
        if not SIZE_EXEMPT_PARTS.intersection(source.relative_to(root).parts)
        and str(source.relative_to(root)) not in GENERATED
        and (lines := len(source.read_text().splitlines())) > MAX_MODULE_LINES
    }

    assert long_modules == {}
