"""Outcome tracking: were past scoring runs right? ``churnformer-evaluate predictions=[a,b,c] events=LOG`` (or
``predictions=DIR``, every scoring output in it) checks each past run against what its customers did after
its cutoff, once its horizon has passed, and writes one table over time.

Each run's cutoff and horizon come from its ``<output>.summary.json`` (``horizon_days`` given in the config
overrides the horizon). A run whose horizon the log does not cover yet is a ``pending`` row, not dropped. Each
evaluated run's full report is in ``output/<run name>/``, exactly what ``churnformer-evaluate`` writes for it
alone; the table's row is that report's ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churnformer.data.events import ColumnMapping
from churnformer.data.labels import LabelSpec
from churnformer.errors import InputError
from churnformer.evaluation.metrics import HEADLINE_METRICS
from churnformer.evaluation.report import HorizonNotObserved, evaluate_files
from churnformer.files import write_atomically

# The metrics of each run in the table (from its report's metrics.json).
TRACKED = ("n_customers", "churn_rate", *HEADLINE_METRICS)
OUTCOME_COLUMNS = ("run", "scored_at", "cutoff", "horizon_days", "status", *TRACKED)
EVALUATED, PENDING = "evaluated", "pending"
FIGURE_METRICS = ("churn_auc", "churn_ece", "spend_gini", "spend_aggregate_error")


def summary_of(predictions: Path) -> dict[str, Any]:
    path = predictions.with_name(predictions.name + ".summary.json")
    if not path.is_file():
        raise InputError(
            f"{predictions}: no {path.name} beside it: its cutoff is unknown (score with churnformer-predict)"
        )
    summary = json.loads(path.read_text())
    if not summary.get("cutoff"):
        raise InputError(
            f"{path}: records no cutoff (scored by a release before outcome tracking); evaluate it alone with "
            "cutoff=... horizon_days=..."
        )
    return summary


def past_runs(predictions: str | Path | list[str]) -> list[Path]:
    """The scoring outputs to track: a list of them, or every output in a directory (those with a summary)."""
    if isinstance(predictions, list | tuple):
        return [Path(p) for p in predictions]
    directory = Path(predictions)
    runs = sorted(p.with_name(p.name.removesuffix(".summary.json")) for p in directory.glob("*.summary.json"))
    if not runs:
        raise InputError(f"predictions={directory}: no scoring outputs (no <output>.summary.json) in the directory")
    return runs


def is_runs_directory(predictions: Any) -> bool:
    """A list of runs, or a directory holding scoring outputs (a Spark output directory holds Parquet parts)."""
    return isinstance(predictions, list | tuple) or (
        Path(predictions).is_dir() and any(Path(predictions).glob("*.summary.json"))
    )


def track_outcomes(
    predictions: str | Path | list[str],
    events: str | Path,
    *,
    horizon_days: float | None = None,
    columns: ColumnMapping | None = None,
    spec: LabelSpec = LabelSpec(),
    output_dir: str | Path = "evaluation",
    customers: str | Path | None = None,
) -> dict[str, Path]:
    """Evaluate every past run of ``predictions`` against ``events``; write ``outcomes.csv``, ``outcomes.md``
    and ``outcomes.png`` to ``output_dir`` (each run's report in a folder of its own) and print the table."""
    if events is None:
        raise InputError("outcome tracking needs events=PATH: the log that holds what happened after each cutoff")
    output_dir = Path(output_dir)
    rows = []
    for index, run in enumerate(past_runs(predictions)):
        summary = summary_of(run)
        horizon = float(horizon_days or summary["horizon_days"])
        row = {"run": str(run), "scored_at": summary.get("scored_at", ""), "cutoff": summary["cutoff"]}
        row["horizon_days"] = horizon
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # each run's report is on disk; the table is printed
                paths = evaluate_files(
                    run,
                    events=events,
                    cutoff=summary["cutoff"],
                    horizon_days=horizon,
                    columns=columns,
                    spec=spec,
                    output_dir=output_dir / f"{index:02d}-{run.stem}",
                    customers=customers,
                )
        except HorizonNotObserved:
            rows.append({**row, "status": PENDING})
            continue
        metrics = json.loads(paths["metrics"].read_text())
        rows.append({**row, "status": EVALUATED, **{name: metrics.get(name) for name in TRACKED}})
    table = pd.DataFrame(rows, columns=list(OUTCOME_COLUMNS)).sort_values(["cutoff", "run"], kind="stable")
    paths = {}
    if (table["status"] == EVALUATED).any():
        paths["figure"] = write_atomically(
            output_dir / "outcomes.png", lambda p: outcomes_figure(table).savefig(p, format="png", dpi=100)
        )
    paths["report"] = write_atomically(output_dir / "outcomes.md", lambda p: p.write_text(outcomes_markdown(table)))
    # The table last: its presence means the job completed.
    paths["outcomes"] = write_atomically(output_dir / "outcomes.csv", lambda p: table.to_csv(p, index=False))
    print(outcomes_markdown(table, figure=False))
    print(f"outcomes: {paths['outcomes']}  report: {paths['report']}")
    return paths


def outcomes_markdown(table: pd.DataFrame, figure: bool = True) -> str:
    shown = ["cutoff", "horizon_days", "status", "n_customers", "churn_auc", "churn_ece", "spend_gini", "run"]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = [
        "# Past scoring runs against what happened",
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "---|" * len(shown),
    ]
    for row in table.to_dict("records"):
        cells = [f"{row[c]:g}" if c == "horizon_days" else cell(row[c]) for c in shown]
        lines.append("| " + " | ".join(cells) + " |")
    pending = int((table["status"] == PENDING).sum())
    if pending:
        lines += ["", f"{pending} run(s) pending: the log ends before their horizon does."]
    if figure:
        lines += ["", "![outcomes](outcomes.png)"]
    return "\n".join(lines) + "\n"


def outcomes_figure(table: pd.DataFrame) -> Figure:
    """Each tracked metric against the run's cutoff, one line per horizon."""
    evaluated = table[table["status"] == EVALUATED]
    figure = Figure(figsize=(12, 3.2), layout="constrained")
    axes = figure.subplots(1, len(FIGURE_METRICS))
    for axis, metric in zip(np.atleast_1d(axes), FIGURE_METRICS, strict=True):
        for horizon, runs in evaluated.groupby("horizon_days"):
            axis.plot(pd.to_datetime(runs["cutoff"]), runs[metric].astype(float), marker="o", label=f"{horizon:g} d")
        axis.set_title(metric)
        axis.tick_params(axis="x", rotation=45)
    np.atleast_1d(axes)[0].legend(title="horizon", fontsize=8)
    figure.suptitle("Past scoring runs: metric by cutoff")
    return figure
