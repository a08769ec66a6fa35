"""Churn and spend metrics in numpy, on whole populations: the definitions training, the offline evaluation
and the benchmarks all use (training's torchmetrics are checked against them, ties included)."""

from __future__ import annotations

import math

import numpy as np

N_BINS = 10
LOG_LOSS_EPS = 1e-7


# --- ranks and ties -------------------------------------------------------------------------------------------


# What sums up how well one run did, in the names churnformer-evaluate's metrics.json uses: the model card, the
# table of past runs and the backtest report these.
HEADLINE_METRICS = (
    "churn_auc",
    "churn_pr_auc",
    "churn_brier",
    "churn_ece",
    "spend_gini",
    "spend_spearman",
    "spend_aggregate_error",
    "survival_c_index",
)


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


# --- survival over a horizon grid -----------------------------------------------------------------------------


def concordance_index(survival: np.ndarray, churn: np.ndarray, observed: np.ndarray) -> float:
    """Time-dependent concordance (Antolini et al. 2005) on a horizon grid: over every pair where customer i
    made a first purchase in interval k and customer j had made none by its end t_k (both observed to t_k),
    the share where i's predicted S(t_k) is lower than j's (ties count one half). ``survival``, ``churn``
    (no purchase by t_k) and ``observed`` are (N, K). NaN without comparable pairs."""
    alive = np.concatenate([np.ones((len(churn), 1)), churn[:, :-1]], axis=1)
    concordant = comparable = 0.0
    for k in range(churn.shape[1]):
        seen = observed[:, k] > 0
        bought = survival[seen & (alive[:, k] > 0) & (churn[:, k] == 0), k]
        quiet = np.sort(survival[seen & (churn[:, k] > 0), k])
        if not len(bought) or not len(quiet):
            continue
        above = len(quiet) - np.searchsorted(quiet, bought, side="right")
        tied = np.searchsorted(quiet, bought, side="right") - np.searchsorted(quiet, bought, side="left")
        concordant += float(above.sum() + 0.5 * tied.sum())
        comparable += float(len(bought) * len(quiet))
    return concordant / comparable if comparable else math.nan


def integrated_brier_score(
    survival: np.ndarray, churn: np.ndarray, observed: np.ndarray, horizons: np.ndarray
) -> float:
    """Brier score of S(t_k) against "no purchase by t_k", averaged over the observed horizons weighted by
    the length of time each stands for (t_k - t_{k-1}, t_0 = 0): the integral of the Brier score over time
    divided by its span. Censoring is administrative (the same end of the log for every customer), so each
    horizon is scored on everyone or not at all; NaN when no horizon is observed."""
    widths = np.diff(np.concatenate([[0.0], np.asarray(horizons, dtype=np.float64)]))
    scores, weights = [], []
    for k in range(churn.shape[1]):
        seen = observed[:, k] > 0
        if seen.any():
            scores.append(np.mean((survival[seen, k] - churn[seen, k]) ** 2))
            weights.append(widths[k])
    return float(np.average(scores, weights=weights)) if scores else math.nan
