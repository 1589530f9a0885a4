"""Every package the project imports is declared for the place that imports it.

A fresh machine installs only what ``pyproject.toml`` declares, so an import that some other
package happened to pull in (or that someone installed by hand) passes here and fails there.
This test reads every import with ``ast`` and maps each imported name to the distributions
that provide it with ``importlib.metadata.packages_distributions()``:

- ``routekit/`` and ``recipes/`` may import the core dependencies;
- ``tests/`` the core ones and the ``dev`` extra;
- ``benchmarks/`` the core ones and the ``bench`` extra.

An import inside a function or a ``try`` block is a lazy one, for an optional feature (``ray``
for ``--executor ray``): it may come from any optional extra, but it must be declared somewhere.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
PLACES = {"routekit": ("core",), "recipes": ("core",), "tests": ("core", "dev"),
          "benchmarks": ("core", "bench")}


def _norm(name: str) -> str:
    """A distribution name as PEP 503 normalises it (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0])


def declared() -> dict[str, set[str]]:
    """Distribution names per group: ``core`` and every optional extra (``routekit[x]``
    inside an extra expands to extra x)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": {_requirement_name(r) for r in project["dependencies"]}}
    extras = project.get("optional-dependencies", {})

    def expand(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        out: set[str] = set()
        for req in extras[name]:
            m = re.fullmatch(r"routekit\[([^\]]+)\]", req.strip())
            if m:
                for sub in m.group(1).split(","):
                    if sub not in seen:
                        out |= expand(sub.strip(), seen | {name})
            else:
                out.add(_requirement_name(req))
        return out

    for extra in extras:
        groups[extra] = expand(extra)
    return groups


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module name, line, lazy) for each absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name.split(".")[0], child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module.split(".")[0], child.lineno, lazy))
            visit(child, child_lazy)

    visit(tree, False)
    return out


def local_names(path: Path) -> set[str]:
    """Modules a file may import from beside it (a benchmark importing a sibling script)."""
    if not path.parent.is_dir():
        return set()
    return {p.stem for p in path.parent.glob("*.py")} | {
        p.name for p in path.parent.iterdir() if (p / "__init__.py").is_file()}


def problems(groups: dict[str, set[str]]) -> list[str]:
    providers = packages_distributions()
    optional = set().union(*(v for k, v in groups.items() if k != "core"))
    found = []
    for place, allowed_groups in PLACES.items():
        allowed = set().union(*(groups[g] for g in allowed_groups))
        for path in sorted((ROOT / place).rglob("*.py")):
            # A benchmark may import the tests' own helpers (it puts tests/ on sys.path).
            local = local_names(path) | local_names(ROOT / "tests" / "conftest.py") | {
                "routekit", "tests"}
            for name, line, lazy in imports(path):
                if name in sys.stdlib_module_names or name in local or name == "__future__":
                    continue
                # An optional package that is not installed here has no entry in
                # packages_distributions(); its import name is then taken as its distribution
                # name (ray, trl), which a lazy import must still match a declared extra with.
                dists = {_norm(d) for d in providers.get(name, [])} or {_norm(name)}
                ok = allowed | (optional if lazy else set())
                if not dists & ok:
                    where = f"{path.relative_to(ROOT)}:{line}"
                    installed = name in providers
                    have = ", ".join(sorted(dists)) if installed else "not installed here"
                    found.append(f"{where} imports {name!r} ({have}), which is not declared for "
                                 f"{place}/ (groups {', '.join(allowed_groups)}"
                                 f"{' or any extra' if lazy else ''})")
    return found


def test_every_import_is_declared_for_its_place():
    found = problems(declared())
    assert not found, "undeclared imports:\n" + "\n".join(found)


def test_the_check_catches_an_undeclared_import(tmp_path, monkeypatch):
    # The same check on a file that imports a package declared nowhere, and one that imports a
    # test-only package from the library, must both report it.
    pkg = tmp_path / "routekit"
    pkg.mkdir()
    (pkg / "mod.py").write_text("import pytest\n\ndef f():\n    import ray\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PLACES", {"routekit": ("core",)})
    groups = {"core": {"torch"}, "dev": {"pytest"}, "ray": set()}
    found = problems(groups)
    assert any("'pytest'" in f and "mod.py:1" in f for f in found), found
    assert any("'ray'" in f and "mod.py:4" in f for f in found), found
    groups["ray"] = {"ray"}  # a lazy import may come from an extra
    assert not any("'ray'" in f for f in problems(groups))


def test_extras_expand_self_references():
    groups = declared()
    assert "pytest" in groups["dev"]
    assert groups["core"] >= {"torch", "transformers", "peft", "numpy"}
