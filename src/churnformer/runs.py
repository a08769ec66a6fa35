"""``churnformer-runs DIR``: a table of the training runs under DIR, best first, without TensorBoard."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from churnformer.review import HPARAM_KEYS

DEFAULT_METRICS = (
    "churn/auroc/val",
    "churn/pr_auc/val",
    "churn/brier/val",
    "churn/ece/val",
    "spend/gini/val",
    "spend/spearman/val",
    "joint/loss/val",
)
# Metrics where smaller is better; everything else sorts descending.
LOWER_IS_BETTER = ("loss", "brier", "ece", "mae")
CONSTANT_COLUMNS_SHOWN = ("seed",)


def collect_runs(root: Path) -> pd.DataFrame:
    """One row per training run under ``root``: a directory holding ``metrics.json`` and ``config.yaml``
    (so a run's ``evaluation/metrics.json`` is not mistaken for a run)."""
    rows = []
    for metrics_file in sorted(root.rglob("metrics.json")):
        run_dir = metrics_file.parent
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            continue
        row: dict[str, object] = {"run": str(run_dir.relative_to(root)) or "."}
        config = OmegaConf.load(config_file)
        for key in HPARAM_KEYS:
            row[key] = OmegaConf.select(config, key, default=None)
        row.update(json.loads(metrics_file.read_text()))
        rows.append(row)
    return pd.DataFrame(rows)


def runs_table(runs: pd.DataFrame, sort: str, metrics: tuple[str, ...] = DEFAULT_METRICS) -> pd.DataFrame:
    """Sorted by ``sort`` (best first); hyperparameters that are the same in every run are dropped."""
    if sort not in runs.columns:
        raise KeyError(f"metric {sort!r} not found; metrics present: {[c for c in runs.columns if '/' in c]}")
    ascending = any(word in sort for word in LOWER_IS_BETTER)
    knobs = [
        k
        for k in HPARAM_KEYS
        if k in runs.columns and (runs[k].nunique(dropna=False) > 1 or k in CONSTANT_COLUMNS_SHOWN)
    ]
    shown = [m for m in dict.fromkeys((sort, *metrics)) if m in runs.columns]
    table = runs.sort_values(sort, ascending=ascending, kind="stable", na_position="last")
    return table[["run", *knobs, *shown]].reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churnformer-runs", description=__doc__)
    parser.add_argument("directory", type=Path, help="a run directory or a sweep/outputs directory above runs")
    parser.add_argument("--sort", default="churn/auroc/val", help="metric to rank by (default churn/auroc/val)")
    parser.add_argument("--format", choices=("text", "csv"), default="text")
    args = parser.parse_args(argv)
    runs = collect_runs(args.directory)
    if runs.empty:
        print(f"no runs (metrics.json) under {args.directory}", file=sys.stderr)
        return 2
    try:
        table = runs_table(runs, args.sort)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    if args.format == "csv":
        print(table.to_csv(index=False))
    else:
        print(table.to_string(index=False, float_format="{:.4f}".format))
    return 0
