"""The package's import graph has no cycle: every module imports only modules below it
(function-level imports count too: a lazy import hides a circle, it does not remove it)."""

import ast
from pathlib import Path

from conftest import REPO


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, for the package in folder ``root``. ``from
    pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of
    ``pkg``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in files else src
                           for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_dst_has_no_import_cycle():
    graph = import_graph(REPO / "dst")
    assert len(graph) > 40 and "dst.engine" in graph["dst"]
    assert "dst.runs" in graph["dst.records"] and "dst.cut" in graph["dst.storage.dense"]
    assert cycles(graph) == []


# the layers of docs/architecture.md: a module imports only from its own layer or lower ones
LAYERS = {
    1: ("dst._checks", "dst.checkpoint", "dst.rng", "dst.distributions", "dst.schedules",
        "dst.cut", "dst.stats", "dst.models", "dst.data"),
    2: ("dst.kernels", "dst.storage", "dst.selection", "dst.units"),
    3: ("dst.layers", "dst.twins", "dst.attention", "dst.convert", "dst.allocate", "dst.slim",
        "dst.inference",
        "dst.summary", "dst.export"),
    4: ("dst.methods", "dst.update", "dst.channels", "dst.itop", "dst.engine",
        "dst.baselines"),
    5: ("dst.trainer", "dst.runlog", "dst.environment", "dst.loop", "dst.app", "dst.train",
        "dst.integrations",
        "dst.export_cli"),
    6: ("dst.runs", "dst.report", "dst.comparison", "dst.records"),
}


def layer_of(module: str) -> int | None:
    for n, prefixes in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return n
    return None


def test_modules_import_only_from_their_layer_or_below():
    graph = import_graph(REPO / "dst")
    unplaced = sorted(m for m in graph if m != "dst" and layer_of(m) is None)
    assert unplaced == [], "place these modules in a layer (and in docs/architecture.md)"
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() if m != "dst"
                    for d in deps if d != "dst" and layer_of(d) > layer_of(m))
    assert upward == []


def test_the_check_sees_lazy_and_package_level_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import g\n\ndef f():\n    return g\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..c import h  # lazy\n    return h\n")
    (pkg / "c.py").write_text("import pkg.a\n\ndef h():\n    return 1\n")
    (pkg / "d.py").write_text("from . import c\nfrom .sub import b\n")
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.c", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.a"] == {"pkg.sub"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub", "pkg.sub.b"]]
