"""The architecture holds: no import circle anywhere in the project (function-local imports
count), and imports flow one way — formats → store → tasks → studio → ui / api / extensions,
with the demo bundle importing the engine and never the reverse. Read with ``ast``: nothing
is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "ui", "api", "extensions")
TOP_MODULES = ("app", "cli", "startup", "strings", "train")


def project_modules() -> dict[str, Path]:
    modules = {name: ROOT / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # "from pkg import sub" imports the submodule when there is one.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_anywhere():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def layer(name: str) -> str:
    for prefix in ("pipelines.formats", "pipelines.store", "pipelines.tasks", "pipelines.demo"):
        if name == prefix or name.startswith(prefix + "."):
            return prefix.split(".")[1]
    if name in ("pipelines.errors", "pipelines.requests"):
        return "contract"
    if name.startswith("pipelines"):
        return "studio"  # studio, jobs, outputs
    return name.split(".")[0]


# What each engine layer may import from the project (besides itself).
ALLOWED = {
    "contract": {"contract"},
    "formats": {"contract", "formats"},
    "store": {"contract", "formats", "store"},
    "tasks": {"contract", "formats", "store", "tasks"},
    "studio": {"contract", "formats", "store", "tasks", "studio"},
    "demo": {"contract", "formats", "store", "tasks", "studio", "demo"},
}


def test_imports_flow_one_way():
    wrong = []
    for name, targets in graph().items():
        allowed = ALLOWED.get(layer(name))
        if allowed is None:
            continue
        wrong += [f"{name} -> {t}" for t in sorted(targets) if layer(t) not in allowed]
    assert not wrong, wrong


def test_only_the_start_up_imports_the_demo_bundle():
    users = {name for name, targets in graph().items()
             if any(layer(t) == "demo" for t in targets) and layer(name) != "demo"}
    assert users == {"startup"}, users


def test_nobody_outside_the_engine_reaches_into_the_store():
    """UI, APIs and extensions go through the studio facade: no store lock, no store internals."""
    offenders = []
    for package in ("ui", "api", "extensions"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for needle in ("studio.store", ".lock", "studio.outputs.", "studio.progress", "pipelines.store"):
                if needle in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_without_ray_nothing_imports_ray():
    """Ray is an optional dependency of --ray: the app, the engine, the UI and the APIs (and the
    serve package itself, until it starts Ray) import without it."""
    import subprocess
    import sys

    code = ("import sys, app, cli, startup, pipelines.studio, pipelines.serve.remote, pipelines.serve.replica, "
            "ui.layout, api.sdapi; assert 'ray' not in sys.modules, 'ray imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ui_api_and_extensions_see_the_studio_only_through_its_protocols():
    """Every ``studio.<name>`` that ui/, api/ and extensions/ use is declared by
    pipelines/contracts.StudioApi (the studio's parts' Protocols); the Studio has every member
    those declare; the UI's context is typed with it."""
    import ast

    from pipelines.contracts import StudioApi
    from pipelines.studio import Studio
    from ui.common import UIContext

    declared = {name for name in dir(StudioApi) if not name.startswith("_")} | set(StudioApi.__annotations__)
    used: dict[str, str] = {}
    for folder in ("ui", "api", "extensions"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute):
                    continue
                owner = node.value
                is_studio = (isinstance(owner, ast.Name) and owner.id == "studio") or \
                    (isinstance(owner, ast.Attribute) and owner.attr == "studio")
                if is_studio:
                    used.setdefault(node.attr, f"{path.relative_to(ROOT)}:{node.lineno}")
    undeclared = {name: where for name, where in used.items() if name not in declared}
    assert undeclared == {}, undeclared
    missing = sorted(name for name in declared if not hasattr(Studio, name) and name not in StudioApi.__annotations__)
    assert missing == []
    assert "team" in Studio.__init__.__code__.co_names  # the attribute it declares, set up by the Studio
    assert UIContext.__annotations__["studio"] in ("StudioApi", StudioApi)
