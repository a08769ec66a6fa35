"""The figures a reviewer reads, drawn once for both the evaluation report and TensorBoard.

Each carries the number that matters in its title (ROC with its AUC, calibration with its ECE and bin
counts) and is legible at TensorBoard's card size; spend axes are in the log's currency units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churnformer.evaluation.metrics import (
    N_BINS,
    calibration_bins,
    cumulative_gains,
    decile_means,
    expected_calibration_error,
    normalized_gini,
    roc_auc,
)

matplotlib.use("Agg")  # figures are rendered to files and images, never shown

SPEND_UNITS = "spend (currency units of the log)"
# Inches at 100 dpi: one panel fits a TensorBoard card at its default width, text readable; figures of two
# panels stack them (TALL) rather than set them side by side, which a card would shrink to half their size.
SIZE = (5.0, 4.0)
TALL = (5.0, 7.0)


def calibration_figure(probability: np.ndarray, label: np.ndarray) -> Figure:
    """Observed churn rate against mean predicted probability per bin, each point labelled with its count;
    points on the diagonal are calibrated."""
    counts, predicted, observed = calibration_bins(probability, label)
    filled = counts > 0
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    axes.plot(predicted[filled], observed[filled], marker="o", label="model")
    for x, y, n in zip(predicted[filled], observed[filled], counts[filled], strict=True):
        axes.annotate(f"{n:,}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="dimgrey")
    ece = expected_calibration_error(probability, label)
    axes.set(
        xlabel="predicted churn probability",
        ylabel="observed churn rate",
        title=f"Calibration: ECE {ece:.4f} ({N_BINS} bins, customers per bin shown)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axes.title.set_fontsize(9)
    axes.legend(loc="upper left")
    return figure


def roc_figure(probability: np.ndarray, label: np.ndarray) -> Figure:
    """ROC of churn: true against false positive rate over every threshold (ties as one step)."""
    order = np.argsort(-probability, kind="stable")
    scores, labels = probability[order], label[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    positives = max(float(labels.sum()), 1.0)
    negatives = max(float(len(labels) - labels.sum()), 1.0)
    tpr = np.r_[0.0, np.cumsum(labels)[last] / positives]
    fpr = np.r_[0.0, np.cumsum(1 - labels)[last] / negatives]
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    axes.plot(fpr, tpr, label="model")
    axes.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"Churn ROC: AUC {roc_auc(label, probability):.4f}",
    )
    axes.legend(loc="lower right")
    return figure


def _decile_bars(axes: Any, predicted: np.ndarray, actual: np.ndarray, ylabel: str) -> None:
    mean_predicted, mean_actual = decile_means(predicted, actual)
    x = np.arange(1, N_BINS + 1)
    axes.bar(x - 0.2, mean_predicted, width=0.4, label="mean predicted")
    axes.bar(x + 0.2, mean_actual, width=0.4, label="mean actual")
    axes.set(xlabel="decile of prediction (1 = highest)", ylabel=ylabel, xticks=x)
    axes.legend()


def churn_decile_figure(probability: np.ndarray, label: np.ndarray) -> Figure:
    """Mean predicted churn probability and observed churn rate per decile of prediction."""
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.subplots()
    _decile_bars(axes, probability, label, "churn rate")
    axes.set(title="Churn rate by decile of churn probability")
    return figure


def spend_decile_figure(expected: np.ndarray, spend: np.ndarray) -> Figure:
    """Mean predicted and actual spend per decile of prediction: level errors and ranking in one picture."""
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.subplots()
    _decile_bars(axes, expected, spend, SPEND_UNITS)
    axes.set(title=f"Spend by decile of expected spend: Gini {normalized_gini(spend, expected):.4f}")
    return figure


def spend_scatter_figure(expected: np.ndarray, spend: np.ndarray) -> Figure:
    """Predicted against actual spend per customer, on log1p axes (most customers spend little)."""
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.subplots()
    axes.scatter(np.log1p(expected), np.log1p(spend), s=4, alpha=0.3)
    top = float(max(np.log1p(expected).max(initial=0), np.log1p(spend).max(initial=0)))
    axes.plot([0, top], [0, top], linestyle="--", color="grey")
    axes.set(
        xlabel="log1p(expected spend), currency units",
        ylabel="log1p(actual spend), currency units",
        title="Predicted against actual spend",
    )
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
    figure = Figure(figsize=TALL, layout="constrained")
    spend_axes, churn_axes = figure.subplots(2, 1)
    _gains_panel(spend_axes, spend, expected, "actual spend", "expected spend")
    _gains_panel(churn_axes, churn, probability, "churners", "churn probability")
    figure.suptitle("Cumulative gains")
    return figure


def review_figures(
    probability: np.ndarray, churn: np.ndarray, expected: np.ndarray, spend: np.ndarray
) -> dict[str, Figure]:
    """Every figure of one population, by name (the report's file stems; TensorBoard's tags)."""
    return {
        "churn/roc": roc_figure(probability, churn),
        "churn/calibration": calibration_figure(probability, churn),
        "churn/deciles": churn_decile_figure(probability, churn),
        "spend/deciles": spend_decile_figure(expected, spend),
        "spend/predicted_vs_actual": spend_scatter_figure(expected, spend),
        "cumulative_gains": gains_figure(expected, spend, probability, churn),
    }


# --- over the horizon grid ------------------------------------------------------------------------------------


def horizons_figure(
    horizons: np.ndarray,
    survival: np.ndarray,
    churn: np.ndarray,
    observed: np.ndarray,
    expected: np.ndarray,
    spend: np.ndarray,
) -> Figure:
    """Mean predicted S(t) against the observed share with no purchase by t, and mean expected against actual
    cumulative spend, at every horizon (N, K arrays); horizons the log does not cover have no observed point."""
    figure = Figure(figsize=TALL, layout="constrained")
    survival_axes, spend_axes = figure.subplots(2, 1)
    seen = observed.all(axis=0)
    days = np.r_[0.0, horizons]
    survival_axes.plot(days, np.r_[1.0, survival.mean(0)], marker="o", label="mean predicted S(t)")
    survival_axes.plot(np.r_[0.0, horizons[seen]], np.r_[1.0, churn[:, seen].mean(0)], marker="s", label="observed")
    survival_axes.set(
        xlabel="days after the cutoff",
        ylabel="share with no purchase yet",
        ylim=(0, 1.02),
        title="No purchase by day t",
    )
    survival_axes.legend(loc="upper right")
    spend_axes.plot(days, np.r_[0.0, expected.mean(0)], marker="o", label="mean expected")
    spend_axes.plot(np.r_[0.0, horizons[seen]], np.r_[0.0, spend[:, seen].mean(0)], marker="s", label="mean actual")
    spend_axes.set(xlabel="days after the cutoff", ylabel=SPEND_UNITS, title="Cumulative spend by day t")
    spend_axes.legend(loc="upper left")
    figure.suptitle(f"Over the horizon grid ({len(survival):,} customers)")
    return figure


def horizon_calibration_figure(
    horizons: np.ndarray, survival: np.ndarray, churn: np.ndarray, observed: np.ndarray
) -> Figure:
    """Calibration of "no purchase by t" at each observed horizon, one line per horizon, ECE in the legend."""
    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for k, days in enumerate(horizons):
        if not observed[:, k].all():
            continue
        counts, predicted, rate = calibration_bins(survival[:, k], churn[:, k])
        filled = counts > 0
        ece = expected_calibration_error(survival[:, k], churn[:, k])
        axes.plot(predicted[filled], rate[filled], marker="o", markersize=3, label=f"{days:g} days: ECE {ece:.3f}")
    axes.set(
        xlabel="predicted P(no purchase by t)",
        ylabel="observed share",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Churn calibration by horizon",
    )
    axes.legend(loc="upper left", fontsize=7)
    return figure


# Metrics by horizon drawn against the horizon, by panel: those where higher ranks better, and the errors.
RANKING_METRICS = ("_auc", "_gini", "_spearman")
ERROR_METRICS = ("_ece", "_brier")


def horizon_metrics_figure(by_horizon: Mapping[str, Mapping[float, float]]) -> Figure:
    """Each metric (``churn_auc``: {days: value}) against the horizon in days: ranking metrics above, calibration
    errors below (the other metrics, on scales of their own, are in the table beside it)."""
    figure = Figure(figsize=TALL, layout="constrained")
    ranking_axes, error_axes = figure.subplots(2, 1, sharex=True)
    for axes, endings, ylabel in (
        (ranking_axes, RANKING_METRICS, "AUC, normalized Gini, Spearman"),
        (error_axes, ERROR_METRICS, "ECE, Brier"),
    ):
        for name, values in by_horizon.items():
            if name.endswith(endings):
                days = sorted(values)
                axes.plot(days, [values[d] for d in days], marker="o", label=name)
        axes.set(ylabel=ylabel)
        if axes.has_data():
            axes.legend(loc="best", fontsize=7)
    error_axes.set(xlabel="horizon (days after the cutoff)")
    figure.suptitle("Validation metrics by horizon (exported model, calibrated)")
    return figure


def drivers_figure(summary: pd.DataFrame) -> Figure:
    """Mean absolute effect of each driver group on churn probability and on expected spend, over every
    customer explained and over the top risk decile (``churnformer.serving.explain.driver_summary``)."""
    figure = Figure(figsize=(5.0, max(5.0, 0.6 * len(summary) + 2.0)), layout="constrained")
    churn_axes, spend_axes = figure.subplots(2, 1, sharey=True)
    y = np.arange(len(summary))
    for axes, what, label in ((churn_axes, "churn", "churn probability"), (spend_axes, "spend", SPEND_UNITS)):
        axes.barh(y - 0.2, summary[f"mean_abs_{what}_effect"], height=0.4, label="all explained")
        axes.barh(y + 0.2, summary[f"top_risk_decile_mean_abs_{what}_effect"], height=0.4, label="top risk decile")
        axes.set(xlabel=f"mean |effect| on {label}")
        axes.legend(loc="lower right", fontsize=7)
    for axes in (churn_axes, spend_axes):
        axes.set(yticks=y, yticklabels=summary["group"])
    churn_axes.invert_yaxis()
    figure.suptitle("Driver groups: what removing each changes\n(association in the model, not cause)")
    return figure
