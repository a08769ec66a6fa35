"""How long ``churnformer-monitor`` takes on a large scoring run.

Usage::

    python -m scripts.benchmarks.monitor --predictions RUN_DIR/predictions.parquet [--customers 500000]
                                       [--record PATH]

Two scoring outputs of ``--customers`` customers each are made from a real one (``churnformer-predict``'s
output with its ``.summary.json``; a training run's ``predictions.parquet`` will do): its rows drawn with
replacement under new ids, twice, with different seeds. The monitor then compares them as a scheduler would
(Parquet files read, every output binned, the input profiles compared, report and figure written) and the
wall time is printed, with the time to read the two files alone beside it (the share that is I/O).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID
from churnformer.monitoring.job import run_monitor
from scripts.common import record


def resampled(predictions: pd.DataFrame, customers: int, seed: int) -> pd.DataFrame:
    rows = np.random.default_rng(seed).integers(0, len(predictions), customers)
    frame = predictions.iloc[rows].reset_index(drop=True)
    frame[CUSTOMER_ID] = np.char.add("c", np.arange(customers).astype(str))
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=500_000)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("benchmarks.monitor", args) as run:
        run.figures = measure(args)
        run.tables["monitor"] = record.table(
            ["customers per run", "churnformer-monitor, s", "of which reading the two files, s", "exit status"],
            [
                [
                    f"{args.customers:,}",
                    f"{run.figures['wall_s']:.1f}",
                    f"{run.figures['read_s']:.1f}",
                    run.figures["status"],
                ]
            ],
        )


def measure(args: argparse.Namespace) -> dict:
    """The monitor's wall time on two resampled runs, and reading them alone."""
    source = pd.read_parquet(args.predictions)
    summary = args.predictions.with_name(args.predictions.name + ".summary.json")
    work = Path(tempfile.mkdtemp(prefix="churnformer-bench-monitor-"))
    try:
        paths = []
        for seed, name in ((0, "reference.parquet"), (1, "current.parquet")):
            path = work / name
            resampled(source, args.customers, seed).to_parquet(path, index=False)
            shutil.copy(summary, path.with_name(path.name + ".summary.json"))
            paths.append(path)
        started = time.perf_counter()
        for path in paths:
            pd.read_parquet(path)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        status = run_monitor({"current": str(paths[1]), "reference": str(paths[0]), "output": str(work / "out")})
        wall_s = time.perf_counter() - started
        print(
            f"{args.customers:,} customers per run: churnformer-monitor {wall_s:.1f} s (exit status {status}), "
            f"of which reading the two files {read_s:.1f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"wall_s": wall_s, "read_s": read_s, "status": status}


if __name__ == "__main__":
    main()
