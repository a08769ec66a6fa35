"""``churnformer-monitor``: has anything changed between a scoring run and its reference?

The current run is a ``churnformer-predict`` output (a Parquet or CSV file, or the Parquet directory of
``engine=spark``) with its ``<output>.summary.json`` beside it. The reference is another such output (the
previous run), or a model: a model file or training run directory, whose reference population is the
validation customers of its training run (the percentiles of its main-horizon outputs and the profile of
their input, stored in the model file at export).

Compared, each as a distribution (PSI and Jensen-Shannon distance, :mod:`churnformer.monitoring.drift`):
- outputs: every prediction column the two share (churn probability and expected spend at each horizon,
  CLV, spend if retained, value at risk, days to next purchase), in bins at the reference's deciles; the
  segment shares and the risk and value deciles;
- inputs: the scoring jobs' input profiles (events per customer, days since the last event, spend per
  customer, each event categorical column's value shares; :mod:`churnformer.serving.input_profile`), the
  share of customers not scored by reason, of events with an unknown category by column, and of customers
  absent from the customers table.

Writes ``drift.json``, ``drift.md`` and ``drift.png`` into ``output`` (``drift.json`` last: its presence
means the job completed). Exit status 0 when nothing reaches the alert threshold (warnings are printed),
3 when something does, 2 for bad input.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churnformer.calibration import Calibration
from churnformer.data.events import CUSTOMER_ID, read_table
from churnformer.defaults import serving_defaults
from churnformer.errors import InputError
from churnformer.files import write_atomically
from churnformer.monitoring.drift import ALERT, OK, WARN, Shift, Thresholds, bin_edges, binned_counts
from churnformer.schema import (
    CHURN_PROBABILITY,
    CHURN_RISK_DECILE,
    EMBEDDING_PREFIX,
    META_CALIBRATION,
    N_EVENTS,
    PERCENTILE_LEVELS,
    SEGMENT,
    VALUE_DECILE,
)
from churnformer.serving.model_file import load_model

# Exit status when a quantity reaches the alert threshold (2 is bad input, as for every command).
ALERT_EXIT_STATUS = 3
# Categorical outputs compared by their shares.
CATEGORICAL_OUTPUTS = (SEGMENT, CHURN_RISK_DECILE, VALUE_DECILE)
# Columns that are not a distribution of the population: the id, the history length (an input, in the
# profile), explanation columns.
NOT_OUTPUTS = (CUSTOMER_ID, N_EVENTS)
FIGURE_QUANTITIES = 6
RESULT_FILE, REPORT_FILE, FIGURE_FILE = "drift.json", "drift.md", "drift.png"


@dataclass
class Scores:
    """One side of the comparison: a scoring run's predictions and summary, or a model's reference."""

    name: str
    predictions: pd.DataFrame | None  # None for a model: its percentiles stand in
    summary: dict[str, Any] | None
    percentiles: dict[str, list[float]]  # a model's: main-horizon output -> percentiles 1..99


def predictions_path_summary(path: Path) -> Path:
    return path.with_name(path.name + ".summary.json")


def read_scores(location: str | Path, role: str) -> Scores:
    """A ``churnformer-predict`` output (file or Spark directory) with its summary, or (reference only) a
    model file or training run directory."""
    path = Path(location)
    if path.suffix.lower() == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()):
        if role != "reference":
            raise InputError(f"{role}={path}: a model is a reference, not a scoring run; pass a predictions file")
        return model_reference(path)
    if path.is_dir():
        if not any(path.glob("*.parquet")):
            raise InputError(f"{role}={path}: a directory without Parquet files (not a predictions output)")
        try:
            predictions = pd.read_parquet(path)
        except (ValueError, OSError) as error:
            raise InputError(f"{role}={path}: cannot read the Parquet directory: {error}") from error
    else:
        predictions = read_table(path, CUSTOMER_ID)
    if CHURN_PROBABILITY not in predictions.columns:
        raise InputError(f"{role}={path}: no {CHURN_PROBABILITY} column; not a churnformer-predict output")
    summary_path = predictions_path_summary(path)
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return Scores(str(path), predictions, summary, {})


def model_reference(path: Path) -> Scores:
    """The validation customers of the model's training run, as stored in its file at export."""
    name, _, metadata = load_model(path)
    calibration = Calibration.from_dict(json.loads(metadata.get(META_CALIBRATION, "{}")))
    if not calibration.percentiles:
        raise InputError(
            f"reference={name}: the model stores no reference population (exported without calibration); "
            "pass a previous scoring run's predictions as the reference"
        )
    summary = {"input_profile": calibration.reference_inputs} if calibration.reference_inputs else None
    return Scores(name, None, summary, dict(calibration.percentiles))


