"""Benchmark: featurizing logs of growing size into a training set on disk within a memory budget, then
training from it: does either step's memory grow with the log?

Usage::

    python -m scripts.benchmarks.dataset [--events 10000000 50000000] [--events-per-customer 20]
                                    [--memory-budget-mb 3000] [--train-batches N] [--ddp-batches 400]
                                    [--workdir DIR] [--record PATH]

For each size, the scoring benchmark's generated log (``scripts.common.logs.generate_events``, Parquet, the cutoff
one year in as ``scripts.benchmarks.train`` has it), each step a child process measured by
``scripts.common.measure`` (its peak RSS, the kernel's high-water mark, and its wall time):

* ``churnformer-featurize ... memory_budget_mb=B``: the two passes over the log, the spill to partitions and the
  featurization of each partition (``churnformer.training.partitioned``);
* ``churnformer-train data=dataset data.path=...``: one epoch from the shards (``--train-batches N``: its first
  N batches), nothing after it (no calibration, export, scoring or explanations);
* the same with ``trainer=ddp`` (two ranks on this machine, the first ``--ddp-batches`` batches of each; 0: not
  run): the peak RSS of both ranks together (each rank's own high-water mark, summed), against one process's.

Training reads the shards with ``pread`` (nothing mapped), so its RSS is its own memory and the page cache's
pages of the shards count in no process; ``peak private (anonymous)``: the memory the process holds for itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from scripts.benchmarks.train import LARGE_CUTOFF
from scripts.common import record
from scripts.common.measure import run_measured
from scripts.common.models import make_log
from scripts.common.tables import render

BIN = Path(sys.executable).parent


def featurize(log: Path, output: Path, budget_mb: float) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    command = [
        str(BIN / "churnformer-featurize"),
        "data=csv",
        f"data.events={log}",
        f"data.cutoff={LARGE_CUTOFF}",
        f"memory_budget_mb={budget_mb}",
        f"output={output}",
        f"hydra.run.dir={output.parent / (output.name + '-featurize-run')}",
    ]
    usage, text = run_measured(command)
    print(text, end="")
    manifest = json.loads((output / "manifest.json").read_text())
    return {
        "featurize_s": usage.wall_s,
        "featurize_peak_rss_mb": usage.peak_rss_mb,
        "examples": manifest["examples"],
        "events_in_sequences": manifest["events"],
        "partitions": manifest["partitions"],
        "featurizer_fit_share": manifest["featurizer_fit_share"],
        "dataset_mb": sum(path.stat().st_size for path in output.iterdir()) / 2**20,
    }


def train(dataset: Path, run_dir: Path, batches: int | None, ddp: bool = False) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        str(BIN / "churnformer-train"),
        "data=dataset",
        f"data.path={dataset}",
        *(["trainer=ddp", "threads=1"] if ddp else []),
        "trainer.max_epochs=1",
        *([f"+trainer.limit_train_batches={batches}"] if batches else []),
        "calibrate=false",
        "export=false",
        "predict_after_training=false",
        "explain_validation=false",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    usage, _ = run_measured(command)
    prefix = "ddp_" if ddp else "train_"
    return {
        f"{prefix}s": usage.wall_s,
        f"{prefix}peak_rss_mb": usage.peak_rss_mb,
        f"{prefix}peak_anon_mb": usage.peak_anon_mb,
    }


def table(results: dict[str, dict]) -> dict[str, list]:
    rows = [
        ("examples (customer x cutoff)", lambda r: f"{r['examples']:,}"),
        ("partitions; featurizer fitted on", lambda r: f"{r['partitions']}; {r['featurizer_fit_share']:.0%}"),
        ("featurize, s", lambda r: f"{r['featurize_s']:.0f}"),
        ("featurize, peak RSS MB", lambda r: f"{r['featurize_peak_rss_mb']:,.0f}"),
        ("dataset on disk, MB", lambda r: f"{r['dataset_mb']:,.0f}"),
        ("train from it, s", lambda r: f"{r['train_s']:.0f}"),
        ("train from it, peak RSS MB", lambda r: f"{r['train_peak_rss_mb']:,.0f}"),
        ("train from it, peak private (anonymous) MB", lambda r: f"{r['train_peak_anon_mb']:,.0f}"),
    ]
    if all("ddp_peak_rss_mb" in r for r in results.values()):
        rows.append(("trainer=ddp, 2 ranks: peak RSS MB, both", lambda r: f"{r['ddp_peak_rss_mb']:,.0f}"))
        rows.append(("trainer=ddp, 2 ranks: peak private MB, both", lambda r: f"{r['ddp_peak_anon_mb']:,.0f}"))
        rows.append(("both ranks / one process", lambda r: f"{r['ddp_peak_rss_mb'] / r['train_peak_rss_mb']:.2f}"))
    names = list(results)
    return record.table(["", *names], [[label, *(cell(results[n]) for n in names)] for label, cell in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[10_000_000, 50_000_000])
    parser.add_argument("--events-per-customer", type=int, default=20)
    parser.add_argument("--memory-budget-mb", type=float, default=3000)
    parser.add_argument("--train-batches", type=int, help="train on the epoch's first N batches (default: all)")
    parser.add_argument("--ddp-batches", type=int, default=400, help="trainer=ddp on the first N batches (0: skip)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-dataset"))
    record.add_argument(parser)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with record.recorded("benchmarks.dataset", args) as run:
        results = {}
        for events in args.events:
            name = f"{events / 1e6:g} M events"
            log = make_log(args.workdir, events, events // args.events_per_customer)
            dataset = args.workdir / f"dataset-{events}"
            results[name] = featurize(log, dataset, args.memory_budget_mb)
            results[name] |= train(dataset, args.workdir / f"run-{events}", args.train_batches)
            if args.ddp_batches:
                results[name] |= train(dataset, args.workdir / f"ddp-{events}", args.ddp_batches, ddp=True)
            print(name, json.dumps(results[name]))
        run.figures = results
        run.tables["dataset"] = table(results)
        print(render(run.tables["dataset"]))


if __name__ == "__main__":
    main()
