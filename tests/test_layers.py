"""The layering rule: the core never imports the benchmark zoo (only the CLI and the zoo do)."""

from __future__ import annotations

import subprocess
import sys

CORE = ("checkpoints", "components", "merging", "quantization", "experts", "tasks", "objectives", "search",
        "library", "reuse", "serve", "reports", "recipes")


def test_core_packages_do_not_import_the_zoo():
    modules = []
    for package in CORE:
        modules.append(f"modmerge.{package}")
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {modules!r}:\n"
        "    pkg = importlib.import_module(name)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'modmerge.zoo' or m.startswith('modmerge.zoo.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"core modules loaded {result.stdout.strip()}"


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Each package module's ``from modmerge... import`` statements (module-level and inside
    functions alike): ``{module: [(imported module, [names]), ...]}``, resolved to module names."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "modmerge"
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, parts[-1] == "__init__")
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for name, (path, is_package) in modules.items():
        edges = []
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                if not target.startswith("modmerge"):
                    continue
                names = [a.name for a in node.names]
                for n in names:  # `from modmerge.x import submodule` imports the submodule
                    if f"{target}.{n}" in modules:
                        edges.append((f"{target}.{n}", []))
                edges.append((target, [n for n in names if f"{target}.{n}" not in modules]))
            elif isinstance(node, ast.Import):
                edges += [(a.name, []) for a in node.names if a.name.startswith("modmerge")]
        found[name] = [(t, ns) for t, ns in edges if t in modules and t != name]
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_private_names_are_imported_across_modules():
    bad = [f"{m} imports {n} from {t}" for m, edges in _imports().items() for t, names in edges for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert bad == []


def test_no_import_cycles_between_packages():
    """Packages (``modmerge.search``, ...) form a DAG; a package's ``__init__`` re-exporting its
    modules is not an edge to itself."""
    graph: dict[str, set[str]] = {}
    for module, edges in _imports().items():
        source = ".".join(module.split(".")[:2])
        for target, _ in edges:
            package = ".".join(target.split(".")[:2])
            if package != source and package != "modmerge":
                graph.setdefault(source, set()).add(package)
    assert _cycle(graph) is None


def test_no_import_cycles_between_modules():
    """Modules form a DAG too (a package ``__init__`` only re-exports, so it is left out)."""
    graph: dict[str, set[str]] = {}
    imports = _imports()
    packages = {m for m in imports if any(o.startswith(m + ".") for o in imports)}
    for module, edges in imports.items():
        if module in packages:
            continue
        graph[module] = {t for t, _ in edges if t not in packages}
    assert _cycle(graph) is None


def test_the_import_graph_sees_every_form_of_import():
    imports = dict(_imports())
    assert ("modmerge.experts.grouping", ["GroupingMatrix"]) in imports["modmerge.search.nsga"]
    assert len(imports) > 100


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
