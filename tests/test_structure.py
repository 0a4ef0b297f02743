"""The package's layout rules, read from its source: wings import downwards only, no import circle,
no project import hidden in a function (the CLI aside), required third-party imports at the top,
and the size limits that keep each file readable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "etpp_dali"
# Each wing may import the wings below it and never one above: data flows source -> plan ->
# graph -> loader -> trainer, and the search, benchmarks and CLI sit on top.
WING_ORDER = ["util", "curriculum", "ops", "data", "loader", "train", "search", "bench", "cli"]
LAZY_LAYER = "etpp_dali.cli"  # commands import their wing on use, so `etpp --help` stays fast
OPTIONAL = {"tensorboard", "torch.utils.tensorboard", "cupy", "lightly", "skimage"}
MAX_MODULE, MAX_FUNCTION, MAX_CLASS = 400, 50, 220


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement loads (``from pkg import mod`` counts as mod)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    base = node.module or ""
    if node.level:
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return found or ([base] if base in MODULES else [])


def _walk(tree: ast.AST):
    """(node, inside_a_function) for every node, skipping ``if TYPE_CHECKING:`` blocks."""
    stack = [(tree, False)]
    while stack:
        node, in_func = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            yield child, in_func
            stack.append((child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))))


def _imports() -> list[tuple[str, str, int, bool, ast.AST]]:
    rows = []
    for module, path in MODULES.items():
        for node, in_func in _walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path, node):
                    if target != module:
                        rows.append((module, target, node.lineno, in_func, node))
    return rows


IMPORTS = _imports()


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WING_ORDER else None


def test_every_module_belongs_to_a_wing():
    loose = sorted(m for m in MODULES if m != "etpp_dali" and _wing(m) is None and m != "etpp_dali.__main__")
    assert not loose, f"modules outside the wings {WING_ORDER}: {loose}"


def test_wings_import_only_the_wings_below_them():
    upward = [f"{MODULES[src].relative_to(PACKAGE.parent)}:{line} imports {dst}"
              for src, dst, line, _, _ in IMPORTS
              if _wing(src) and _wing(dst) and WING_ORDER.index(_wing(dst)) > WING_ORDER.index(_wing(src))]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _, in_func, _ in IMPORTS:
        if not in_func:
            graph[src].add(dst)
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_project_import_inside_a_function_outside_the_cli():
    hidden = [f"{MODULES[src].relative_to(PACKAGE.parent)}:{line} imports {dst}"
              for src, dst, line, in_func, _ in IMPORTS if in_func and not src.startswith(LAZY_LAYER)]
    assert not hidden, "\n".join(hidden)


def test_required_third_party_imports_are_at_module_top():
    hidden = []
    for module, path in MODULES.items():
        if module.startswith(LAZY_LAYER):
            continue
        for node, in_func in _walk(ast.parse(path.read_text())):
            if not in_func or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if node.__class__ is ast.ImportFrom and node.level or name.startswith("etpp_dali"):
                    continue
                if name not in OPTIONAL and name.split(".")[0] not in OPTIONAL and not _stdlib(name):
                    hidden.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name}")
    assert not hidden, "\n".join(hidden)


def _stdlib(name: str) -> bool:
    import sys

    return name.split(".")[0] in sys.stdlib_module_names


@pytest.mark.parametrize("module", sorted(MODULES))
def test_sizes(module):
    path = MODULES[module]
    text = path.read_text()
    too_big = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE:
        too_big.append(f"module: {lines} lines (max {MAX_MODULE})")
    for node in ast.walk(ast.parse(text)):
        size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > MAX_FUNCTION:
            too_big.append(f"function {node.name} at line {node.lineno}: {size} lines (max {MAX_FUNCTION})")
        elif isinstance(node, ast.ClassDef) and size > MAX_CLASS:
            too_big.append(f"class {node.name} at line {node.lineno}: {size} lines (max {MAX_CLASS})")
    assert not too_big, f"{path.relative_to(PACKAGE.parent)}: " + "; ".join(too_big)


def test_the_checker_sees_a_planted_circle_and_a_hidden_import(tmp_path, monkeypatch):
    """The rules above must be able to fail: a planted upward import inside a function is found."""
    src = "def f():\n    from etpp_dali.cli import main\n    return main\n"
    tree = ast.parse(src)
    found = [(n.module, f) for n, f in _walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found == [("etpp_dali.cli", True)]
    assert _targets("etpp_dali.util.files", MODULES["etpp_dali.util.files"], tree.body[0].body[0]) == ["etpp_dali.cli"]
