"""Imports point downward (``docs/architecture.md``, "Package map"): the modules of
``repartir`` form the layers below, top first; a module imports only from its own layer or
lower ones, the import graph has no cycle, and no module imports a ``repartir`` module inside
a function (which would hide a cycle) except the lazy loads of optional drivers listed in
``LAZY``.  Every import counts: top-level, inside functions, under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

from rtsupport import REPO_ROOT

PACKAGE = Path(REPO_ROOT) / "repartir"

#: Top first.  A module is in the first layer with its name (``pkg.*``: a package and its modules).
LAYERS: list[list[str]] = [
    ["repartir.util.*"],  # ActorPool, Queue: on the public API (not loaded by `import repartir`)
    ["repartir.cluster.node"],  # the process main of a node daemon: calls repartir.init
    ["repartir", "repartir.__main__", "repartir.cli", "repartir.actor"],
    # the cluster's wire layer: imported by cli (keygen, token) only; it imports nothing
    # of repartir but errors and config
    ["repartir.cluster.*"],
    ["repartir.tensor", "repartir.devices.*"],
    ["repartir.runtime.worker"],  # the process main of workers and actors
    ["repartir.runtime.actor_process"],
    ["repartir.runtime.actor", "repartir.runtime.remote_function"],  # handles
    ["repartir.runtime.driver"],
    ["repartir.runtime.node"],
    ["repartir.runtime.node_actors", "repartir.runtime.supervisor"],  # the jobs of Node
    ["repartir.runtime.core", "repartir.runtime.executor", "repartir.runtime.output"],
    ["repartir.runtime.ownership", "repartir.runtime.submitting", "repartir.runtime.completions",
     "repartir.runtime.waiting", "repartir.runtime.cancelling",
     "repartir.runtime.spilling", "repartir.runtime.handles"],  # the jobs of CoreClient
    ["repartir.runtime.object_table", "repartir.runtime.task_manager",
     "repartir.runtime.handle_table"],  # pure runtime state
    ["repartir.runtime.actor_life", "repartir.runtime.streaming", "repartir.runtime.objectref",
     "repartir.runtime.task_state", "repartir.runtime.signature"],
    ["repartir.runtime.messages", "repartir.runtime.protocol", "repartir.runtime.context",
     "repartir.runtime.session", "repartir.runtime.threads", "repartir.runtime"],
    ["repartir.store.*", "repartir.scheduler.*", "repartir.serialization"],
    ["repartir.sync", "repartir.ids", "repartir.config", "repartir.errors"],
]

#: Function-level imports allowed, (importer, imported): optional drivers loaded on demand.
LAZY = {
    ("repartir.devices.discovery", "repartir.devices.nvml"),
    ("repartir.devices.discovery", "repartir.devices.opencl"),
    ("repartir.devices.actor", "repartir.devices.opencl"),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        for pattern in layer:
            if module == pattern or (pattern.endswith(".*") and (
                    module == pattern[:-2] or module.startswith(pattern[:-1]))):
                return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it")


def imports(mods: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported, inside a function) for every import of a repartir module."""
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        in_function = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(fn) if n is not fn)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    out.append((name, target, id(node) in in_function))
    return out


def test_every_import_points_to_the_same_layer_or_below():
    mods = modules()
    up = sorted({(a, b) for a, b, _ in imports(mods) if layer_of(b) < layer_of(a)})
    assert not up, f"imports pointing up a layer: {up}"


def test_the_import_graph_has_no_cycle():
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, _ in imports(mods):
        graph[a].add(b)
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path[path.index(n):] + [n])}")
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_function_level_import_of_the_package_but_optional_drivers():
    lazy = sorted({(a, b) for a, b, inside in imports(modules()) if inside} - LAZY)
    assert not lazy, f"imports of repartir modules inside functions: {lazy}"
