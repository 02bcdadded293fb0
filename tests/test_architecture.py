"""The import rules of the README's architecture map, enforced on the source (no imports executed).

Every `import` counts, including the lazy ones inside functions; only `if TYPE_CHECKING:` blocks
(annotations, never run) are left out. A package may import its own modules and the packages below
it in LAYERS, never one above or beside it, and no two modules may import each other through any chain.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "monkey_trt"

# package -> the monkey_trt packages it may import (besides itself). The README's map says the same.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "enginedir": {"core"},
    "engine": {"core", "enginedir"},
    "runtime": {"core", "enginedir", "engine"},
    "reference": {"core", "enginedir", "runtime"},
    "baselines": {"core", "reference", "runtime"},
    "export": {"core", "enginedir", "engine", "runtime", "reference"},
    "embedded": {"core", "enginedir", "export", "reference", "runtime"},
    "commands": {"core", "enginedir", "engine", "runtime", "reference", "baselines", "embedded"},
    "bench": {"core", "enginedir", "engine", "runtime", "reference", "baselines", "embedded", "commands"},
    "serve": {"core", "enginedir", "engine", "runtime"},
    "eval": {"core", "enginedir", "engine", "runtime", "reference", "commands"},
    "cli": {"core", "enginedir", "engine", "runtime", "reference", "export", "embedded", "commands", "bench", "serve", "eval"},
}
LEAN = ("core", "enginedir", "engine", "runtime")  # the lean runtime and what it stands on
HEAVY = ("torch", "diffusers", "transformers", "safetensors", "huggingface_hub", "accelerate")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _package_of(module: str) -> str | None:
    """'monkey_trt.runtime.pipeline' -> 'runtime'; 'monkey_trt.cli' -> 'cli'; 'monkey_trt' -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved), TYPE_CHECKING excluded."""
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)  # `from pkg import module`
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _graph() -> dict[str, set[str]]:
    """monkey_trt module -> the monkey_trt modules it imports."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_every_package_has_a_rule():
    packages = {_package_of(m) for m in _graph()} - {None}
    assert packages == set(ALLOWED), f"packages without a rule (or rules without a package): {packages ^ set(ALLOWED)}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for module, targets in _graph().items():
        pkg = _package_of(module)
        if pkg is None:
            continue  # monkey_trt/__init__.py: the lazy public API may name any layer
        for t in targets:
            tpkg = _package_of(t)
            if tpkg is None:
                bad.append(f"{module} -> {t} (the package root is the public API, not a layer)")
            elif tpkg != pkg and tpkg not in ALLOWED[pkg]:
                bad.append(f"{module} -> {t}")
    assert not bad, "imports against the layer map:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                dfs(nxt, stack + [node])
        state[node] = "done"

    for n in sorted(graph):
        if n not in state:
            dfs(n, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_backend_openers_respect_the_layers():
    """The backend table names its openers as strings (imported when a backend opens): an engine-directory backend's
    opener is imported by the runtime, a model backend's by commands.backends; each must be a module that layer may import."""
    from monkey_trt.runtime.backend import BACKEND_TABLE

    modules = _graph()
    for name, row in BACKEND_TABLE.items():
        module, _, function = row.opener.partition(":")
        assert module in modules and function, f"{name}: opener {row.opener!r} names no module of monkey_trt"
        resolver = "runtime" if row.needs_engine_dir else "commands"
        pkg = _package_of(module)
        assert pkg == resolver or pkg in ALLOWED[resolver], f"{name}: {resolver} may not import {module}"
        if row.needs_engine_dir:
            assert pkg in LEAN, f"{name}: an engine-directory backend must run without torch ({module})"


def test_lean_layers_name_no_heavy_library():
    """Not even lazily: the lean runtime must run where torch/diffusers are not installed."""
    bad = []
    for path in PKG.rglob("*.py"):
        module = _module_name(path)
        if _package_of(module) in LEAN:
            heavy = sorted(m for m in _imports(path) if m.split(".")[0] in HEAVY)
            bad += [f"{module} imports {m}" for m in heavy]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["monkey_trt.runtime.pipeline", "monkey_trt.runtime.outputs", "monkey_trt.engine.trt.engine",
                                    "monkey_trt.engine.trt.build", "monkey_trt.enginedir.manifest", "monkey_trt"])
def test_lean_modules_load_without_torch(module):
    """The same rule at run time: importing the lean runtime loads none of the heavy libraries."""
    code = (f"import sys, {module}, monkey_trt.runtime.method, monkey_trt.engine.ort\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
