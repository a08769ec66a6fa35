"""Validation metrics per head, as torchmetrics collections (one per split)."""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError
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


def metric_name(head: str, metric: str, split: str) -> str:
    """Tags are ``head/metric/split`` (``churn/auroc/val``) so TensorBoard groups them per head."""
    return f"{head}/{metric}/{split}"


def churn_metrics(split: str) -> MetricCollection:
    """AUROC, average precision (positive = churn), Brier score and 10-bin ECE of churn probabilities."""
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "pr_auc": BinaryAveragePrecision(),
            "brier": MeanSquaredError(),
            "ece": BinaryCalibrationError(n_bins=10, norm="l1"),
        },
        prefix="churn/",
        postfix=f"/{split}",
    )


def spend_metrics(split: str) -> MetricCollection:
    """MAE, Spearman rank correlation and normalized Gini of expected spend."""
    with warnings.catch_warnings():  # ranks need every prediction; the buffer is the point, not a surprise
        warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save")
        spearman = SpearmanCorrCoef()
    return MetricCollection(
        {"mae": MeanAbsoluteError(), "spearman": spearman, "gini": NormalizedGini()},
        prefix="spend/",
        postfix=f"/{split}",
    )
