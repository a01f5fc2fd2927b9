"""The package as a library: a light import with a version, the API's names, and the layering
(workflows in layersearch/workflows, the command line only parses and prints, no import circles)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import layersearch

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layersearch"


def test_import_is_light_and_gives_the_installed_version():
    code = "import sys, layersearch; print(layersearch.__version__, 'torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert out == [version, "False", "False"]


def test_the_api_names_are_the_workflows(write_config):
    from layersearch.workflows import compare, confirm, distill, evaluate, search

    assert layersearch.evaluate is evaluate.evaluate and layersearch.compare is compare.compare
    # search, distill and confirm are also (sub)module names: the modules call the workflow.
    for name, module in (("search", search), ("distill", distill), ("confirm", confirm)):
        api = getattr(layersearch, name)
        assert callable(api) and api._workflow == (module.__name__, name)
    importlib.import_module("layersearch.search.driver")  # the subpackage is still a package
    assert callable(layersearch.search)
    cfg = layersearch.load_config(write_config({"corpus": {"paths": ["corpus"]}}), overrides=["search.population=6"])
    assert cfg.search.population == 6


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_command_line_only_parses_calls_and_prints():
    for path in (PACKAGE / "cli").glob("*.py"):
        if path.name == "__init__.py":  # the app: it registers every subcommand
            continue
        cli = {m for m in _imports(path) if m.startswith("layersearch.cli")}
        assert cli <= {"layersearch.cli.common", *(f"layersearch.cli.common.{n}" for n in dir_of_common())}, (
            f"{path.name} imports {sorted(cli)}")
    for path in (ROOT / "bench").glob("*.py"):
        assert not any(m.startswith("layersearch.cli") for m in _imports(path)), path.name
    for path in (PACKAGE / "workflows").glob("*.py"):
        assert not any(m.startswith("layersearch.cli") for m in _imports(path)), path.name


def dir_of_common() -> set[str]:
    import layersearch.cli.common as common

    return set(vars(common))


def test_no_import_circles():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            trail = [*path, m, n]
            assert state.get(n) != 1, "import circle: " + " -> ".join(trail[trail.index(n):])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
