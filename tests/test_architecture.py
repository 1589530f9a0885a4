"""The house reads one way: no import circle in ``routekit/``, and no import up the floors.

README.md's architecture section is the one statement of the layout: a table of rooms, each on
its own line with its floor, lowest first. This test reads that table, reads every import in
``routekit/`` with ``ast`` (imports inside functions and under ``if TYPE_CHECKING:`` count: a
lazy import is still a coupling), and fails on

- a module that no room of the table holds, or a room that holds no module;
- an import circle between modules;
- an import from a room to a room on a higher floor.

A room is a module (``errors.py``), a package (``svf/``) or a module inside a package
(``experts/mixture.py``); a module belongs to the longest room that holds it. ``*/commands.py``,
``*/__main__.py``, ``cli.py`` and ``__init__.py`` (the top-level package) are the command line
and the top-level API: the top floor, which may import anything below it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s{2,}\S")


def readme_floors(text: str) -> dict[str, int]:
    """Room -> floor from the architecture section's table (the first fenced block in it)."""
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    floors: dict[str, int] = {}
    for line in block.splitlines():
        m = ROW.match(line)
        if m:
            floors[m.group(2)] = int(m.group(1))
    return floors


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name (``routekit.svf.layer``; a package by its ``__init__``) -> file."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_edges(mods: dict[str, Path], top: str) -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in its file."""
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] +
                                    ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for target in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    edges[name].add(target)
    return edges


def room_of(module: str, floors: dict[str, int], top: str) -> str | None:
    """The README room that holds ``module`` (the longest one), or None."""
    rel = module[len(top) + 1:] if module != top else ""
    last = rel.rsplit(".", 1)[-1]
    if rel == "":
        return "__init__.py" if "__init__.py" in floors else None
    if last == "commands" and "*/commands.py" in floors:
        return "*/commands.py"
    if last == "__main__" and "*/__main__.py" in floors:
        return "*/__main__.py"
    best = None
    for room in floors:
        if room.startswith("*/"):
            continue
        dotted = room.removesuffix("/").removesuffix(".py").replace("/", ".")
        if (rel == dotted or (room.endswith("/") and rel.startswith(dotted + "."))) and (
                best is None or len(room) > len(best)):
            best = room
    return best


def circles(edges: dict[str, set[str]], nodes: list[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def problems(package: Path, readme: str) -> list[str]:
    """Every breach of the README's layout in ``package``, one line each."""
    top = package.name
    floors = readme_floors(readme)
    mods = module_names(package)
    out = []
    rooms = {m: room_of(m, floors, top) for m in mods}
    out += [f"{m}: no room in the README's architecture table holds it"
            for m, r in rooms.items() if r is None]
    used = set(rooms.values())
    out += [f"{r}: a room in the README that holds no module" for r in floors if r not in used]
    edges = import_edges(mods, top)
    out += ["import circle: " + " -> ".join(c) for c in circles(edges, sorted(mods))]
    for a in sorted(edges):
        for b in sorted(edges[a]):
            ra, rb = rooms[a], rooms[b]
            if ra and rb and floors[rb] > floors[ra]:
                out.append(f"{a} (floor {floors[ra]}, {ra}) imports {b} "
                           f"(floor {floors[rb]}, {rb}): up the floors")
    return out


def test_routekit_reads_one_way():
    readme = (ROOT / "README.md").read_text()
    assert len(readme_floors(readme)) >= 10, "the README's architecture table was not found"
    assert problems(ROOT / "routekit", readme) == []


# -- the checker itself, on a small package whose faults are known ---------------------------

README = """# x

## Architecture

```
floor  room        job
 0     low.py      the bottom
 1     mid/        the middle
 2     high.py     the top
 3     */commands.py  the command line
 3     __init__.py  the top-level API
```

## Next
"""


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "pkg"
    base = {"__init__.py": "", "mid/__init__.py": "", "mid/commands.py": "from .. import high\n"}
    for rel, text in {**base, **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_a_clean_package_passes(tmp_path):
    pkg = _package(tmp_path, {"low.py": "", "mid/a.py": "from .. import low\n",
                              "high.py": "from .mid import a\n"})
    assert problems(pkg, README) == []


@pytest.mark.parametrize("lazy", [False, True])
def test_an_import_up_the_floors_is_found_even_inside_a_function(tmp_path, lazy):
    line = ("def f():\n    from .. import high\n" if lazy else "from ..high import x\n")
    pkg = _package(tmp_path, {"low.py": "", "mid/a.py": line, "high.py": "x = 1\n"})
    found = problems(pkg, README)
    assert found == ["pkg.mid.a (floor 1, mid/) imports pkg.high (floor 2, high.py): up the floors"]


def test_an_import_circle_is_found_within_one_room(tmp_path):
    pkg = _package(tmp_path, {"low.py": "", "high.py": "",
                              "mid/a.py": "from . import b\n", "mid/b.py": "from .a import f\n"})
    assert problems(pkg, README) == ["import circle: pkg.mid.a -> pkg.mid.b"]


def test_a_module_outside_every_room_and_an_empty_room_are_named(tmp_path):
    readme = README.replace(" 3     __init__.py  the top-level API\n", "")
    pkg = _package(tmp_path, {"low.py": "", "other.py": ""})  # no high.py, no __init__ room
    found = problems(pkg, readme)
    assert "pkg.other: no room in the README's architecture table holds it" in found
    assert "pkg: no room in the README's architecture table holds it" in found
    assert "high.py: a room in the README that holds no module" in found
