"""Validation metrics per head, as torchmetrics collections (one per split)."""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat

from churnformer.evaluation import normalized_gini


class NormalizedGini(Metric):
    """Normalized Gini of expected spend (Wang et al., 2019), accumulated over an epoch."""

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
        """The same numbers as ``churnformer-evaluate`` (ties in the score count as their group average)."""
        actual, score = (dim_zero_cat(t).double().cpu().numpy() for t in (self.actual, self.score))
        return torch.tensor(normalized_gini(actual, score), dtype=torch.float32)


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
