"""The documentation: every command it shows is one the tools accept (its overrides compose into the command's
config: no key, group or option that does not exist), every benchmark table is rendered from a committed record
(and the README's copies match theirs), and the site builds with ``mkdocs build --strict`` (no broken link,
anchor or page). ``tests/test_readme.py`` runs the getting-started and monthly pages' commands."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from churnformer.cli import explain_arguments, quote_spark_master

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# The Hydra-configured console scripts: the config module and name each composes.
CONFIGS = {
    "churnformer-train": ("churnformer.conf", "train"),
    "churnformer-featurize": ("churnformer.conf", "featurize"),
    "churnformer-backtest": ("churnformer.conf", "backtest"),
    "churnformer-predict": ("churnformer.conf.serving", "predict"),
    "churnformer-evaluate": ("churnformer.conf.serving", "evaluate"),
    "churnformer-export": ("churnformer.conf.serving", "export"),
    "churnformer-monitor": ("churnformer.conf.serving", "monitor"),
}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page, command, its arguments) of every Hydra-configured churnformer command in a bash block."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for step in re.split(r"&&|;|\$\(which ", line):
                    words = shlex.split(step.replace("$i", "0"), comments=True)
                    tools = [i for i, word in enumerate(words) if Path(word).name in CONFIGS]
                    if tools:
                        tool = Path(words[tools[0]]).name
                        arguments = [w.rstrip(")") for w in words[tools[0] + 1 :] if w not in ("&", "done", "wait")]
                        found.append((str(page.relative_to(ROOT)), tool, arguments))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_every_configured_command() -> None:
    assert {tool for _, tool, _ in COMMANDS} == set(CONFIGS)


@pytest.mark.parametrize(
    ("page", "tool", "arguments"), COMMANDS, ids=[f"{p}:{t}:{i}" for i, (p, t, _) in enumerate(COMMANDS)]
)
def test_every_documented_command_composes(page: str, tool: str, arguments: list[str]) -> None:
    overrides = [quote_spark_master(a) for a in explain_arguments(arguments) if a != "-m"]
    if "-m" in arguments:  # a sweep: each trial composes one value of each swept key
        overrides = [re.sub(r"^([^=\[]+=)([^,\[\]'\"]+),.*$", r"\1\2", o) for o in overrides]
    module, name = CONFIGS[tool]
    with initialize_config_module(module, version_base="1.3"):
        compose(name, overrides=overrides)  # raises on a key, group or option that does not exist


def leaf_keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {key for name, value in node.items() for key in leaf_keys(value, f"{prefix}{name}.")}
    return {prefix.rstrip(".")}


def docs_hooks():
    """``docs/hooks.py``, the mkdocs hooks, as a module."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = hooks  # its dataclasses look their module up there
    spec.loader.exec_module(hooks)
    return hooks


@pytest.mark.parametrize("tool", sorted(CONFIGS))
def test_the_configuration_reference_lists_every_key_of_each_command(tool: str) -> None:
    """Every key of the composed config (as ``--cfg job`` prints it) has a row in the generated reference."""
    hooks = docs_hooks()
    module, name = CONFIGS[tool]
    with initialize_config_module(module, version_base="1.3"):
        config = OmegaConf.to_container(compose(name), resolve=False)
    missing = sorted(leaf_keys(config) - hooks.documented_keys())
    assert not missing, f"{tool}: keys without a row in the configuration reference: {missing}"


RECORD_KEYS = {"benchmark", "command", "commit", "date", "machine", "wall_s", "peak_rss_mb", "figures", "tables"}


def result_markers() -> list[tuple[str, str]]:
    """(page, marker spec) of every ``<!-- results: ... -->`` marker of the README and the docs."""
    hooks = docs_hooks()
    return [
        (str(page.relative_to(ROOT)), m["spec"])
        for page in PAGES
        for m in hooks.RESULT_MARKER.finditer(page.read_text())
    ]


def test_every_benchmark_table_comes_from_a_committed_record_and_every_record_is_shown() -> None:
    hooks = docs_hooks()
    shown = set()
    for page, spec in result_markers():
        parsed = hooks.ResultSpec.parse(spec)
        table, _ = hooks.result_table(parsed)  # raises, naming it, on a missing record, table, row or column
        assert table["rows"], f"{page}: {spec} renders no row"
        shown.update(parsed.files)
    published = {path.name for path in (ROOT / "docs" / "results").glob("*.json")}
    assert shown == published, f"records shown nowhere: {sorted(published - shown)}"
    for name in published:
        record = json.loads((ROOT / "docs" / "results" / name).read_text())
        assert RECORD_KEYS <= set(record), f"{name} lacks {sorted(RECORD_KEYS - set(record))}"
        assert record["commit"] or record.get("provenance"), f"{name}: neither its commit nor where it came from"


def test_the_readme_tables_are_their_records_tables() -> None:
    """The README has no hook: the table under each results marker is the one its records render
    (``python docs/hooks.py`` renders them again)."""
    hooks = docs_hooks()
    readme = (ROOT / "README.md").read_text()
    assert hooks.RESULT_MARKER.search(readme)
    assert hooks.refresh_readme(readme) == readme, "README.md's result tables differ from their records'"


@pytest.mark.slow
def test_the_site_builds_without_a_broken_link(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[dev]' installs it)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config_page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "pretrain.freeze" in config_page and "thresholds.psi_alert" in config_page
