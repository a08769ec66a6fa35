"""mkdocs hooks: the reference pages generated at build time from their one source.

- ``<!-- generated: config-reference -->``: every key of every YAML file under ``src/churnformer/conf``, with
  its default and its meaning, read from the comments above it (the YAML comments are the documentation; no
  second list is kept by hand).
- ``<!-- generated: cli-reference -->``: every console script of ``pyproject.toml``, with its usage (the header
  comment of its config) or its module docstring, and where its settings are in the configuration reference.
- ``<!-- generated: changelog -->``: ``CHANGELOG.md``, its links made relative to the docs.
- ``<!-- results: FILE | TABLE -->``: the table ``TABLE`` of the benchmark record ``docs/results/FILE`` (the
  JSON every ``python -m scripts...`` run writes, ``scripts.common.record``), with the command, date, commit
  and machine that produced it. A missing record or table fails the build.

Only the standard library (and ``scripts.common.tables``, which needs nothing else): the docs build needs no
churnformer import.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "churnformer" / "conf"
# The console scripts with a Hydra config: the config file (relative to conf/).
SCRIPT_CONFIGS = {
    "churnformer-train": "train.yaml",
    "churnformer-featurize": "featurize.yaml",
    "churnformer-backtest": "backtest.yaml",
    "churnformer-export": "serving/export.yaml",
    "churnformer-predict": "serving/predict.yaml",
    "churnformer-evaluate": "serving/evaluate.yaml",
    "churnformer-monitor": "serving/monitor.yaml",
}
# The console scripts with their own argument parser: the module whose docstring says what they do.
SCRIPT_MODULES = {
    "churnformer-synthetic": "churnformer.data.synthetic",
    "churnformer-runs": "churnformer.training.runs",
}
RESULTS = ROOT / "docs" / "results"
# <!-- results: FILE[, FILE...] | TABLE[ | COLUMN, ...][ | rows: FIRST CELL; ...] -->: several files' rows are
# stacked (same columns); optionally only some columns, and only the rows whose first cell is named.
RESULT_MARKER = re.compile(r"<!-- results: (?P<spec>[^>]+?) -->")
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.@-]*|\"[^\"]+\"):(?P<value>.*)$")


@dataclass
class Entry:
    key: str
    default: str
    meaning: str


@dataclass
class ConfigFile:
    path: Path
    header: list[str] = field(default_factory=list)
    composes: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)


def parse(path: Path) -> ConfigFile:
    """The keys of a YAML config with the comments above them (a block list joined as ``[a, b]``)."""
    parsed = ConfigFile(path)
    comments: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    in_defaults = False
    seen_key = False
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if not seen_key and not line.startswith(" "):
                parsed.header.append(text)
            else:
                comments.append(text)
            continue
        if not stripped:
            if not seen_key:
                parsed.header.append("")
            comments = [] if seen_key and not line.startswith(" ") else comments
            continue
        if stripped.startswith("- "):
            if in_defaults:
                parsed.composes.append(stripped[2:].strip())
            continue
        match = KEY.match(line)
        if not match:
            continue
        seen_key = True
        indent, key, value = len(match["indent"]), match["key"].strip('"'), match["value"]
        value, _, inline = value.partition(" #")
        value = value.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0:
            in_defaults = key == "defaults"
        if in_defaults:
            comments = []
            continue
        dotted = ".".join([k for _, k in stack] + [key])
        if not value:
            items = block_list(lines, number, indent)
            if items is None:
                stack.append((indent, key))
                if comments:
                    parsed.entries.append(Entry(dotted, "", " ".join(comments)))
                comments = []
                continue
            value = f"[{', '.join(items)}]"
        meaning = " ".join([*comments, inline.strip()]).strip()
        parsed.entries.append(Entry(dotted, value, meaning))
        comments = []
    parsed.header = [h for h in parsed.header if h.strip()]
    return parsed


def block_list(lines: list[str], number: int, indent: int) -> list[str] | None:
    """The items of a block list under the key on line ``number``, or None when a mapping follows."""
    items = []
    for line in lines[number + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(line) - len(line.lstrip()) <= indent:
            break
        if not stripped.startswith("- "):
            return None if not items else items
        items.append(stripped[2:].strip())
    return items or None


# Groups whose files another config includes in its own package (``- settings@_here_: default`` in data/*.yaml).
INCLUDED_HERE = {"data/settings": "data"}


def package_of(path: Path, parsed: ConfigFile) -> str:
    """Where the file's keys land in the composed config: its group path (``model/heads`` -> ``model.heads``),
    nothing for a primary config (``train.yaml``, ``serving/predict.yaml``) or a ``@package _global_`` one."""
    group = path.relative_to(CONF).parent.as_posix()
    if group in (".", "serving") or any(h.startswith("@package _global_") for h in parsed.header):
        return ""
    return INCLUDED_HERE.get(group, group.replace("/", "."))


def config_files() -> list[Path]:
    """Every config file, without Hydra's own (logging and run directories)."""
    return sorted(p for p in CONF.rglob("*.yaml") if "hydra" not in p.relative_to(CONF).parts[:-1])


