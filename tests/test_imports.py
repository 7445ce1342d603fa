"""Issue 19: imports across harness/ and targets/. No module takes a private name (`_x`) from
another package (a package: the directory a module lives in), and the imports a module runs
when it is imported form no cycle (STYLE.md habit 7: dependencies point one way).

Read with `ast`, never imported: the same functions check the real tree and planted trees that
must fail. Imports inside functions and under `if TYPE_CHECKING:` do not run at import time
(they run later, or never), so they are not edges of the graph; a private name taken there is
still one.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "targets")

ImportNode = ast.Import | ast.ImportFrom


@dataclass(frozen=True)
class Module:
    """One source file by its dotted name; a package's `__init__.py` by the package's."""

    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The dotted name of the directory it lives in."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    """One name an import statement takes, resolved: the module it comes from, the name taken
    from it (None for a whole module), whether it runs when the importer is imported, and for
    a whole module the local name it binds and the module bound to that name."""

    line: int
    source: str
    name: str | None
    top_level: bool
    statement: str
    binds: tuple[str, str] | None = None


def find_modules(root: Path, packages: Sequence[str] = PACKAGES) -> dict[str, Module]:
    """Every module under `root/<package>` for each of `packages`, by dotted name."""
    found: dict[str, Module] = {}
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            found[name] = Module(name, path, is_package)
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(node: ast.AST, top: bool = True) -> Iterator[tuple[ImportNode, bool]]:
    """Every import statement under `node`, and whether it runs at import time."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, top
        return
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        top = False
    if isinstance(node, ast.If) and _type_checking(node.test):
        for child in node.body:
            yield from _statements(child, False)
        for child in node.orelse:
            yield from _statements(child, top)
        return
    for child in ast.iter_child_nodes(node):
        yield from _statements(child, top)


