"""Imports go one way: a part of the agent never imports a part above it.

The agent's folders are layers (CONTRIBUTING.md): the base (`errors`, `settings`,
`throttle`, `damaged`, the package's `__version__`), then `vision` (frames in, labelled
faces out), `people` (faces over time, events), `delivery` and `site` (side by side:
neither imports the other), `web`,
the wiring at the top (`cli`, `service`, `pipeline`, `factory`, `config`, ...), and `bench`
above all, which only `cli` loads, inside a bench command. Every import in every module is
read from its syntax tree, those inside functions and under TYPE_CHECKING too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parent.parent / "agent"
BASE = {"__init__", "damaged", "errors", "settings", "throttle"}
RANKS = {"base": 0, "vision": 1, "people": 2, "delivery": 3, "site": 3, "web": 4, "top": 5,
         "bench": 6}
PARTS = ("vision", "people", "delivery", "site", "web", "bench")


def unit_of(module: tuple[str, ...]) -> str:
    """The layer a module (its path parts under agent/, no suffix) belongs to."""
    if module[0] in PARTS:
        return module[0]
    return "base" if module[0] in BASE else "top"


def modules() -> list[tuple[str, ...]]:
    return sorted(p.relative_to(AGENT).with_suffix("").parts for p in AGENT.rglob("*.py"))


def imported(module: tuple[str, ...]) -> list[tuple[tuple[str, ...], int, bool]]:
    """(target module parts, line, inside a function) for each import of the agent's own."""
    path = AGENT.joinpath(*module).with_suffix(".py")
    tree = ast.parse(path.read_text())
    package = list(module[:-1])  # a module's package; an __init__'s is its own folder
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                found.extend((t, child.lineno, in_function) for t in _targets(child, package))
            elif isinstance(child, ast.Import):
                found.extend((tuple(a.name.split(".")[2:]) or ("__init__",), child.lineno,
                              in_function) for a in child.names
                             if a.name.startswith("maskwatch.agent"))
            visit(child, nested)

    visit(tree, False)
    return found


def _targets(node: ast.ImportFrom, package: list[str]) -> list[tuple[str, ...]]:
    if node.level == 0:
        if not (node.module or "").startswith("maskwatch.agent"):
            return []
        base = node.module.split(".")[2:]
    else:
        base = package[:len(package) - (node.level - 1)] + (node.module or "").split(".")
        base = [b for b in base if b]
    if node.module is None or not base:  # from . import x: x may be a module or a name
        return [tuple(base + [a.name]) if (AGENT.joinpath(*base, a.name + ".py")).exists()
                else tuple(base) or ("__init__",) for a in node.names]
    return [tuple(base)]


def violations() -> list[str]:
    found = []
    for module in modules():
        unit = unit_of(module)
        for target, line, in_function in imported(module):
            other = unit_of(target)
            where = f"agent/{'/'.join(module)}.py:{line} imports {'.'.join(target)}"
            if other == "bench" and unit != "bench" and not (
                    module == ("cli",) and in_function):
                found.append(f"{where}: the benches are loaded only by cli's bench commands")
            elif other != unit and other != "bench" and RANKS[other] >= RANKS[unit]:
                found.append(f"{where}: {unit} may not import {other} (same or higher layer)")
    return found


def test_no_part_imports_a_part_above_it():
    assert violations() == []


def test_the_base_imports_nothing_above_it():
    for module in modules():
        if unit_of(module) == "base":
            assert all(unit_of(t) == "base" for t, _, _ in imported(module)), module


@pytest.mark.parametrize("part", PARTS)
def test_each_part_says_what_it_owns_and_may_import(part):
    doc = ast.get_docstring(ast.parse((AGENT / part / "__init__.py").read_text()))
    assert doc and "May import" in doc, f"agent/{part}/__init__.py needs a docstring"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: a vision module importing delivery is reported."""
    fake = tmp_path / "agent"
    for part in PARTS:
        (fake / part).mkdir(parents=True)
    (fake / "errors.py").write_text("")
    (fake / "vision" / "camera.py").write_text("from ..delivery.outbox import Outbox\n")
    (fake / "delivery" / "outbox.py").write_text("from ..errors import StateError\n")
    (fake / "cli.py").write_text("from .bench.measure import MODES\n")
    globals()["AGENT"], saved = fake, AGENT
    try:
        found = violations()
    finally:
        globals()["AGENT"] = saved
    assert any("vision/camera.py:1 imports delivery.outbox" in v for v in found), found
    assert any("cli.py:1 imports bench.measure" in v for v in found), found
    assert not any("outbox" in v and "errors" in v for v in found)
