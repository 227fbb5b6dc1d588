"""Imports point one way: a module imports only from its own layer or the layers below it, and no
modules import each other round in a cycle (STYLE.md principle 15, ARCHITECTURE.md).

Layers, lowest first (`LAYERS`): config, errors | data | models | decoding | retrieval | evaluation |
training | recommender, demo (the Python API) | cli, serve, batch. Evaluation sits below training:
training validates with evaluation's metrics; evaluation never trains.

How the imports are read: every `import` / `from ... import` node of every module under
src/recspec, wherever it is (module level, inside functions, under `if TYPE_CHECKING`), relative
imports resolved against the module's package. `from pkg import name` is an edge to the submodule
`pkg.name` where that module exists, else to `pkg` itself (its `__init__`).

What counts as a cycle: a strongly connected component of more than one module in that graph of
written imports. Python's implicit import of a module's parent packages is not an edge: a package
`__init__` that imports its own submodules (`drafters/__init__.py` importing `drafters.base`) is no
cycle, since those submodules import `drafters.base`, not the package. Only a submodule that writes
`from pkg import name` of a package whose `__init__` imports it back is a real cycle, and is reported.

`ALLOWED_UPWARD` and `ALLOWED_CYCLES` list the known exceptions, each with why it is still there; an
entry that is no longer needed fails `test_allowlist_is_not_stale`, so the list only shrinks.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

import pytest

SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")
PACKAGE = "recspec"

# Lowest first; a module belongs to the layer of its longest listed prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("recspec", "recspec.config", "recspec.errors"),  # `recspec` alone: the package __init__
    ("recspec.data",),
    ("recspec.models",),
    ("recspec.decoding",),
    ("recspec.retrieval",),
    ("recspec.evaluation",),
    ("recspec.training",),
    ("recspec.recommender", "recspec.demo", "recspec.knowledge"),  # the Python API
    ("recspec.cli", "recspec.serve", "recspec.batch"),
)

# Known exceptions: none. A new one needs an entry here saying why it cannot point down instead.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module, e.g. recspec.data.catalog
    dst: str  # imported module of the package
    path: str  # file of `src`, relative to the source root
    line: int
    code: str  # the import statement as written

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.code}"


def find_modules(root: str, package: str) -> dict[str, str]:
    """{module name: file path relative to root} for every .py file of `package` under root."""
    out = {}
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), root)
                parts = rel[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = rel
    return out


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, str]) -> list[str]:
    """The package's modules one Import / ImportFrom node names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module if is_package else module.rpartition(".")[0]  # the package `.` means
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    where = ".".join(p for p in (base if node.level else "", node.module or "") if p)
    return [f"{where}.{a.name}" if f"{where}.{a.name}" in modules else where for a in node.names]


def read_edges(root: str, package: str) -> tuple[dict[str, str], list[Edge]]:
    """Every module of `package` and every import between two of them, wherever it is written.
    Edge paths are shown from root's parent (src/recspec/... from the repository root)."""
    modules = find_modules(root, package)
    edges = []
    for module, rel in modules.items():
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                code = " ".join(ast.get_source_segment(text, node).split())
                dsts = set()
                for dst in _targets(node, module, rel.endswith("__init__.py"), modules):
                    while dst not in modules and "." in dst:  # `import recspec.x.y` of a name, not a module
                        dst = dst.rpartition(".")[0]
                    dsts.add(dst)
                shown = os.path.join(os.path.basename(os.path.normpath(root)), rel)
                edges += [Edge(module, d, shown, node.lineno, code) for d in dsts if d in modules and d != module]
    return modules, sorted(edges, key=lambda e: (e.path, e.line, e.dst))


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of the layer of `module`'s longest listed prefix; None where no prefix is listed."""
    best = None, -1
    for i, names in enumerate(layers):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best[1]:
                best = i, len(name)
    return best[0]


def _layer_name(i: int, layers=LAYERS) -> str:
    return " / ".join(n.rpartition(".")[2] for n in layers[i] if "." in n) or layers[i][0]


def upward_imports(edges: list[Edge], layers=LAYERS) -> list[Edge]:
    return [e for e in edges if layer_of(e.dst, layers) > layer_of(e.src, layers)]