def _known(dotted: str, modules: dict[str, Module]) -> str | None:
    """The longest prefix of `dotted` that is a module of the tree (`a.b.c` imports `a.b.c`)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports_of(module: Module, modules: dict[str, Module]) -> list[Import]:
    """Each name `module` imports from a module of the tree; relative imports resolved, and
    `from pkg import mod` taken as importing the module `pkg.mod`."""
    found: list[Import] = []
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    for node, top in _statements(tree):
        statement = ast.unparse(node)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _known(alias.name, modules) is None:
                    continue
                head = alias.name.partition(".")[0]
                binds = ((alias.asname, alias.name) if alias.asname
                         else (head, head) if head in modules else None)
                found.append(Import(node.lineno, alias.name, None, top, statement, binds))
            continue
        base = node.module or ""
        if node.level:
            parts = module.package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        for alias in node.names:
            source = f"{base}.{alias.name}"
            if source in modules:
                binds = (alias.asname or alias.name, source)
                found.append(Import(node.lineno, source, None, top, statement, binds))
            elif base in modules:
                found.append(Import(node.lineno, base, alias.name, top, statement))
    return found


def _owner(dotted: str, modules: dict[str, Module]) -> tuple[str, str] | None:
    """(private name, the package it is private to) for the first private part of a module
    path (`pkg._mod.x`), or None."""
    parts = dotted.split(".")
    for i, part in enumerate(parts[1:], 1):
        if _is_private(part):
            parent = _known(".".join(parts[:i]), modules)
            return (part, modules[parent].package) if parent is not None else None
    return None


def private_imports(root: Path, packages: Sequence[str] = PACKAGES) -> list[str]:
    """`path:line: ...` for each private name a module takes from another package: by
    `from X import _y`, `import X._y`, or `X._y` on a module bound by an import."""
    modules = find_modules(root, packages)
    problems: list[str] = []
    for module in modules.values():
        where = module.path.relative_to(root).as_posix()
        bound: dict[str, str] = {}  # local name -> the module of the tree it is bound to
        for imp in imports_of(module, modules):
            private = _owner(imp.source, modules)
            if imp.name is not None and _is_private(imp.name):
                private = (imp.name, modules[imp.source].package)
            if private is not None and private[1] != module.package:
                problems.append(f"{where}:{imp.line}: `{imp.statement}` takes {private[0]}, "
                                f"private to {private[1]}")
            if imp.binds is not None:
                bound[imp.binds[0]] = imp.binds[1]
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            chain = _dotted(node.value)
            if chain is None or chain.split(".")[0] not in bound:
                continue
            head, _, rest = chain.partition(".")
            target = bound[head] + ("." + rest if rest else "")
            if target in modules and modules[target].package != module.package:
                problems.append(f"{where}:{node.lineno}: `{ast.unparse(node)}` takes "
                                f"{node.attr}, private to {modules[target].package}")
    return sorted(problems)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def import_graph(root: Path, packages: Sequence[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports at module level. Importing `a.b.c` runs
    `a/b/__init__.py` first: the packages around the source are edges too, but for those
    around the importer itself (already being imported when it runs)."""
    modules = find_modules(root, packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        own = _packages_around(module.name) | ({module.name} if module.is_package else set())
        for imp in imports_of(module, modules):
            source = _known(imp.source, modules)
            if imp.top_level and source is not None:
                graph[module.name].add(source)
                graph[module.name].update(p for p in _packages_around(source)
                                          if p in modules and p not in own)
    return graph


def _packages_around(dotted: str) -> set[str]:
    """`a.b.c` -> {`a`, `a.b`}."""
    parts = dotted.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle, as `[a, b, a]`, through each strongly connected component of
    `graph` that has one (Tarjan's algorithm, then a breadth-first search inside it)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    found: list[list[str]] = []
    for component in components:
        start = min(component)
        parents: dict[str, str] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if start in graph[node]:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                found.append([*reversed(path), start])
                break
            for succ in sorted(graph[node] & component):
                if succ not in parents and succ != start:
                    parents[succ] = node
                    queue.append(succ)
    return sorted(found)


def _report(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in found)


def test_no_module_takes_a_private_name_from_another_package() -> None:
    problems = private_imports(ROOT)
    assert not problems, "private names imported across packages:\n" + "\n".join(problems)


def test_module_level_imports_form_no_cycle() -> None:
    found = cycles(import_graph(ROOT))
    assert not found, "import cycles:\n" + _report(found)


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checks_find_planted_private_imports_and_cycles(tmp_path: Path) -> None:
    _plant(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\n",
        "pkg/a.py": "from . import b\n\n\ndef _helper() -> None: ...\n",
        # same package: a private name is fine, and a dunder one anywhere
        "pkg/b.py": "from .a import _helper\nfrom . import __version__\nimport pkg.sub._p\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": ("from ..a import _helper\nimport pkg.a as a\nimport pkg.sub._p\n\n"
                         "a._helper()\n"),
        "pkg/sub/_p.py": "",
        # under TYPE_CHECKING or in a function: not module-level, no cycle
        "pkg/sub/d.py": ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                         "    from . import e\n\n\ndef f() -> None:\n    from .e import x\n"),
        "pkg/sub/e.py": "from .d import f\n",
        # inside try and if at module level: a cycle of three
        "pkg/sub/f.py": "try:\n    from .g import x\nexcept ImportError:\n    pass\n",
        "pkg/sub/g.py": "if True:\n    import pkg.sub.h\n",
        "pkg/sub/h.py": "from pkg.sub import f\n",
        # importing pkg.q.s runs pkg/q/__init__.py first: a cycle through a package's __init__
        "pkg/q/__init__.py": "from .r import R\n",
        "pkg/q/r.py": "import pkg.t\n\nR = 1\n",
        "pkg/q/s.py": "",
        "pkg/t.py": "from pkg.q.s import S\n",
    })
    assert private_imports(tmp_path, ("pkg",)) == [
        "pkg/b.py:3: `import pkg.sub._p` takes _p, private to pkg.sub",
        "pkg/sub/c.py:1: `from ..a import _helper` takes _helper, private to pkg",
        "pkg/sub/c.py:5: `a._helper` takes _helper, private to pkg",
    ]
    found = cycles(import_graph(tmp_path, ("pkg",)))
    assert _report(found) == ("pkg.a -> pkg.b -> pkg.a\n"
                              "pkg.q -> pkg.q.r -> pkg.t -> pkg.q\n"
                              "pkg.sub.f -> pkg.sub.g -> pkg.sub.h -> pkg.sub.f")
