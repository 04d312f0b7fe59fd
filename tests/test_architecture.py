"""The package's shape, read from its source with `ast`: no import cycles, small modules, one-way layers.

Every `import` counts, wherever it is: at the top, inside a function (lazy imports), under
`if TYPE_CHECKING:`, and `importlib.import_module("literal")`. A lazy import hides a cycle from
Python, not from the design: the modules still depend on each other.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import rl_selfdistill
from tests.helpers import not_installed_prelude

PACKAGE = "rl_selfdistill"
PACKAGE_DIR = Path(rl_selfdistill.__file__).parent

MAX_LINES = 450
# Modules allowed past MAX_LINES because they hold one idea that would only get harder to read split up.
# Each entry says what that one idea is; keep the list short.
ONE_IDEA_MODULES: dict[str, str] = {}

# DESIGN.md's data flow, cli -> run -> (config, envs, algos) -> distill, as ranks: a module may import modules of
# its own rank or lower, never higher. The longest matching prefix gives a module's layer.
LAYERS: dict[str, tuple[int, str]] = {
    f"{PACKAGE}.errors": (0, "foundation"),
    f"{PACKAGE}.paths": (0, "foundation"),
    f"{PACKAGE}.schedules": (0, "foundation"),
    f"{PACKAGE}.validators": (0, "foundation"),
    f"{PACKAGE}.distill": (1, "distill"),
    f"{PACKAGE}.algos": (2, "algos"),
    f"{PACKAGE}.envs": (2, "envs"),
    f"{PACKAGE}.config": (2, "config"),
    f"{PACKAGE}.policies": (2, "config"),  # feature extractors that presets name
    PACKAGE: (2, "public API"),  # the package itself re-exports the algorithms and make_vec_env
    f"{PACKAGE}.run": (3, "run"),
    f"{PACKAGE}.tracking": (3, "run"),
    f"{PACKAGE}.evaluation": (3, "run"),
    f"{PACKAGE}.benchmark": (4, "benchmark"),
    f"{PACKAGE}.tune": (4, "benchmark"),
    f"{PACKAGE}.cli": (5, "cli"),
    f"{PACKAGE}.__main__": (5, "cli"),
}


# ----------------------------------------------------------------------------- reading the import graph


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module under `root` by dotted name; a package's `__init__.py` is the package's own name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imported_names(tree: ast.AST, importer: str, is_package: bool) -> Iterator[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import anywhere in the tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = _resolve_relative(importer, is_package, node.level, node.module)
            yield module, [alias.name for alias in node.names], node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, [], node.lineno


def _known_target(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` loads: itself if it is one, else the closest enclosing package or module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """importer -> {imported module: first line}, for imports of the package's own modules."""
    modules = module_files(root, package)
    graph: dict[str, dict[str, int]] = {}
    for importer, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for module, names, line in _imported_names(tree, importer, path.name == "__init__.py"):
            if module != package and not module.startswith(package + "."):
                continue
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one, else a name defined in `pkg`.
            targets = [f"{module}.{name}" if f"{module}.{name}" in modules else module for name in names] or [module]
            for target in targets:
                known = _known_target(target, modules)
                if known is not None and known != importer:
                    edges.setdefault(known, line)
        graph[importer] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, {})):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(component, graph) for component in sorted(components)]