def cycles(edges: list[Edge]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    graph: dict[str, list[str]] = {}
    for e in edges:
        graph.setdefault(e.src, []).append(e.dst)
        graph.setdefault(e.dst, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(graph[v]):
                work.append((v, i + 1))
                w = graph[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def describe_upward(e: Edge, layers=LAYERS) -> str:
    lo, hi = layer_of(e.src, layers), layer_of(e.dst, layers)
    return (f"{e.where()}\n    {e.src} ({_layer_name(lo, layers)}, layer {lo}) imports {e.dst} "
            f"({_layer_name(hi, layers)}, layer {hi}): move what it uses down into {_layer_name(lo, layers)} "
            f"or below, or move this code up into {_layer_name(hi, layers)}")


def describe_cycle(comp: frozenset[str], edges: list[Edge]) -> str:
    inside = [e for e in edges if e.src in comp and e.dst in comp]
    lines = [f"cycle between {', '.join(sorted(comp))}; its imports:"]
    lines += [f"    {e.where()}   ({e.src} -> {e.dst})" for e in inside]
    lines.append("    break it: move what both need into one module they both import, or pass it in as an argument")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def package():
    return read_edges(SRC, PACKAGE)


def test_every_module_has_a_layer(package):
    modules, _ = package
    missing = sorted(m for m in modules if layer_of(m) is None)
    if missing:
        pytest.fail(f"modules in no layer: {missing}; add their package or name to LAYERS in tests/test_layers.py",
                    pytrace=False)


def test_no_upward_imports(package):
    _, edges = package
    bad = [e for e in upward_imports(edges) if (e.src, e.dst) not in ALLOWED_UPWARD]
    order = " < ".join(_layer_name(i) for i in range(len(LAYERS)))
    if bad:
        pytest.fail(f"{len(bad)} upward import(s); layers, lowest first: {order}\n"
                    + "\n".join(describe_upward(e) for e in bad), pytrace=False)


def test_no_import_cycles(package):
    _, edges = package
    bad = [c for c in cycles(edges) if c not in ALLOWED_CYCLES]
    if bad:
        pytest.fail(f"{len(bad)} import cycle(s):\n" + "\n".join(describe_cycle(c, edges) for c in bad), pytrace=False)


def test_allowlist_is_not_stale(package):
    _, edges = package
    up = {(e.src, e.dst) for e in upward_imports(edges)}
    found = set(cycles(edges))
    stale = [f"ALLOWED_UPWARD {k}" for k in ALLOWED_UPWARD if k not in up]
    stale += [f"ALLOWED_CYCLES {sorted(k)}" for k in ALLOWED_CYCLES if k not in found]
    if stale:
        pytest.fail("fixed, so remove from the allowlist in tests/test_layers.py: " + "; ".join(stale), pytrace=False)


# --- the walker itself, on a package built so that each case holds by construction -----------------
def test_walker_finds_imports_in_functions_relative_imports_and_cycles(tmp_path):
    files = {
        "pkg/__init__.py": "from pkg.low import sub\n",  # a package importing its own submodule: no cycle
        "pkg/low/__init__.py": "",
        "pkg/low/sub.py": "import os\n\ndef f():\n    from ..high import g  # upward, inside a function\n",
        "pkg/low/a.py": "from . import b\n",  # relative, to a submodule
        "pkg/low/b.py": "import pkg.low.a\n",  # back: a cycle a <-> b
        "pkg/high.py": "from pkg.low.sub import f\n\ndef g():\n    pass\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    layers = (("pkg", "pkg.low"), ("pkg.high",))
    modules, edges = read_edges(str(tmp_path), "pkg")
    assert sorted(modules) == ["pkg", "pkg.high", "pkg.low", "pkg.low.a", "pkg.low.b", "pkg.low.sub"]
    up = upward_imports(edges, layers)
    assert [(e.src, e.dst, e.line) for e in up] == [("pkg.low.sub", "pkg.high", 4)]
    assert "pkg/low/sub.py:4: from ..high import g" in describe_upward(up[0], layers)
    # a <-> b, and sub <-> high (the upward import closes one); pkg -> pkg.low.sub alone is none
    assert sorted(map(sorted, cycles(edges))) == [["pkg.high", "pkg.low.sub"], ["pkg.low.a", "pkg.low.b"]]
