"""The library's import graph: layers imported only downward, no cycles, no imports hidden in functions.

The layers, bottom to top (a module may import its own layer's modules, and any layer below):

0. ``paths``, ``offline``, ``atomic`` (base utilities) and ``routing`` (pure routing functions);
1. ``datasets`` (embedded TFDS builders and the loader);
2. ``parallel`` (mesh, partition rules, expert parallelism);
3. ``models`` (ViT, the MoE layer, sizing);
4. ``train`` (optimiser, Trainer, checkpoints);
5. ``analysis`` and ``transfer``;
6. ``workbook`` (presets, session, cache, zoo, figures, the runner).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "sparse_experts"
LAYERS = {
    "paths": 0, "offline": 0, "atomic": 0, "routing": 0, "_offline_site": 0,
    "datasets": 1, "parallel": 2, "models": 3, "train": 4, "analysis": 5, "transfer": 5, "workbook": 6,
}  # fmt: skip

# Imports allowed inside a function, each with its reason (module prefix -> why).
LAZY_ALLOWED = {
    "tensorflow": "optional (gpu/tpu extras only): the catalog builders need it to prepare data",
    "fcntl": "POSIX only: atomic.exclusive's file lock (cache entries, dataset generation); Windows users "
    "can still import the package",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(["sparse_experts", *parts])] = path
    return found


def _resolve(module: str, node: ast.ImportFrom | ast.Import, modules: dict[str, Path]) -> list[str]:
    """The package modules an import statement of ``module`` pulls in."""
    targets = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if not _modules_is_package(module, modules):
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    for name in names:
        if name in modules:
            targets.append(name)
    return targets


def _modules_is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top not in LAYERS:
        raise AssertionError(f"{module}: its top-level name {top!r} has no layer; add it to LAYERS")
    return LAYERS[top]


def _graph():
    modules = _modules()
    edges, lazy = {}, []
    for module, path in modules.items():
        if module == "sparse_experts":
            edges[module] = set()
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps.update(_resolve(module, node, modules))
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(func):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        name = node.names[0].name if isinstance(node, ast.Import) else (node.module or ".")
                        if not any(name == p or name.startswith(p + ".") for p in LAZY_ALLOWED):
                            lazy.append(
                                f"{path.relative_to(LIB)}:{node.lineno} imports {name} inside {func.name}()"
                            )
        edges[module] = deps - {module}
    return modules, edges, lazy


def test_every_module_has_a_layer():
    modules, _, _ = _graph()
    for module in modules:
        if module != "sparse_experts":
            _layer(module)


def test_imports_only_go_down():
    _, edges, _ = _graph()
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in edges.items() if a != "sparse_experts"
        for b in deps if b != "sparse_experts" and _layer(b) > _layer(a)
    ]  # fmt: skip
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    _, edges, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            # A package's __init__ re-exports its modules; importing a sibling through it is not a cycle.
            if dep == node.rsplit(".", 1)[0]:
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_no_imports_inside_functions():
    _, _, lazy = _graph()
    assert not lazy, (
        "imports inside functions (move them to the top, or allow-list them with a reason):\n"
        + ("\n".join(lazy))
    )


def test_the_checks_catch_what_they_are_meant_to(tmp_path, monkeypatch):
    """The graph walker sees an upward import, a cycle and a function-level import in a toy package."""
    pkg = tmp_path / "sparse_experts"
    (pkg / "routing").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "routing" / "__init__.py").write_text("from sparse_experts.models import thing\n")
    (pkg / "models.py").write_text("from sparse_experts import routing\n\ndef f():\n    import json\n")
    monkeypatch.setattr(__import__(__name__), "LIB", pkg)
    _, edges, lazy = _graph()
    assert "sparse_experts.models" in edges["sparse_experts.routing"]
    assert "sparse_experts.routing" in edges["sparse_experts.models"]
    assert lazy == ["models.py:4 imports json inside f()"]
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
    with pytest.raises(AssertionError, match="upward imports"):
        test_imports_only_go_down()
