"""Benchmark: ``churnformer-predict engine=spark`` against the single-machine job, same log, same model.

Usage::

    python scripts/bench_spark.py [--events 10000000] [--customers 500000] [--master local[2]]
                                  [--json PATH] [--workdir bench-score]

Both jobs run as the real command line in a subprocess, one after the other, on the scoring benchmark's
log and model (``scripts/bench_score.py``: Parquet, integer ids, the default architecture with reference
percentiles). psutil samples every process of the job's tree every 50 ms and sums RSS by role: the
``churnformer-predict`` process (for Spark, the driver's Python side), the JVM (at a ``local[N]`` master,
Spark's driver and executor in one process) and Spark's Python workers (``pyspark.daemon`` and its forks,
where the buckets are scored); the table shows each role's peak and the whole tree's. Wall time includes
interpreter and JVM start-up. Then the Spark dataset, sorted by customer id, is compared with the local file
bit for bit, and the rejects files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
from bench_score import cutoff_date, make_log, make_model, reference_model

SAMPLE_S = 0.05
ROLES = ("driver", "jvm", "python_workers")


def role(process: psutil.Process, root: int) -> str:
    if process.pid == root:
        return "driver"
    command = " ".join(process.cmdline())
    if "java" in process.name() or "java" in command.split(" ")[0]:
        return "jvm"
    return "python_workers" if "pyspark" in command else "other"


def run_sampled(args: list[str]) -> dict[str, float]:
    """Run ``args``; wall time and peak RSS (MB) of each role and of the whole process tree."""
    started = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = dict.fromkeys((*ROLES, "total"), 0.0)
    done = threading.Event()

    def sample() -> None:
        parent = psutil.Process(child.pid)
        while not done.is_set():
            by_role = dict.fromkeys(ROLES, 0.0)
            try:
                processes = [parent, *parent.children(recursive=True)]
            except psutil.Error:  # the job ended
                break
            for process in processes:
                try:
                    with_role = role(process, child.pid)
                    if with_role in by_role:
                        by_role[with_role] += process.memory_info().rss / 2**20
                except psutil.Error:  # it ended between listing and reading it
                    continue
            for name, value in by_role.items():
                peaks[name] = max(peaks[name], value)
            peaks["total"] = max(peaks["total"], sum(by_role.values()))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({child.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    return {"wall_s": round(wall, 1), **{f"peak_{name}_mb": round(value) for name, value in peaks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("bench-score"))
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    log = make_log(options.workdir, options.events, options.customers)
    model = reference_model(make_model(options.workdir, log), log)
    binary = str(Path(sys.executable).parent / "churnformer-predict")
    common = [binary, f"model={model}", f"events={log}", f"cutoff={cutoff_date()}", "progress=false"]
    local_out, spark_out = options.workdir / "spark-bench-local.parquet", options.workdir / "spark-bench-spark.parquet"
    results = {
        "local": run_sampled([*common, f"output={local_out}"]),
        "spark": run_sampled([*common, f"output={spark_out}", "engine=spark", f"spark.master={options.master}"]),
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
    print(f"{'job':<8}{'wall s':>8}{'driver MB':>11}{'JVM MB':>9}{'workers MB':>12}{'total MB':>10}")
    for name, measured in results.items():
        print(
            f"{name:<8}{measured['wall_s']:>8.1f}{measured['peak_driver_mb']:>11,}{measured['peak_jvm_mb']:>9,}"
            f"{measured['peak_python_workers_mb']:>12,}{measured['peak_total_mb']:>10,}"
        )
    print(
        f"Spark / local wall time: {report['wall_ratio']:.2f}x (goal <= 2); identical predictions: "
        f"{report['identical_predictions']}, identical rejects: {report['identical_rejects']}"
    )
    if options.json:
        options.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
