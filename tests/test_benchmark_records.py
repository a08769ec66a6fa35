"""What every benchmark shares (``scripts.common``): the record a run writes, which the docs render, and the
one way peak memory is measured."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.common import record
from scripts.common.measure import measured, run_measured
from scripts.common.tables import render
from tests.test_docs import RECORD_KEYS, docs_hooks


def test_a_run_writes_a_record_the_docs_can_render(tmp_path: Path) -> None:
    args = argparse.Namespace(size=3, workdir=tmp_path, record=tmp_path / "out" / "run.json")
    with record.recorded("benchmarks.example", args) as run:
        run.figures = {"values": np.arange(3, dtype=np.int64).sum()}  # numpy scalars are written as numbers
        run.tables["main"] = record.table(["measure", "value"], [("size", 3), ("time s", f"{1.25:.2f}")])
    written = json.loads(args.record.read_text())
    assert RECORD_KEYS <= set(written)
    assert written["arguments"] == {"size": 3, "workdir": str(tmp_path)} and written["figures"] == {"values": 3}
    assert written["machine"]["cores"] >= 1 and written["date"].startswith("20")
    assert written["tables"]["main"] == {"columns": ["measure", "value"], "rows": [["size", "3"], ["time s", "1.25"]]}
    hooks = docs_hooks()
    assert render(written["tables"]["main"]) == "| measure | value |\n|---|---|\n| size | 3 |\n| time s | 1.25 |"
    assert f"`{written['command']}`" in hooks.provenance(written)


@pytest.mark.slow  # a child process that fills memory
def test_peak_memory_is_the_work_s_own_in_this_process_and_in_a_child() -> None:
    block = 200 * 2**20
    with measured() as usage:
        data = np.ones(block // 8)
        data[::512] = 2.0
        del data
    assert usage.peak_rss_mb - usage.start_rss_mb >= 180  # the block's 200 MB, not the process's earlier peak
    child = f"import numpy as np, time; a = np.ones({block // 8}); time.sleep(0.5); print(a.sum())"
    usage, output = run_measured([sys.executable, "-c", child])
    assert output.strip() == f"{block // 8}.0"
    assert 200 <= usage.peak_rss_mb < 200 + 150  # the child alone: its array and an interpreter with numpy
    assert usage.wall_s >= 0.5