def output_columns(current: Scores, reference: Scores) -> list[str]:
    """The numeric prediction columns both sides have (a model reference: its percentiles' columns)."""
    frame = current.predictions
    numeric = [
        column
        for column in frame.columns
        if column not in NOT_OUTPUTS
        and column not in CATEGORICAL_OUTPUTS
        and not str(column).startswith(EMBEDDING_PREFIX)
        and pd.api.types.is_float_dtype(frame[column])
        and "driver" not in str(column)
    ]
    if reference.predictions is None:
        return [column for column in numeric if column in reference.percentiles]
    return [column for column in numeric if column in reference.predictions.columns]


def output_shifts(current: Scores, reference: Scores, thresholds: Thresholds) -> list[Shift]:
    shifts = []
    for column in output_columns(current, reference):
        values = current.predictions[column].to_numpy(np.float64)
        if reference.predictions is None:
            edges, ref_counts = stored_decile_shares(reference.percentiles[column])
        else:
            reference_values = reference.predictions[column].to_numpy(np.float64)
            edges = bin_edges(reference_values)
            ref_counts = binned_counts(reference_values, edges)
        shifts.append(Shift.of(column, "output", ref_counts, binned_counts(values, edges), thresholds))
    if reference.predictions is not None:
        for column in CATEGORICAL_OUTPUTS:
            if column in current.predictions.columns and column in reference.predictions.columns:
                shifts.append(
                    Shift.of(
                        column,
                        "output",
                        category_counts(reference.predictions[column]),
                        category_counts(current.predictions[column]),
                        thresholds,
                    )
                )
    return shifts


def stored_decile_shares(percentiles: list[float]) -> tuple[np.ndarray, dict[str, float]]:
    """Bins at a stored reference's deciles and the reference's share in each: 10% apiece, except where
    deciles coincide (a point mass), whose bins merge; the share below an edge is the level it first reaches."""
    deciles = np.asarray(percentiles, dtype=np.float64)[9::10]  # levels 0.10, 0.20, ..., 0.90
    levels = np.asarray(PERCENTILE_LEVELS)[9::10]
    edges, first = np.unique(deciles, return_index=True)
    below = np.concatenate([[0.0], levels[first], [1.0]])
    return edges, dict(zip(binned_counts(np.zeros(0), edges), np.diff(below).tolist(), strict=True))


def category_counts(values: pd.Series) -> dict[str, float]:
    counts = values.astype(str).value_counts()
    return {str(key): float(count) for key, count in sorted(counts.items())}


def input_shifts(current: Scores, reference: Scores, thresholds: Thresholds) -> tuple[list[Shift], list[str]]:
    """The profiles' quantities and the summaries' rates; and what could not be compared, in words."""
    skipped = []
    if current.summary is None or reference.summary is None:
        missing = current if current.summary is None else reference
        return [], [f"inputs: {missing.name} has no summary (<output>.summary.json) to compare"]
    shifts = []
    mine, theirs = current.summary.get("input_profile") or {}, reference.summary.get("input_profile") or {}
    if not mine or not theirs:
        skipped.append("input profiles: one side was scored by a release that did not record them")
    for name in [key for key in theirs if key in mine]:
        shifts.append(Shift.of(name, "input", theirs[name], mine[name], thresholds))
    if reference.predictions is None:
        return shifts, [*skipped, "reject and unknown-category rates: a model reference has none (pass a run)"]
    columns = {*reference.summary.get("unknown_categories", {}), *current.summary.get("unknown_categories", {})}
    current_rates = summary_rates(current.summary, columns)
    for name, rates in summary_rates(reference.summary, columns).items():
        shifts.append(Shift.of(name, "input", rates, current_rates[name], thresholds))
    return shifts, skipped


def summary_rates(summary: dict[str, Any], columns: set[str]) -> dict[str, dict[str, float]]:
    """The summary's counts as distributions: customers scored or not by reason, events with a known or
    unknown category in each of ``columns`` (a summary lists only the columns that had unknown values),
    customers in the customers table or not."""
    seen = float(summary.get("customers_seen", 0))
    not_scored = summary.get("customers_not_scored", {})
    rates = {"customers_not_scored": {"scored": seen - sum(not_scored.values()), **not_scored}}
    rows = float(summary.get("rows_read", 0))
    for column in sorted(columns):
        unknown = summary.get("unknown_categories", {}).get(column, 0)
        rates[f"unknown_category_rate:{column}"] = {"known": rows - unknown, "unknown": float(unknown)}
    scored = float(summary.get("customers_scored", 0))
    missing = float(summary.get("customers_without_static", 0))
    rates["customers_without_static"] = {"in customers table": scored - missing, "absent": missing}
    return rates


