"""Benchmark: what the horizon grid costs, one horizon against four, side by side in one run.

Usage::

    python -m scripts.benchmarks.horizons [--customers 4000] [--epochs 3] [--score-events 2000000]
                                     [--score-customers 100000] [--repeats 3] [--record PATH]

Two measurements, each alternating the two variants ``--repeats`` times and keeping the fastest of each
(the machine is shared and noisy; the ratio is the result):

* **training**: the whole ``churnformer-train`` job through the Python API (fit, calibration, export,
  scoring of the training log and the validation report) on the synthetic world, ``--epochs`` epochs
  with early stopping off so both variants run the same number, once with ``data.horizons_days=[90]``
  (one horizon, what every release before 0.2 trained) and once with the default grid 30/90/180/365;
* **scoring**: ``Predictor.predict`` (featurization, onnxruntime, value and retention columns) on the
  benchmark log of ``scripts/benchmarks/score.py`` (``scripts.common.logs.generate_events``), with the default small
  architecture exported with one output horizon and with four (random weights: speed does not depend
  on them).

Targets (issue 15): training with four horizons at most 1.3x one horizon, scoring at most 1.15x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from churnformer.api import train
from churnformer.artifacts.export import export_onnx
from churnformer.data.featurizer import FeaturizerConfig, fit_featurizer
from churnformer.data.synthetic import SyntheticWorldConfig, generate_world
from churnformer.defaults import model_heads
from churnformer.modeling.network import ChurnFormer
from churnformer.serving.predictor import Predictor
from scripts.common import record
from scripts.common.logs import SPAN_SECONDS, START, generate_events
from scripts.common.models import small_network

VARIANTS = {"one horizon": (90,), "four horizons": (30, 90, 180, 365)}
MAIN_HORIZON = 90
TARGETS = {"training": 1.3, "scoring": 1.15}
TRAIN_CUTOFF = "2024-06-30"


def fastest(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Seconds of the fastest of ``repeats`` calls of each variant, the variants interleaved."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def training_runs(workdir: Path, customers: int, epochs: int) -> dict[str, Callable[[], object]]:
    events, attributes = generate_world(SyntheticWorldConfig.with_defaults(n_customers=customers, seed=0))

    def run(horizons: tuple[int, ...], name: str) -> Callable[[], object]:
        grid = ",".join(str(days) for days in horizons)
        overrides = [
            f"data.horizons_days=[{grid}]",
            f"trainer.max_epochs={epochs}",
            "~callbacks.early_stopping",
            "trainer.enable_progress_bar=false",
        ]
        output = workdir / "train" / name.replace(" ", "_")
        return lambda: train(events, TRAIN_CUTOFF, MAIN_HORIZON, attributes, output_dir=output, overrides=overrides)

    return {name: run(horizons, name) for name, horizons in VARIANTS.items()}


def scoring_runs(workdir: Path, n_events: int, n_customers: int) -> dict[str, Callable[[], object]]:
    frame = generate_events(n_events, n_customers)
    cutoff = str((START + np.timedelta64(SPAN_SECONDS - 1, "s")).astype("datetime64[D]"))
    featurizer = fit_featurizer(frame.head(1_000_000), config=FeaturizerConfig.with_defaults(max_len=128))
    runs = {}
    for name, horizons in VARIANTS.items():
        torch.manual_seed(0)
        network = ChurnFormer.build(small_network(), featurizer, len(horizons), model_heads()).eval()
        path = workdir / f"{name.replace(' ', '_')}.onnx"
        metadata = {"horizon_days": MAIN_HORIZON, "horizons_days": list(horizons)}
        export_onnx(network, featurizer.to_json(), path, metadata, fused_attention=True)
        predictor = Predictor(path)
        runs[name] = lambda predictor=predictor: predictor.score(frame, cutoff)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=4000, help="synthetic customers to train on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--score-events", type=int, default=2_000_000)
    parser.add_argument("--score-customers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("benchmarks.horizons", args) as run:
        run.figures, run.tables["cost"] = measure(args)


def measure(args: argparse.Namespace) -> tuple[dict, dict]:
    """Both variants, trained and scored, fastest of the repeats: the record's figures and its table."""
    workdir = Path(tempfile.mkdtemp(prefix="churnformer-bench-horizons-"))
    measured = {
        "training": fastest(training_runs(workdir, args.customers, args.epochs), args.repeats),
        "scoring": fastest(scoring_runs(workdir, args.score_events, args.score_customers), args.repeats),
    }
    rows = []
    for what, seconds in measured.items():
        one, four = seconds["one horizon"], seconds["four horizons"]
        ratio = four / one
        verdict = "met" if ratio <= TARGETS[what] else "missed"
        rows.append([what, f"{one:.1f}", f"{four:.1f}", f"{ratio:.2f}", f"<= {TARGETS[what]}", verdict])
    table = pd.DataFrame(rows, columns=["", "one horizon s", "four horizons s", "ratio", "target", ""])
    print(
        f"\nfastest of {args.repeats}, alternating; training: {args.customers:,} synthetic customers, "
        f"{args.epochs} epochs; scoring: {args.score_events:,} events of {args.score_customers:,} customers\n"
    )
    print(table.to_string(index=False))
    return measured, record.frame_table(table)


if __name__ == "__main__":
    main()
