"""Benchmark: ``churnformer-predict engine=spark`` against the single-machine job, same log, same model.

Usage::

    python -m scripts.benchmarks.spark [--events 10000000] [--customers 500000] [--master local[2]]
                                  [--record PATH] [--workdir bench-score]

Both jobs run as the real command line in a subprocess, one after the other, on the scoring benchmark's
log and model (``scripts/benchmarks/score.py``: Parquet, integer ids, the default architecture with reference
percentiles). ``scripts.common.measure`` reads the peak of every process of the job's tree and sums them by role: the
``churnformer-predict`` process (for Spark, the driver's Python side), the JVM (at a ``local[N]`` master,
Spark's driver and executor in one process) and Spark's Python workers (``pyspark.daemon`` and its forks,
where the buckets are scored); the table shows each role's peak and the whole tree's. Wall time includes
interpreter and JVM start-up. Then the Spark dataset, sorted by customer id, is compared with the local file
bit for bit, and the rejects files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import psutil

from scripts.common import record
from scripts.common.measure import run_measured
from scripts.common.models import cutoff_date, make_log, make_model, reference_model
from scripts.common.tables import render

ROLES = ("driver", "jvm", "python_workers")


def role(process: psutil.Process, root: psutil.Process) -> str:
    """What a process of the job's tree is: the job itself (for Spark, the driver's Python side), the JVM or
    Spark's Python workers."""
    if process.pid == root.pid:
        return "driver"
    command = " ".join(process.cmdline())
    if "java" in process.name() or "java" in command.split(" ")[0]:
        return "jvm"
    return "python_workers" if "pyspark" in command else "other"


def run_job(args: list[str]) -> dict[str, float]:
    """Run ``args``; wall time and peak RSS (MB) of each role and of the whole process tree."""
    usage, _ = run_measured(args, role=role)
    by_role = {f"peak_{name}_mb": round(usage.peak_rss_mb_by_role.get(name, 0.0)) for name in ROLES}
    return {"wall_s": round(usage.wall_s, 1), **by_role, "peak_total_mb": round(usage.peak_rss_mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", type=Path, default=Path("bench-score"))
    record.add_argument(parser)
    options = parser.parse_args()
    with record.recorded("benchmarks.spark", options) as run:
        run.figures, run.tables = measure(options)


def measure(options: argparse.Namespace) -> tuple[dict, dict]:
    """Both jobs, measured and compared: the record's figures and tables."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    log = make_log(options.workdir, options.events, options.customers)
    model = reference_model(make_model(options.workdir, log), log)
    binary = str(Path(sys.executable).parent / "churnformer-predict")
    common = [binary, f"model={model}", f"events={log}", f"cutoff={cutoff_date()}", "progress=false"]
    local_out, spark_out = options.workdir / "spark-bench-local.parquet", options.workdir / "spark-bench-spark.parquet"
    results = {
        "local": run_job([*common, f"output={local_out}"]),
        "spark": run_job([*common, f"output={spark_out}", "engine=spark", f"spark.master={options.master}"]),
    }
    spark_rows = pd.read_parquet(spark_out).sort_values("customer_id", ignore_index=True)
    identical = spark_rows.equals(pd.read_parquet(local_out))
    rejects = [path.with_name(path.name + ".rejects.csv").read_bytes() for path in (local_out, spark_out)]
    summary = json.loads(spark_out.with_name(spark_out.name + ".summary.json").read_text())
    report = {
        "events": options.events,
        "customers": options.customers,
        "master": options.master,
        "buckets": summary["buckets"],
        **results,
        "wall_ratio": round(results["spark"]["wall_s"] / results["local"]["wall_s"], 2),
        "identical_predictions": bool(identical),
        "identical_rejects": rejects[0] == rejects[1],
    }
    print(
        f"{options.events:,} events, {options.customers:,} customers; Spark at {options.master}, "
        f"{summary['buckets']} buckets"
    )
    jobs = record.table(
        ["job", "wall s", "driver MB", "JVM MB", "workers MB", "total MB"],
        [
            (name, f"{m['wall_s']:.1f}", *(f"{m[f'peak_{k}_mb']:,}" for k in (*ROLES, "total")))
            for name, m in results.items()
        ],
    )
    print(render(jobs))
    print(
        f"Spark / local wall time: {report['wall_ratio']:.2f}x (goal <= 2); identical predictions: "
        f"{report['identical_predictions']}, identical rejects: {report['identical_rejects']}"
    )
    return report, {"jobs": jobs}


if __name__ == "__main__":
    main()