def _cycle_through(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest path from the component's first module back to itself, staying inside the component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor == start:
                    return [*paths[node], start]
                if successor in members and successor not in paths:
                    paths[successor] = [*paths[node], successor]
                    next_frontier.append(successor)
        frontier = next_frontier
    raise AssertionError(f"no cycle through {start}")  # a component of Tarjan's always has one


def layer_of(module: str) -> tuple[int, str] | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


# ----------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(PACKAGE_DIR, PACKAGE)


def test_no_import_cycles(graph):
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(describe_cycle(c, graph) for c in cycles)


def test_modules_stay_small_unless_they_are_one_idea():
    too_long = {
        name: len(path.read_text().splitlines())
        for name, path in module_files(PACKAGE_DIR, PACKAGE).items()
        if len(path.read_text().splitlines()) > MAX_LINES and name not in ONE_IDEA_MODULES
    }
    assert not too_long, f"modules over {MAX_LINES} lines (split them, or document them in ONE_IDEA_MODULES): {too_long}"
    stale = [name for name in ONE_IDEA_MODULES if name not in module_files(PACKAGE_DIR, PACKAGE)]
    assert not stale, f"ONE_IDEA_MODULES names modules that do not exist: {stale}"


def test_every_module_has_a_layer(graph):
    missing = sorted(module for module in graph if layer_of(module) is None)
    assert not missing, f"modules with no layer: {missing}; add them to LAYERS in {Path(__file__).name}"


def test_lower_layers_never_import_higher_ones(graph):
    violations = []
    for importer, edges in sorted(graph.items()):
        here = layer_of(importer)
        for imported, line in sorted(edges.items()):
            there = layer_of(imported)
            if here is not None and there is not None and there[0] > here[0]:
                violations.append(f"{importer} ({here[1]}) imports {imported} ({there[1]}) at line {line}")
    assert not violations, "layering (cli -> run -> config/envs/algos -> distill) broken:\n" + "\n".join(violations)


def test_the_algorithms_need_no_extra():
    """A drop-in SB3 algorithm library: with no optional extra installed, both algorithms import and train."""
    extras = {"wandb", "tensorboard", "rliable", "ale_py", "envpool", "ray", "moviepy", "imageio", "optuna"}
    script = not_installed_prelude(extras) + (
        "from rl_selfdistill import SelfDistillDQN, SelfDistillPPO\n"
        "SelfDistillPPO('MlpPolicy', 'CartPole-v1', n_steps=32, batch_size=32, n_epochs=1, teacher_update_interval=32,"
        " device='cpu').learn(96)\n"
        "SelfDistillDQN('MlpPolicy', 'CartPole-v1', learning_starts=16, teacher_update_interval=32, device='cpu').learn(96)\n"
        "print('trained')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "trained"


# ----------------------------------------------------------------------------- the analysis itself, on a toy package


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "toy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "toy"


def test_lazy_and_relative_imports_are_edges_and_cycles_are_named(tmp_path):
    toy = _write(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "def f():\n    from toy.high import g  # lazy\n    return g\n",
            "high.py": "from . import low\nimport os\n",
            "sub/__init__.py": "from toy.sub.leaf import VALUE\n",
            "sub/leaf.py": "import importlib\nVALUE = 1\nimportlib.import_module('toy.low')\n",
            "alone.py": "from toy import sub\nfrom toy.sub import VALUE\n",
        },
    )
    graph = import_graph(toy, "toy")
    assert graph["toy.low"] == {"toy.high": 2}
    assert graph["toy.high"] == {"toy.low": 1}
    assert graph["toy.sub"] == {"toy.sub.leaf": 1}
    assert graph["toy.sub.leaf"] == {"toy.low": 3}
    assert graph["toy.alone"] == {"toy.sub": 1}  # a submodule when the name is one, else the package
    cycles = import_cycles(graph)
    assert cycles == [["toy.high", "toy.low", "toy.high"]]
    assert describe_cycle(cycles[0], graph) == "toy.high (line 1) -> toy.low (line 2) -> toy.high"


def test_a_three_module_cycle_is_found_whole(tmp_path):
    toy = _write(
        tmp_path,
        {"__init__.py": "", "a.py": "import toy.b\n", "b.py": "import toy.c\n", "c.py": "def f():\n    import toy.a\n"},
    )
    assert import_cycles(import_graph(toy, "toy")) == [["toy.a", "toy.b", "toy.c", "toy.a"]]


def test_every_layer_entry_names_an_existing_module(graph):
    """A stale entry (a module that was moved or deleted) would hide a new module with the same name in the wrong layer."""
    modules = set(module_files(PACKAGE_DIR, PACKAGE))
    stale = [prefix for prefix in LAYERS if not any(name == prefix or name.startswith(prefix + ".") for name in modules)]
    assert not stale, f"LAYERS lists modules that do not exist: {stale}"
