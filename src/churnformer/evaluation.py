"""Offline evaluation: a predictions file against what happened in the horizon, as metrics, figures and a report.

Validation metrics during training come from torchmetrics on tensors; here the same quantities (and a few
business ones: calibration error, decile error, aggregate error) are computed in numpy on whole files, so a
scored population can be judged after the horizon has passed. The tests check the numpy versions against
torchmetrics, ties included.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churnformer.data.events import (
    CUSTOMER_ID,
    TIMESTAMP,
    ColumnMapping,
    EventLogError,
    check_customer_ids,
    load_events,
    read_table,
    source_of,
)
from churnformer.data.labels import make_labels
from churnformer.data.window import Window, require_events_before
from churnformer.defaults import serving_defaults
from churnformer.schema import CHURN, CHURN_PROBABILITY, EXPECTED_SPEND, LABEL_COLUMNS, SPEND

# What an evaluation needs of a predictions file (any model's: churnformer's or a baseline's).
EVALUATED_COLUMNS = (CHURN_PROBABILITY, EXPECTED_SPEND)
N_BINS = 10
LOG_LOSS_EPS = 1e-7
MIN_CUSTOMERS = 10  # deciles need at least one customer each
EXAMPLES = 5
DECILE_NOTE = "spend_decile_mape skips deciles whose mean actual spend is 0 (the relative error is undefined there)."


# --- ranks and ties -------------------------------------------------------------------------------------------


def _tie_groups(sorted_values: np.ndarray) -> np.ndarray:
    """Group index (0, 1, ...) of each element of a sorted array; equal neighbours share a group."""
    return np.cumsum(np.r_[False, sorted_values[1:] != sorted_values[:-1]])


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span, so ties favour no one."""
    order = np.argsort(values, kind="stable")
    group = _tie_groups(values[order])
    starts = np.flatnonzero(np.r_[True, np.diff(group) > 0])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2)[group]
    return ranks


