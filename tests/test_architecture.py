"""The package structure of DESIGN.md, checked on the source: no import circles, the library
never imports the CLI, allocation never imports the passes.

Every module under graphprune/ is parsed with `ast` (nothing is imported), and every
`import` / `from ... import` counts: module level *and* inside functions (graphprune
defers heavy imports into functions, which hides circles from Python itself; a deferred
circle is still a circle in the design). Relative imports are resolved; `from pkg import
name` counts as an import of the submodule `pkg.name` when that is a module, of `pkg`
otherwise. Imports under `if TYPE_CHECKING:` are left out: they never run, and type hints
may point both ways.

Two granularities:

* Packages: a module's package is its first level under graphprune (`graphprune.passes`,
  `graphprune.allocation`, top-level modules such as `graphprune.config` count as their
  own package), except that `backends/` is split into `backends` (targets, the registry),
  `backends.onnxruntime` and `backends.tvm`: the two backends are independent and must stay
  so. `backends/tvm/kernels/` is part of `backends.tvm`.
* Modules: circles inside one package (`importance.registry` <-> `importance.magnitude`,
  `backends.tvm.adapter` <-> `backends.tvm.kernels.conv` were such). An import of a package
  the module itself lives in (`from graphprune.passes import PassManager` inside
  `graphprune.passes.sparsity.sparsify`) is not counted there: the package's __init__ is a
  facade that runs before the module anyway.
"""
from __future__ import annotations

import ast
import pathlib

import networkx as nx

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "graphprune"
SPLIT = {"backends"}  # first-level packages whose subpackages are units of their own

# Known violations that could not be fixed yet. Each is (importing module prefix, imported
# module prefix): keep this list empty, and never add to it without an issue to remove it.
TEMPORARY_ALLOWED: set[tuple[str, str]] = set()


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Import statements anywhere (functions, classes, try blocks), but not under
    `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str) -> str | None:
    """The graphprune module `name` refers to (its longest existing prefix)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")[: len(module.split(".")) - (node.level - (1 if is_pkg else 0))]
            pkg = ".".join(base + ([node.module] if node.module else []))
        else:
            pkg = node.module or ""
        names = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in MODULES else pkg for a in node.names]
    return [t for t in (_known(n) for n in names if n == "graphprune" or n.startswith("graphprune.")) if t]


def _imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of graphprune's own modules."""
    out = []
    for module, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _import_nodes(tree):
            out.extend((module, t, node.lineno) for t in dict.fromkeys(_targets(module, is_pkg, node)) if t != module)
    return out


IMPORTS = _imports()


def _allowed(src: str, dst: str) -> bool:
    return any((src == a or src.startswith(a + ".")) and (dst == b or dst.startswith(b + "."))
               for a, b in TEMPORARY_ALLOWED)


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return module
    if parts[1] in SPLIT and len(parts) > 2 and MODULES.get(".".join(parts[:3]), (None, False))[1]:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def _where(edges) -> str:
    return "\n".join(f"  {src} (line {line}) imports {dst}" for src, dst, line in sorted(edges))


def _cycles(graph: nx.DiGraph) -> list[str]:
    out = []
    for scc in nx.strongly_connected_components(graph):
        if len(scc) < 2:
            continue
        sub = graph.subgraph(scc)
        cycle = nx.find_cycle(sub)
        lines = [" -> ".join([a for a, _ in cycle] + [cycle[0][0]])]
        for a, b in cycle:
            lines.append(_where(sub.edges[a, b]["why"][:3]))
        out.append(f"circle among {sorted(scc)}:\n  " + "\n".join(lines))
    return out


def _graph(unit, skip=lambda src, dst: False) -> nx.DiGraph:
    g = nx.DiGraph()
    for src, dst, line in IMPORTS:
        if _allowed(src, dst) or skip(src, dst):
            continue
        a, b = unit(src), unit(dst)
        if a != b:
            g.add_edge(a, b)
            g.edges[a, b].setdefault("why", []).append((src, dst, line))
    return g


def test_the_walk_sees_function_level_imports():
    # the check is only as good as the walk: deferred imports must be in the graph
    assert len(MODULES) > 50
    assert ("graphprune.passes.pruning.plan_channels", "graphprune.allocation.driver") in \
        {(s, d) for s, d, _ in IMPORTS}  # imported inside plan_channels.plan


def test_no_import_circle_between_packages():
    cycles = _cycles(_graph(package_of))
    assert not cycles, "import circles between packages:\n" + "\n".join(cycles)


def test_no_import_circle_between_modules():
    def into_own_package(src: str, dst: str) -> bool:
        return MODULES[dst][1] and src.startswith(dst + ".")

    cycles = _cycles(_graph(lambda m: m, skip=into_own_package))
    assert not cycles, "import circles between modules:\n" + "\n".join(cycles)


def test_library_does_not_import_the_cli():
    # graphprune.__main__ (`python -m graphprune`) is the command, not the library
    bad = [(s, d, n) for s, d, n in IMPORTS if d.startswith("graphprune.cli") and
           not s.startswith("graphprune.cli") and s != "graphprune.__main__" and not _allowed(s, d)]
    assert not bad, "library modules import graphprune.cli (verbs only parse and print):\n" + _where(bad)


def test_allocation_does_not_import_passes():
    bad = [(s, d, n) for s, d, n in IMPORTS if s.startswith("graphprune.allocation") and
           (d == "graphprune.passes" or d.startswith("graphprune.passes."))]
    assert not bad, "allocation imports passes (slot removal is graphprune.surgery):\n" + _where(bad)


def test_allow_list_entries_are_still_needed():
    # an entry nobody needs any more is removed, so the violation cannot come back silently
    stale = [(src, dst) for src, dst in sorted(TEMPORARY_ALLOWED)
             if not any((s == src or s.startswith(src + ".")) and (d == dst or d.startswith(dst + "."))
                        for s, d, _ in IMPORTS)]
    assert not stale, f"no longer needed, remove from TEMPORARY_ALLOWED: {stale}"
