"""The layout contract of the redesign: a maintainer reads the packages like a table of
contents, and the dependency direction holds (see README "Layout")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("vidfeat",)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every vidfeat/fusion module ``name`` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parent + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            # the longest known module the import names (a name imported from a package
            # resolves to the package's __init__)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    mods = _modules()
    graph = {m: _imports(m, p, set(mods)) for m, p in mods.items()}
    assert _cycles(graph) == []


def test_dependency_direction() -> None:
    """Nothing below the command line imports it; nothing that makes features imports what
    learns from them (fusion); the extraction engines never import the tasks (fields, network)
    that run on them."""
    mods = _modules()
    graph = {m: _imports(m, p, set(mods)) for m, p in mods.items()}

    def inside(m: str, *pkgs: str) -> bool:
        return any(m == p or m.startswith(p + ".") for p in pkgs)

    for m, deps in graph.items():
        if not inside(m, "vidfeat.cli", "vidfeat.__main__"):
            assert not any(inside(d, "vidfeat.cli") for d in deps), (m, deps)
        if not inside(m, "vidfeat.cli", "vidfeat.fusion", "vidfeat.__main__"):
            assert not any(inside(d, "vidfeat.fusion") for d in deps), (m, deps)
    for engine in ("vidfeat.extract.local", "vidfeat.extract.ray", "vidfeat.extract.job"):
        assert not graph[engine] & {"vidfeat.extract.fields", "vidfeat.extract.network"}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_file_over_700_lines(pkg: str) -> None:
    long = {
        str(f.relative_to(ROOT)): n
        for f in (ROOT / pkg).rglob("*.py")
        if (n := len(f.read_text().splitlines())) > 700
    }
    assert long == {}


def _option_lines(fn: ast.AST) -> set[int]:
    """The lines of ``fn`` inside option declarations (``click.option(...)``,
    ``click.argument(...)``): an option table is long by nature, and each entry is one
    declaration, not logic."""
    lines: set[int] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("option", "argument") and isinstance(node.func.value, ast.Name):
                if node.func.value.id == "click":
                    lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def test_no_function_over_80_lines() -> None:
    """A function reads on one screen; option tables aside (their declarations don't count)."""
    long = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = set(range(node.lineno, node.end_lineno + 1)) - _option_lines(node)
                if len(body) > 80:
                    long[f"{name}.{node.name}"] = len(body)
    assert long == {}


def _imported(tree: ast.AST) -> list[tuple[str, str]]:
    """(module, name) of every ``from module import name`` at any depth (absolute imports);
    ``import a.b`` gives (a.b, "")."""
    out: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out += [(node.module, a.name) for a in node.names]
    return out


def test_only_the_command_line_imports_click() -> None:
    """The library raises vidfeat's own errors; only vidfeat.cli turns them into click's."""
    users = {
        name
        for name, path in _modules().items()
        if not name.startswith("vidfeat.cli")
        for module, _ in _imported(ast.parse(path.read_text()))
        if module.split(".")[0] == "click"
    }
    assert users == set()


def _package_of(module: str, mods: dict[str, Path]) -> str:
    return module if mods[module].name == "__init__.py" else module.rpartition(".")[0]


def test_no_private_name_crosses_a_package() -> None:
    """``from vidfeat.a import _x`` is fine inside package a, never from outside it."""
    mods = _modules()
    crossing = []
    for name, path in mods.items():
        here = _package_of(name, mods)
        for module, imported in _imported(ast.parse(path.read_text())):
            if not module.startswith("vidfeat") or module == "vidfeat._version":
                continue
            target = f"{module}.{imported}" if f"{module}.{imported}" in mods else module
            owner = _package_of(target, mods) if target in mods else module
            private = [p for p in target.split(".") if p.startswith("_") and p[:2] != "__"]
            if imported.startswith("_") and imported[:2] != "__" and target == module:
                private.append(imported)
            if private and owner != here:
                crossing.append(f"{name}: from {module} import {imported}")
    assert crossing == []


def test_every_package_says_what_lives_there() -> None:
    """Each package's docstring names every module and subpackage it holds."""
    for init in [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")]:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        where = init.relative_to(ROOT)
        assert doc and len(doc) > 80, f"{where} needs a package docstring"
        children = [f.stem for f in init.parent.glob("*.py") if not f.stem.startswith("_")]
        children += [d.name for d in init.parent.iterdir() if (d / "__init__.py").is_file()]
        unnamed = sorted(c for c in children if not re.search(rf"\b{re.escape(c)}\b", doc))
        assert unnamed == [], f"{where}'s docstring does not name {unnamed}"
