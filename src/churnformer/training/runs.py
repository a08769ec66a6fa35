"""``churnformer-runs DIR``: a table of the training runs under DIR, best first, without TensorBoard."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from churnformer.schema import RUN_CONFIG, RUN_LOG, RUN_METRICS, RUN_MODEL, RUN_PREDICTIONS
from churnformer.training.review import display_value, knob_name, training_knobs

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
    """One row per training run under ``root``, finished or not: a directory where Hydra recorded a job
    (``.hydra/config.yaml``, written when the run starts) or that holds a run's ``config.yaml``. ``status``
    says whether it produced what its config asked for (a run's ``evaluation/`` is not taken for a run)."""
    rows = []
    started = {path.parent.parent for path in root.rglob(".hydra/config.yaml")}
    # Hydra's own records (.hydra, Lightning's .pl_hydra_rank_N) also hold a config.yaml: not runs.
    finished = {path.parent for path in root.rglob(RUN_CONFIG) if not path.parent.name.startswith(".")}
    for run_dir in sorted(started | finished):
        config_file = run_dir / RUN_CONFIG if run_dir in finished else run_dir / ".hydra" / RUN_CONFIG
        config = OmegaConf.load(config_file)
        if OmegaConf.select(config, "task_name") is None:  # not a churnformer-train run
            continue
        row: dict[str, object] = {"run": str(run_dir.relative_to(root)) or ".", "status": run_status(run_dir, config)}
        row.update(training_knobs(config))
        metrics_file = run_dir / RUN_METRICS
        if metrics_file.is_file():
            row.update(json.loads(metrics_file.read_text()))
        rows.append(row)
    return pd.DataFrame(rows)


def run_status(run_dir: Path, config: DictConfig) -> str:
    """``ok``, or ``failed: `` and the error the run logged (``cli.log``), else what is missing."""
    expected = [RUN_METRICS]
    if config.get("export"):
        expected.append(RUN_MODEL)
        if config.get("predict_after_training"):
            expected.append(RUN_PREDICTIONS)
    missing = [name for name in expected if not (run_dir / name).is_file()]
    if not missing:
        return "ok"
    log = run_dir / RUN_LOG
    errors = (
        [line for line in log.read_text(errors="replace").splitlines() if "[ERROR] - " in line] if log.is_file() else []
    )
    reason = errors[-1].split("[ERROR] - ", 1)[1] if errors else f"no {', '.join(missing)}"
    return f"failed: {reason}"


def runs_table(runs: pd.DataFrame, sort: str, metrics: tuple[str, ...] = DEFAULT_METRICS) -> pd.DataFrame:
    """Sorted by ``sort`` (best first); the knobs under the names TensorBoard's HPARAMS tab shows, those that
    are the same in every run dropped."""
    metrics_present = [c for c in runs.columns if "/" in c]
    if sort not in runs.columns and metrics_present:
        raise KeyError(f"metric {sort!r} not found; metrics present: {metrics_present}")
    if sort not in runs.columns:  # no run finished training: the table still shows why
        runs = runs.assign(**{sort: float("nan")})
    ascending = any(word in sort for word in LOWER_IS_BETTER)
    knobs = [
        k
        for k in runs.columns
        if k not in ("run", "status")
        and "/" not in k  # metrics are group/metric/split
        and (runs[k].astype(str).nunique(dropna=False) > 1 or k in CONSTANT_COLUMNS_SHOWN)
    ]
    shown = [m for m in dict.fromkeys((sort, *metrics)) if m in runs.columns]
    table = runs.sort_values(sort, ascending=ascending, kind="stable", na_position="last")
    table = table[["run", "status", *knobs, *shown]].reset_index(drop=True)
    table[knobs] = table[knobs].map(display_value)
    return table.rename(columns={k: knob_name(k) for k in knobs})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churnformer-runs", description=__doc__)
    parser.add_argument("directory", type=Path, help="a run directory or a sweep/outputs directory above runs")
    parser.add_argument("--sort", default="churn/auroc/val", help="metric to rank by (default churn/auroc/val)")
    parser.add_argument("--format", choices=("text", "csv"), default="text")
    args = parser.parse_args(argv)
    runs = collect_runs(args.directory)
    if runs.empty:
        print(f"error: no training runs under {args.directory}", file=sys.stderr)
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