def run_monitor(config: dict[str, Any]) -> int:
    """The ``churnformer-monitor`` job from a plain config dict (``conf/serving/monitor.yaml``); returns
    the exit status."""
    started = time.perf_counter()
    config = {**serving_defaults("monitor"), **config}
    thresholds = Thresholds(**config["thresholds"])
    current = read_scores(config["current"], "current")
    reference = read_scores(config["reference"], "reference")
    shifts = output_shifts(current, reference, thresholds)
    inputs, skipped = input_shifts(current, reference, thresholds)
    shifts += inputs
    output = Path(config["output"])
    result = {
        "current": current.name,
        "reference": reference.name,
        "thresholds": asdict(thresholds),
        "status": worst(shifts),
        "not_compared": skipped,
        "shifts": [asdict(shift) for shift in shifts],
    }
    write_atomically(output / REPORT_FILE, lambda p: p.write_text(report_markdown(result)))
    write_atomically(output / FIGURE_FILE, lambda p: drift_figure(shifts, thresholds).savefig(p, format="png"))
    write_atomically(output / RESULT_FILE, lambda p: p.write_text(json.dumps(result, indent=2)))
    print(summary_line(shifts, output, time.perf_counter() - started))
    for note in skipped:
        print(f"note: not compared: {note}")
    return ALERT_EXIT_STATUS if result["status"] == ALERT else 0


def worst(shifts: list[Shift]) -> str:
    statuses = {shift.status for shift in shifts}
    return ALERT if ALERT in statuses else WARN if WARN in statuses else OK


def summary_line(shifts: list[Shift], output: Path, seconds: float) -> str:
    flagged = sorted((s for s in shifts if s.status != OK), key=lambda s: -s.psi)
    words = ", ".join(f"{s.name} {s.status} (PSI {s.psi:.3f})" for s in flagged) or "nothing moved"
    compared = f"{len(shifts)} quantities compared, {worst(shifts)}"
    return f"drift: {compared}: {words}; report {output / REPORT_FILE} ({seconds:.1f} s)"


def report_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Drift report",
        "",
        f"Current: `{result['current']}`  ",
        f"Reference: `{result['reference']}`  ",
        f"Status: **{result['status']}** (PSI warn at {result['thresholds']['psi_warn']}, alert at "
        f"{result['thresholds']['psi_alert']})",
        "",
        "| quantity | kind | PSI | JS distance | status |",
        "|---|---|---|---|---|",
    ]
    for shift in sorted(result["shifts"], key=lambda s: -s["psi"]):
        cells = [shift["name"], shift["kind"], f"{shift['psi']:.4f}", f"{shift['js_distance']:.4f}", shift["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    if result["not_compared"]:
        lines += ["", "Not compared:", *(f"- {note}" for note in result["not_compared"])]
    lines += ["", f"![drift]({FIGURE_FILE})", ""]
    return "\n".join(lines)


def drift_figure(shifts: list[Shift], thresholds: Thresholds) -> Figure:
    """PSI of every quantity against the thresholds, and the shares of the most shifted ones, reference
    against current."""
    top = sorted(shifts, key=lambda s: -s.psi)[:FIGURE_QUANTITIES]
    figure = Figure(figsize=(12, 4 + 2.2 * ((len(top) + 2) // 3)), layout="constrained")
    grid = figure.add_gridspec(1 + (len(top) + 2) // 3, 3)
    bars = figure.add_subplot(grid[0, :])
    ordered = sorted(shifts, key=lambda s: -s.psi)
    colors = {OK: "tab:green", WARN: "tab:orange", ALERT: "tab:red"}
    bars.bar(range(len(ordered)), [s.psi for s in ordered], color=[colors[s.status] for s in ordered])
    bars.set_xticks(range(len(ordered)), [s.name for s in ordered], rotation=60, ha="right", fontsize=7)
    for level, color in ((thresholds.psi_warn, "tab:orange"), (thresholds.psi_alert, "tab:red")):
        bars.axhline(level, color=color, linestyle="--", linewidth=1)
    bars.set_ylabel("PSI")
    bars.set_title("Population stability index, current against reference")
    for i, shift in enumerate(top):
        axis = figure.add_subplot(grid[1 + i // 3, i % 3])
        x = np.arange(len(shift.bins))
        axis.bar(x - 0.2, shift.reference_share, width=0.4, label="reference")
        axis.bar(x + 0.2, shift.current_share, width=0.4, label="current")
        axis.set_xticks(x, shift.bins, rotation=60, ha="right", fontsize=6)
        axis.set_title(f"{shift.name}: PSI {shift.psi:.3f}", fontsize=9)
        if i == 0:
            axis.legend(fontsize=7)
    return figure
