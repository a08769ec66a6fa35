"""Validation metrics per head, as torchmetrics collections (one per split)."""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat


def gini(actual: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Gini of the ranking by ``score``: how much of ``actual`` the top of the ranking captures."""
    order = torch.argsort(score, descending=True, stable=True)
    captured = torch.cumsum(actual[order].double(), 0) / actual.double().sum().clamp(min=1e-12)
    n = actual.numel()
    return captured.sum() / n - (n + 1) / (2 * n)


def normalized_gini(actual: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Gini of the model's ranking over the Gini of the perfect ranking (Wang et al., 2019)."""
    best = gini(actual, actual)
    return gini(actual, score) / best if best > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class NormalizedGini(Metric):
    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("score", default=[], dist_reduce_fx="cat")
        self.add_state("actual", default=[], dist_reduce_fx="cat")

    def update(self, score: torch.Tensor, actual: torch.Tensor) -> None:
        self.score.append(score.detach())
        self.actual.append(actual.detach())

    def compute(self) -> torch.Tensor:
        return normalized_gini(dim_zero_cat(self.actual), dim_zero_cat(self.score)).float()


def churn_metrics(prefix: str) -> MetricCollection:
    """AUROC, average precision (positive = churn) and Brier score of churn probabilities."""
    return MetricCollection(
        {"churn_auroc": BinaryAUROC(), "churn_pr_auc": BinaryAveragePrecision(), "churn_brier": MeanSquaredError()},
        prefix=prefix,
    )


def spend_metrics(prefix: str) -> MetricCollection:
    """MAE, Spearman rank correlation and normalized Gini of expected spend."""
    with warnings.catch_warnings():  # ranks need every prediction; the buffer is the point, not a surprise
        warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save")
        spearman = SpearmanCorrCoef()
    return MetricCollection(
        {"spend_mae": MeanAbsoluteError(), "spend_spearman": spearman, "spend_gini": NormalizedGini()},
        prefix=prefix,
    )
