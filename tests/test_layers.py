"""The package's layering, as the README's stage table states it: a module imports only from its own stage
and the stages above it in the table, never from one below (type-only imports count too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "churnformer"


def stage_table() -> list[tuple[str, list[str]]]:
    """(stage, the files and folders of its ``where`` cell) in the README's order."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| stage | where | what |") :].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    return [(stage.strip(), re.findall(r"`([^`]+)`", where)) for stage, where in rows]


def stage_of(module: str, stages: list[tuple[str, list[str]]]) -> int:
    """Index of the stage whose ``where`` names the module's file or its subpackage's folder."""
    parts = module.split(".")[1:]  # without "churnformer"
    for index, (_, places) in enumerate(stages):
        for place in places:
            if place.endswith("/") and parts and parts[0] == place.rstrip("/"):
                return index
            if place.endswith(".py") and parts == [place.removesuffix(".py")]:
                return index
    raise AssertionError(f"churnformer.{'.'.join(parts)} is in no stage of the README's table")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        if name != "churnformer" and not name.startswith("churnformer.conf"):
            found[name] = path
    return found


def imported(path: Path) -> set[str]:
    """churnformer modules a file imports, anywhere in it (functions and ``TYPE_CHECKING`` blocks too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("churnformer."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("churnformer."))
    return names


def test_every_import_points_up_the_stage_table() -> None:
    stages = stage_table()
    backwards = []
    for module, path in sorted(modules().items()):
        own = stage_of(module, stages)
        for target in sorted(imported(path)):
            theirs = stage_of(target, stages)
            if theirs > own:
                backwards.append(f"{module} ({stages[own][0]}) imports {target} ({stages[theirs][0]})")
    assert not backwards, "\n".join(backwards)


def test_every_subpackage_is_a_package() -> None:
    folders = [p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert [p.name for p in folders if not (p / "__init__.py").is_file()] == []
