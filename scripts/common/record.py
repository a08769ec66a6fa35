"""One result format for every benchmark and experiment: a JSON record of what ran, where, and what it measured.

A record holds ``benchmark`` (the module, e.g. ``benchmarks.score``), ``command`` (as run, from the repository
root), ``arguments``, ``commit`` (and ``dirty`` when the working tree had changes), ``date`` (UTC), ``machine``
(CPU, cores, memory, OS, Python and the versions of the libraries that set the speed), ``wall_s`` and
``peak_rss_mb`` of the whole run (``scripts.common.measure``), ``figures`` (the raw numbers) and ``tables``
(what a reader is shown: named tables of formatted cells, ``{"columns": [...], "rows": [[...], ...]}``).

Every run writes one (``--record PATH``; by default ``benchmark-results/<benchmark>/<UTC time>.json``, which
git ignores). Publishing a result is copying its record under ``docs/results/``: the docs' benchmark tables
are rendered from those files (``docs/hooks.py``), so every number there is one a command produced, with its
date and commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from churnformer.training.run_info import git_commit
from scripts.common.measure import measured

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = Path("benchmark-results")
# The libraries whose versions set a benchmark's speed or numbers.
LIBRARIES = ("churnformer", "numpy", "pandas", "pyarrow", "torch", "onnxruntime", "pytorch-lightning", "lightgbm")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--record PATH``: where the run's JSON record goes."""
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"write the run's JSON record here (default: {DEFAULT_DIR}/<benchmark>/<UTC time>.json)",
    )


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, list]:
    """A table of a record: its column names and its rows of cells, every cell as it is shown."""
    return {"columns": list(columns), "rows": [[str(cell) for cell in row] for row in rows]}


def frame_table(frame) -> dict[str, list]:
    """A pandas frame (already formatted, e.g. ``mean ± std`` cells) as a table of a record."""
    return table(list(frame.columns), frame.astype(str).to_numpy().tolist())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The machine a record was measured on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: version for name in LIBRARIES if (version := _version(name)) is not None},
    }


@dataclass
class Record:
    """A run's record, filled in by the run (``figures``, ``tables``) and written when it ends."""

    benchmark: str
    arguments: dict[str, Any]
    path: Path | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)

    def as_json(self, wall_s: float, peak_rss_mb: float) -> dict[str, Any]:
        commit, _, dirty = (git_commit(ROOT) or "").partition("+")
        main = sys.modules["__main__"].__spec__  # the module run with -m (a wrapper's own name)
        module = main.name if main is not None else f"scripts.{self.benchmark}"
        return {
            "benchmark": self.benchmark,
            "command": shlex.join(["python", "-m", module, *sys.argv[1:]]),
            "arguments": self.arguments,
            "commit": commit or None,
            "dirty": bool(dirty),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "wall_s": round(wall_s, 3),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "figures": self.figures,
            "tables": self.tables,
        }


def _plain(value: Any) -> Any:
    """A path or a numpy scalar as JSON can hold it."""
    if isinstance(value, Path):
        return str(value)
    return value.item() if hasattr(value, "item") else value


@contextmanager
def recorded(benchmark: str, args: argparse.Namespace) -> Iterator[Record]:
    """Run the block as ``benchmark`` (``benchmarks.score``) with ``args``; write its record when it ends."""
    arguments = {name: _plain(value) for name, value in vars(args).items() if name != "record"}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    record = Record(benchmark, arguments, args.record or DEFAULT_DIR / benchmark / f"{stamp}.json")
    with measured() as usage:
        yield record
    record.path.parent.mkdir(parents=True, exist_ok=True)
    payload = record.as_json(usage.wall_s, usage.peak_rss_mb)
    record.path.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
    print(f"record: {record.path}")


def load(path: Path) -> dict[str, Any]:
    """A record, read back (``--tables-from``)."""
    return json.loads(Path(path).read_text())