def documented_keys() -> set[str]:
    """Every key the configuration reference documents, as the composed config names it."""
    keys = set()
    for path in config_files():
        parsed = parse(path)
        prefix = package_of(path, parsed)
        keys |= {f"{prefix}.{e.key}" if prefix else e.key for e in parsed.entries}
    return keys


def option_name(path: Path) -> str:
    """How the file is chosen on the command line: ``data=cdnow`` for ``data/cdnow.yaml``."""
    relative = path.relative_to(CONF).with_suffix("")
    if len(relative.parts) == 1:
        return f"the `{relative.name}` config"
    return f"`{'/'.join(relative.parts[:-1])}={relative.parts[-1]}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    out = []
    for path in config_files():
        parsed = parse(path)
        prefix = package_of(path, parsed)
        relative = path.relative_to(CONF)
        out += [f"## `{relative}`", "", f"{option_name(path)}."]
        header = [h for h in parsed.header if not h.startswith("@package")]
        if header:
            out += ["", " ".join(header)]
        if parsed.composes:
            out += ["", "Composes: " + ", ".join(f"`{c}`" for c in parsed.composes) + "."]
        if parsed.entries:
            out += ["", "| key | default | meaning |", "|---|---|---|"]
            for entry in parsed.entries:
                key = f"{prefix}.{entry.key}" if prefix else entry.key
                default = f"`{cell(entry.default)}`" if entry.default else ""
                out.append(f"| `{key}` | {default} | {cell(entry.meaning)} |")
        out.append("")
    return "\n".join(out)


def anchor(relative: str) -> str:
    """mkdocs' heading id for ``## `relative` ``."""
    return re.sub(r"[^\w-]", "", relative.lower().replace("/", "").replace(".", ""))


def module_docstring(module: str) -> str:
    path = ROOT / "src" / Path(*module.split(".")).with_suffix(".py")
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def cli_reference() -> str:
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    out = []
    for name in re.findall(r"^([\w-]+) = ", section, flags=re.MULTILINE):
        out += [f"## `{name}`", ""]
        config = SCRIPT_CONFIGS.get(name)
        if config:
            header = parse(CONF / config).header
            usage = [h for h in header if h.startswith(name + " ")]
            about = [h for h in header if not h.startswith(name + " ")]
            if usage:
                out += ["```bash", *usage, "```", ""]
            if about:
                out += [" ".join(about), ""]
            out += [f"Every setting: [`{config}`](config.md#{anchor(config)}); any key is a `key=value` override.", ""]
        else:
            doc = module_docstring(SCRIPT_MODULES[name])
            out += [doc.split("\n\n")[0].replace("\n", " "), "", f"`{name} --help` lists its options.", ""]
    return "\n".join(out)


def changelog() -> str:
    """``CHANGELOG.md`` (at the top of the repository, where its links point into ``docs/``) as a docs page."""
    return (ROOT / "CHANGELOG.md").read_text().replace("](docs/", "](")


GENERATED = {"config-reference": config_reference, "cli-reference": cli_reference, "changelog": changelog}


