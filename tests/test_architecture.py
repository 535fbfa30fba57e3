"""The package's shape: imports point down the data flow, no circles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import segpipe

PACKAGE = Path(segpipe.__file__).parent
# Lowest first: a package may import only from those before it (and from itself).
LAYERS = ("core", "io", "formats", "labels", "sources", "destination", "model", "pipeline",
          "runtime", "tools", "review", "train", "app", "demo", "cli")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segpipe"):
                for alias in node.names:
                    whole = f"{node.module}.{alias.name}"
                    targets.add(whole if whole in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("segpipe")}
        found[name] = {t for t in targets if t != name and t in modules}
    return found


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "cli"
    return LAYERS.index(part) if part in LAYERS else -1


def test_every_module_sits_in_a_layer():
    assert [m for m in imports() if m != "segpipe" and layer(m) < 0] == []


def test_imports_point_down_the_flow():
    upward = sorted(f"{m} -> {t}" for m, targets in imports().items() for t in targets
                    if t != "segpipe" and layer(t) > layer(m))
    assert upward == []


def test_no_import_circles():
    graph = imports()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_modules_stay_small():
    large = {module_name(p): n for p in PACKAGE.rglob("*.py")
             if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert large == {}