def cumulative_gains(actual: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Share of the total ``actual`` captured by the top k customers by ``score``, for k = 1..n.

    Customers tied on score share their group's mean, which is the expected curve over every order of the
    ties: a constant score gives the random diagonal instead of whatever order the file happened to have.
    """
    total = actual.sum()
    if not total > 0:
        return np.full(len(actual), np.nan)
    order = np.argsort(-score, kind="stable")
    group = _tie_groups(score[order])
    group_means = np.bincount(group, weights=actual[order]) / np.bincount(group)
    return np.cumsum(group_means[group]) / total


# --- churn metrics --------------------------------------------------------------------------------------------


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U over n_pos * n_neg with average ranks, so a tied pair counts one half; NaN with one class."""
    positive = label == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = average_ranks(score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(label: np.ndarray, score: np.ndarray) -> float:
    """Step-wise area under precision-recall, one step per distinct score (as scikit-learn); NaN without positives.

    Tied scores form one threshold, so the result does not depend on the order of tied rows.
    """
    order = np.argsort(-score, kind="stable")
    sorted_score, sorted_label = score[order], label[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(sorted_score)), len(score) - 1]
    true_positives = np.cumsum(sorted_label)[last_of_threshold]
    if true_positives[-1] == 0:
        return math.nan
    precision = true_positives / (last_of_threshold + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def calibration_bins(probability: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, mean predicted and observed rate in 10 equal-width bins of probability (empty bins: NaN means)."""
    bins = np.minimum((probability * N_BINS).astype(int), N_BINS - 1)
    counts = np.bincount(bins, minlength=N_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(bins, weights=probability, minlength=N_BINS) / counts
        observed = np.bincount(bins, weights=label, minlength=N_BINS) / counts
    return counts, predicted, observed


def expected_calibration_error(probability: np.ndarray, label: np.ndarray) -> float:
    """L1 gap between mean predicted and observed rate per bin, weighted by the share of customers in the bin."""
    counts, predicted, observed = calibration_bins(probability, label)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(predicted[filled] - observed[filled])) / counts.sum())


def log_loss(label: np.ndarray, probability: np.ndarray) -> float:
    """Mean negative log-likelihood; clipping keeps one confident mistake from making it infinite."""
    p = np.clip(probability, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


# --- spend metrics --------------------------------------------------------------------------------------------


def gini(actual: np.ndarray, score: np.ndarray) -> float:
    """Area between the cumulative gains of the ranking by ``score`` and the random diagonal."""
    n = len(actual)
    return float(cumulative_gains(actual, score).mean() - (n + 1) / (2 * n))


def normalized_gini(actual: np.ndarray, score: np.ndarray) -> float:
    """Gini of the model's ranking over the Gini of the perfect ranking (Wang et al., 2019): 1 is perfect,
    0 random, negative worse than random; NaN when there is nothing to rank (no or uniform spend)."""
    best = gini(actual, actual)
    return gini(actual, score) / best if best > 0 else math.nan


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of average ranks; NaN when either side is constant."""
    ranks_a, ranks_b = average_ranks(a), average_ranks(b)
    ranks_a, ranks_b = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    scale = math.sqrt(float(np.sum(ranks_a**2) * np.sum(ranks_b**2)))
    return float(np.sum(ranks_a * ranks_b) / scale) if scale > 0 else math.nan


def decile_means(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted and mean actual in 10 equal groups ordered by prediction (highest first)."""
    groups = np.array_split(np.argsort(-predicted, kind="stable"), 10)
    return np.array([predicted[g].mean() for g in groups]), np.array([actual[g].mean() for g in groups])


def decile_mape(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean over deciles of prediction of |mean predicted - mean actual| / mean actual.

    Deciles whose mean actual is 0 are skipped: the relative error is undefined there, and a decile of
    customers who spent nothing is judged by MAE instead. NaN when every decile is skipped.
    """
    mean_predicted, mean_actual = decile_means(predicted, actual)
    spent = mean_actual > 0
    if not spent.any():
        return math.nan
    return float(np.mean(np.abs(mean_predicted[spent] - mean_actual[spent]) / mean_actual[spent]))


def aggregate_error(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Relative error of total spend (sum predicted / sum actual - 1): what a budget built on the scores misses."""
    total = actual.sum()
    return float(predicted.sum() / total - 1) if total > 0 else math.nan


# --- joining predictions and labels ---------------------------------------------------------------------------


def _examples(ids: Iterable[Any]) -> str:
    return ", ".join(repr(i.item() if hasattr(i, "item") else i) for i in list(ids)[:EXAMPLES])


def _checked_frame(frame: pd.DataFrame, columns: Sequence[str], where: str) -> pd.DataFrame:
    """The id and value columns of ``frame``: present, ids valid and unique, values finite numbers."""
    missing = [c for c in (CUSTOMER_ID, *columns) if c not in frame.columns]
    if missing:
        raise EventLogError(f"{where}: required column(s) {missing} not found; columns present: {list(frame.columns)}")
    ids = check_customer_ids(frame[CUSTOMER_ID], f"{where}, column {CUSTOMER_ID!r}")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise EventLogError(f"{where}: {len(duplicated)} duplicate customer id(s), e.g. {_examples(duplicated)}")
    values = {}
    for column in columns:
        numeric = pd.to_numeric(frame[column], errors="coerce").astype("float64").to_numpy()
        bad = ~np.isfinite(numeric)
        if bad.any():
            raise EventLogError(
                f"{where}: {int(bad.sum())} missing or non-numeric value(s) in column {column!r}, "
                f"e.g. for customer(s) {_examples(ids[bad])}"
            )
        values[column] = numeric
    return pd.DataFrame({CUSTOMER_ID: ids.to_numpy(), **values})


def _check_ranges(joined: pd.DataFrame, names: tuple[str, str]) -> None:
    """Probabilities outside [0, 1] or labels other than 0/1 mean the wrong column or file, not a bad model."""
    outside = ~joined[CHURN_PROBABILITY].between(0, 1)
    if outside.any():
        raise EventLogError(
            f"{names[0]}: {int(outside.sum())} {CHURN_PROBABILITY} value(s) outside [0, 1], "
            f"e.g. for customer(s) {_examples(joined.loc[outside, CUSTOMER_ID].to_numpy())}"
        )
    not_binary = ~joined[CHURN].isin([0.0, 1.0])
    if not_binary.any():
        raise EventLogError(
            f"{names[1]}: {int(not_binary.sum())} churn value(s) other than 0 or 1, "
            f"e.g. for customer(s) {_examples(joined.loc[not_binary, CUSTOMER_ID].to_numpy())}"
        )


def _same_id_type(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Integer ids on one side and strings on the other (Parquet vs CSV of the same ids) are compared as text."""
    if pd.api.types.is_integer_dtype(a[CUSTOMER_ID].dtype) == pd.api.types.is_integer_dtype(b[CUSTOMER_ID].dtype):
        return a, b
    return a.assign(**{CUSTOMER_ID: a[CUSTOMER_ID].astype(str)}), b.assign(**{CUSTOMER_ID: b[CUSTOMER_ID].astype(str)})


def align(
    predictions: pd.DataFrame, labels: pd.DataFrame, names: tuple[str, str] = ("predictions", "labels")
) -> pd.DataFrame:
    """One row per customer with predictions and labels; both sides must cover exactly the same customers.

    An inner join would silently evaluate a subset (say, only customers the model happened to score), so
    any customer on one side only is an error that names how many and which.
    """
    predicted = _checked_frame(predictions, EVALUATED_COLUMNS, names[0])
    labelled = _checked_frame(labels, LABEL_COLUMNS, names[1])
    predicted, labelled = _same_id_type(predicted, labelled)
    predicted_ids, labelled_ids = pd.Index(predicted[CUSTOMER_ID]), pd.Index(labelled[CUSTOMER_ID])
    unpredicted, unlabelled = labelled_ids.difference(predicted_ids), predicted_ids.difference(labelled_ids)
    gaps = [
        f"{len(ids)} {side} customer(s) have no {missing} (e.g. {_examples(ids)})"
        for ids, side, missing in ((unpredicted, "labelled", "prediction"), (unlabelled, "predicted", "label"))
        if len(ids)
    ]
    if gaps:
        raise EventLogError(
            f"{names[0]} and {names[1]} cover different customers: {'; '.join(gaps)}. Score and label the same "
            "population (every customer with an event up to the cutoff)"
        )
    if len(predicted) < MIN_CUSTOMERS:
        raise EventLogError(f"{names[0]}: {len(predicted)} customer(s); evaluation needs at least {MIN_CUSTOMERS}")
    joined = predicted.merge(labelled, on=CUSTOMER_ID, how="inner", validate="one_to_one")
    _check_ranges(joined, names)
    return joined


# --- metrics and figures of an aligned frame ------------------------------------------------------------------


def _columns(joined: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Churn probability, churn label, expected spend and actual spend of an aligned frame."""
    return tuple(joined[c].to_numpy() for c in (CHURN_PROBABILITY, CHURN, EXPECTED_SPEND, SPEND))


def compute_metrics(joined: pd.DataFrame) -> dict[str, float]:
    """Every metric of :func:`evaluate` from a frame made by :func:`align`."""
    p, churn, expected, spend = _columns(joined)
    return {
        "churn_auc": roc_auc(churn, p),
        "churn_pr_auc": average_precision(churn, p),
        "churn_brier": float(np.mean((p - churn) ** 2)),
        "churn_log_loss": log_loss(churn, p),
        "churn_ece": expected_calibration_error(p, churn),
        "churn_rate": float(churn.mean()),
        "spend_mae": float(np.mean(np.abs(expected - spend))),
        "spend_rmse": float(np.sqrt(np.mean((expected - spend) ** 2))),
        "spend_gini": normalized_gini(spend, expected),
        "spend_spearman": spearman(expected, spend),
        "spend_decile_mape": decile_mape(expected, spend),
        "spend_aggregate_error": aggregate_error(expected, spend),
        "n_customers": len(joined),
    }


def evaluate(predictions: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
    """Churn and spend metrics of ``predictions`` (customer_id, churn_probability, expected_spend) against
    ``labels`` (customer_id, churn, spend) of the same customers."""
    return compute_metrics(align(predictions, labels))


def calibration_figure(probability: np.ndarray, label: np.ndarray) -> Figure:
    """Observed churn rate against mean predicted probability per bin; points on the diagonal are calibrated."""
    counts, predicted, observed = calibration_bins(probability, label)
    filled = counts > 0
    figure = Figure(figsize=(4.5, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    axes.plot(predicted[filled], observed[filled], marker="o", label="model")
    axes.set(xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration (10 bins)")
    axes.legend(loc="upper left")
    return figure


def decile_figure(expected: np.ndarray, spend: np.ndarray) -> Figure:
    """Mean predicted and actual spend per decile of prediction: level errors and ranking in one picture."""
    mean_predicted, mean_actual = decile_means(expected, spend)
    x = np.arange(1, N_BINS + 1)
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    axes.bar(x - 0.2, mean_predicted, width=0.4, label="mean predicted")
    axes.bar(x + 0.2, mean_actual, width=0.4, label="mean actual")
    axes.set(xlabel="decile of expected spend (1 = highest)", ylabel="spend", title="Spend by decile", xticks=x)
    axes.legend()
    return figure


def _gains_panel(axes: Any, actual: np.ndarray, score: np.ndarray, what: str, ranked_by: str) -> None:
    share = np.arange(len(actual) + 1) / len(actual)
    axes.plot(share, np.r_[0.0, cumulative_gains(actual, actual)], linestyle=":", color="black", label="perfect")
    axes.plot(share, np.r_[0.0, cumulative_gains(actual, score)], label="model")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    axes.set(xlabel=f"share of customers, ranked by {ranked_by}", ylabel=f"share of {what} captured", title=what)
    axes.legend(loc="lower right")


def gains_figure(expected: np.ndarray, spend: np.ndarray, probability: np.ndarray, churn: np.ndarray) -> Figure:
    """How much of the spend, and of the churners, the top of each ranking captures, against perfect and random."""
    figure = Figure(figsize=(9, 4), layout="constrained")
    spend_axes, churn_axes = figure.subplots(1, 2)
    _gains_panel(spend_axes, spend, expected, "actual spend", "expected spend")
    _gains_panel(churn_axes, churn, probability, "churners", "churn probability")
    figure.suptitle("Cumulative gains")
    return figure


def report_figures(joined: pd.DataFrame) -> dict[str, Figure]:
    """The report's figures by file stem, from a frame made by :func:`align`."""
    p, churn, expected, spend = _columns(joined)
    return {
        "calibration": calibration_figure(p, churn),
        "spend_deciles": decile_figure(expected, spend),
        "cumulative_gains": gains_figure(expected, spend, p, churn),
    }


# --- report ---------------------------------------------------------------------------------------------------


def format_value(name: str, value: float) -> str:
    """Counts as integers, undefined metrics (one class, no spend) as n/a, the rest to four decimals."""
    if name == "n_customers":
        return f"{int(value):,}"
    return "n/a" if not math.isfinite(value) else f"{value:.4f}"


def format_metrics(metrics: dict[str, float]) -> str:
    """A compact two-column table for the console."""
    width = max(len(name) for name in metrics)
    return "\n".join(f"{name:<{width}}  {format_value(name, value)}" for name, value in metrics.items())


def write_report(
    metrics: dict[str, float], figures: dict[str, Figure], out_dir: str | Path, title: str
) -> dict[str, Path]:
    """``metrics.json`` (undefined metrics as null, so strict JSON readers accept it), one PNG per figure and
    ``report.md`` with the metrics table and the figures linked; returns the paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / "metrics.json", "report": out_dir / "report.md"}
    strict = {name: value if math.isfinite(value) else None for name, value in metrics.items()}
    paths["metrics"].write_text(json.dumps(strict, indent=2, allow_nan=False) + "\n")
    for name, figure in figures.items():
        paths[name] = out_dir / f"{name}.png"
        figure.savefig(paths[name], dpi=100)
    rows = [f"| {name} | {format_value(name, value)} |" for name, value in metrics.items()]
    links = [f"## {name}\n\n![{name}]({name}.png)\n" for name in figures]
    markdown = "\n".join([f"# {title}\n", "| metric | value |", "|---|---|", *rows, "", f"{DECILE_NOTE}\n", *links])
    paths["report"].write_text(markdown)
    return paths


# --- files and config -----------------------------------------------------------------------------------------


def labels_from_events(
    events: str | Path,
    cutoff: str,
    horizon_days: float,
    columns: ColumnMapping | None = None,
    purchase_types: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Labels of every customer with at least one event before the cutoff: the population the predictor scores."""
    frame = load_events(events, columns)
    window = Window.from_cutoff(cutoff, horizon_days)
    require_events_before(frame[TIMESTAMP], window, source_of(frame, "events"))
    before = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64) < window.feature_end_ns
    population = np.sort(pd.unique(frame[CUSTOMER_ID].to_numpy()[before]))
    return make_labels(frame, window, population, purchase_types)


def load_labels(
    labels: str | Path | None,
    events: str | Path | None,
    cutoff: str | None,
    horizon_days: float | None,
    columns: ColumnMapping | None = None,
    purchase_types: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Labels from a labels file or computed from an event log, and a description of where they came from."""
    if labels is not None and events is not None:
        raise EventLogError("pass either labels=PATH or events=PATH with cutoff and horizon_days, not both")
    if labels is not None:
        return read_table(labels, CUSTOMER_ID), str(labels)
    if events is None or cutoff is None or horizon_days is None:
        raise EventLogError(
            "no labels: pass labels=PATH (columns customer_id, churn, spend), or events=PATH with "
            "cutoff=YYYY-MM-DD and horizon_days=N (the cutoff and horizon the predictions were made for)"
        )
    frame = labels_from_events(events, cutoff, horizon_days, columns, purchase_types)
    return frame, f"labels from {events} (cutoff {cutoff}, horizon {horizon_days} days)"


def evaluate_files(
    predictions: str | Path,
    labels: str | Path | None = None,
    *,
    events: str | Path | None = None,
    cutoff: str | None = None,
    horizon_days: float | None = None,
    columns: ColumnMapping | None = None,
    purchase_types: Sequence[str] | None = None,
    output_dir: str | Path = "evaluation",
) -> dict[str, Path]:
    """Evaluate a predictions file against a labels file, or against labels computed from an event log, and
    write the report to ``output_dir``; prints the metrics and where the report went."""
    label_frame, label_source = load_labels(labels, events, cutoff, horizon_days, columns, purchase_types)
    joined = align(read_table(predictions, CUSTOMER_ID), label_frame, names=(str(predictions), label_source))
    metrics = compute_metrics(joined)
    paths = write_report(
        metrics, report_figures(joined), output_dir, f"Evaluation of {predictions} against {label_source}"
    )
    print(format_metrics(metrics))
    print(f"report: {paths['report']}  metrics: {paths['metrics']}")
    return paths


def run_evaluation(config: dict[str, Any]) -> dict[str, Path]:
    """The ``churnformer-evaluate`` job from a plain config dict (see ``conf/serving/evaluate.yaml``)."""
    config = {**serving_defaults("evaluate"), **config}
    columns = ColumnMapping().overridden(config["columns"])
    return evaluate_files(
        config["predictions"],
        config["labels"],
        events=config["events"],
        cutoff=config["cutoff"],
        horizon_days=config["horizon_days"],
        columns=columns,
        purchase_types=config["purchase_types"],
        output_dir=config["output"],
    )
