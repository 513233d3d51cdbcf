"""The import rule: ``clients/`` is what would run on a phone, and imports run one way.

A phone (a Ray actor in a run) loads ``clients.client_app`` and must not pay for, or depend on,
the server side: run orchestration, data partitioning, config, the fleet, the proxy-data work,
the strategy stack or reporting. It may use only the leaf modules both sides share: message
keys, errors, models, update codecs, the update rule, the attack behaviours, clipping and the
bundle wire format.

Checked twice: by importing ``clients.client_app`` in a fresh interpreter and listing what got
loaded (what a Ray actor really pays), and by reading every import statement in ``fedsim/`` and
``clients/`` (what could be loaded on some code path). The second also finds import cycles.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

# The fedsim modules phone code may load: exact names, and packages loaded with all their modules.
PHONE_SAFE = frozenset({
    "fedsim", "fedsim.keys", "fedsim.errors", "fedsim.updates", "fedsim.bundle_wire",
    "fedsim.attacks", "fedsim.attacks.byzantine", "fedsim.attacks.threat",
    "fedsim.privacy", "fedsim.privacy.clipping",
})
PHONE_SAFE_PACKAGES = ("fedsim.models", "fedsim.compression")
# Named so a failure says what leaked; any fedsim module outside PHONE_SAFE fails anyway.
SERVER_SIDE = (
    "fedsim.server", "fedsim.run", "fedsim.fleet", "fedsim.proxy", "fedsim.strategy",
    "fedsim.data", "fedsim.config", "fedsim.report",
)
NOT_ON_A_PHONE = ("hydra", "omegaconf", "ray")  # config composition and the simulation engine


def phone_safe(module: str) -> bool:
    return module in PHONE_SAFE or any(
        module == p or module.startswith(p + ".") for p in PHONE_SAFE_PACKAGES
    )


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# --- what a fresh interpreter loads -----------------------------------------------------------


def test_client_app_loads_only_phone_safe_modules() -> None:
    probe = (
        "import json, sys\n"
        "import clients.client_app\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout)
    fedsim_loaded = {m for m in loaded if within(m, ("fedsim",))}
    assert sorted(m for m in fedsim_loaded if within(m, SERVER_SIDE)) == []
    assert sorted(m for m in loaded if within(m, NOT_ON_A_PHONE)) == []
    assert sorted(m for m in fedsim_loaded if not phone_safe(m)) == []
    # The probe did load the phone's code and the shared leaves it stands on.
    assert {"clients.client_app", "fedsim.keys", "fedsim.models", "fedsim.updates"} <= set(loaded)


# --- what the source could import -------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    """Every module under ``fedsim/`` and ``clients/``, by dotted name."""
    paths = sorted((ROOT / "fedsim").rglob("*.py")) + sorted((ROOT / "clients").rglob("*.py"))
    return {module_name(p): p for p in paths}


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Import nodes under ``if TYPE_CHECKING:``: named for type hints, never run."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(n for stmt in node.body for n in ast.walk(stmt))
    return guarded


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """``(imported module, runs)`` for every import statement in the module, at any depth.

    A name imported from a package resolves to its submodule when there is one, else to the
    package. ``runs`` is False for imports that only type checkers see.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded = type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found += [(target, node not in guarded) for target in targets]
    return found


def test_clients_import_only_phone_safe_fedsim_modules() -> None:
    modules = source_modules()
    leaks = [
        f"{name} imports {target}"
        for name, path in modules.items()
        if within(name, ("clients",))
        for target, _ in imports_of(name, path, modules)  # type-only imports count here too
        if (within(target, ("fedsim",)) and not phone_safe(target))
        or within(target, NOT_ON_A_PHONE)
    ]
    assert leaks == []


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:  # recursion depth is bounded by the chain of imports
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def shortest_loop(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest import chain that leads from a module of ``component`` back to itself."""
    best: list[str] = []
    for start in sorted(component):
        paths = {start: [start]}
        frontier = [start]
        while frontier and not (best and len(paths[frontier[0]]) >= len(best)):
            node = frontier.pop(0)
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    loop = paths[node] + [start]
                    best = loop if not best or len(loop) < len(best) else best
                elif nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    frontier.append(nxt)
    return best


def test_no_import_cycles() -> None:
    # A package's __init__ importing its own submodules is not counted as a cycle with them: a
    # module's edge goes to the module it names, not to the packages around it.
    modules = source_modules()
    graph = {
        name: {t for t, runs in imports_of(name, path, modules) if runs and t in modules}
        for name, path in modules.items()
    }
    loops = [" -> ".join(shortest_loop(graph, set(c))) for c in import_cycles(graph)]
    assert not loops, "import cycles (one loop per cycle shown):\n" + "\n".join(loops)


def test_cycle_finder_finds_a_cycle_by_hand() -> None:
    graph = {"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c", "d"], ["e"]]
    assert shortest_loop(graph, {"a", "b", "c", "d"}) == ["a", "d", "a"]
    assert shortest_loop(graph, {"e"}) == ["e", "e"]
