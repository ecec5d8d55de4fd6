"""The package's layers, checked by reading its imports (no module is run).

curvature (what is multiplied) and linalg (the numerics) sit at the bottom; parallel and
storage above them; run composes them; analysis reads files; examples support the demo and
the scripts. The numerical layer imports no file format and no process group, and no
module imports in a cycle.
"""

import ast
from pathlib import Path

import lanczos_hessian

PACKAGE = Path(lanczos_hessian.__file__).parent
FORBIDDEN_IN_LINALG = ("h5py", "torch.distributed", "lanczos_hessian.storage",
                       "lanczos_hessian.parallel", "lanczos_hessian.run",
                       "lanczos_hessian.curvature", "lanczos_hessian.analysis",
                       "lanczos_hessian.examples")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    """Absolute names of every module ``path`` imports, at any depth of its code."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_the_numerical_layer_imports_no_storage_and_no_process_group():
    for path in (PACKAGE / "linalg").glob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(FORBIDDEN_IN_LINALG)]
        assert not bad, f"{path.name} imports {bad}"


def test_no_import_cycles_between_modules():
    graph = _graph()
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            if nxt.endswith("__init__") or nxt == "lanczos_hessian":
                continue
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in graph:
        if node != "lanczos_hessian" and node not in state:
            visit(node, [])


def test_the_engine_does_not_import_the_examples():
    engine = ("curvature", "linalg", "parallel", "storage")
    for sub in engine:
        for path in (PACKAGE / sub).glob("*.py"):
            bad = [m for m in _imports(path) if m.startswith("lanczos_hessian.examples")]
            assert not bad, f"{sub}/{path.name} imports {bad}"