def provenance(record: dict) -> str:
    """Where a record's numbers come from: command, date, commit, machine, duration, and any note."""
    commit = (record.get("commit") or "not recorded")[:12] + (
        " with uncommitted changes" if record.get("dirty") else ""
    )
    machine = record["machine"]
    parts = [
        f"`{record['command']}`",
        record["date"][:10],
        f"commit {commit}",
        f"{machine['cores']} cores ({machine['cpu']})",
    ]
    if record.get("wall_s"):
        minutes = record["wall_s"] / 60
        parts.append(f"{minutes:.0f} min" if minutes >= 1 else f"{record['wall_s']:.0f} s")
    note = f" {record['provenance']}" if record.get("provenance") else ""
    return "<small>" + ", ".join(parts) + "." + note + "</small>"


@dataclass
class ResultSpec:
    """What a results marker asks for."""

    files: list[str]
    table: str
    columns: list[str] | None = None
    rows: list[str] | None = None

    @classmethod
    def parse(cls, spec: str) -> ResultSpec:
        files, table, *rest = (part.strip() for part in spec.split(" | "))
        parsed = cls(split_list(files), table)
        for part in rest:
            if part.startswith("rows:"):  # row names may hold commas: separated by semicolons
                parsed.rows = split_list(part.removeprefix("rows:"), ";")
            else:
                parsed.columns = split_list(part)
        return parsed


def split_list(text: str, separator: str = ",") -> list[str]:
    return [part.strip() for part in text.split(separator) if part.strip()]


def result_table(spec: ResultSpec) -> tuple[dict, list[dict]]:
    """The table a marker asks for, from its records under ``docs/results`` (rows stacked, then the columns
    and rows it names), with the records themselves. A missing record, table, column or row is an error."""
    records, stacked = [], None
    for file in spec.files:
        path = RESULTS / file
        if not path.exists():
            raise FileNotFoundError(f"no record {path.relative_to(ROOT)}")
        record = json.loads(path.read_text())
        if spec.table not in record["tables"]:
            raise KeyError(f"{file} has no table {spec.table!r}, only {sorted(record['tables'])}")
        table = record["tables"][spec.table]
        if stacked is None:
            stacked = {"columns": table["columns"], "rows": []}
        elif table["columns"] != stacked["columns"]:
            raise ValueError(f"{file}: table {spec.table!r} has other columns than {spec.files[0]}'s")
        stacked["rows"] += table["rows"]
        records.append(record)
    if spec.rows:
        by_name = {row[0]: row for row in stacked["rows"]}
        missing = [name for name in spec.rows if name not in by_name]
        if missing:
            raise KeyError(f"table {spec.table!r} of {spec.files} has no row(s) {missing}")
        stacked["rows"] = [by_name[name] for name in spec.rows]
    if spec.columns:
        missing = [c for c in spec.columns if c not in stacked["columns"]]
        if missing:
            raise KeyError(f"table {spec.table!r} of {spec.files} has no column(s) {missing}")
        keep = [stacked["columns"].index(c) for c in spec.columns]
        stacked = {"columns": spec.columns, "rows": [[row[i] for i in keep] for row in stacked["rows"]]}
    return stacked, records


def render(table: dict) -> str:
    """A table as markdown (``scripts.common.tables.render``: the scripts print the same)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from scripts.common.tables import render as markdown

    return markdown(table)


def rendered_table(spec: ResultSpec) -> str:
    """A marker's table as markdown."""
    return render(result_table(spec)[0])


def results_table(match: re.Match) -> str:
    """A marker's table, rendered from its records, with each record's provenance under it."""
    table, records = result_table(ResultSpec.parse(match["spec"]))
    return render(table) + "\n\n" + "<br>\n".join(provenance(record) for record in records)


def on_page_markdown(markdown: str, **_: object) -> str:
    for name, make in GENERATED.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return RESULT_MARKER.sub(results_table, markdown)


def refresh_readme(text: str) -> str:
    """``text`` (the README, which GitHub shows without hooks) with the table under each results marker
    rendered again from its records."""

    def table_after(match: re.Match) -> str:
        return f"{match[1]}\n\n{rendered_table(ResultSpec.parse(match[2]))}\n\n"

    return re.sub(r"(<!-- results: ([^>]+?) -->)\n\n(?:\|.*\n)*\n?", table_after, text)


if __name__ == "__main__":  # python docs/hooks.py: the README's result tables, rendered again from the records
    readme = ROOT / "README.md"
    readme.write_text(refresh_readme(readme.read_text()))
